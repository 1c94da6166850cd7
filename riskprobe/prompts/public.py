"""More public factual sets, for measuring risk on question sources a probe never saw: BIG-bench qa_wikidata
(cloze statements), EntityQuestions (24 Wikidata relations, one *source* each), WebQuestions, FreebaseQA and
HotpotQA. Read from the same local root as the others (:func:`riskprobe.resources.datasets_root`).

Each source differs in how questions are asked and how hard they are, which is the point: a probe that learns
"which source is this" instead of "is this answer wrong" is caught by leaving one source out.

Example:
    >>> from riskprobe.prompts.public import with_country_aliases
    >>> with_country_aliases(["United States of America"])[:3]
    ('United States of America', 'United States', 'USA')
"""

from __future__ import annotations

import json
import re
from typing import Iterator

from ..resources import datasets_root
from .generated import COUNTRY_ALIASES
from .sets import Item, _public_file, _read_jsonl, question_id, register, triviaqa

# every spelling of a country that one group of COUNTRY_ALIASES holds, by its lower-case form
_GROUPS = {name.lower(): (canon, *aliases) for canon, aliases in COUNTRY_ALIASES.items() for name in (canon, *aliases)}


def with_country_aliases(answers) -> tuple[str, ...]:
    """``answers`` with the other common names of any country among them (``United States of America`` also
    matches ``United States``, ``USA``...), in order, without repeats."""
    out: list[str] = []
    for a in answers:
        for name in (a, *_GROUPS.get(a.strip().lower(), ())):
            if name not in out:
                out.append(name)
    return tuple(out)


def _question(text: str) -> str:
    """An upstream question as a sentence: first letter upper-case, ending with a question mark."""
    q = " ".join(text.split())
    q = q[:1].upper() + q[1:]
    return q if q.endswith("?") else q + "?"


_CLOZE_RELATION = re.compile(r"^The (.+?) of ")


@register("qa_wikidata", "BIG-bench qa_wikidata (20,321 cloze statements: 'The country of Novosibirsk is ...'), "
                         "one gold string (country names with their common aliases)")
def qa_wikidata() -> Iterator[Item]:
    p = _public_file("qa_wikidata", "bigbench_qa_wikidata/bigbench_qa_wikidata.jsonl")
    seen: set[str] = set()
    for _, r in _read_jsonl(p):
        ctx, gold = r["context"].strip(), r["continuation"].strip()
        iid = question_id("qa_wikidata", ctx)
        if iid in seen:  # one context occurs twice upstream with two different answers: keep the first
            continue
        seen.add(iid)
        m = _CLOZE_RELATION.match(ctx)
        yield Item(id=iid, set="qa_wikidata", category="factual", prompt=f"Complete the sentence: {ctx} ...",
                   answers=with_country_aliases([gold]), meta={"relation": m.group(1) if m else None})


@register("entityquestions", "EntityQuestions test (22,075; 24 Wikidata relations, each its own source "
                             "eq_<relation>, e.g. eq_P17)")
def entityquestions() -> Iterator[Item]:
    p = _public_file("entityquestions", "entityquestions/entityquestions_test.jsonl")
    for _, r in _read_jsonl(p):
        rel = r["relation"]
        yield Item(id=f"eq-{r['id']}", set=f"eq_{rel}", category="factual", prompt=_question(r["question"]),
                   answers=with_country_aliases([str(a) for a in r["answers"]]), meta={"relation": rel})


def _relation_loader(rel: str):
    def load() -> Iterator[Item]:
        yield from (it for it in entityquestions() if it.set == f"eq_{rel}")

    return load


def _register_relations() -> None:
    """Each EntityQuestions relation as a set of its own (``eq_P17``), so that a corpus can take more of the
    relations a model can answer (``eq_P495+eq_P17:500``)."""
    try:
        root = datasets_root()
        path = root / "entityquestions" / "relation_query_templates.json" if root is not None else None
        templates = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        templates = {}
    for rel in EQ_RELATIONS:
        register(f"eq_{rel}", f"EntityQuestions, relation {rel}: {templates.get(rel, '')}".rstrip(": "))(
            _relation_loader(rel))


# the 24 relations of the test split
EQ_RELATIONS = ("P17", "P19", "P20", "P26", "P36", "P40", "P50", "P69", "P106", "P112", "P127", "P131", "P136",
                "P159", "P170", "P175", "P176", "P264", "P276", "P407", "P413", "P495", "P740", "P800")
_register_relations()


@register("webquestions", "WebQuestions (5,810: the official test split and brmson's three cuts of train), "
                          "Freebase entities as gold (any of them counts)")
def webquestions() -> Iterator[Item]:
    for rel in ("webquestions/test.json", "webquestions/trainmodel.json", "webquestions/val.json",
                "webquestions/devtest.json"):
        p = _public_file("webquestions", rel)
        for r in json.loads(p.read_text(encoding="utf-8")):
            answers = [a for a in r["answers"] if str(a).strip()]
            if answers:
                yield Item(id=f"webquestions-{r['qId']}", set="webquestions", category="factual",
                           prompt=_question(r["qText"]), answers=with_country_aliases(answers))


def _norm_question(q: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()


@register("freebaseqa", "FreebaseQA eval v1.1 (4,000 trivia questions), less the ones TriviaQA also holds when "
                        "its local copy is there")
def freebaseqa() -> Iterator[Item]:
    p = _public_file("freebaseqa", "freebaseqa/freebaseqa_eval_v1.1.jsonl")
    try:  # FreebaseQA draws on TriviaQA: a question of both would be one source's and another's at once
        trivia = {_norm_question(it.prompt) for it in triviaqa()}
    except Exception:  # noqa: BLE001 - no local TriviaQA: nothing to leave out
        trivia = set()
    for _, r in _read_jsonl(p):
        q = r["question"].strip()
        if _norm_question(q) in trivia:
            continue
        answers = [a for a in dict.fromkeys([*r.get("answers", []), *r.get("txt_answers", [])]) if str(a).strip()]
        if answers:
            yield Item(id=question_id("freebaseqa", q), set="freebaseqa", category="factual", prompt=_question(q),
                       answers=with_country_aliases(answers))


@register("hotpotqa", "HotpotQA dev (7,405 multi-hop questions; comparison questions answered yes/no are graded "
                      "as yes/no)")
def hotpotqa() -> Iterator[Item]:
    p = _public_file("hotpotqa", "hotpotqa/hotpot_dev_v1_simplified.json")
    for r in json.loads(p.read_text(encoding="utf-8")):
        q, a = r["question"].strip(), str(r["answer"]).strip()
        if not q or not a:
            continue
        kind = "yesno" if a.lower() in ("yes", "no") else "alias"
        yield Item(id=question_id("hotpotqa", q), set="hotpotqa", category="factual", prompt=_question(q),
                   answers=(a.lower() if kind == "yesno" else a,), answer_kind=kind, meta={"type": r.get("type")})
