"""The report's figures (PNG, written atomically): AUROC vs k, reliability, risk-coverage, importance,
mean trajectories, harvests side by side.

matplotlib is imported inside each function, after choosing its file-only backend (``Agg``), so that importing
riskprobe never loads it or touches a display."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.results import FitMetrics
from ..evaluation.tables import sweep_series
from ..fsutil import atomic_savefig
from ..signatures.features import CI, SI, TI
from .decide import MARGIN


def draw_run(run: str | Path) -> list[str]:
    """Draw a fit run's plots from its files, beside them: ``risk_coverage.png`` (from ``metrics.json``) and, when
    the run swept k, ``auroc_vs_k.png`` (from ``sweep.json``). Returns the files drawn."""
    run = Path(run)
    metrics = FitMetrics.read(run / "metrics.json")
    drawn = []
    if metrics.selective:
        plot_selective(metrics.selective, run / "risk_coverage.png")
        drawn.append(str(run / "risk_coverage.png"))
    if (run / "sweep.json").is_file():
        plot_sweep(json.loads((run / "sweep.json").read_text()), run / "auroc_vs_k.png")
        drawn.append(str(run / "auroc_vs_k.png"))
    return drawn


def plot_selective(selective: dict[str, Any], path: str | Path) -> str:
    """Error rate among the kept answers against the share kept, one line per score (lower is better): the fit's
    ``risk_coverage.png`` and the report's. Returns the file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in selective["scores"].items():
        c = r["curve"]
        ax.plot(c["coverage"], c["error"], lw=2.5 if name == "probe" else 1.2, label=f"{name} (AURC {r['aurc']:.3f})")
    ax.axhline(selective["base_error"], color="grey", lw=0.8, ls="--", label="keep everything")
    for c in selective["coverages"]:
        ax.axvline(c, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("coverage (share of answers kept, lowest risk first)")
    ax.set_ylabel("error rate among kept answers")
    ax.set_title("Selective prediction (test split)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return Path(path).name


MAX_SERIES = 8


def sweep_lines(sweep: dict[str, Any], max_series: int = MAX_SERIES) -> dict[str, list[dict[str, Any] | None]]:
    """The series an AUROC-vs-k plot draws, at most ``max_series``: the probe, the best three training-free scores,
    the best two learned baselines, answer length and the probe within confidence strata (by mean AUROC over k)."""
    series = sweep_series(sweep)
    kinds = {}
    for r in sweep["rows"]:
        for name, m in r["baselines"].items():
            kinds.setdefault(name.split("@k")[0], m.get("kind"))

    def mean(name):
        v = [m["auroc"] for m in series[name] if m and not np.isnan(m["auroc"])]
        return float(np.mean(v)) if v else -1.0

    def top(kind, n):
        return sorted((s for s in series if kinds.get(s) == kind), key=mean, reverse=True)[:n]

    pick = ["probe", *top("training-free", 3), *top("sklearn", 2), *top("control", 1)]
    pick += [s for s in series if s.startswith("probe within confidence")][:1]
    return {name: series[name] for name in pick[:max_series]}


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> None:
    """AUROC vs k with 95% intervals: the probe (drawn last, on top, with its interval as a labelled band) and at
    most seven baselines (:func:`sweep_lines`), each in its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep["rows"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    lines = sweep_lines(sweep)
    colors = plt.get_cmap("tab10").colors
    order = [n for n in lines if n != "probe"] + ["probe"]
    for i, name in enumerate(order):
        ms = lines[name]
        a = np.array([m["auroc"] if m else np.nan for m in ms])
        if name == "probe":
            lo = np.array([m["auroc_ci"][0] if m else np.nan for m in ms])
            hi = np.array([m["auroc_ci"][1] if m else np.nan for m in ms])
            ax.fill_between(ks, lo, hi, color="black", alpha=0.15, zorder=9, label="probe, 95% interval")
            ax.plot(ks, a, marker="o", lw=2.8, color="black", zorder=10, label="probe")
        else:
            ax.plot(ks, a, marker="o", lw=1.2, color=colors[(i + 1) % len(colors)], zorder=2, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance (0.5)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (early steps seen)")
    ax.set_ylabel("test AUROC (wrong answer)")
    ax.set_title("How early is the risk visible? (test split)")
    handles, labels = ax.get_legend_handles_labels()
    first = [labels.index("probe"), labels.index("probe, 95% interval")]
    rest = [i for i in range(len(labels)) if i not in first]
    ax.legend([handles[i] for i in first + rest], [labels[i] for i in first + rest], fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5))  # beside the axes: covers no curve
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


TRAJ = [("entropy", "next-token entropy (nats)"), ("sync", "inter-layer cos(h_l, h_l+1), mean over layers"),
        ("curvature", "curvature (rad), mean over layers"), ("commit_depth", "commitment depth (fraction of lens layers)")]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    atomic_savefig(fig, path)
    _plt().close(fig)
    return path.name


# ------------------------------------------------------------------------------------------ fit runs
def plot_reliability(rel: list[dict], path: Path, title: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    x = [r["mean_risk"] for r in rel]
    y = [r["error_rate"] for r in rel]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.scatter(x, y, s=[max(8, r["n"]) for r in rel], alpha=0.7)
    ax.plot(x, y, lw=1)
    ax.set_xlabel("predicted risk (bin mean)")
    ax.set_ylabel("observed error rate")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    return _save(fig, path)


def plot_importance(imp: dict[str, dict[str, float]], path: Path, title: str) -> str:
    plt = _plt()
    kinds = [k for k in ("family", "layer") if imp.get(k)]
    n_max = max(len(imp[k]) for k in kinds)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), max(3.0, 0.24 * n_max + 1.2)), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        items = list(imp[kind].items())
        colors = ["tab:orange" if n.startswith("raw") else "tab:blue" for n, _ in items]
        ax.barh(range(len(items)), [v for _, v in items], color=colors)
        ax.set_yticks(range(len(items)), [n for n, _ in items], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("test AUROC drop when shuffled")
        note = " (orange: stored raw states, only at a few layers)" if kind == "layer" and "tab:orange" in colors else ""
        ax.set_title(f"importance by {kind}{note}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ harvests
def _traj_series(t) -> dict[str, np.ndarray]:
    c = t["commitment"].float().numpy()
    return {"entropy": c[..., CI["entropy"]], "sync": t["sync"].float().numpy()[..., SI["layer_cos"]].mean(-1),
            "curvature": t["trajectory"].float().numpy()[..., TI["curvature"]].mean(-1),
            "commit_depth": c[..., CI["commit_depth"]]}


def _mean_ci(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = m.sum(0)
    mean = np.where(n > 0, (x * m).sum(0) / np.maximum(n, 1), np.nan)
    var = np.where(n > 1, ((x - mean) ** 2 * m).sum(0) / np.maximum(n - 1, 1), np.nan)
    return mean, 1.96 * np.sqrt(var / np.maximum(n, 1))


def plot_trajectories(h, path: Path, title: str, max_step: int = 16) -> str:
    """Mean trajectories, correct vs wrong, one row of panels per category."""
    plt = _plt()
    t = h.tensors
    mask = t["step_mask"].numpy().astype(float)
    series = _traj_series(t)
    y = np.asarray(h.meta["label"])
    cats = sorted(set(h.meta["category"]))
    catarr = np.asarray(h.meta["category"])
    lens_steps = h.schema.get("lens_steps", max_step)
    fig, axes = plt.subplots(len(cats), len(TRAJ), figsize=(4 * len(TRAJ), 3.1 * len(cats)), squeeze=False)
    for i, cat in enumerate(cats):
        for j, (name, ylabel) in enumerate(TRAJ):
            ax = axes[i][j]
            S = min(max_step, (lens_steps if name == "commit_depth" else mask.shape[1] - 1)) + 1
            for lab, color, text in ((0, "tab:green", "correct"), (1, "tab:red", "wrong")):
                rows = (catarr == cat) & (y == lab)
                if rows.sum() < 2:
                    continue
                mn, ci = _mean_ci(series[name][rows][:, :S], mask[rows][:, :S])
                ax.plot(range(S), mn, color=color, label=f"{text} (n={rows.sum()})")
                ax.fill_between(range(S), mn - ci, mn + ci, color=color, alpha=0.15)
            ax.set_title(f"{cat}: {name}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel, fontsize=7)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_side_by_side(hs: list[tuple[str, Any]], path: Path, max_step: int = 16) -> str:
    """Mean trajectories of several harvests (models) on the same axes."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(TRAJ), figsize=(4 * len(TRAJ), 3.3), squeeze=False)
    for label, h in hs:
        t = h.tensors
        mask = t["step_mask"].numpy().astype(float)
        s = _traj_series(t)
        for j, (name, ylabel) in enumerate(TRAJ):
            S = min(max_step, (h.schema.get("lens_steps", max_step) if name == "commit_depth" else mask.shape[1] - 1)) + 1
            mn, ci = _mean_ci(s[name][:, :S], mask[:, :S])
            ax = axes[0][j]
            ax.plot(range(S), mn, label=label)
            ax.fill_between(range(S), mn - ci, mn + ci, alpha=0.12)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel, fontsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_decisions(cells: list[dict], path: Path) -> str:
    """One panel per hypothesis: each tested cell's effect with its 95% interval (and the +-margin band)."""
    plt = _plt()
    hyps = sorted({c["hypothesis"] for c in cells if c.get("tested")})
    rows = {h: [c for c in cells if c["hypothesis"] == h and c.get("tested")] for h in hyps}
    n_max = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(1, len(hyps), figsize=(5.5 * len(hyps), max(3.0, 0.28 * n_max + 1.4)), squeeze=False)
    colors = {"held": "tab:green", "reversed": "tab:red", "no effect": "tab:blue", "undecided": "grey"}
    for ax, h in zip(axes[0], hyps):
        cs = rows[h]
        for i, c in enumerate(cs):
            col = colors.get(c["verdict"], "grey")
            ax.errorbar(c["effect"], i, xerr=[[c["effect"] - c["ci"][0]], [c["ci"][1] - c["effect"]]], fmt="o",
                        color=col, ms=4, capsize=2)
        ax.axvspan(-MARGIN, MARGIN, color="tab:blue", alpha=0.08)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(cs)), [f"{c['model']} {c['normalisation']} {c['category']} {c['layers']}" for c in cs],
                      fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("error rate, regime a - regime b")
        ax.set_title(f"{h} (green held, red reversed, blue no effect, grey undecided)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
