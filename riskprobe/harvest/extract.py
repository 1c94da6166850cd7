"""Phase two of a harvest: signatures for a corpus's answers by teacher forcing, written as a harvest dataset.

:func:`extract_corpus` reads a corpus (:mod:`riskprobe.harvest.generations`), re-renders each question from
its set by id (checking the rendering against the hash the corpus recorded), runs the
:class:`~riskprobe.signatures.extract.Extractor` over batches of similar length, and writes the rows in the
harvest layout of :mod:`riskprobe.harvest.store` (resumable shards, then the merged dataset). The same
corpus can be extracted again with another feature spec (layers, normalisation, K, families) into another
folder, without generating anything.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsutil import atomic_write_json, hash_order, stable_hash
from ..models import load_model
from ..models.generation import batch_order
from ..models.loader import resolve_batch_size, same_model, set_threads
from ..prompts import sets as P
from ..signatures import FeatureSpec
from ..signatures.extract import Extractor
from .config import HarvestConfig
from .generations import prompt_sha, read_corpus, read_corpus_manifest
from .shards import (
    abandon,
    check_compatible,
    dist_rank,
    package_versions,
    render_items,
    shard_loop,
    start_manifest,
    wait_for,
    wait_until,
)
from .store import (
    MANIFEST,
    dataset_features,
    harvest_row,
    hf_features,
    merge_shards,
    new_manifest,
    shard_finished,
    shard_folder,
    stale_shards,
    write_rows,
)


def corpus_config(m: dict[str, Any], **over):
    """The :class:`HarvestConfig` a corpus was generated with (for re-rendering its prompts)."""
    g = m["generation"]
    cfg = HarvestConfig(model=m["model"]["name"], prompts=m["prompts"], limit=m.get("limit"),
                        max_new_tokens=g["max_new_tokens"], do_sample=g["do_sample"], samples=g["samples"],
                        temperature=g["temperature"], top_p=g["top_p"], seed=g["seed"],
                        prompt_style=g["prompt_style"], truncate_prompts=g["truncate_prompts"],
                        shard_size=int(m.get("shard_size", 256)))
    for k, v in over.items():
        if v is not None:
            setattr(cfg, k, v)
    cfg.validate()
    return cfg


def corpus_items(m: dict[str, Any], path: Path):
    """The corpus's items, re-loaded from their sets and checked against the recorded fingerprint."""
    items = P.load_items(m["prompts"], limit=m.get("limit"), seed=m["generation"]["seed"])
    if len(items) != m["n_items"] or stable_hash("\n".join(it.id for it in items)) != m["items_fingerprint"]:
        raise UserError(f"the prompt sets '{m['prompts']}' no longer give the questions this corpus was made from "
                        f"({len(items)} items now, {m['n_items']} then); point RISKPROBE_DATASETS at the same "
                        "copies of the public sets", file=path, field="prompts")
    return items


def model_for(m: dict[str, Any], model: str | None) -> str:
    """What to load for a corpus: ``model`` if given, else the bundled name or source it was made with."""
    if model:
        return model
    return m["model"]["name"] if m["model"].get("source") == "bundled" else m.get("model_spec") or m["model"]["name"]


