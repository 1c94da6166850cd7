"""Deciding the dynamic-signature hypotheses: one rule, applied to every cell of a grid.

A cell is one hypothesis on one model, prompt category, monitored-layer set and normalisation: the error rate of
regime ``a`` minus that of regime ``b`` (``effect``), on rows the regime thresholds never saw.

* Interval: bootstrap over questions (all answers to a question are resampled together), 95%.
* p-value: two-sided, normal approximation with the bootstrap's standard error; **Holm**-corrected over every
  cell tested in the grid (the count is reported with the table).
* Verdict: *held* (Holm p < 0.05, effect > 0), *reversed* (Holm p < 0.05, effect < 0), *no effect* (the interval
  lies inside +-``MARGIN``, an equivalence test), else *undecided*; a regime with fewer than ``MIN_ROWS`` rows is
  *too small* and not tested.
* Odds ratio: of the two regimes' error odds (0.5 added to each count).
* Control: the same difference within strata of answer length x output confidence (mean entropy of steps 0..k),
  quintiles each, combined with Mantel-Haenszel weights ``n_a n_b / (n_a + n_b)``, with its own interval and
  verdict (the controlled effects are a second family, Holm-corrected alike).
* For an undecided cell, ``rows_to_decide``: the total rows at which an interval of the observed width, shrinking
  as 1/sqrt(n), would pass the Holm bar for its effect (or fit inside the margin, whichever comes first).
"""

from __future__ import annotations

from math import erfc, sqrt
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

MARGIN = 0.03
MIN_ROWS = 30
ALPHA = 0.05


def _strata_diff(y: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray, strata: np.ndarray) -> float:
    """Mantel-Haenszel weighted difference of error rates; ``strata``: stratum index per row, ``w``: row weights
    (bootstrap multiplicities)."""
    n_s = int(strata.max()) + 1 if len(strata) else 0
    na = np.bincount(strata, weights=w * a, minlength=n_s)
    nb = np.bincount(strata, weights=w * b, minlength=n_s)
    ka = np.bincount(strata, weights=w * a * y, minlength=n_s)
    kb = np.bincount(strata, weights=w * b * y, minlength=n_s)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        return float("nan")
    wt = na[ok] * nb[ok] / (na[ok] + nb[ok])
    return float((wt * (ka[ok] / na[ok] - kb[ok] / nb[ok])).sum() / wt.sum())


