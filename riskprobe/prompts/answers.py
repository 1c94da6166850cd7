"""Given answers as data: the (question, answer, label) row that riskprobe forces through a model instead of
generating, who wrote it, and the readers of every given-answer source (HaluEval QA, TruthfulQA, the answers of real
QA systems judged by people in EfficientQA, a set's gold answers, a user's JSONL file).

Two fields say where an answer came from:

* ``provenance``: ``own`` (the model's own answer), ``other`` (written by someone else: HaluEval's right and
  hallucinated answers, TruthfulQA's true and false answers, another model's answers, a QA system's) or
  ``reference`` (a set's gold answer).
* ``source``: which list it came from (``halueval_qa:right``, ``truthfulqa:incorrect``, ``gold``,
  ``corpus:gemma3-270m``, ``efficientqa:systems``...); :func:`writer_of` turns it into who wrote it.

The teacher-forced harvest of such rows is :mod:`riskprobe.harvest.forced`; their evaluation is
:mod:`riskprobe.evaluation.given`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError
from ..fsutil import hash_order, read_text
from ..resources import datasets_root
from .sets import _public_file, question_id, split_of

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


def pick(items, limit: int | None, seed: int = 0):
    if limit is None or limit >= len(items):
        return list(items)
    return hash_order(items, lambda it: it.id, seed)[:limit]


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


def efficientqa_answers(limit: int | None = None, seed: int = 0) -> list[GivenAnswer]:
    """Answers that real QA systems gave to NQ questions, judged by people (the EfficientQA test file's rated
    predictions: ``def_correct_predictions`` right, ``def_incorrect_predictions`` wrong), provenance ``other``, source
    ``efficientqa:systems``. Questions are NQ-open's (the same ids as the ``nq_open`` sets)."""
    p = _public_file("efficientqa", "nq_open/NQ-open.efficientqa.test.1.1.jsonl")
    out: list[GivenAnswer] = []
    qs = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                qs.append(json.loads(line))
    if limit is not None and limit < len(qs):
        qs = hash_order(qs, lambda o: o["question"], seed)[:limit]
    for o in qs:
        q = o["question"].strip()
        prompt = q[0].upper() + q[1:] + ("" if q.endswith("?") else "?")
        qid = question_id("nq_open", o["question"])
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


def given_answer_pairs(name: str, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, int, str]]:
    """``(question, answer, label, group)`` rows of a given-answers set (label 1 = the answer is wrong).

    ``halueval``: each question's right and hallucinated answer (HaluEval QA). ``truthfulqa_mc``: each
    question's true and false statements (TruthfulQA mc2 targets).
    """
    root = datasets_root()
    rows: list[tuple[str, str, int, str]] = []
    if name == "halueval":
        p = root / "halueval" / "qa_data.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"HaluEval not found at {p}; set RISKPROBE_DATASETS", field="set")
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    rows += [(o["question"], o["right_answer"], 0, o["question"]),
                             (o["question"], o["hallucinated_answer"], 1, o["question"])]
    elif name == "truthfulqa_mc":
        p = root / "truthfulqa" / "mc_task.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"TruthfulQA mc_task.json not found at {p}; set RISKPROBE_DATASETS", field="set")
        for o in json.loads(p.read_text(encoding="utf-8")):
            targets = o.get("mc2_targets") or o["mc1_targets"]
            rows += [(o["question"], ans, 1 - int(v), o["question"]) for ans, v in targets.items() if ans.strip()]
    else:
        raise UserError(f"unknown given-answers set '{name}' (halueval, truthfulqa_mc)", field="set")
    if limit is not None:  # subsample whole questions, deterministically
        groups = hash_order({g for *_, g in rows}, str, seed)
        keep = set(groups[:limit])
        rows = [r for r in rows if r[3] in keep]
    return rows


SETS = ("halueval", "truthfulqa_mc")


def given_rows(name: str, limit: int | None = 200, *, split: str | None = None) -> list[GivenAnswer]:
    """Rows of a given-answer set (``halueval``, ``truthfulqa_mc``) or of a JSONL file with ``question``
    (or ``prompt``), ``answer`` (or ``response``) and ``label`` (1 = wrong; or ``correct``: true/false), and
    optionally ``id``, ``provenance``, ``source``. ``split`` keeps only the questions of that split."""
    if name in SETS:
        set_name = "halueval_qa" if name == "halueval" else "truthfulqa"
        src = {"halueval": ("halueval_qa:right", "halueval_qa:incorrect"),
               "truthfulqa_mc": ("truthfulqa_mc2:true", "truthfulqa_mc2:false")}[name]
        rows = [GivenAnswer(question_id(set_name, q), set_name, "factual", q.strip(), a.strip(), int(y), "other", src[int(y)])
                for q, a, y, _ in given_answer_pairs(name, None) if a.strip()]
    else:
        rows = _jsonl_rows(Path(name))
    if split is not None:
        rows = [r for r in rows if split_of(r.id) == split]
    if limit is not None:  # whole questions, chosen by a hash of their id
        ids = hash_order({r.id for r in rows}, str)[:limit]
        keep = set(ids)
        rows = [r for r in rows if r.id in keep]
    if not rows:
        raise UserError("no rows to evaluate", file=name if name not in SETS else None, field="set")
    return rows


def _jsonl_rows(path: Path) -> list[GivenAnswer]:
    if not path.is_file():
        raise UserError("file not found", file=path, field="input")
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except (ValueError, RecursionError):
            raise UserError("malformed JSON", file=path, line=n) from None
        if not isinstance(o, dict):
            raise UserError("expected a JSON object", file=path, line=n)
        q, a = o.get("question", o.get("prompt")), o.get("answer", o.get("response"))
        for field, v in (("question", q), ("answer", a)):
            if not isinstance(v, str) or not v.strip():
                raise UserError("missing or empty", file=path, line=n, field=field)
        if "label" in o:
            y = o["label"]
            if y not in (0, 1) or isinstance(y, float):
                raise UserError(f"must be 0 (right) or 1 (wrong), got {y!r}", file=path, line=n, field="label")
        elif isinstance(o.get("correct"), bool):
            y = int(not o["correct"])
        else:
            raise UserError("each row needs label (1 = wrong) or correct (true/false)", file=path, line=n,
                            field="label")
        prov = o.get("provenance", "other")
        if prov not in ("own", "other", "reference"):
            raise UserError(f"must be own, other or reference, got {prov!r}", file=path, line=n, field="provenance")
        qid = str(o["id"]) if "id" in o else question_id(path.stem, q)
        rows.append(GivenAnswer(qid, path.stem, str(o.get("category", "factual")), q.strip(), a.strip(), int(y), prov,
                                str(o.get("source", path.stem))))
    return rows


def count_by(answers: Iterable[GivenAnswer], key: str) -> dict[str, dict[str, int]]:
    """Rows and wrong rows by the value of ``key`` (``source``, ``provenance``)."""
    acc: dict[str, dict[str, int]] = {}
    for a in answers:
        d = acc.setdefault(getattr(a, key), {"n": 0, "wrong": 0})
        d["n"] += 1
        d["wrong"] += a.label
    return dict(sorted(acc.items()))


def describe(answers: Sequence[GivenAnswer]) -> dict[str, Any]:
    """Counts by source and provenance (what a card or a note prints)."""
    return {"rows": len(answers), "questions": len({a.id for a in answers}),
            "by_source": count_by(answers, "source"), "by_provenance": count_by(answers, "provenance")}
