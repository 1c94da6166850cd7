"""Dynamic profiles: assign each generation a regime from its early steps, and test hypotheses.

Per generation, from signature tensors (no model needed):

* ``entropy_early`` / ``entropy_late``: mean next-token entropy over steps ``0..h-1`` / ``h..k`` (h = k // 2);
* ``curvature_early``: mean turning angle of the monitored layers over the early window;
* ``stability_early``: mean cos(h_t, h_t-1) over the monitored layers, steps 1..h-1;
* ``sync``: mean cos(h_l, h_l+1) over the monitored layers and steps 0..k.

Thresholds are fitted on the training split only (quantiles, written down in :class:`Thresholds`) and
regimes are: ``committed`` (low early entropy and stable states), ``turbulent_resolved`` / ``turbulent_unresolved``
(high early entropy and large direction changes, whose entropy does / does not fall below the threshold by
step k), and ``other``; crossed with ``high``/``low`` inter-layer synchronisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..signatures.features import CI, SI, TI, masked_step_mean

REGIMES = ("committed", "turbulent_resolved", "turbulent_unresolved", "other")


def _mmean(x: torch.Tensor, m: torch.Tensor) -> np.ndarray:
    return masked_step_mean(x, m).numpy().astype(np.float64)


def early_summary(t: dict[str, torch.Tensor], k: int = 8, layers: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The per-generation summaries above; ``layers`` selects monitored-layer positions (None = all)."""
    h = max(1, k // 2)
    mask = t["step_mask"].bool()
    c = t["commitment"].float()
    sync = t["sync"].float()
    traj = t["trajectory"].float()
    if layers is not None:
        sync, traj = sync[:, :, list(layers)], traj[:, :, list(layers)]
    early, late = mask[:, :h], mask[:, h:k + 1]
    stab_mask = mask[:, 1:h].clone() if h > 1 else mask[:, :1]
    st = TI["stability"]
    stab = traj[:, 1:h, :, st].mean(-1) if h > 1 else traj[:, :1, :, st].mean(-1)
    return {
        "entropy_early": _mmean(c[:, :h, CI["entropy"]], early),
        "entropy_late": _mmean(c[:, h:k + 1, CI["entropy"]], late),
        "curvature_early": _mmean(traj[:, :h, :, TI["curvature"]].mean(-1), early),
        "stability_early": _mmean(stab, stab_mask),
        "sync": _mmean(sync[:, : k + 1, :, SI["layer_cos"]].mean(-1), mask[:, : k + 1]),
        "has_late": late.any(1).numpy(),
    }


@dataclass
class Thresholds:
    """Regime thresholds, fitted on training rows only."""

    entropy_low: float
    entropy_high: float
    curvature_high: float
    stability_high: float
    sync_high: float
    k: int

    @classmethod
    def fit(cls, s: dict[str, np.ndarray], train: np.ndarray, k: int, q_low: float = 0.33, q_high: float = 0.5):
        e, c, st, y = (s[n][train] for n in ("entropy_early", "curvature_early", "stability_early", "sync"))
        return cls(float(np.quantile(e, q_low)), float(np.quantile(e, q_high)), float(np.quantile(c, q_high)),
                   float(np.quantile(st, q_high)), float(np.quantile(y, 0.5)), k)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def assign(s: dict[str, np.ndarray], th: Thresholds) -> dict[str, np.ndarray]:
    """``regime`` (one of :data:`REGIMES`) and ``sync_level`` (``high``/``low``) per generation."""
    committed = (s["entropy_early"] <= th.entropy_low) & (s["stability_early"] >= th.stability_high)
    turbulent = (s["entropy_early"] > th.entropy_high) & (s["curvature_early"] > th.curvature_high)
    resolved = turbulent & s["has_late"] & (s["entropy_late"] <= th.entropy_low)
    regime = np.where(committed, "committed",
                      np.where(resolved, "turbulent_resolved", np.where(turbulent, "turbulent_unresolved", "other")))
    return {"regime": regime, "sync_level": np.where(s["sync"] >= th.sync_high, "high", "low")}


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson 95% interval of a proportion k / n."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(c - h), float(c + h)]


def rate_diff(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Error rate in group ``a`` minus group ``b`` (boolean masks), with a bootstrap 95% interval."""
    ya, yb = y[a], y[b]
    out: dict[str, Any] = {"n_a": int(a.sum()), "n_b": int(b.sum())}
    if len(ya) < 5 or len(yb) < 5:
        out.update(effect=float("nan"), ci=[float("nan")] * 2, verdict="undecided (too few rows)")
        return out
    rng = np.random.default_rng(seed)
    boots = [rng.choice(ya, len(ya)).mean() - rng.choice(yb, len(yb)).mean() for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    eff = float(ya.mean() - yb.mean())
    verdict = "held" if lo > 0 else ("failed" if hi < 0 else "undecided")
    out.update(effect=eff, ci=[float(lo), float(hi)], rate_a=float(ya.mean()), rate_b=float(yb.mean()), verdict=verdict)
    return out


def regime_table(y: np.ndarray, reg: dict[str, np.ndarray], rows: np.ndarray) -> list[dict[str, Any]]:
    """Share and error rate (Wilson interval) of each regime x sync level among ``rows``."""
    out = []
    n = int(rows.sum())
    for r in REGIMES:
        for sl in ("high", "low"):
            m = rows & (reg["regime"] == r) & (reg["sync_level"] == sl)
            k = int(y[m].sum())
            out.append({"regime": r, "sync": sl, "n": int(m.sum()), "share": float(m.sum() / n) if n else 0.0,
                        "error_rate": float(y[m].mean()) if m.any() else float("nan"), "error_ci": wilson(k, int(m.sum()))})
    return out


def hypotheses(y: np.ndarray, reg: dict[str, np.ndarray], rows: np.ndarray, seed: int = 0) -> dict[str, dict]:
    """H1: committed + low sync errs more than committed + high sync. H2: unresolved turbulence errs more
    than resolved turbulence. Effects are error-rate differences (percentage points / 100)."""
    com = rows & (reg["regime"] == "committed")
    h1 = rate_diff(y, com & (reg["sync_level"] == "low"), com & (reg["sync_level"] == "high"), seed=seed)
    h1["statement"] = "high commitment with low inter-layer synchronisation errs more than with high synchronisation"
    h2 = rate_diff(y, rows & (reg["regime"] == "turbulent_unresolved"), rows & (reg["regime"] == "turbulent_resolved"),
                   seed=seed)
    h2["statement"] = "turbulence that does not resolve by step k errs more than turbulence that resolves"
    return {"H1": h1, "H2": h2}


CELLS = [(r, s) for r in REGIMES for s in ("high", "low")]


def profile_vector(reg: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Shares of the 8 regime x sync cells among rows ``idx`` (indices, repeats allowed): a model's
    dynamic profile on a set."""
    r, sl = reg["regime"][idx], reg["sync_level"][idx]
    n = max(len(idx), 1)
    return np.array([((r == a) & (sl == b)).sum() / n for a, b in CELLS])


def tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between two profiles."""
    return float(0.5 * np.abs(a - b).sum())


def between_vs_within(groups: dict[tuple[str, str], tuple[dict, np.ndarray]], n_boot: int = 500, seed: int = 0) -> dict:
    """H3: mean profile distance between models on the same set minus within a model across sets.

    ``groups[(model, set)] = (regimes, row mask)``. Bootstrap resamples rows within each group.
    """
    models = sorted({m for m, _ in groups})
    sets = sorted({s for _, s in groups})
    pairs_between = [((m1, s), (m2, s)) for s in sets for i, m1 in enumerate(models) for m2 in models[i + 1:]
                     if (m1, s) in groups and (m2, s) in groups]
    pairs_within = [((m, s1), (m, s2)) for m in models for i, s1 in enumerate(sets) for s2 in sets[i + 1:]
                    if (m, s1) in groups and (m, s2) in groups]
    statement = "models of similar size differ in dynamic profile more than one model differs across prompt sets"
    if not pairs_between or not pairs_within:
        return {"statement": statement, "verdict": "undecided (needs at least two models and two sets)",
                "effect": float("nan"), "ci": [float("nan")] * 2}
    rng = np.random.default_rng(seed)

    def stat(resample: bool) -> float:
        prof = {}
        for key, (reg, rows) in groups.items():
            idx = np.flatnonzero(rows)
            prof[key] = profile_vector(reg, rng.choice(idx, len(idx)) if resample else idx)
        b = np.mean([tv(prof[a], prof[c]) for a, c in pairs_between])
        w = np.mean([tv(prof[a], prof[c]) for a, c in pairs_within])
        return float(b - w)

    eff = stat(False)
    boots = [stat(True) for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [0.025, 0.975])
    verdict = "held" if lo > 0 else ("failed" if hi < 0 else "undecided")
    return {"statement": statement, "effect": eff, "ci": [float(lo), float(hi)], "verdict": verdict,
            "pairs_between": [list(map(list, p)) for p in pairs_between],
            "pairs_within": [list(map(list, p)) for p in pairs_within]}
