"""The given-answer harvest: teacher-forced signatures of answers the model did not generate (rows of
:class:`riskprobe.prompts.answers.GivenAnswer`), written as a harvest.

A *given harvest* is a harvest (the layout and manifest of :mod:`riskprobe.harvest.store`, read by every later
stage through :func:`~riskprobe.harvest.store.load_harvests`) whose answers were not generated here: each row's
answer is forced through the model after its rendered prompt (the path :class:`~riskprobe.serving.scorer.Scorer`
takes for a row with a response), and two columns say where the answer came from (``provenance``, ``source``: see
:mod:`riskprobe.prompts.answers`).

Rows of one question share its split (:func:`riskprobe.prompts.sets.split_of` of the question id), whatever
their provenance, so no question's answers are both trained on and tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import datasets as hd

from ..errors import UserError
from ..fsutil import atomic_write_json, hash_order, stable_hash
from ..models import render
from ..models.generation import batch_order, forced_ids
from ..prompts.answers import GivenAnswer, count_by, efficientqa_answers, from_items, given_answer_pairs, gold_answers, pick
from ..prompts.sets import load_items, question_id, split_of
from ..signatures import FeatureSpec
from ..signatures.extract import Extractor
from .extract import corpus_items, open_harvest
from .generations import read_corpus, read_corpus_manifest
from .shards import package_versions, shard_loop
from .store import (
    dataset_features,
    harvest_row,
    hf_features,
    merge_shards,
    new_manifest,
    read_manifest,
    shard_finished,
    shard_folder,
    stale_shards,
    write_rows,
)


def corpus_answers(corpus: str | Path, *, ids: set[str] | None = None, limit: int | None = None,
                   provenance: str = "other", seed: int = 0) -> list[GivenAnswer]:
    """Answers of a corpus (:mod:`riskprobe.harvest.generations`) with their grades: another model's answers
    (``other``), or the model's own (``own``) when forced through the model that wrote them."""
    m, rows = read_corpus(corpus)
    items = corpus_items(m, Path(corpus))
    rows = [r for r in rows if ids is None or r["id"] in ids]
    rows = [r for r in rows if r["text"].strip()]
    if limit is not None and limit < len(rows):
        rows = hash_order(rows, lambda r: f"{r['id']}:{r['sample']}", seed)[:limit]
    src = f"corpus:{m['model']['name']}"
    return [GivenAnswer(r["id"], r["set"], r["category"], items[r["i"]].prompt, r["text"].strip(),
                        int(not r["correct"]), provenance, src, items[r["i"]].answer_kind,
                        tuple(items[r["i"]].answers)) for r in rows]


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
    for name, v in (("halueval", halueval), ("per_question", per_question), ("gold", gold),
                    ("other_rows", other_rows), ("own", own), ("efficientqa", efficientqa)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"must be 0 or more, got {v!r}", field=name.replace("_", "-"))
    rows: list[GivenAnswer] = []
    if halueval:
        rows += from_items(pick(load_items("halueval_qa"), halueval))
    if truthfulqa:
        tq = load_items("truthfulqa")
        rows += from_items([it for it in tq if split_of(it.id) != "test"], max_per_question=per_question)
        by_id = {it.id: it for it in tq}
        for q, a, label, _ in given_answer_pairs("truthfulqa_mc"):
            qid = question_id("truthfulqa", q)
            if qid in by_id and split_of(qid) == "test" and a.strip():
                it = by_id[qid]
                rows.append(GivenAnswer(qid, "truthfulqa", "factual", it.prompt, a.strip(), label, "other",
                                        f"truthfulqa_mc2:{'false' if label else 'true'}", it.answer_kind,
                                        tuple(it.answers)))
    ids = None
    if corpus is not None:
        items = corpus_items(read_corpus_manifest(corpus), Path(corpus))
        ids = {it.id for it in items}
        if gold:
            rows += gold_answers(pick(items, gold, seed=1))
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
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; choose another --out", file=out, field="out")
    answers = [a for a in answers if a.answer.strip()]
    if not answers:
        raise UserError("no given answers to extract", field="answers")
    spec = FeatureSpec.from_dict(dict(features or {})).resolve(lm)
    fp = stable_hash("\n".join(f"{a.id}\t{a.source}\t{a.label}\t{a.answer}" for a in answers))
    manifest = new_manifest(model=lm.identity.to_dict(), feature_schema=spec.schema(), prompts=description,
                            n_items=len({a.id for a in answers}), items_fingerprint=fp, versions=package_versions(),
                            given={"n_rows": len(answers), "prompt_style": prompt_style,
                                   "by_source": count_by(answers, "source"),
                                   "by_provenance": count_by(answers, "provenance")})
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
    feats = dataset_features({**hf_features(spec), "provenance": hd.Value("string"), "source": hd.Value("string")})
    ex = Extractor(lm, spec)
    sample = _sample_index(answers)

    def work(s: int, bar) -> int:  # one shard: the answers forced through the model, written as harvest rows
        part = list(range(s * shard_size, min((s + 1) * shard_size, len(answers))))
        part = [part[p] for p in batch_order(
            [answers[j].answer_kind for j in part],
            [len(rendered[(answers[j].question, answers[j].answer_kind)].text) + 4 * min(len(tokens[j]), spec.steps)
             for j in part])]
        rows, n_tok = [], 0
        for b in range(0, len(part), batch_size):
            idx = part[b:b + batch_size]
            sig = ex.extract([rendered[(answers[j].question, answers[j].answer_kind)] for j in idx],
                             [tokens[j] for j in idx])
            for n, j in enumerate(idx):
                a = answers[j]
                row = harvest_row(index=j, id=a.id, set=a.set, category=a.category, prompt=a.question,
                                  input_text=rendered[(a.question, a.answer_kind)].text, answers=list(a.answers),
                                  answer_kind=a.answer_kind, response=a.answer, label=a.label, n_tokens=len(tokens[j]),
                                  finish="given", sample=sample[j], provenance=a.provenance, source=a.source)
                row.update({k: v[n] for k, v in sig.items()})
                rows.append(row)
            n_tok += sum(min(len(tokens[j]), spec.steps) for j in idx)
            bar.update(len(idx))
        rows.sort(key=lambda r: r["index"])
        write_rows(shard_folder(shard_dir, s), rows, feats)
        return n_tok

    n_tok, elapsed = shard_loop(
        n_shards, done=lambda s: shard_finished(shard_dir, s), work=work, stale=lambda s: stale_shards(shard_dir, s),
        size=lambda s: min(shard_size, len(answers) - s * shard_size), label=f"given answers {lm.identity.name}",
        progress=progress)
    atomic_write_json(shard_dir / "timing-rank0.json", {"tokens": n_tok, "seconds": round(elapsed, 3), "phase": "given"})
    merge_shards(out, n_shards)
    return out



def _sample_index(answers: Sequence[GivenAnswer]) -> list[int]:
    """Each row's index among the rows of its question (so (id, sample) names a row)."""
    seen: dict[str, int] = {}
    out = []
    for a in answers:
        out.append(seen.get(a.id, 0))
        seen[a.id] = out[-1] + 1
    return out


__all__ = ["build_given_harvest", "corpus_answers", "standard_answers"]
