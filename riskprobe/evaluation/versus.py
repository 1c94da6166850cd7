"""A risk beside what the model already says about itself: the probe's AUROC, the best training-free score on the
same rows (the best of those that see the whole answer, and the best of those that see only steps 0..k), and the
margins with paired bootstrap intervals (the same resampled rows for both scores).

The best training-free score is chosen on the rows it is compared on (the strongest of them there): a
conservative baseline, since the probe gets no such choice.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1]); risk = np.array([0.1, 0.2, 0.8, 0.9])
    >>> tf = {"first_token_entropy": np.array([0.1, 0.9, 0.2, 0.8]), "mean_entropy@answer": np.array([1., 2., 3., 1.5])}
    >>> r = versus_training_free(y, risk, tf, n_boot=0)
    >>> r["auroc"], r["best_training_free"]["name"], round(r["margin"], 3)
    (1.0, 'mean_entropy@answer', 0.25)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .metrics import auroc, bootstrap_ci


def at_k(name: str) -> bool:
    """Whether a training-free score reads only the first steps (``@k`` scores and the first token's entropy),
    as a probe at that k does; the others read the whole answer."""
    return "@k" in name or name == "first_token_entropy"


def best_score(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> tuple[str, float] | None:
    """The name and AUROC of the score that ranks ``y`` best (``None`` when there is none or one class)."""
    cand = [(n, auroc(y, s)) for n, s in scores.items()]
    cand = [(n, a) for n, a in cand if not np.isnan(a)]
    return max(cand, key=lambda t: t[1]) if cand else None


def paired_margin(y, a, b, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, list[float]]:
    """``AUROC(a) - AUROC(b)`` on rows ``y`` and its percentile bootstrap interval, both scores read on the same
    resampled rows each time."""
    y, a, b = (np.asarray(v, dtype=float) for v in (y, a, b))
    diff = auroc(y, a) - auroc(y, b)
    if not n_boot or np.isnan(diff):
        return float(diff), [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        d = auroc(y[i], a[i]) - auroc(y[i], b[i])
        if not np.isnan(d):
            vals.append(d)
    if not vals:
        return float(diff), [float("nan"), float("nan")]
    return float(diff), [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


def versus_training_free(y, risk, training_free: Mapping[str, np.ndarray], *, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """The probe's ``risk`` on rows ``y`` (1 = wrong) beside the training-free scores of the same rows.

    Returns ``{"n", "n_wrong", "auroc", "auroc_ci", "best_training_free": {"name", "auroc"}, "margin", "margin_ci",
    "best_at_k": {...}, "margin_at_k", "margin_at_k_ci"}``; AUROCs are NaN (and the best ``None``) where the rows
    hold one class only."""
    y = np.asarray(y, dtype=float)
    risk = np.asarray(risk, dtype=float)
    out: dict[str, Any] = {"n": int(len(y)), "n_wrong": int(y.sum()), "auroc": auroc(y, risk)}
    out["auroc_ci"] = bootstrap_ci(auroc, y, risk, n_boot=n_boot, seed=seed) if n_boot else [float("nan")] * 2
    for key, pick in (("", lambda n: True), ("_at_k", at_k)):
        scores = {n: np.asarray(s, dtype=float) for n, s in training_free.items() if pick(n)}
        best = best_score(y, scores)
        name = "best_training_free" if not key else "best_at_k"
        out[name] = None if best is None else {"name": best[0], "auroc": best[1]}
        if best is None:
            out[f"margin{key}"], out[f"margin{key}_ci"] = float("nan"), [float("nan")] * 2
        else:
            out[f"margin{key}"], out[f"margin{key}_ci"] = paired_margin(y, risk, scores[best[0]], n_boot=n_boot,
                                                                        seed=seed)
    return out


def _cell(v: float, ci=None, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    s = format(v, fmt)
    if ci is not None and not any(np.isnan(c) for c in ci):
        s += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
    return s


def cells(r: Mapping[str, Any]) -> dict[str, str]:
    """The text cells of one row of :func:`versus_training_free` (counts, AUROC, best scores, margins)."""
    b, bk = r.get("best_training_free"), r.get("best_at_k")
    return {"counts": f"{r['n'] - r['n_wrong']}/{r['n_wrong']}", "auroc": _cell(r["auroc"], r.get("auroc_ci")),
            "best": f"{b['auroc']:.3f} {b['name']}" if b else "n/a",
            "margin": _cell(r["margin"], r.get("margin_ci"), "+.3f"),
            "best_k": f"{bk['auroc']:.3f} {bk['name']}" if bk else "n/a",
            "margin_k": _cell(r["margin_at_k"], r.get("margin_at_k_ci"), "+.3f")}


def format_versus(rows: Mapping[str, Mapping[str, Any]], *, k: int | None = None) -> str:
    """A text table: per row group (test split, an unseen source...), n right / wrong, the probe's AUROC, the best
    training-free score (whole answer and at k) and the margins with their intervals."""
    kk = f"k={k}" if k is not None else "k"
    head = (f"{'rows':<26}{'right/wrong':>12}  {'probe AUROC':<22}{'best training-free':<34}{'margin':<24}"
            f"{'best at ' + kk:<32}{'margin at ' + kk:<24}")
    lines = [head]
    for name, r in rows.items():
        c = cells(r)
        lines.append(f"{name[:25]:<26}{c['counts']:>12}  {c['auroc']:<22}{c['best'][:33]:<34}{c['margin']:<24}"
                     f"{c['best_k'][:31]:<32}{c['margin_k']:<24}")
    return "\n".join(lines)
