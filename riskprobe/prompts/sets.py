"""Labelled prompt sets: a small registry of named sets, a built-in set, public sets, user JSONL.

Every set yields :class:`Item` s. Ids are derived from content (or the upstream id), never from file
order, and :func:`split_of` assigns a split from a hash of the id, so a question is in one split only
however the files are ordered or subsampled.

Public sets are read from a local root: ``RISKPROBE_DATASETS``, else ``../shared/datasets`` beside the
repository. Where a set is missing locally and ``RISKPROBE_HUB=1`` is set, its Hugging Face hub copy is
used instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import datasets

from ..errors import UserError
from ..fsutil import hash_order, iter_jsonl, stable_hash
from ..resources import builtin_dir, datasets_root

CATEGORIES = ("factual", "reasoning")


MAX_QUESTION_CHARS = 100_000


ANSWER_KINDS = ("alias", "number", "yesno")






@dataclass(frozen=True)
class Item:
    """One labelled question.

    Attributes:
        id: stable id, unique within its set (content hash or upstream id).
        set: the set it came from.
        category: ``factual`` or ``reasoning``.
        prompt: the question text (before any chat template or few-shot framing).
        answers: gold answers; any of them counts.
        answer_kind: how to grade (``alias``, ``number``, ``yesno``).
        incorrect: known wrong answers, where the set has them (TruthfulQA).
        meta: anything else worth keeping (topic, difficulty...).
    """

    id: str
    set: str
    category: str
    prompt: str
    answers: tuple[str, ...]
    answer_kind: str = "alias"
    incorrect: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------------------------- splits
def split_of(item_id: str, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), salt: str = "riskprobe") -> str:
    """``train``, ``val`` or ``test`` from a hash of ``item_id`` (independent of order and of other items)."""
    u = int(hashlib.sha256(f"{salt}:{item_id}".encode()).hexdigest()[:12], 16) / float(1 << 48)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


# -------------------------------------------------------------------------------------------- registry
Loader = Callable[[], Iterator[Item]]


REGISTRY: dict[str, tuple[Loader, str]] = {}


def register(name: str, description: str):
    """Register a prompt set loader under ``name`` (a decorator)."""

    def deco(fn: Loader) -> Loader:
        REGISTRY[name] = (fn, description)
        return fn

    return deco


def _public_file(set_name: str, rel: str, hub: tuple[str, ...] | None = None) -> Path | None:
    """The local file of a public set, or None when the hub should be used; else a UserError."""
    root = datasets_root()
    looked = []
    if root is not None:
        p = root / rel
        looked.append(str(p))
        if p.is_file():
            return p
    if hub and os.environ.get("RISKPROBE_HUB") == "1":
        return None
    raise UserError(
        f"prompt set '{set_name}' not found; looked in {', '.join(looked) or '(no local root)'}. "
        f"Set RISKPROBE_DATASETS to the folder holding '{rel}'"
        + (f", or set RISKPROBE_HUB=1 to read {hub[0]} from the hub" if hub else ""),
        field="prompts")


def _hub_rows(hub: tuple[str, ...]) -> Iterator[dict]:
    name, config, split = hub
    yield from datasets.load_dataset(name, config, split=split)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, obj, problem in iter_jsonl(path):
        if problem:
            raise UserError(problem, file=path, line=n)
        yield n, obj


def _dedupe(items: Iterable[Item]) -> Iterator[Item]:
    seen: set[str] = set()
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            yield it


def _unquote(q: str) -> str:
    """Undo CSV-style quoting left in some upstream questions: ``"Who wrote ""X""?"`` -> ``Who wrote "X"?``."""
    if len(q) > 1 and q[0] == '"' and q[-1] == '"' and q[1:-1].count('""') * 2 == q[1:-1].count('"'):
        return q[1:-1].replace('""', '"')
    return q


def question_id(set_name: str, question: str) -> str:
    """A question's id: its set and a hash of its words (case and spacing ignored), so the same question read from
    two files is one question, in one split."""
    return f"{set_name}-{stable_hash(' '.join(question.lower().split()))[:12]}"


# ------------------------------------------------------------------------------------------- built-in
@register("builtin-factual", "riskprobe's own factual questions with aliases (shipped in the package)")
def builtin_factual() -> Iterator[Item]:
    path = builtin_dir() / "factual.jsonl"
    for _, obj in _read_jsonl(path):
        yield Item(id=obj["id"], set="builtin", category="factual", prompt=obj["question"],
                   answers=tuple(obj["answers"]), answer_kind="alias",
                   meta={"topic": obj.get("topic"), "difficulty": obj.get("difficulty")})


_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam",
          "Maya", "Nikhil", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara"]


_THINGS = ["apples", "books", "marbles", "stickers", "pencils", "coins", "cards", "shells", "stamps", "cookies"]


def _arith(rng: random.Random) -> tuple[str, int, str]:
    """One templated word problem: (question, exact answer, template name)."""
    n1, n2 = rng.sample(_NAMES, 2)
    thing = rng.choice(_THINGS)
    t = rng.randrange(8)
    a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 9)
    if t == 0:
        return f"{n1} has {a} {thing} and gets {b} more. How many {thing} does {n1} have now?", a + b, "add"
    if t == 1:
        a = a + b
        return f"{n1} had {a} {thing} and gave {b} to {n2}. How many {thing} does {n1} have left?", a - b, "sub"
    if t == 2:
        return f"{n1} buys {c} bags with {b} {thing} in each bag. How many {thing} does {n1} buy?", b * c, "mul"
    if t == 3:
        return (f"{n1} shares {b * c} {thing} equally among {c} friends. How many {thing} does each friend get?",
                b, "div")
    if t == 4:
        return (f"{n1} has {a} {thing}. {n2} has {b} more than {n1}. How many {thing} do they have together?",
                2 * a + b, "two-step")
    if t == 5:
        price = rng.randint(2, min(12, 99 // c))
        return (f"A notebook costs {price} dollars. {n1} buys {c} notebooks and pays with a 100 dollar bill. "
                f"How many dollars of change does {n1} get?", 100 - price * c, "money")
    if t == 6:
        return (f"{n1} reads {b} pages a day for {c} days, then {a} pages on the last day. "
                f"How many pages does {n1} read in total?", b * c + a, "multi-step")
    hours = rng.randint(2, 9)
    return (f"A train travels {b * 10} kilometres per hour for {hours} hours. How many kilometres does it travel?",
            b * 10 * hours, "rate")


def arithmetic_items(n: int = 200, seed: int = 0) -> list[Item]:
    """``n`` arithmetic word problems with exact answers; item ``i`` depends only on ``(seed, i)``."""
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        q, ans, tmpl = _arith(rng)
        out.append(Item(id=f"arith-{seed}-{i:05d}", set="builtin", category="reasoning", prompt=q,
                        answers=(str(ans),), answer_kind="number", meta={"template": tmpl}))
    return out


@register("builtin-arithmetic", "templated arithmetic word problems with exact answers (200, seed 0)")
def builtin_arithmetic() -> Iterator[Item]:
    yield from arithmetic_items(200, 0)


@register("builtin", "the built-in set: builtin-factual followed by builtin-arithmetic (the demo default)")
def builtin() -> Iterator[Item]:
    yield from builtin_factual()
    yield from builtin_arithmetic()


# ---------------------------------------------------------------------------------------- public sets
@register("triviaqa", "TriviaQA validation subsample (3000), aliases as gold")
def triviaqa() -> Iterator[Item]:
    p = _public_file("triviaqa", "triviaqa/triviaqa_sm_sub.jsonl", ("mandarjoshi/trivia_qa", "rc.nocontext", "validation"))
    if p is None:
        rows = ({"question": r["question"], "aliases": r["answer"]["aliases"], "answer": r["answer"]["value"]}
                for r in _hub_rows(("mandarjoshi/trivia_qa", "rc.nocontext", "validation")))
    else:
        rows = (dict(o, question=_unquote(o["context"].removeprefix("Question:").removesuffix("Answer:").strip()))
                for _, o in _read_jsonl(p))
    for r in rows:
        answers = tuple(dict.fromkeys([r["answer"], *r.get("aliases", [])]))
        yield Item(id=question_id("triviaqa", r["question"]), set="triviaqa", category="factual", prompt=r["question"],
                   answers=answers)


def _nq_items(rows) -> Iterator[Item]:
    for r in rows:
        q = r["question"].strip()
        q = q[0].upper() + q[1:] + ("" if q.endswith("?") else "?")
        yield Item(id=question_id("nq_open", r["question"]), set="nq_open", category="factual", prompt=q,
                   answers=tuple(r["answer"]))


@register("nq_open", "Natural Questions open, dev (3610)")
def nq_open() -> Iterator[Item]:
    p = _public_file("nq_open", "nq_open/NQ-open.dev.jsonl", ("google-research-datasets/nq_open", None, "validation"))
    yield from _nq_items((o for _, o in _read_jsonl(p)) if p else _hub_rows(("google-research-datasets/nq_open", None,
                                                                               "validation")))


@register("nq_open_full", "Natural Questions open, every local file: dev (3610) + EfficientQA dev (1800) and test (1769)")
def nq_open_full() -> Iterator[Item]:
    yield from nq_open()
    for rel in ("nq_open/NQ-open.efficientqa.dev.1.1.jsonl", "nq_open/NQ-open.efficientqa.test.1.1.jsonl"):
        yield from _nq_items(o for _, o in _read_jsonl(_public_file("nq_open_full", rel)))


@register("halueval_qa", "HaluEval QA questions (10000, multi-hop, HotpotQA-based) as a factual set, right answer as gold")
def halueval_qa() -> Iterator[Item]:
    p = _public_file("halueval_qa", "halueval/qa_data.json")
    for _, r in _read_jsonl(p):
        yield Item(id=question_id("halueval_qa", r["question"]), set="halueval_qa", category="factual",
                   prompt=r["question"].strip(), answers=(r["right_answer"].strip(),),
                   incorrect=(r["hallucinated_answer"].strip(),))


@register("truthfulqa", "TruthfulQA (790) as generation, with correct and incorrect answer lists")
def truthfulqa() -> Iterator[Item]:
    p = _public_file("truthfulqa", "truthfulqa/TruthfulQA.csv")
    with open(p, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            split = lambda s: tuple(x.strip() for x in s.split(";") if x.strip())  # noqa: E731
            yield Item(id=question_id("truthfulqa", r["Question"]), set="truthfulqa", category="factual",
                       prompt=r["Question"], answers=split(r["Correct Answers"]),
                       incorrect=split(r["Incorrect Answers"]), meta={"category": r["Category"]})


def _gsm8k(name: str, split: str) -> Iterator[Item]:
    p = _public_file(name, f"gsm8k/{split}.jsonl", ("openai/gsm8k", "main", split))
    rows = (o for _, o in _read_jsonl(p)) if p else _hub_rows(("openai/gsm8k", "main", split))
    for r in rows:
        gold = r["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        yield Item(id=question_id("gsm8k", r["question"]), set="gsm8k", category="reasoning", prompt=r["question"],
                   answers=(gold,), answer_kind="number")


@register("gsm8k", "GSM8K test (1319), final number as gold")
def gsm8k() -> Iterator[Item]:
    yield from _gsm8k("gsm8k", "test")


@register("gsm8k_train", "GSM8K train (7473), final number as gold")
def gsm8k_train() -> Iterator[Item]:
    yield from _gsm8k("gsm8k_train", "train")


@register("svamp", "SVAMP (1000) arithmetic word problems")
def svamp() -> Iterator[Item]:
    p = _public_file("svamp", "svamp/SVAMP.json")
    for r in json.loads(p.read_text(encoding="utf-8")):
        body = r["Body"].strip()
        body = body if body.endswith(".") else body + "."
        ans = float(r["Answer"])
        yield Item(id=f"svamp-{r['ID']}", set="svamp", category="reasoning", prompt=f"{body} {r['Question'].strip()}",
                   answers=(str(int(ans)) if ans.is_integer() else str(ans),), answer_kind="number")


@register("strategyqa", "StrategyQA (train 2061 + dev 229), yes/no")
def strategyqa() -> Iterator[Item]:
    for rel in ("strategyqa/train.json", "strategyqa/dev.json"):
        p = _public_file("strategyqa", rel)
        for r in json.loads(p.read_text(encoding="utf-8")):
            yield Item(id=f"strategyqa-{r['qid']}", set="strategyqa", category="reasoning", prompt=r["question"],
                       answers=("yes" if r["answer"] else "no",), answer_kind="yesno")


# ------------------------------------------------------------------------------------------ user JSONL
def jsonl_items(path: str | Path, set_name: str | None = None) -> Iterator[Item]:
    """Items from a user's JSONL file: ``{"id", "question" or "prompt", "answers", "category"?, "answer_kind"?}``.

    Raises:
        UserError: naming the file, line and field of the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("prompt file not found", file=path)
    set_name = set_name or path.stem
    seen: set[str] = set()
    for n, o in _read_jsonl(path):
        def bad(msg: str, fld: str, n: int = n):
            return UserError(msg, file=path, line=n, field=fld)

        q = o.get("question", o.get("prompt"))
        if not isinstance(q, str) or not q.strip():
            raise bad("missing or empty (give 'question' or 'prompt')", "question")
        if len(q) > MAX_QUESTION_CHARS:
            raise bad(f"is {len(q)} characters long; at most {MAX_QUESTION_CHARS} are read", "question")
        answers = o.get("answers", o.get("answer"))
        if isinstance(answers, (str, int, float)) and not isinstance(answers, bool):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
            raise bad("needs a non-empty list of answers", "answers")
        answers = [str(a) for a in answers if str(a).strip()]
        if not answers:
            raise bad("needs a non-empty list of answers", "answers")
        cat = o.get("category", "factual")
        if cat not in CATEGORIES:
            raise bad(f"must be one of {', '.join(CATEGORIES)}, not {cat!r}", "category")
        kind = o.get("answer_kind", "number" if cat == "reasoning" else "alias")
        if kind not in ANSWER_KINDS:
            raise bad(f"must be one of {', '.join(ANSWER_KINDS)}, not {kind!r}", "answer_kind")
        iid = str(o["id"]) if o.get("id") is not None else question_id(set_name, q)
        if iid in seen:
            raise bad(f"duplicate id {iid!r}", "id")
        seen.add(iid)
        yield Item(id=iid, set=set_name, category=cat, prompt=q.strip(), answers=tuple(answers), answer_kind=kind,
                   meta={"file": str(path), "line": n})


