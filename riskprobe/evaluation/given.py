"""Evaluation of a risk on given answers: by provenance and source, with length-matched subsets and the
out-of-distribution flag.

A given answer's risk can win on length alone (HaluEval's hallucinated answers are longer than its right
ones), so every group is also scored on a *length-matched* subset: within each answer length (in tokens), as
many right as wrong answers, picked by a hash of the row so the subset is the same every run. There a score that
knows only the length sits at exactly 0.5.

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 1, 0])
    >>> n = np.array([2, 3, 3, 5, 2, 4])
    >>> sorted(np.flatnonzero(length_matched(y, n)).tolist())   # lengths 2 and 3 hold one of each class
    [0, 1, 2, 4]
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import UserError
from ..harvest.store import load_harvests
from ..models import render
from ..models.loader import LoadedModel, same_model
from ..progress import bar as progress_bar
from ..prompts.answers import GivenAnswer, given_rows
from ..prompts.sets import split_of
from . import metrics as M
from .baselines import training_free_scores

if TYPE_CHECKING:  # the scorer is handed in; evaluation does not import serving
    from ..serving.scorer import Scorer


def length_matched(y: Sequence[int], lengths: Sequence[int], keys: Sequence[str] | None = None) -> np.ndarray:
    """A boolean mask: within each length, ``min(right, wrong)`` rows of each class (the first by a hash of
    ``keys[i]``, default the row index), so that both classes have the same length distribution."""
    y = np.asarray(y).astype(int)
    lengths = np.asarray(lengths).astype(int)
    keys = [str(i) for i in range(len(y))] if keys is None else [str(k) for k in keys]
    rank = np.array([int(hashlib.sha256(k.encode()).hexdigest()[:12], 16) for k in keys]) if len(y) else np.zeros(0)
    keep = np.zeros(len(y), dtype=bool)
    for n in np.unique(lengths):
        idx = [np.flatnonzero((lengths == n) & (y == c)) for c in (0, 1)]
        m = min(len(idx[0]), len(idx[1]))
        for ix in idx:
            keep[ix[np.argsort(rank[ix], kind="stable")[:m]]] = True
    return keep


def score_rows(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """n, wrong answers, AUROC with its bootstrap interval (None where one class is missing)."""
    out: dict[str, Any] = {"n": int(len(y)), "n_wrong": int(np.sum(y))}
    if len(y) and 0 < y.sum() < len(y):
        out["auroc"] = M.auroc(y, s)
        out["auroc_ci"] = M.bootstrap_ci(M.auroc, y, s, n_boot=n_boot, seed=seed)
    else:
        out["auroc"], out["auroc_ci"] = None, None
    return out


def evaluate_groups(y: Sequence[int], risk: Sequence[float], lengths: Sequence[int], groups: Mapping[str, np.ndarray],
                    *, baselines: Mapping[str, Sequence[float]] | None = None, keys: Sequence[str] | None = None,
                    ood: Sequence[bool] | None = None, n_boot: int = 500) -> dict[str, dict[str, Any]]:
    """Per group (a boolean mask over the rows): the risk's AUROC on all its rows and on its length-matched
    subset, the best training-free score (``baselines``: name -> risk score, higher = riskier) on the same rows,
    the length-only AUROC, and with ``ood`` (True = flagged) the share flagged and the AUROC on the rest."""
    y = np.asarray(y).astype(int)
    risk = np.asarray(risk, dtype=np.float64)
    lengths = np.asarray(lengths).astype(int)
    keys = np.asarray([str(i) for i in range(len(y))] if keys is None else [str(k) for k in keys])
    base = {k: np.asarray(v, dtype=np.float64) for k, v in (baselines or {}).items()}
    out: dict[str, dict[str, Any]] = {}
    for name, g in groups.items():
        g = np.asarray(g, dtype=bool)
        r = score_rows(y[g], risk[g], n_boot)
        lm = length_matched(y[g], lengths[g], keys[g])
        r["length_matched"] = score_rows(y[g][lm], risk[g][lm], n_boot)
        r["length_only_auroc"] = (M.auroc(y[g], lengths[g].astype(float)) if r["auroc"] is not None else None)
        best = None
        for bname, b in base.items():
            if r["auroc"] is None:
                break
            a = M.auroc(y[g], b[g])
            a_lm = M.auroc(y[g][lm], b[g][lm]) if r["length_matched"]["auroc"] is not None else None
            if best is None or a > best["auroc"]:
                best = {"name": bname, "auroc": a, "length_matched_auroc": a_lm}
        r["best_training_free"] = best
        if ood is not None:
            f = np.asarray(ood, dtype=bool)[g]
            r["ood_flagged"] = float(f.mean()) if len(f) else None
            r["unflagged"] = score_rows(y[g][~f], risk[g][~f], n_boot)
        out[name] = r
    return out


def format_groups(res: Mapping[str, Mapping[str, Any]]) -> str:
    """A text table of :func:`evaluate_groups`."""
    def ci(r):
        if r.get("auroc") is None:
            return "-"
        lo, hi = r["auroc_ci"]
        return f"{r['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"

    has_ood = any("ood_flagged" in r for r in res.values())
    head = (f"{'rows':<30}{'n':>6}{'wrong':>6}  {'AUROC [95% CI]':<22}{'length-matched (n)':<30}"
            f"{'best training-free (all / matched)':<44}{'length':>7}")
    if has_ood:
        head += f"{'OOD':>7}  {'AUROC unflagged':<22}"
    lines = [head]
    for name, r in res.items():
        lm = r["length_matched"]
        b = r.get("best_training_free")
        bt = (f"{b['name']} {b['auroc']:.3f} / " + (f"{b['length_matched_auroc']:.3f}" if b["length_matched_auroc"]
                                                     is not None else "-")) if b else "-"
        lo = f"{r['length_only_auroc']:.3f}" if r.get("length_only_auroc") is not None else "-"
        line = f"{name:<30}{r['n']:>6}{r['n_wrong']:>6}  {ci(r):<22}{ci(lm) + ' (' + str(lm['n']) + ')':<30}{bt:<44}{lo:>7}"
        if has_ood:
            line += f"{r.get('ood_flagged', 0) or 0:>7.1%}  {ci(r['unflagged']):<22}"
        lines.append(line)
    return "\n".join(lines)


# ------------------------------------------------------------------ a probe on given answers (eval-given)
def forced_in_batches(lm: LoadedModel, rows: Sequence[GivenAnswer], forced: Callable[[list, list[str]], tuple[dict, list]],
                      *, batch_size: int, progress: bool = True, label: str = "given answers"):
    """Teacher-forced signatures of given answers, in batches of similar length, back in the rows' order.

    ``forced(rendered_prompts, answers)`` returns one batch's signatures and forced token ids (a probe's
    :meth:`Scorer.forced_signatures`, or an :class:`~riskprobe.signatures.extract.Extractor` with a spec of one's
    own). Returns the signatures (arrays over the rows) and each row's number of forced tokens."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].question) + 4 * len(rows[i].answer), i))
    parts: dict[str, list] = {}
    bar = progress_bar(len(rows), label, "answer", enabled=progress)
    n_tok = [0] * len(rows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        sig, ids = forced([render(lm.tokenizer, rows[i].question, rows[i].answer_kind) for i in idx],
                          [rows[i].answer for i in idx])
        for k, v in sig.items():
            parts.setdefault(k, []).append(v)
        for i, t in zip(idx, ids):
            n_tok[i] = len(t)
        bar.update(len(idx))
    bar.close()
    inv = np.argsort(np.asarray(order))
    return {k: np.concatenate(v)[inv] for k, v in parts.items()}, np.asarray(n_tok)


def _signatures(head: Scorer, lm: LoadedModel, rows: Sequence[GivenAnswer], batch_size: int, progress: bool):
    """Teacher-forced signatures of the rows, as :meth:`Scorer.score` takes them, plus the output confidence that the
    training-free scores read."""
    return forced_in_batches(lm, rows, lambda rp, ans: head.forced_signatures(lm, rp, ans, confidence=True),
                             batch_size=batch_size, progress=progress)


def evaluate_rows(head: Scorer, sig: dict[str, Any], rows: Sequence[GivenAnswer], n_tokens: np.ndarray,
                  *, n_boot: int = 500) -> dict[str, Any]:
    """The head's risk on the rows, evaluated by provenance and source (see :func:`evaluate_groups`)."""
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
    already extracted: :mod:`riskprobe.harvest.forced`)."""
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