def _diff(y: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    na, nb = w[a].sum(), w[b].sum()
    if na == 0 or nb == 0:
        return float("nan")
    return (w[a] * y[a]).sum() / na - (w[b] * y[b]).sum() / nb


def cell_effect(y: Sequence[float], a: Sequence[bool], b: Sequence[bool], clusters: Sequence[str], *,
              strata: Sequence[Any] | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Effect (error rate in ``a`` minus in ``b``), its clustered bootstrap interval and two-sided p, the odds
    ratio, and with ``strata`` the controlled effect and its interval. Rows outside ``a`` and ``b`` are ignored."""
    y = np.asarray(y, dtype=float)
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    out: dict[str, Any] = {"n_a": int(a.sum()), "n_b": int(b.sum())}
    if out["n_a"] < MIN_ROWS or out["n_b"] < MIN_ROWS:
        out.update(tested=False, verdict="too small")
        return out
    keep = a | b
    y, a, b = y[keep], a[keep], b[keep]
    cl = np.asarray(clusters)[keep]
    st = None if strata is None else np.unique(np.asarray(strata)[keep], return_inverse=True)[1]
    _, cid = np.unique(cl, return_inverse=True)
    n_cl = int(cid.max()) + 1
    ones = np.ones(len(y))
    eff = _diff(y, ones, a, b)
    ctrl = _strata_diff(y, ones, a, b, st) if st is not None else None
    rng = np.random.default_rng(seed)
    boots, cboots = [], []
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n_cl, n_cl), minlength=n_cl)[cid].astype(float)
        boots.append(_diff(y, w, a, b))
        if st is not None:
            cboots.append(_strata_diff(y, w, a, b, st))
    boots = np.asarray(boots)
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    p = _p_normal(eff, boots)
    ka, kb = y[a].sum(), y[b].sum()
    na, nb = a.sum(), b.sum()
    odds = ((ka + 0.5) / (na - ka + 0.5)) / ((kb + 0.5) / (nb - kb + 0.5))
    out.update(tested=True, effect=float(eff), ci=[float(lo), float(hi)], p=float(p), odds_ratio=float(odds),
               rate_a=float(ka / na), rate_b=float(kb / nb))
    if st is not None:
        cb = np.asarray(cboots)
        cb = cb[np.isfinite(cb)]
        ok = len(cb) > 1 and np.isfinite(ctrl)
        out["controlled"] = {"effect": float(ctrl),
                             "ci": [float(v) for v in np.quantile(cb, [0.025, 0.975])] if ok else [float("nan")] * 2,
                             "p": _p_normal(ctrl, cb) if ok else float("nan")}
    return out


def _p_normal(effect: float, boots: np.ndarray) -> float:
    """Two-sided p of ``effect`` against 0 with the bootstrap's standard error (normal approximation: unlike
    counting bootstrap signs, it does not bottom out at 1 / n_boot, which Holm would multiply)."""
    se = float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")
    if not np.isfinite(se) or se == 0:
        return 0.0 if effect != 0 else 1.0
    return float(erfc(abs(effect) / se / sqrt(2)))


def holm(pvals: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvals, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.empty(m)
    run = 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (m - rank) * p[i]))
        adj[i] = run
    return adj


def verdict(effect: float, lo: float, hi: float, p_holm: float, margin: float = MARGIN) -> str:
    if p_holm < ALPHA:
        return "held" if effect > 0 else "reversed"
    if -margin < lo and hi < margin:
        return "no effect"
    return "undecided"


def rows_to_decide(cell: dict[str, Any], margin: float = MARGIN, tests: int = 1) -> int | None:
    """For an undecided cell: the total rows (both regimes) at which an interval of the observed width, shrinking
    as 1/sqrt(n), would pass the bar that Holm sets for its effect among ``tests`` tests (Bonferroni's, the
    strictest step) or fit inside the margin, whichever needs fewer."""
    if not cell.get("tested") or cell.get("verdict") != "undecided":
        return None
    n = cell["n_a"] + cell["n_b"]
    hw = (cell["ci"][1] - cell["ci"][0]) / 2
    eff = abs(cell["effect"])
    z_need = NormalDist().inv_cdf(1 - ALPHA / (2 * max(tests, 1)))
    cands = []
    if eff > 0:
        cands.append(n * (hw * z_need / (1.959964 * eff)) ** 2)
    if eff < margin:
        cands.append(n * (hw / (margin - eff)) ** 2)
    return int(np.ceil(min(cands) - 1e-9)) if cands else None


def decide(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Holm-correct the tested cells of a grid and give each its verdict (in place), and the controlled effects
    theirs (a second family, Holm-corrected alike); returns the counts."""
    tested = [c for c in cells if c.get("tested")]
    for c, pa in zip(tested, holm([c["p"] for c in tested]) if tested else []):
        c["p_holm"] = float(pa)
        c["verdict"] = verdict(c["effect"], c["ci"][0], c["ci"][1], pa)
        c["rows_to_decide"] = rows_to_decide(c, tests=len(tested))
    ctl = [c["controlled"] for c in tested if c.get("controlled") and np.isfinite(c["controlled"].get("p", np.nan))]
    for c, pa in zip(ctl, holm([c["p"] for c in ctl]) if ctl else []):
        c["p_holm"] = float(pa)
        c["verdict"] = verdict(c["effect"], c["ci"][0], c["ci"][1], pa)
    return {"tests": len(tested), "controlled_tests": len(ctl), "cells": len(cells), "alpha": ALPHA, "margin": MARGIN,
            "min_rows": MIN_ROWS}
