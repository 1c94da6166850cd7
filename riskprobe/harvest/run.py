"""Harvest: generate answers to labelled prompts, grade them, then extract their signatures (two phases).

Layout of a harvest directory ``OUT``::

    OUT/generations/            phase one: the corpus of graded answers (:mod:`riskprobe.harvest.generations`)
    OUT/riskprobe.json          manifest: model identity, prompts, config, feature schema, versions, counts
    OUT/shards/shard-00000/     one finished shard (a `datasets` dataset), renamed into place when complete
    OUT/state.json, data-*.arrow, dataset_info.json
                                the merged dataset, so that ``datasets.load_from_disk(OUT)`` works

Phase two (:mod:`riskprobe.harvest.extract`) teacher-forces the corpus's answers through the model. Both
phases write fixed slices, so a rerun with the same configuration skips finished shards and redoes only the
unfinished one, and rank ``r`` of ``W`` (``torchrun``) takes shards ``i % W == r``: one process or many,
killed or not, the merged dataset is the same.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UserError, short
from ..fsutil import atomic_write_json, owned_dir
from ..models.loader import identity_diff, resolve_batch_size, set_threads
from .config import HarvestConfig
from .store import MANIFEST, read_manifest

GENERATIONS = "generations"  # the corpus of a harvest, inside its folder

log = logging.getLogger(__name__)


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes a harvest."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for p in ("riskprobe", "torch", "transformers", "datasets", "gguf", "numpy"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            pass
    return out


def dist_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment ``torchrun`` sets (``(0, 1)`` otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _check_compatible(out: Path, manifest: dict[str, Any]) -> None:
    p = out / MANIFEST
    if not p.is_file():
        if out.exists() and any(p.name != GENERATIONS for p in out.iterdir()):
            raise UserError("output directory exists and is not a riskprobe harvest; choose another --out", file=out)
        return
    old = read_manifest(out)
    diffs = []
    defaults = HarvestConfig().compat()
    if isinstance(old.get("compat"), dict):  # keys added in later versions: an old harvest had their defaults
        old["compat"] = {**{k: v for k, v in defaults.items() if k not in old["compat"]}, **old["compat"]}
    if isinstance(old.get("model"), dict):
        diffs += identity_diff(old["model"], manifest["model"])
    else:
        diffs.append("model: missing")
    for key in ("compat", "feature_schema", "n_items", "items_fingerprint"):
        a, b = old.get(key), manifest.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                diffs += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            else:
                diffs.append(f"{key}: {short(a, 30)} -> {short(b, 30)}")
    if "items_fingerprint" in " ".join(diffs) or "n_items" in " ".join(diffs):
        raise UserError("refusing to resume: the prompt items changed since this harvest started ("
                        + "; ".join(diffs[:4]) + "); resuming would mix rows of different items. Use a new --out",
                        file=out)
    if diffs:
        raise UserError("refusing to mix rows from a different configuration into this harvest ("
                        + "; ".join(diffs[:4]) + "); use a new --out", file=out)


# -------------------------------------------------------------------------------------------- the phases
def harvest(cfg: HarvestConfig, *, lm=None, progress: bool = True, merge: bool = True) -> Path:
    """Run a harvest in two phases and return its directory (see the module doc).

    Phase one generates and grades the answers into the corpus ``OUT/generations`` (:func:`generate`); phase
    two extracts their signatures by teacher forcing into ``OUT`` (:func:`~riskprobe.harvest.extract.extract_corpus`).
    Both resume where they stopped.

    Args:
        cfg: the configuration.
        lm: an already loaded model (a :class:`~riskprobe.models.LoadedModel`); loaded from ``cfg.model``
            when omitted.
        progress: show progress bars.
        merge: merge the shards into the dataset at the end (rank 0, once all shards are there).
    """
    from ..models import load_model
    from ..signatures import FeatureSpec
    from .extract import (
        clear_stale_shards,
        corpus_config,
        extract_corpus,
        harvest_manifest,
        open_harvest,
        write_harvest_shard,
    )
    from .generations import check_corpus_out, corpus_manifest, generate_corpus, read_corpus_manifest
    from .store import _features, hf_features

    cfg.validate()  # the feature spec included
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    rank, world = dist_rank()
    set_threads(cfg.threads)
    items = _items(cfg)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    spec = FeatureSpec.from_dict(cfg.features).resolve(lm)
    rendered, truncated, lengths = render_items(lm, items, cfg)
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, lm, seq_len=max(lengths, default=0) + cfg.max_new_tokens,
                                                     steps=spec.steps))
    gen_dir = out / GENERATIONS
    gen_cfg = replace(cfg, out=str(gen_dir))
    samples = cfg.answers_per_question
    cm = corpus_manifest(gen_cfg, lm, items, versions=package_versions(), truncated=truncated)
    ecfg = corpus_config(cm, batch_size=cfg.batch_size, shard_size=cfg.shard_size * samples, out=str(out),
                         features=dict(cfg.features))
    created = not out.exists()
    if rank == 0:  # both folders are checked before either is written to
        check_corpus_out(gen_dir, cm)
    open_harvest(out, harvest_manifest(cm, lm, spec, ecfg), rank)  # refuses other settings before any work
    features = _features(hf_features(spec))
    clear_stale_shards(out / "shards", [s for s in range(cm["n_shards"]) if s % world == rank])

    def on_shard(s, rows, sigs):  # the first extraction, captured while generating
        write_harvest_shard(out / "shards" / f"shard-{s:05d}", items, rendered, rows, sigs, samples, features)

    try:
        generate_corpus(gen_cfg, lm, items, rendered, lengths, gen_dir, progress=progress, rank=rank, world=world,
                        versions=cm["versions"], truncated=truncated, capture=spec, on_shard=on_shard)
        t0 = time.perf_counter()
        # shards whose answers were generated earlier (a corpus made by `riskprobe generate`) are extracted by
        # teacher forcing; then the merge
        extract_corpus(gen_dir, out, features=cfg.features, lm=lm, batch_size=cfg.batch_size,
                       shard_size=cfg.shard_size * samples, progress=progress, merge=merge)
    except BaseException as e:
        if rank == 0:
            _abandon(out, created, e)
        raise
    if merge and rank == 0:
        m, g = read_manifest(out), read_corpus_manifest(gen_dir)
        gt = g.get("timing") or {"tokens": 0, "seconds": 0.0}
        ext_s = round(time.perf_counter() - t0, 3)
        m.update(timing={"tokens": gt["tokens"], "seconds": round(gt["seconds"] + ext_s, 3),
                         "generate_seconds": gt["seconds"], "extract_seconds": ext_s})
        atomic_write_json(out / MANIFEST, m)
    return out


def _items(cfg: HarvestConfig):
    from ..prompts import sets as P

    if cfg.datasets_root:
        os.environ["RISKPROBE_DATASETS"] = cfg.datasets_root
    items = P.load_items(cfg.prompts, limit=cfg.limit, seed=cfg.seed)
    if not items:
        raise UserError(f"prompt set '{cfg.prompts}' has no items", field="prompts")
    return items


def generate(cfg: HarvestConfig, *, lm=None, progress: bool = True, reuse: str | Path | None = None) -> Path:
    """Phase one alone: generate and grade answers into the corpus folder ``cfg.out`` (resumable; see
    :mod:`riskprobe.harvest.generations`). ``cfg.features`` is not used. ``reuse``: an earlier corpus of the
    same model and settings whose answers are taken over instead of generated again."""
    from ..models import load_model
    from .generations import generate_corpus

    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    items = _items(cfg)
    rank, world = dist_rank()
    set_threads(cfg.threads)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    rendered, truncated, lengths = render_items(lm, items, cfg)
    cfg = replace(cfg, batch_size=resolve_batch_size(cfg.batch_size, lm, seq_len=max(lengths, default=0) + cfg.max_new_tokens,
                                                     steps=1))
    return generate_corpus(cfg, lm, items, rendered, lengths, out, progress=progress, rank=rank, world=world,
                           versions=package_versions(), truncated=truncated, reuse=reuse)


def render_items(lm, items, cfg: HarvestConfig):
    """Rendered prompts for every item, checked against the model's context before anything is written.

    A prompt that leaves no room for ``max_new_tokens`` is refused, naming its file and line (or set and
    id); with ``truncate_prompts`` its question is cut from the end instead and its id is returned in the
    second list. The third list holds each prompt's length in tokens (for batching by length).
    """
    from ..models import context_length, render

    ctx = context_length(lm)
    rps = [render(lm.tokenizer, it.prompt, it.answer_kind, cfg.prompt_style) for it in items]
    lengths = [len(x) for x in lm.tokenizer([r.text for r in rps], add_special_tokens=True)["input_ids"]]
    if ctx is None:
        return rps, [], lengths
    budget = ctx - cfg.max_new_tokens
    if budget < 8:
        raise UserError(f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in this model's context of "
                        f"{ctx} tokens", field="max_new_tokens")
    truncated = []
    for i, (it, n) in enumerate(zip(items, lengths)):
        if n <= budget:
            continue
        where = dict(file=it.meta.get("file"), line=it.meta.get("line")) if it.meta.get("file") else {}
        if not cfg.truncate_prompts:
            raise UserError(f"prompt of item {it.id!r} ({it.set}) is {n} tokens; with max_new_tokens "
                            f"{cfg.max_new_tokens} the model's context ({ctx}) allows {budget}. Shorten it, or set "
                            "truncate_prompts: true", field="question", **where)
        q_ids = lm.tokenizer(it.prompt, add_special_tokens=False)["input_ids"]
        keep = max(1, len(q_ids) - (n - budget))
        q = lm.tokenizer.decode(q_ids[:keep], skip_special_tokens=True)
        rps[i] = render(lm.tokenizer, q, it.answer_kind, cfg.prompt_style)
        lengths[i] = budget
        truncated.append(it.id)
    return rps, truncated, lengths


def _abandon(out: Path, created: bool, err: BaseException) -> None:
    """After a failed harvest: remove what this run created if it finished nothing, else mark it failed
    (finished shards are kept for a resume). A user's folder is never removed."""
    shards = out / "shards"
    finished = list(shards.glob("shard-*/state.json")) if shards.is_dir() else []
    if created and not finished and not isinstance(err, KeyboardInterrupt):
        if owned_dir(lambda n: n in (MANIFEST, "shards", GENERATIONS), folders=True)(out):
            shutil.rmtree(out, ignore_errors=True)
            return
    if (out / MANIFEST).is_file():
        try:
            m = json.loads((out / MANIFEST).read_text())
            if m.get("status") != "complete":
                m.update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                         error=f"{type(err).__name__}: {str(err)[:300]}")
                atomic_write_json(out / MANIFEST, m)
        except (OSError, ValueError):
            pass


def _wait_until(done, what: str, timeout: float = 24 * 3600) -> None:
    """Poll ``done()`` (another rank's work) every half second until it is true."""
    t0 = time.time()
    while not done():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.5)


def _wait_for(*paths: Path, timeout: float = 24 * 3600) -> None:
    _wait_until(lambda: all(p.exists() for p in paths), str(paths[0]), timeout)