# ---------------------------------------------------------------------------------------------- entry
def load_items(spec: str, *, limit: int | None = None, seed: int = 0) -> list[Item]:
    """Items of a prompt spec: a registered set name, a ``.jsonl`` path, ``name:N`` for a subsample of N,
    or several joined with ``+`` (``builtin+triviaqa:300``).

    With ``limit``, a deterministic subsample of ``limit`` items is taken (by hash of ``seed`` and id, so
    the same limit always gives the same items and a larger limit contains a smaller one).
    """
    items: list[Item] = []
    for part in spec.split("+"):
        part = part.strip()
        head, colon, count = part.rpartition(":")
        name, n = (head, count) if count.isdecimal() else (part, "")
        if colon and head in REGISTRY and not (count.isdecimal() and int(count) > 0):
            raise UserError(f"'{part}': the count after ':' must be a positive whole number (as in {head}:300)",
                            field="prompts")
        if name in REGISTRY:
            got = list(_dedupe(REGISTRY[name][0]()))
        elif name.endswith(".jsonl") or Path(name).is_file():
            got = list(jsonl_items(name))
        else:
            raise UserError(f"unknown prompt set '{name}'; known: {', '.join(sorted(REGISTRY))}, or a .jsonl file",
                            field="prompts")
        items.extend(_subsample(got, int(n), seed) if n else got)
    items = list(_dedupe(items))
    return _subsample(items, limit, seed) if limit is not None else items


def _subsample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """``limit`` items chosen by a hash of ``(seed, id)``, kept in their original order."""
    if limit >= len(items):
        return items
    keep = {it.id for it in hash_order(items, lambda it: it.id, seed)[:limit]}
    return [it for it in items if it.id in keep]
