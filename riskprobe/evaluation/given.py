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
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics as M


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
