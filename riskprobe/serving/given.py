"""Evaluate a risk on given answers: HaluEval QA, TruthfulQA mc2, a user's JSONL of (question, answer, label)
rows, or the rows of a given-answer harvest, by provenance and source, with length-matched subsets, the best
training-free score on the same rows and the out-of-distribution flag (:mod:`riskprobe.evaluation.given`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..harvest.given import GivenAnswer
from ..models.loader import LoadedModel
from .scorer import Scorer

SETS = ("halueval", "truthfulqa_mc")


def given_rows(name: str, limit: int | None = 200, *, split: str | None = None) -> list[GivenAnswer]:
    """Rows of a given-answer set (``halueval``, ``truthfulqa_mc``) or of a JSONL file with ``question``
    (or ``prompt``), ``answer`` (or ``response``) and ``label`` (1 = wrong; or ``correct``: true/false), and
    optionally ``id``, ``provenance``, ``source``. ``split`` keeps only the questions of that split."""
    from ..prompts.given import given_answer_pairs
    from ..prompts.sets import _qid, split_of

    if name in SETS:
        set_name = "halueval_qa" if name == "halueval" else "truthfulqa"
        src = {"halueval": ("halueval_qa:right", "halueval_qa:incorrect"),
               "truthfulqa_mc": ("truthfulqa_mc2:true", "truthfulqa_mc2:false")}[name]
        rows = [GivenAnswer(_qid(set_name, q), set_name, "factual", q.strip(), a.strip(), int(y), "other", src[int(y)])
                for q, a, y, _ in given_answer_pairs(name, None) if a.strip()]
    else:
        rows = _jsonl_rows(Path(name))
    if split is not None:
        rows = [r for r in rows if split_of(r.id) == split]
    if limit is not None:  # whole questions, chosen by a hash of their id
        import hashlib

        ids = sorted({r.id for r in rows}, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:limit]
        keep = set(ids)
        rows = [r for r in rows if r.id in keep]
    if not rows:
        raise UserError("no rows to evaluate", file=name if name not in SETS else None, field="set")
    return rows


def _jsonl_rows(path: Path) -> list[GivenAnswer]:
    from ..fsutil import read_text
    from ..prompts.sets import _qid

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
        qid = str(o["id"]) if "id" in o else _qid(path.stem, q)
        rows.append(GivenAnswer(qid, path.stem, str(o.get("category", "factual")), q.strip(), a.strip(), int(y), prov,
                                str(o.get("source", path.stem))))
    return rows


def _signatures(head: Scorer, lm: LoadedModel, rows: Sequence[GivenAnswer], batch_size: int, progress: bool):
    """Teacher-forced signatures of the rows (the head's features, plus the output confidence that the
    training-free scores read), as in :meth:`Scorer.score`."""
    from dataclasses import replace

    from ..models import render
    from ..models.generation import forced_ids
    from ..progress import bar as progress_bar
    from ..signatures.extract import Extractor

    spec = head.feature_spec()
    if "commitment" not in spec.families:
        spec = replace(spec, families=["commitment", *spec.families])
    ex = Extractor(lm, spec)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].question) + 4 * len(rows[i].answer), i))
    parts: dict[str, list] = {}
    bar = progress_bar(len(rows), "given answers", "answer", enabled=progress)
    n_tok = [0] * len(rows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids = forced_ids(lm, [rows[i].answer for i in idx])
        sig = ex.extract([render(lm.tokenizer, rows[i].question, rows[i].answer_kind) for i in idx], ids)
        for k, v in sig.items():
            parts.setdefault(k, []).append(v)
        for i, t in zip(idx, ids):
            n_tok[i] = len(t)
        bar.update(len(idx))
    bar.close()
    inv = np.argsort(np.asarray(order))
    return {k: np.concatenate(v)[inv] for k, v in parts.items()}, np.asarray(n_tok)


def evaluate_rows(head: Scorer, sig: dict[str, Any], rows: Sequence[GivenAnswer], n_tokens: np.ndarray,
                  *, n_boot: int = 500) -> dict[str, Any]:
    """The head's risk on the rows, evaluated by provenance and source (see :func:`evaluate_groups`)."""
    import torch

    from ..evaluation.baselines import training_free_scores
    from ..evaluation.given import evaluate_groups

    r = head.readings(sig)
    risk, dist, far = r["risk"], r["ood_distance"], r["ood"]
    free = training_free_scores({k: torch.as_tensor(np.asarray(v)) for k, v in sig.items()}, head.k)
    y = np.asarray([r.label for r in rows])
    groups = {"all": np.ones(len(rows), dtype=bool)}
    for key in ("provenance", "source", "set"):
        vals = np.asarray([getattr(r, key) for r in rows])
        if len(set(vals.tolist())) > 1:  # groups that hold right and wrong answers
            groups.update({f"{key} {v}": vals == v for v in sorted(set(vals.tolist()))
                           if 0 < y[vals == v].sum() < (vals == v).sum()})
    keys = [f"{r.id}:{r.source}:{r.answer}" for r in rows]
    res = evaluate_groups(y, risk, n_tokens, groups, baselines=free, keys=keys, ood=far, n_boot=n_boot)
    return {"groups": res, "rows": len(rows), "questions": len({r.id for r in rows}),
            "ood_threshold": (head.meta.get("ood") or {}).get("threshold"),
            "risk": risk.tolist(), "ood_distance": dist.tolist()}


