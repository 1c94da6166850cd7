"""Given answers as training data: teacher-forced signatures of answers with their provenance.

A *given harvest* is a harvest (the layout and manifest of :mod:`riskprobe.harvest.store`, read by every later
stage through :func:`~riskprobe.harvest.store.load_harvests`) whose answers were not generated here: each row's
answer is forced through the model after its rendered prompt (the path :class:`~riskprobe.serving.scorer.Scorer`
takes for a row with a response), and two columns say where the answer came from:

* ``provenance``: ``own`` (the model's own answer, as in a generation harvest), ``other`` (written by someone
  else: HaluEval's right and hallucinated answers, TruthfulQA's true and false answers, another model's answers
  from its corpus) or ``reference`` (a set's gold answer).
* ``source``: which list it came from (``halueval_qa:right``, ``truthfulqa:incorrect``, ``gold``,
  ``corpus:gemma3-270m``...).

Rows of one question share its split (:func:`riskprobe.prompts.sets.split_of` of the question id), whatever
their provenance, so no question's answers are both trained on and tested.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError
from ..fsutil import stable_hash

PROVENANCES = ("own", "other", "reference")


@dataclass(frozen=True)
class GivenAnswer:
    """One (question, answer, label) row to force through a model."""

    id: str            # the question's id (decides the split)
    set: str
    category: str
    question: str
    answer: str
    label: int         # 1 = the answer is wrong
    provenance: str    # own | other | reference
    source: str
    answer_kind: str = "alias"
    answers: tuple[str, ...] = ()  # the question's gold answers, kept for the record

    def __post_init__(self):
        if self.provenance not in PROVENANCES:
            raise ValueError(f"provenance must be one of {PROVENANCES}, not {self.provenance!r}")
        if self.label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, not {self.label!r}")


def _pick(items, limit: int | None, seed: int = 0):
    if limit is None or limit >= len(items):
        return list(items)
    key = lambda it: hashlib.sha256(f"{seed}:{it.id}".encode()).hexdigest()  # noqa: E731
    return sorted(items, key=key)[:limit]


def from_items(items, *, right_source: str | None = None, wrong_source: str | None = None,
               max_per_question: int | None = None) -> list[GivenAnswer]:
    """Right answers (``item.answers``) and wrong ones (``item.incorrect``) of items that list known wrong
    answers (HaluEval QA, TruthfulQA), all of provenance ``other`` (written by the set's authors)."""
    out: list[GivenAnswer] = []
    for it in items:
        for label, answers, src in ((0, it.answers, right_source or f"{it.set}:right"),
                                    (1, it.incorrect, wrong_source or f"{it.set}:incorrect")):
            for a in list(dict.fromkeys(a.strip() for a in answers if a.strip()))[:max_per_question]:
                out.append(GivenAnswer(it.id, it.set, it.category, it.prompt, a, label, "other", src,
                                       it.answer_kind, tuple(it.answers)))
    return out


def gold_answers(items) -> list[GivenAnswer]:
    """Each item's first gold answer as a ``reference`` right answer."""
    return [GivenAnswer(it.id, it.set, it.category, it.prompt, it.answers[0].strip(), 0, "reference", "gold",
                        it.answer_kind, tuple(it.answers)) for it in items if it.answers and it.answers[0].strip()]


def corpus_answers(corpus: str | Path, *, ids: set[str] | None = None, limit: int | None = None,
                   provenance: str = "other", seed: int = 0) -> list[GivenAnswer]:
    """Answers of a corpus (:mod:`riskprobe.harvest.generations`) with their grades: another model's answers
    (``other``), or the model's own (``own``) when forced through the model that wrote them."""
    from .extract import corpus_items
    from .generations import read_corpus

    m, rows = read_corpus(corpus)
    items = corpus_items(m, Path(corpus))
    rows = [r for r in rows if ids is None or r["id"] in ids]
    rows = [r for r in rows if r["text"].strip()]
    if limit is not None and limit < len(rows):
        key = lambda r: hashlib.sha256(f"{seed}:{r['id']}:{r['sample']}".encode()).hexdigest()  # noqa: E731
        rows = sorted(rows, key=key)[:limit]
    src = f"corpus:{m['model']['name']}"
    return [GivenAnswer(r["id"], r["set"], r["category"], items[r["i"]].prompt, r["text"].strip(),
                        int(not r["correct"]), provenance, src, items[r["i"]].answer_kind,
                        tuple(items[r["i"]].answers)) for r in rows]


def efficientqa_answers(limit: int | None = None, seed: int = 0) -> list[GivenAnswer]:
    """Answers that real QA systems gave to NQ questions, judged by people (the EfficientQA test file's rated
    predictions: ``def_correct_predictions`` right, ``def_incorrect_predictions`` wrong), provenance ``other``, source
    ``efficientqa:systems``. Questions are NQ-open's (the same ids as the ``nq_open`` sets)."""
    import json

    from ..prompts.sets import _public_file, _qid

    p = _public_file("efficientqa", "nq_open/NQ-open.efficientqa.test.1.1.jsonl")
    out: list[GivenAnswer] = []
    qs = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                qs.append(json.loads(line))
    if limit is not None and limit < len(qs):
        key = lambda o: hashlib.sha256(f"{seed}:{o['question']}".encode()).hexdigest()  # noqa: E731
        qs = sorted(qs, key=key)[:limit]
    for o in qs:
        q = o["question"].strip()
        prompt = q[0].upper() + q[1:] + ("" if q.endswith("?") else "?")
        qid = _qid("nq_open", o["question"])
        for label, key in ((0, "def_correct_predictions"), (1, "def_incorrect_predictions")):
            for a in dict.fromkeys(x.strip() for x in o.get(key) or [] if x.strip()):
                out.append(GivenAnswer(qid, "nq_open", "factual", prompt, a.replace('\\"', '"'), label, "other",
                                       "efficientqa:systems", "alias", tuple(o.get("answer") or ())))
    return out


def writer_of(source: str, provenance: str = "other") -> str:
    """Who wrote a given answer, from its row's ``source`` (``corpus:gemma3-270m`` -> ``gemma3-270m``,
    ``halueval_qa:right`` -> ``halueval_qa``, ``gold`` -> ``gold``); the model's own answers are ``own``.

    >>> [writer_of(s) for s in ("corpus:gemma3-270m", "halueval_qa:incorrect", "truthfulqa_mc2:true", "gold")]
    ['gemma3-270m', 'halueval_qa', 'truthfulqa', 'gold']
    """
    if provenance == "own" or source == "own":
        return "own"
    head, _, tail = source.partition(":")
    if head == "corpus":
        return tail or head
    return "truthfulqa" if head.startswith("truthfulqa") else head


def standard_answers(*, corpus: str | Path | None = None, others: Sequence[str | Path] = (), halueval: int = 1500,
                     truthfulqa: bool = True, per_question: int = 3, gold: int = 1500, other_rows: int = 2000,
                     extra: Sequence[GivenAnswer] = (), own: int = 0, efficientqa: int = 0) -> list[GivenAnswer]:
    """The mixed given-answer rows riskprobe trains its given-answer head on.

    HaluEval QA: the right and the hallucinated answer of ``halueval`` questions. TruthfulQA: the true and
    false answers of its CSV lists (at most ``per_question`` of each) for training and validation questions,
    every mc2 statement for test questions (what the evaluation reads). With ``corpus`` (the model's own
    corpus): the gold answer of ``gold`` of its questions (reference), and ``other_rows`` graded answers of each
    corpus in ``others`` on those questions (another model's answers). ``own``: that many of the corpus's own
    answers (provenance ``own``), so that one harvest holds every writer. ``efficientqa``: the human-rated answers of
    real QA systems to that many EfficientQA test questions (:func:`efficientqa_answers`). Every row keeps its
    question's split.
    """
    from ..prompts.given import given_answer_pairs
    from ..prompts.sets import _qid, load_items, split_of

    rows: list[GivenAnswer] = []
    if halueval:
        rows += from_items(_pick(load_items("halueval_qa"), halueval))
    if truthfulqa:
        tq = load_items("truthfulqa")
        rows += from_items([it for it in tq if split_of(it.id) != "test"], max_per_question=per_question)
        by_id = {it.id: it for it in tq}
        for q, a, label, _ in given_answer_pairs("truthfulqa_mc"):
            qid = _qid("truthfulqa", q)
            if qid in by_id and split_of(qid) == "test" and a.strip():
                it = by_id[qid]
                rows.append(GivenAnswer(qid, "truthfulqa", "factual", it.prompt, a.strip(), label, "other",
                                        f"truthfulqa_mc2:{'false' if label else 'true'}", it.answer_kind,
                                        tuple(it.answers)))
    ids = None
    if corpus is not None:
        from .extract import corpus_items
        from .generations import read_corpus_manifest

        items = corpus_items(read_corpus_manifest(corpus), Path(corpus))
        ids = {it.id for it in items}
        if gold:
            rows += gold_answers(_pick(items, gold, seed=1))
    for other in others:
        rows += corpus_answers(other, ids=ids, limit=other_rows, seed=2)
    if own and corpus is not None:
        rows += corpus_answers(corpus, limit=own, provenance="own", seed=3)
    if efficientqa:
        rows += efficientqa_answers(efficientqa)
    return rows + list(extra)


def build_given_harvest(lm, answers: Sequence[GivenAnswer], out: str | Path, *, features: dict[str, Any] | None = None,
                        batch_size: int = 32, shard_size: int = 512, progress: bool = True,
                        prompt_style: str = "auto", description: str = "given answers") -> Path:
    """Force every answer through ``lm`` and write the rows as a harvest in ``out`` (resumable by shard).

    The signature of a row is exactly what :meth:`Scorer.score` computes for the same (question, answer):
    the answer's tokens (no special tokens) followed by EOS, teacher forced after the rendered prompt.
    """
    from ..models import render
    from ..models.generation import batch_order, forced_ids
    from ..progress import bar as progress_bar
    from ..prompts.sets import split_of
    from ..signatures import FeatureSpec
    from ..signatures.extract import Extractor
    from .extract import clear_stale_shards
    from .run import package_versions
    from .store import HARVEST_VERSION, _features, _write_shard, hf_features, merge_shards

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    answers = [a for a in answers if a.answer.strip()]
    if not answers:
        raise UserError("no given answers to extract", field="answers")
    spec = FeatureSpec.from_dict(dict(features or {})).resolve(lm)
    fp = stable_hash("\n".join(f"{a.id}\t{a.source}\t{a.label}\t{a.answer}" for a in answers))
    manifest = {
        "kind": "harvest", "version": HARVEST_VERSION, "model": lm.identity.to_dict(), "prompts": description,
        "n_items": len({a.id for a in answers}), "feature_schema": spec.schema(), "versions": package_versions(),
        "items_fingerprint": fp, "given": {"n_rows": len(answers), "prompt_style": prompt_style,
                                           "by_source": _count(answers, "source"),
                                           "by_provenance": _count(answers, "provenance")},
    }
    from .extract import open_harvest
    from .store import read_manifest

    out.mkdir(parents=True, exist_ok=True)
    open_harvest(out, manifest, 0)  # the one compatibility rule: same model, rows and features, or refused
    if read_manifest(out).get("status") == "complete":
        return out
    rendered = {}
    for a in answers:
        key = (a.question, a.answer_kind)
        if key not in rendered:
            rendered[key] = render(lm.tokenizer, a.question, a.answer_kind, prompt_style)
    tokens = forced_ids(lm, [a.answer for a in answers])
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(answers) + shard_size - 1) // shard_size
    todo = [s for s in range(n_shards) if not (shard_dir / f"shard-{s:05d}" / "state.json").is_file()]
    clear_stale_shards(shard_dir, todo)
    feats = _features({**hf_features(spec), "provenance": _str(), "source": _str()})
    ex = Extractor(lm, spec)
    bar = progress_bar(sum(min(shard_size, len(answers) - s * shard_size) for s in todo),
                       f"given answers {lm.identity.name}", "answer", enabled=progress)
    t0, n_tok = time.perf_counter(), 0
    sample = _sample_index(answers)
    for s in todo:
        part = list(range(s * shard_size, min((s + 1) * shard_size, len(answers))))
        part = [part[p] for p in batch_order(
            [answers[j].answer_kind for j in part],
            [len(rendered[(answers[j].question, answers[j].answer_kind)].text) + 4 * min(len(tokens[j]), spec.steps)
             for j in part])]
        rows = []
        for b in range(0, len(part), batch_size):
            idx = part[b:b + batch_size]
            sig = ex.extract([rendered[(answers[j].question, answers[j].answer_kind)] for j in idx],
                             [tokens[j] for j in idx])
            for n, j in enumerate(idx):
                a = answers[j]
                row = {"index": j, "id": a.id, "set": a.set, "category": a.category, "prompt": a.question,
                       "input_text": rendered[(a.question, a.answer_kind)].text, "answers": list(a.answers),
                       "answer_kind": a.answer_kind, "response": a.answer, "correct": a.label == 0,
                       "label": a.label, "echo_discounted": False, "n_tokens": len(tokens[j]), "finish": "given",
                       "split": split_of(a.id), "sample": sample[j], "provenance": a.provenance, "source": a.source}
                row.update({k: v[n] for k, v in sig.items()})
                rows.append(row)
            n_tok += sum(min(len(tokens[j]), spec.steps) for j in idx)
            bar.update(len(idx))
        rows.sort(key=lambda r: r["index"])
        _write_shard(shard_dir / f"shard-{s:05d}", rows, feats)
    bar.close()
    from ..fsutil import atomic_write_json

    atomic_write_json(shard_dir / "timing-rank0.json",
                      {"tokens": n_tok, "seconds": round(time.perf_counter() - t0, 3), "phase": "given"})
    merge_shards(out, n_shards)
    return out


def _str():
    import datasets as hd

    return hd.Value("string")


def _count(answers: Iterable[GivenAnswer], key: str) -> dict[str, dict[str, int]]:
    acc: dict[str, dict[str, int]] = {}
    for a in answers:
        d = acc.setdefault(getattr(a, key), {"n": 0, "wrong": 0})
        d["n"] += 1
        d["wrong"] += a.label
    return dict(sorted(acc.items()))


def _sample_index(answers: Sequence[GivenAnswer]) -> list[int]:
    """Each row's index among the rows of its question (so (id, sample) names a row)."""
    seen: dict[str, int] = {}
    out = []
    for a in answers:
        out.append(seen.get(a.id, 0))
        seen[a.id] = out[-1] + 1
    return out


def describe(answers: Sequence[GivenAnswer]) -> dict[str, Any]:
    """Counts by source and provenance (what a card or a note prints)."""
    return {"rows": len(answers), "questions": len({a.id for a in answers}),
            "by_source": _count(answers, "source"), "by_provenance": _count(answers, "provenance")}


__all__ = ["GivenAnswer", "PROVENANCES", "build_given_harvest", "corpus_answers", "describe", "from_items",
           "gold_answers", "standard_answers"]
