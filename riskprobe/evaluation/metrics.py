"""Metrics for risk scores against labels (1 = the answer was wrong), with bootstrap intervals.

Pure numpy; no Lightning, no files. ``risk`` is higher-is-riskier everywhere.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score


def _check(y, s):
    y = np.asarray(y, dtype=float).ravel()
    s = np.asarray(s, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    return y, s


def auroc(y, s) -> float:
    """Area under the ROC curve (scikit-learn's; ties count one half); NaN with a single class."""
    y, s = _check(y, s)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, s))


def auprc(y, s) -> float:
    """Average precision (scikit-learn's) with the wrong answers (label 1) as the positive class."""
    y, s = _check(y, s)
    if y.sum() == 0:
        return float("nan")
    return float(average_precision_score(y, s))


def brier(y, s) -> float:
    """Mean squared error of the risk as a probability of a wrong answer."""
    y, s = _check(y, s)
    return float(np.mean((s - y) ** 2))


def ece(y, s, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of risk in [0, 1]."""
    y, s = _check(y, s)
    bins = np.clip((s * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() / len(s) * abs(y[m].mean() - s[m].mean())
    return float(total)


def reliability(y, s, n_bins: int = 10) -> list[dict]:
    """Per bin: mean risk, observed error rate, count (for reliability diagrams)."""
    y, s = _check(y, s)
    bins = np.clip((s * n_bins).astype(int), 0, n_bins - 1)
    return [{"bin": b, "mean_risk": float(s[bins == b].mean()), "error_rate": float(y[bins == b].mean()),
             "n": int((bins == b).sum())} for b in range(n_bins) if (bins == b).any()]


def rejection_curve(quality, s) -> np.ndarray:
    """Mean quality of the kept answers after rejecting the ``i`` riskiest, for i = 0..N-1."""
    q = np.asarray(quality, dtype=float)
    order = np.argsort(-np.asarray(s, dtype=float), kind="mergesort")  # riskiest first
    kept = q[order][::-1]  # least risky first
    csum = np.cumsum(kept)[::-1]  # sum of the kept after rejecting i
    return csum / np.arange(len(q), 0, -1)


def prr(y, s) -> float:
    """Prediction-rejection ratio over the rejection curve of answer correctness.

    PRR = (AUC_score - AUC_random) / (AUC_oracle - AUC_random): 1 for a perfect ranking, 0 for random,
    negative for worse than random. NaN with a single class.
    """
    y, s = _check(y, s)
    q = 1.0 - y  # quality: 1 = correct
    if q.min() == q.max():
        return float("nan")
    auc = rejection_curve(q, s).mean()
    oracle = rejection_curve(q, y).mean()  # reject every wrong answer first
    rnd = q.mean()
    return float((auc - rnd) / (oracle - rnd))


def best_threshold(y, s) -> float:
    """The risk threshold that maximises accuracy of "flag as wrong when risk >= threshold"."""
    y, s = _check(y, s)
    cands = np.unique(np.r_[s, np.inf])
    accs = [np.mean((s >= t) == (y == 1)) for t in cands]
    return float(cands[int(np.argmax(accs))])


def bootstrap_ci(fn: Callable, y, s, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap interval of ``fn(y, s)`` over resampled rows (NaN draws are dropped)."""
    y, s = _check(y, s)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        v = fn(y[idx], s[idx])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return [float("nan"), float("nan")]
    return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]


METRICS = {"auroc": auroc, "auprc": auprc, "prr": prr, "brier": brier, "ece": ece}


def evaluate(y, s, *, threshold: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """All metrics of a risk score, each with a bootstrap 95% interval (``<name>_ci``).

    ``threshold`` (chosen on validation data) adds ``accuracy``: how often "risk >= threshold" equals
    "the answer was wrong".
    """
    y, s = _check(y, s)
    out: dict = {"n": int(len(y)), "n_incorrect": int(y.sum())}
    for name, fn in METRICS.items():
        out[name] = fn(y, s)
        out[f"{name}_ci"] = bootstrap_ci(fn, y, s, n_boot=n_boot, seed=seed) if n_boot else [float("nan")] * 2
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["accuracy"] = float(np.mean((s >= threshold) == (y == 1)))
    return out


def quantile_strata(x, n: int = 5) -> np.ndarray:
    """Stratum index (0..n-1) of each value by its quantile; equal values share a stratum."""
    x = np.asarray(x, dtype=float).ravel()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right")


def stratified_auroc(y, s, strata) -> float:
    """AUROC counted only over (wrong, right) pairs within the same stratum: how well ``s`` ranks answers that
    a stratifying score (output confidence, answer length, source set) cannot tell apart. Equals the plain
    AUROC with one stratum; NaN when no stratum holds both classes."""
    y, s = _check(y, s)
    strata = np.asarray(strata).ravel()
    wins, pairs = 0.0, 0.0
    for g in np.unique(strata):
        m = strata == g
        yy, ss = y[m], s[m]
        n1, n0 = yy.sum(), len(yy) - yy.sum()
        if n1 == 0 or n0 == 0:
            continue
        r = rankdata(ss)  # Mann-Whitney: ties count one half
        wins += r[yy == 1].sum() - n1 * (n1 + 1) / 2
        pairs += n1 * n0
    return float(wins / pairs) if pairs else float("nan")


def bootstrap_ci_strata(fn: Callable, y, s, strata, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap interval of ``fn(y, s, strata)`` over resampled rows."""
    y, s = _check(y, s)
    strata = np.asarray(strata).ravel()
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        v = fn(y[i], s[i], strata[i])
        if not np.isnan(v):
            vals.append(v)
    if not vals:
        return [float("nan"), float("nan")]
    return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]


def selective_error(y, s, coverage: float) -> float:
    """Error rate among the answers kept when only the ``coverage`` fraction with the lowest risk is kept
    (ties broken by row order)."""
    y, s = _check(y, s)
    n = max(1, int(round(coverage * len(y))))
    keep = np.argsort(s, kind="mergesort")[:n]
    return float(y[keep].mean())


def risk_coverage(y, s) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, error rate among kept)`` when keeping the 1..N least risky answers."""
    y, s = _check(y, s)
    kept = y[np.argsort(s, kind="mergesort")]
    n = np.arange(1, len(y) + 1)
    return n / len(y), np.cumsum(kept) / n


def aurc(y, s) -> float:
    """Area under the risk-coverage curve (lower is better; the base error rate for a random order)."""
    return float(risk_coverage(y, s)[1].mean())