def extract_corpus(generations: str | Path, out: str | Path, *, features: dict[str, Any] | None = None, lm=None,
                   model: str | None = None, batch_size: int | str = "auto", shard_size: int | None = None,
                   device: str | None = None, dtype: str | None = None, threads: int | None = None,
                   progress: bool = True, merge: bool = True, max_rows: int | None = None,
                   arms: dict[str | Path, dict[str, Any]] | None = None) -> Path:
    """Extract signatures for every answer of the corpus ``generations`` into the harvest folder ``out``.

    Args:
        generations: a complete corpus folder.
        out: the harvest folder to write (rerun with the same arguments to resume).
        features: the feature spec (a mapping, as under ``features:`` in a harvest config).
        lm: an already loaded model; else ``model`` (default: the corpus's own) is loaded.
        max_rows: extract only this many answers, a subsample fixed by a hash of question id and sample.
        arms: more harvest folders to write from the same forward passes, each with its own feature spec
            (``{folder: features}``; say the same features with another ``normalisation``): one model pass
            serves them all, so each arm costs only its feature reduction.
    """
    generations, out = Path(generations), Path(out)
    rank, world = dist_rank()
    if rank != 0:
        _wait_complete(generations)
    m, rows = read_corpus(generations)
    if max_rows is not None and max_rows < len(rows):
        keep = {(r["id"], r["sample"]) for r in hash_order(rows, lambda r: f"{r['id']}:{r['sample']}")[:max_rows]}
        rows = [r for r in rows if (r["id"], r["sample"]) in keep]
    cfg = corpus_config(m, batch_size=batch_size, shard_size=shard_size, device=device, dtype=dtype, threads=threads,
                        out=str(out), features=dict(features or {}))
    if shard_size is None:  # a harvest shard holds the answers of one corpus shard
        cfg.shard_size *= cfg.answers_per_question
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    spec = FeatureSpec.from_dict(cfg.features)
    items = corpus_items(m, generations)
    set_threads(threads)
    if lm is None:
        lm = load_model(model_for(m, model), device=device, dtype=dtype)
    if not same_model(lm.identity, m["model"]):
        raise UserError(f"this corpus was generated by '{m['model']['name']}' (sha {str(m['model']['fingerprint'])[:12]}), "
                        f"not '{lm.identity.name}' (sha {lm.identity.fingerprint[:12]}); its answers would be forced "
                        "through another model", file=generations, field="model")
    spec = spec.resolve(lm)
    rendered, _, lengths = render_items(lm, items, cfg)
    cfg.batch_size = resolve_batch_size(cfg.batch_size, lm, seq_len=max(lengths, default=0) + spec.steps,
                                        steps=spec.steps)
    for r in rows:
        if prompt_sha(rendered[r["i"]].text) != r["prompt_sha"]:
            raise UserError(f"question {r['id']!r} renders differently now than when it was answered (another chat "
                            "template or prompt text); its signature would not describe that answer",
                            file=generations, field="prompt_sha")
    rows_fp = stable_hash("\n".join(f"{r['id']}:{r['sample']}:{','.join(map(str, r['tokens']))}" for r in rows))
    targets = [(out, cfg, spec)]
    for arm_out, arm_features in (arms or {}).items():
        arm_out = Path(arm_out)
        if arm_out.resolve() in {t[0].resolve() for t in targets}:
            raise UserError("is written twice; give each arm its own folder", file=arm_out, field="arms")
        arm_cfg = replace(cfg, out=str(arm_out), features=dict(arm_features))  # the same run, another spec
        arm_cfg.validate()
        targets.append((arm_out, arm_cfg, FeatureSpec.from_dict(arm_cfg.features).resolve(lm)))
    created, manifests = {}, {}
    for t_out, t_cfg, t_spec in targets:
        manifest = harvest_manifest(m, lm, t_spec, t_cfg)
        manifest["generations"].update(fingerprint=rows_fp, n_rows=len(rows), max_rows=max_rows)
        manifests[t_out] = manifest
        if rank == 0:  # every folder is checked before any is written to (an arm into a user's folder)
            if t_out.exists() and not t_out.is_dir():
                raise UserError("exists and is not a folder; choose another folder", file=t_out, field="arms")
            check_compatible(t_out, manifest)
    for t_out, _, _ in targets:
        created[t_out] = not t_out.exists()
        open_harvest(t_out, manifests[t_out], rank)
    try:
        _extract_shards(cfg, lm, [(o, sp) for o, _, sp in targets], items, rendered, lengths, rows, rank, world,
                        progress, merge)
    except BaseException as e:
        if rank == 0:
            for t_out, _, _ in targets:
                abandon(t_out, created[t_out], e)
        raise
    return out


def harvest_manifest(m: dict[str, Any], lm, spec, cfg) -> dict[str, Any]:
    """The manifest of a harvest of the corpus with manifest ``m`` (``cfg`` from :func:`corpus_config`)."""
    return new_manifest(model=lm.identity.to_dict(), feature_schema=spec.schema(), prompts=m["prompts"],
                        n_items=m["n_items"], items_fingerprint=m["items_fingerprint"], versions=package_versions(),
                        compat=cfg.compat(), config=asdict(cfg), truncated_prompts=m.get("truncated_prompts", []),
                        generations={"timing": m.get("timing")})


def open_harvest(out: Path, manifest: dict[str, Any], rank: int) -> None:
    """Refuse to mix into a harvest made with other settings; start the manifest (rank 0) or wait for it."""
    start_manifest(out / MANIFEST, manifest, rank, lambda: check_compatible(out, manifest))


