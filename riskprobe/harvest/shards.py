"""The tools every shard loop of a harvest shares (the corpus generation, the extraction, the given-answer harvest):
who this process is among ``torchrun``'s ranks, the package versions a manifest records, the check that an existing
folder may be resumed with this manifest, waiting for other ranks' files, and cleaning up after a failed run; and the
rendering of prompt items, checked against the model's context before anything is written.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError, short
from ..fsutil import atomic_write_json, owned_dir
from ..models import context_length, render
from ..models.loader import identity_diff
from ..progress import bar as progress_bar
from .config import HarvestConfig
from .store import MANIFEST, read_manifest

GENERATIONS = "generations"  # the corpus of a harvest, inside its folder


def shard_loop(n_shards: int, *, done: Callable[[int], bool], size: Callable[[int], int],
               work: Callable[[int, Any], int], label: str, rank: int = 0, world: int = 1,
               stale: Callable[[int], list[Path]] | None = None, unit: str = "answer",
               progress: bool = True) -> tuple[int, float]:
    """The loop of every harvest stage (corpus generation, extraction, the given-answer harvest): this rank's shards
    (``s % world == rank``) that are not ``done(s)``; first the leftovers of a killed run of each (``stale(s)``: its
    temporary files or folders, never renamed into place, so never finished) are removed; then one progress bar over
    their rows (``size(s)`` each, so the total is known) while ``work(s, bar)`` computes and writes each shard and
    returns the tokens it processed. Returns ``(tokens, seconds)``."""
    todo = [s for s in range(n_shards) if s % world == rank and not done(s)]
    for s in todo:
        for p in stale(s) if stale is not None else ():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    bar = progress_bar(sum(size(s) for s in todo), label, unit, enabled=progress)
    tokens, t0 = 0, time.perf_counter()
    for s in todo:
        tokens += work(s, bar)
    bar.close()
    return tokens, time.perf_counter() - t0


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes a harvest."""
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


def check_compatible(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to resume ``out`` with ``manifest`` when it holds something else: a folder that is not a harvest, or a
    harvest of other prompt items, another model or other settings (the differences named)."""
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


def render_items(lm, items, cfg: HarvestConfig):
    """Rendered prompts for every item, checked against the model's context before anything is written.

    A prompt that leaves no room for ``max_new_tokens`` is refused, naming its file and line (or set and
    id); with ``truncate_prompts`` its question is cut from the end instead and its id is returned in the
    second list. The third list holds each prompt's length in tokens (for batching by length).
    """
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


def abandon(out: Path, created: bool, err: BaseException) -> None:
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


def wait_until(done, what: str, timeout: float = 24 * 3600) -> None:
    """Poll ``done()`` (another rank's work) every half second until it is true."""
    t0 = time.time()
    while not done():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.5)


def wait_for(*paths: Path, timeout: float = 24 * 3600) -> None:
    """Wait until every path exists (another rank writes them)."""
    wait_until(lambda: all(p.exists() for p in paths), str(paths[0]), timeout)


def start_manifest(path: Path, manifest: dict[str, Any], rank: int, check: Callable[[], None]) -> None:
    """Start a folder's manifest file ``path``: on rank 0, ``check()`` first (it refuses other settings), then the
    manifest is written with status ``running`` unless it is there already; other ranks wait until it is."""
    if rank == 0:
        check()
        if not path.is_file():
            atomic_write_json(path, dict(manifest, status="running"))
    else:
        wait_for(path)