def evaluate_given(scorer: Scorer, lm: LoadedModel, name: str, *, limit: int | None = 200, batch_size: int = 16,
                   split: str | None = None, progress: bool = True, n_boot: int = 500,
                   allow_model_mismatch: bool = False) -> dict[str, Any]:
    """Score the given-answer rows of ``name`` (a set or a JSONL file, see :func:`given_rows`) with the
    scorer's given-answer head and evaluate them by provenance and source."""
    head = scorer.head_for_given()
    head.check_model(lm, allow_model_mismatch=allow_model_mismatch)
    rows = given_rows(name, limit, split=split)
    t0 = time.perf_counter()
    sig, n_tok = _signatures(head, lm, rows, batch_size, progress)
    out = evaluate_rows(head, sig, rows, n_tok, n_boot=n_boot)
    out.update(set=name, split=split, seconds=round(time.perf_counter() - t0, 2), head=str(head.path))
    allr = out["groups"]["all"]
    out.update(auroc=allr["auroc"], auroc_ci=allr["auroc_ci"], n=allr["n"], n_incorrect=allr["n_wrong"])
    return out


def evaluate_given_harvest(scorer: Scorer, harvest: str | Path, *, split: str = "test", n_boot: int = 500) -> dict[str, Any]:
    """Evaluate the scorer's given-answer head on the ``split`` rows of a given-answer harvest (signatures
    already extracted: :mod:`riskprobe.harvest.given`)."""
    from ..harvest.store import load_harvests
    from ..models.loader import same_model
    from ..prompts.sets import split_of

    head = scorer.head_for_given()
    h = load_harvests([harvest])
    if not same_model(h.model, head.model_identity):
        raise UserError(f"this harvest was made with '{h.model.get('name')}', the probe reads "
                        f"'{head.model_identity['name']}'", file=harvest, field="harvest")
    head.check_schema(h.schema, file=harvest)
    keep = np.flatnonzero([split_of(i) == split for i in h.meta["id"]])
    if not len(keep):
        raise UserError(f"no rows of the {split} split", file=harvest, field="split")
    m = h.meta
    rows = [GivenAnswer(m["id"][i], m["set"][i], m["category"][i], m["prompt"][i] if "prompt" in m else "",
                        (m["response"][i] if "response" in m else "") or "-", int(m["label"][i]), m["provenance"][i],
                        m["source"][i]) for i in keep]
    sig = {k: v[keep].numpy() for k, v in h.tensors.items()}
    out = evaluate_rows(head, sig, rows, np.asarray(m["n_tokens"])[keep], n_boot=n_boot)
    out.update(harvest=str(harvest), split=split, head=str(head.path))
    return out
