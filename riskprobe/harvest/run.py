"""Harvest: generate answers to labelled prompts, grade them, and store rows in resumable shards.

Layout of a harvest directory ``OUT``::

    OUT/riskprobe.json          manifest: model identity, prompts, config, feature schema, versions, counts
    OUT/shards/shard-00000/     one finished shard (a `datasets` dataset), renamed into place when complete
    OUT/state.json, data-*.arrow, dataset_info.json
                                the merged dataset, so that ``datasets.load_from_disk(OUT)`` works

Shards are fixed slices of the item list, so a rerun with the same configuration skips finished shards
and redoes only the unfinished one, and rank ``r`` of ``W`` (``torchrun``) takes shards ``i % W == r``:
one process or many, killed or not, the merged dataset is the same.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import UserError, short
from ..fsutil import atomic_write_json, owned_dir, stable_hash
from ..models.loader import identity_diff, set_threads
from .config import HarvestConfig
from .store import (
    HARVEST_VERSION,
    MANIFEST,
    _features,
    _write_shard,
    hf_features,
    merge_shards,
    read_manifest,
)

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


# ------------------------------------------------------------------------------------------------ rows
def grade_rows(items, gens, rendered, split_fn) -> list[dict[str, Any]]:
    """Rows for a batch: the item, its answer, and its grade."""
    from ..prompts.grading import grade

    rows = []
    for it, g, rp in zip(items, gens, rendered):
        gr = grade(g.text, list(it.answers), it.answer_kind, it.prompt)
        rows.append({
            "id": it.id, "set": it.set, "category": it.category, "prompt": it.prompt, "input_text": rp.text,
            "answers": list(it.answers), "answer_kind": it.answer_kind, "response": g.text,
            "correct": gr.correct, "label": int(not gr.correct), "echo_discounted": gr.echo_discounted,
            "n_tokens": g.n_tokens, "finish": g.finish, "split": split_fn(it.id),
        })
    return rows


def _check_compatible(out: Path, manifest: dict[str, Any]) -> None:
    p = out / MANIFEST
    if not p.is_file():
        if out.exists() and any(out.iterdir()):
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
                        + "; ".join(diffs[:4]) + "); use a new --out or delete the directory", file=out)


# -------------------------------------------------------------------------------------------- the loop
def harvest(cfg: HarvestConfig, *, lm=None, progress: bool = True, merge: bool = True) -> Path:
    """Run a harvest and return its directory (see the module doc).

    Args:
        cfg: the configuration.
        lm: an already loaded model (a :class:`~riskprobe.models.LoadedModel`); loaded from ``cfg.model``
            when omitted.
        progress: show a progress bar with tokens/s.
        merge: merge the shards into the dataset at the end (rank 0, once all shards are there).
    """
    from ..models import load_model
    from ..prompts import sets as P
    from ..signatures import FeatureSpec

    cfg.validate()
    if cfg.datasets_root:
        os.environ["RISKPROBE_DATASETS"] = cfg.datasets_root
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    items = P.load_items(cfg.prompts, limit=cfg.limit, seed=cfg.seed)
    if not items:
        raise UserError(f"prompt set '{cfg.prompts}' has no items", field="prompts")
    spec = FeatureSpec.from_dict(cfg.features)
    rank, world = dist_rank()
    set_threads(cfg.threads)
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    spec = spec.resolve(lm)
    rendered, truncated, lengths = render_items(lm, items, cfg)
    manifest = {
        "kind": "harvest", "version": HARVEST_VERSION, "model": lm.identity.to_dict(),
        "prompts": cfg.prompts, "n_items": len(items), "compat": cfg.compat(), "config": asdict(cfg),
        "feature_schema": spec.schema(), "versions": package_versions(),
        "items_fingerprint": stable_hash("\n".join(it.id for it in items)), "truncated_prompts": truncated,
    }
    created = not out.exists()
    if rank == 0:
        _check_compatible(out, manifest)
        if not (out / MANIFEST).is_file():
            atomic_write_json(out / MANIFEST, dict(manifest, status="running"))
    else:
        _wait_for(out / MANIFEST)
        _check_compatible(out, manifest)
    try:
        _harvest_shards(cfg, lm, spec, items, rendered, lengths, out, rank, world, progress, merge)
    except BaseException as e:
        if rank == 0:
            _abandon(out, created, e)
        raise
    return out


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
        if owned_dir(lambda n: n in (MANIFEST, "shards"), folders=True)(out):
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


def _harvest_shards(cfg, lm, spec, items, rendered, lengths, out: Path, rank: int, world: int, progress: bool,
                    merge: bool) -> None:
    from tqdm.auto import tqdm

    from ..models.generation import generate
    from ..prompts import sets as P
    from ..signatures import Capture

    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(items) + cfg.shard_size - 1) // cfg.shard_size
    mine = [s for s in range(n_shards) if s % world == rank]
    todo = [s for s in mine if not (shard_dir / f"shard-{s:05d}" / "state.json").is_file()]
    for s in todo:  # leftovers of a killed run: temporary folders of shards that never finished
        for stale in shard_dir.glob(f".shard-{s:05d}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    features = _features(hf_features(spec))
    n_todo = sum(len(items[s * cfg.shard_size:(s + 1) * cfg.shard_size]) for s in todo)
    bar = tqdm(total=n_todo, desc=f"harvest {lm.identity.name}" + (f" [rank {rank}/{world}]" if world > 1 else ""),
               unit="q", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    n_tok, t0 = 0, time.perf_counter()
    for s in todo:
        idx0 = s * cfg.shard_size
        n = len(items[idx0: idx0 + cfg.shard_size])
        # batches of similar prompt length (less padding); rows go back to item order before writing
        order = sorted(range(idx0, idx0 + n), key=lambda i: lengths[i])
        rows: list[dict[str, Any]] = []
        for b in range(0, n, cfg.batch_size):
            idx = order[b: b + cfg.batch_size]
            batch, rps = [items[i] for i in idx], [rendered[i] for i in idx]
            cap = Capture(lm, spec)
            with cap:
                gens = generate(lm, rps, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                temperature=cfg.temperature, top_p=cfg.top_p,
                                seed=None if not cfg.do_sample else cfg.seed + idx0 + b)
            sig = cap.finish([g.token_ids for g in gens])
            batch_rows = grade_rows(batch, gens, rps, P.split_of)
            for j, r in enumerate(batch_rows):
                r["index"] = idx[j]
                for name, arr in sig.items():
                    r[name] = arr[j]
            rows.extend(batch_rows)
            n_tok += sum(g.n_tokens for g in gens)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tok / max(time.perf_counter() - t0, 1e-9):.1f}")
        rows.sort(key=lambda r: r["index"])
        _write_shard(shard_dir / f"shard-{s:05d}", rows, features)
    bar.close()
    elapsed = time.perf_counter() - t0
    stats = {"tokens": n_tok, "seconds": round(elapsed, 3), "tokens_per_s": round(n_tok / elapsed, 2) if elapsed else None}
    atomic_write_json(shard_dir / f"timing-rank{rank}.json", stats)
    if merge and rank == 0:
        if world > 1:
            _wait_for(*[shard_dir / f"shard-{s:05d}" / "state.json" for s in range(n_shards)])
        merge_shards(out, n_shards)


def _wait_for(*paths: Path, timeout: float = 24 * 3600) -> None:
    t0 = time.time()
    while not all(p.exists() for p in paths):
        if time.time() - t0 > timeout:
            raise TimeoutError(f"gave up waiting for {paths[0]}")
        time.sleep(0.5)