def write_harvest_shard(path: Path, items, rendered, rows: list[dict[str, Any]], sigs: list[dict[str, Any]],
                        samples: int, features) -> None:
    """One harvest shard: corpus rows (item order) with their signature arrays."""
    out_rows = []
    for r, sig in zip(rows, sigs):
        row = corpus_row_of(items[r["i"]], r, rendered[r["i"]].text, r["i"] * samples + r["sample"])
        row.update(sig)
        out_rows.append(row)
    out_rows.sort(key=lambda x: x["index"])
    write_rows(path, out_rows, features)


def clear_stale_shards(shard_dir: Path, shards) -> None:
    """Remove a killed run's temporary folders of the harvest shards numbered ``shards`` (never renamed into
    place, so never finished)."""
    for s in shards:
        for stale in stale_shards(shard_dir, s):
            shutil.rmtree(stale, ignore_errors=True)


def _wait_complete(generations: Path) -> None:
    def complete() -> bool:
        try:
            return read_corpus_manifest(generations).get("status") == "complete"
        except UserError:
            return False

    wait_until(complete, f"{generations} to complete")


def corpus_row_of(item, corpus_row: dict[str, Any], rendered_text: str, index: int) -> dict[str, Any]:
    """The harvest row (without signature columns) of one corpus answer."""
    return harvest_row(index=index, id=item.id, set=item.set, category=item.category, prompt=item.prompt,
                       input_text=rendered_text, answers=list(item.answers), answer_kind=item.answer_kind,
                       response=corpus_row["text"], label=int(not corpus_row["correct"]),
                       echo_discounted=bool(corpus_row["echo"]), n_tokens=len(corpus_row["tokens"]),
                       finish=corpus_row["finish"], sample=int(corpus_row["sample"]))


def _extract_shards(cfg, lm, targets, items, rendered, lengths, rows, rank: int, world: int, progress: bool,
                    merge: bool) -> None:
    """Extract the rows shard by shard; ``targets`` = ``[(harvest folder, spec), ...]``, all from the same forward
    passes. A shard is computed while any target lacks it and written to those that lack it."""
    dirs = [out / "shards" for out, _ in targets]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    size = cfg.shard_size
    samples = cfg.answers_per_question
    n_shards = (len(rows) + size - 1) // size
    missing = {s: [d for d in dirs if not shard_finished(d, s)] for s in range(n_shards)}
    features = [dataset_features(hf_features(sp)) for _, sp in targets]
    spec = targets[0][1]
    steps = max(sp.steps for _, sp in targets)
    ex = Extractor(lm, spec, arms=[sp for _, sp in targets[1:]])

    def work(s: int, bar) -> int:  # one shard: every target's signatures from the same forward passes
        idx0 = s * size
        part = list(range(idx0, min(idx0 + size, len(rows))))
        # by answer kind, then by prompt + answer length
        order = [part[p] for p in batch_order([items[rows[j]["i"]].answer_kind for j in part],
                                              [lengths[rows[j]["i"]] + min(len(rows[j]["tokens"]), steps) for j in part])]
        done_rows, done_sigs, n_tok = [], [[] for _ in targets], 0
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b: b + cfg.batch_size]
            rs = [rows[j] for j in idx]
            sigs = ex.extract_arms([rendered[r["i"]] for r in rs], [r["tokens"] for r in rs])
            done_rows += rs
            for acc, sig in zip(done_sigs, sigs):
                acc += [{k: v[n] for k, v in sig.items()} for n in range(len(rs))]
            n_tok += sum(min(len(r["tokens"]), steps) for r in rs)
            bar.update(len(idx))
        for d, acc, feats in zip(dirs, done_sigs, features):
            if d in missing[s]:
                write_harvest_shard(shard_folder(d, s), items, rendered, done_rows, acc, samples, feats)
        return n_tok

    n_tok, elapsed = shard_loop(
        n_shards, rank=rank, world=world, done=lambda s: not missing[s], work=work,
        stale=lambda s: [p for d in dirs for p in stale_shards(d, s)],
        size=lambda s: len(rows[s * size:(s + 1) * size]), progress=progress,
        label=f"extract {lm.identity.name}" + (f" [rank {rank}/{world}]" if world > 1 else "")
        + (f" ({len(targets)} arms)" if len(targets) > 1 else ""))
    for d in dirs:
        atomic_write_json(d / f"timing-rank{rank}.json",
                          {"tokens": n_tok, "seconds": round(elapsed, 3), "phase": "extract", "arms": len(targets)})
    if merge and rank == 0:
        if world > 1:
            for d in dirs:
                wait_for(*[shard_folder(d, s) / "state.json" for s in range(n_shards)])
        for out, _ in targets:
            merge_shards(out, n_shards)
