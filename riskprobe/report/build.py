"""Reports: PNG plots and a Markdown page (opens offline) from fit runs and harvests.

``riskprobe report --run DIR [DIR ...] --out OUT``: a fit run (``metrics.json``) gets its metrics table,
AUROC vs k, reliability diagram, risk-coverage curve and feature-family / layer importance; a harvest
(``riskprobe.json``) gets mean trajectories of correct vs wrong answers by category, its dynamic profile
(regimes, error rates) and the hypothesis tests of :mod:`riskprobe.report.profiles`. Several harvests are also
put on the same axes (architectures side by side) and compared (H3, H4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..evaluation.metrics import quantile_strata
from ..evaluation.results import FitMetrics
from ..evaluation.tables import format_controls, sweep_series
from ..fsutil import atomic_dir, atomic_write_json, atomic_write_text, owned_dir
from ..harvest.store import load_harvests, read_manifest
from ..prompts.sets import split_of
from ..signatures.features import CI, masked_step_mean
from . import profiles as PF
from .decide import cell_effect, decide
from .plots import (
    plot_decisions,
    plot_importance,
    plot_reliability,
    plot_selective,
    plot_side_by_side,
    plot_sweep,
    plot_trajectories,
)


def _metrics_table(m: dict) -> str:
    rows = [("**" + m["probe"]["name"] + "** (probe)", m["probe"])] + list(m.get("baselines", {}).items())
    out = ["| score | AUROC [95% CI] | AUPRC | PRR | Brier | ECE | n | wrong |", "|---|---|---|---|---|---|---|---|"]
    for n, r in rows:
        out.append(f"| {n} | {r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}] | {r['auprc']:.3f} | "
                   f"{r['prr']:.3f} | {r['brier']:.3f} | {r['ece']:.3f} | {r['n']} | {r['n_incorrect']} |")
    return "\n".join(out)


def sweep_table(sweep: dict) -> str:
    rows = sweep["rows"]
    out = ["| score | " + " | ".join(f"k={r['k']}" for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for name, ms in sweep_series(sweep).items():
        cells = [f"{m['auroc']:.3f} [{m['auroc_ci'][0]:.2f}, {m['auroc_ci'][1]:.2f}]" if m else "-" for m in ms]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def fit_section(d: Path, out: Path, tag: str) -> list[str]:
    fm = FitMetrics.read(d / "metrics.json")
    m, p = fm.to_dict(), fm.probe
    md = [f"## Fit run `{d}`", "", f"Test split: {p['n']} answers, {p['n_incorrect']} wrong (base error rate "
          f"{p['n_incorrect'] / max(p['n'], 1):.3f}, the AUPRC of a random score).", "", _metrics_table(m), ""]
    if fm.selection:
        sel = fm.selection
        md += [f"### Selection: {sel['folds']}-fold CV grouped by question on the training split ({sel['n_train']} rows)",
               "", f"Chosen: **{sel['best_label']}**" + (f" (C = {sel['best']['C']:g})" if sel["best"].get("C") else ""),
               "", "| recipe | C | CV AUROC | sd |", "|---|---|---|---|"]
        md += [f"| {t['recipe']} | {t['C'] if t.get('C') is not None else '-'} | {t['cv_auroc']:.3f} | {t['cv_sd']:.3f} |"
               for t in sel["table"]] + [""]
    if fm.controls or fm.selective:
        md += ["### Controls and selective prediction", "", "```text", format_controls(m), "```", ""]
    if fm.margin:
        g = fm.margin
        md.append(f"Probe minus best baseline ({g['best_baseline']}): **{g['auroc_margin']:+.3f}** AUROC; minus best "
                  f"training-free score ({g['best_training_free']}): **{g['auroc_margin_training_free']:+.3f}**.\n")
    if (d / "sweep.json").is_file():
        sw = json.loads((d / "sweep.json").read_text())
        plot_sweep(sw, out / f"{tag}_auroc_vs_k.png")
        md += ["### Risk by step: AUROC vs k", "", f"![AUROC vs k]({tag}_auroc_vs_k.png)", "", sweep_table(sw), ""]
    if fm.reliability:
        md += ["### Calibration and selective answering", "",
               f"![reliability]({plot_reliability(fm.reliability, out / f'{tag}_reliability.png', 'reliability (test)')}) "
               + (f"![risk-coverage]({plot_selective(fm.selective, out / f'{tag}_risk_coverage.png')})"
                  if fm.selective else ""), ""]
    if fm.importance:
        md += ["### What carries the risk", "",
               f"![importance]({plot_importance(fm.importance, out / f'{tag}_importance.png', 'permutation importance')})", ""]
    return md


def profile_harvest(h, k: int = 8, layers=None) -> dict[str, Any]:
    """Thresholds (fitted on the train split), regimes, per-category table and H1/H2 for one harvest."""
    s = PF.early_summary(h.tensors, k, layers)
    split = np.asarray([split_of(i) for i in h.meta["id"]])
    th = PF.Thresholds.fit(s, split == "train", k)
    reg = PF.assign(s, th)
    y = np.asarray(h.meta["label"]).astype(float)
    cats = np.asarray(h.meta["category"])
    evalrows = split != "train"  # hypotheses on rows the thresholds never saw
    out = {"thresholds": th.to_dict(), "regimes": reg, "y": y,
           "by_category": {c: PF.regime_table(y, reg, cats == c) for c in sorted(set(cats.tolist()))},
           "hypotheses": PF.hypotheses(y, reg, evalrows)}
    return out


def _layer_subsets(n: int) -> dict[str, list[int] | None]:
    """Monitored-layer positions by thirds of the stored layers (``all``: every one)."""
    return {"all": None, "early": list(range(0, n // 3)), "middle": list(range(n // 3, 2 * n // 3)),
            "late": list(range(2 * n // 3, n))}


def hypothesis_grid(harvests, k: int = 8, n_boot: int = 1000) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """H1 and H2 on every model (harvest) x normalisation x prompt category x monitored-layer set, decided by the
    rule of :mod:`riskprobe.report.decide` (Holm over all cells tested). Thresholds per harvest and layer set on
    its training split; the cells use the validation and test rows; the control stratifies by answer length and
    mean entropy of steps 0..k (quintiles each). ``harvests``: ``(folder, harvest, info)`` with the harvest
    section's profile in ``info["prof"]`` (its all-layer regimes are reused, not computed again)."""
    cells: list[dict[str, Any]] = []
    for d, h, info in harvests:
        model, norm = info["meta"]["model"]["name"], h.schema["normalisation"]
        split = np.asarray([split_of(i) for i in h.meta["id"]])
        ev = split != "train"
        y = np.asarray(h.meta["label"]).astype(float)
        cats = np.asarray(h.meta["category"])
        ids = np.asarray(h.meta["id"])
        mask = h.tensors["step_mask"].bool()[:, : k + 1]
        ent = masked_step_mean(h.tensors["commitment"].float()[:, : k + 1, CI["entropy"]], mask).numpy()
        strata = np.asarray([f"{a}|{b}" for a, b in zip(quantile_strata(np.asarray(h.meta["n_tokens"], float)),
                                                          quantile_strata(ent))])
        for lname, idx in _layer_subsets(len(h.schema["layers"])).items():
            if idx is not None and not idx:
                continue
            if idx is None:  # every layer: the harvest section's profile already holds these regimes
                reg = info["prof"]["regimes"]
            else:
                s_ = PF.early_summary(h.tensors, k, idx)
                reg = PF.assign(s_, PF.Thresholds.fit(s_, split == "train", k))
            com = reg["regime"] == "committed"
            arms = {"H1": (com & (reg["sync_level"] == "low"), com & (reg["sync_level"] == "high")),
                    "H2": (reg["regime"] == "turbulent_unresolved", reg["regime"] == "turbulent_resolved")}
            for cat in sorted(set(cats.tolist())):
                rows = ev & (cats == cat)
                for hyp, (a, b) in arms.items():
                    c = cell_effect(y, a & rows, b & rows, ids, strata=strata, n_boot=n_boot)
                    c.update(hypothesis=hyp, model=model, normalisation=norm, category=cat, layers=lname,
                             harvest=str(d), rows=int(rows.sum()),
                             share_a=float((a & rows).sum() / max(rows.sum(), 1)),
                             share_b=float((b & rows).sum() / max(rows.sum(), 1)))
                    cells.append(c)
    return cells, decide(cells)


def decisions_md(cells: list[dict[str, Any]], info: dict[str, Any], plot: str | None) -> list[str]:
    """The decisions table (hypothesis x model x normalisation x category x layers)."""
    md = ["## Hypotheses: decisions", "",
          f"Rule (riskprobe.report.decide): effect = error rate of regime a minus regime b on validation + test rows; "
          f"95% bootstrap interval over questions; Holm over the {info['tests']} cells tested (of {info['cells']}; "
          f"the {info['controlled_tests']} controlled effects are a second family); "
          f"held / reversed at Holm p < {info['alpha']}, no effect when the interval lies inside "
          f"+-{info['margin']}, a regime under {info['min_rows']} rows is too small. H1: committed + low sync (a) vs "
          "committed + high sync (b). H2: unresolved (a) vs resolved turbulence (b). Controlled: within answer-length x "
          "entropy quintile strata (Mantel-Haenszel).", ""]
    if plot:
        md += [f"![decisions]({plot})", ""]
    md += ["| hyp | model | norm | category | layers | n a / b (share) | effect [95% CI] | odds ratio | Holm p | "
           "controlled [95% CI], verdict | verdict | rows to decide |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        head = (f"| {c['hypothesis']} | {c['model']} | {c['normalisation']} | {c['category']} | {c['layers']} | "
                f"{c['n_a']} / {c['n_b']} ({c['share_a']:.0%} / {c['share_b']:.0%}) |")
        if not c.get("tested"):
            md.append(head + " - | - | - | - | too small | - |")
            continue
        ctl = c.get("controlled") or {}
        cs = (f"{ctl['effect']:+.3f} [{ctl['ci'][0]:+.3f}, {ctl['ci'][1]:+.3f}] {ctl.get('verdict', '')}"
              if ctl and np.isfinite(ctl["effect"]) else "-")
        md.append(head + f" {c['effect']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] | {c['odds_ratio']:.2f} | "
                  f"{c['p_holm']:.3g} | {cs} | **{c['verdict']}** | {c.get('rows_to_decide') or '-'} |")
    md.append("")
    return md


def _regime_md(tab: list[dict]) -> list[str]:
    out = ["| regime | sync | share | n | error rate [95% CI] |", "|---|---|---|---|---|"]
    for r in tab:
        if r["n"]:
            out.append(f"| {r['regime']} | {r['sync']} | {r['share']:.1%} | {r['n']} | {r['error_rate']:.1%} "
                       f"[{r['error_ci'][0]:.1%}, {r['error_ci'][1]:.1%}] |")
    return out


def _hyp_md(name: str, h: dict) -> str:
    eff = h.get("effect", float("nan"))
    ci = h.get("ci", [float("nan")] * 2)
    extra = f" (groups: {h['n_a']} vs {h['n_b']} rows)" if "n_a" in h else ""
    return f"- **{name}** {h['statement']}: effect {eff:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] -> **{h['verdict']}**{extra}"


def harvest_section(d: Path, h, out: Path, tag: str, k: int) -> tuple[list[str], dict]:
    m = json.loads((d / "riskprobe.json").read_text())
    title = f"{m['model']['name']} on {m['prompts']} ({len(h)} answers)"
    md = [f"## Harvest `{d}`: {title}", "",
          f"Normalisation `{h.schema['normalisation']}`, layers {h.schema['layers'][:3]}...{h.schema['layers'][-1:]}, "
          f"K = {h.schema['K']}.",
          "", "| set | n | correct | echo discounted |", "|---|---|---|---|"]
    for s, v in m.get("summary", {}).items():
        md.append(f"| {s} | {v['n']} | {v['correct_rate']:.1%} | {v['echo_rate']:.1%} |")
    md += ["", "### Mean trajectories, correct vs wrong", "",
           f"![trajectories]({plot_trajectories(h, out / f'{tag}_trajectories.png', title)})", ""]
    prof = profile_harvest(h, k)
    md += [f"### Dynamic profile (early window: steps 0..{k})", "",
           "Thresholds, fitted on the training split: " + ", ".join(f"{a} = {b:.3f}" for a, b in prof["thresholds"].items()
                                                                  if a != "k"), ""]
    for cat, tab in prof["by_category"].items():
        md += [f"**{cat}**", "", *_regime_md(tab), ""]
    md += ["Hypotheses, this harvest alone (validation and test splits, no multiplicity correction; the decisions are "
           "in *Hypotheses: decisions* above):", "", *[_hyp_md(n, v) for n, v in prof["hypotheses"].items()], ""]
    summary = {"title": title, "model": m["model"]["name"], "normalisation": h.schema["normalisation"],
               "thresholds": prof["thresholds"], "hypotheses": prof["hypotheses"], "by_category": prof["by_category"]}
    return md, {"summary": summary, "prof": prof, "meta": m}


REPORT_FILE = lambda name: name.endswith((".md", ".json", ".png"))  # noqa: E731 - what a report folder holds


def headline(runs: list[str | Path]) -> list[str]:
    """The report's opening lines: what the first fit run's probe does against the best training-free score on its
    test split, and the size and right rate of each harvest."""
    lines = []
    for r in runs:
        d = Path(r)
        if (d / "metrics.json").is_file() and not lines:
            m = FitMetrics.read(d / "metrics.json")
            p, g = m.probe, m.margin or {}
            tf = m.baselines.get(g.get("best_training_free"), {})
            ci = p.get("auroc_ci") or [float("nan")] * 2
            line = (f"**Headline.** The probe `{p['name']}` ranks wrong answers above right ones with AUROC "
                    f"**{p['auroc']:.3f}** [{ci[0]:.3f}, {ci[1]:.3f}] on {p['n']} test answers ({p['n_incorrect']} wrong, "
                    f"base error rate {p['n_incorrect'] / max(p['n'], 1):.2f})")
            if tf:
                line += (f", against {tf['auroc']:.3f} for the best training-free score (`{g['best_training_free']}`): "
                         f"margin **{g['auroc_margin_training_free']:+.3f}**")
            lines += [line + ". In distribution only: the test questions come from the sources it trained on.", ""]
    for r in runs:
        d = Path(r)
        if (d / "riskprobe.json").is_file():
            hm = read_manifest(d)
            n, ok = hm.get("n_rows", 0), sum(v["n"] * v["correct_rate"] for v in (hm.get("summary") or {}).values())
            lines.append(f"- harvest `{d}`: {n} answers of {hm['model']['name']}, {ok / max(n, 1):.1%} right")
    return lines + ([""] if lines else [])


def write_report(runs: list[str | Path], out: str | Path, *, k: int = 8, extra: list[str] | None = None) -> Path:
    """Write ``report.md`` (+ PNGs, ``report.json``) for fit runs and harvests into ``out``; it opens with a
    headline (:func:`headline`), then ``extra`` (Markdown lines a caller adds, such as a transfer table).

    The folder is written whole or not at all; an existing ``out`` is replaced only if it holds nothing but
    report files."""
    out = Path(out)
    mine = owned_dir(REPORT_FILE)
    if (out.exists() or out.is_symlink()) and not mine(out):
        raise UserError("exists and holds files that are not a riskprobe report's; choose another --out", file=out,
                        field="out")
    with atomic_dir(out, replace=mine) as tmp:
        _write_report_into(runs, tmp, k, extra or [])
    return out / "report.md"


def _write_report_into(runs: list[str | Path], out: Path, k: int, extra: list[str]) -> None:
    md = ["# riskprobe report", "", *headline(runs), *extra]
    js: dict[str, Any] = {"fits": [], "harvests": []}
    harvests = []
    for i, r in enumerate(runs):
        d = Path(r)
        if (d / "metrics.json").is_file():
            md += fit_section(d, out, f"fit{i}")
            js["fits"].append(str(d))
        elif (d / "riskprobe.json").is_file():
            h = load_harvests([d])
            sec, info = harvest_section(d, h, out, f"harvest{i}", k)
            md += sec
            js["harvests"].append(info["summary"])
            harvests.append((d, h, info))
        else:
            raise UserError("neither a fit run (metrics.json) nor a harvest (riskprobe.json)", file=d, field="run")
    if harvests:
        cells, info = hypothesis_grid(harvests, k)
        plot = plot_decisions(cells, out / "decisions.png") if any(c.get("tested") for c in cells) else None
        first = next((i for i, line in enumerate(md) if line.startswith("## Harvest ")), len(md))
        md[first:first] = decisions_md(cells, info, plot)
        js["decisions"] = {"rule": info, "cells": cells}
    if len(harvests) > 1:
        side = out / "side_by_side.png"
        md += ["## Harvests side by side", "",
               f"![side by side]({plot_side_by_side([(i['summary']['title'], h) for _, h, i in harvests], side)})", ""]
        # Profiles on shared axes: one set of thresholds, fitted on the pooled training rows of all harvests.

        summ = [PF.early_summary(h.tensors, k) for _, h, _ in harvests]
        trains = [np.asarray([split_of(i) == "train" for i in h.meta["id"]]) for _, h, _ in harvests]
        pooled = {n: np.concatenate([s_[n] for s_ in summ]) for n in summ[0]}
        th = PF.Thresholds.fit(pooled, np.concatenate(trains), k)
        groups = {}
        for (_, h, info), s_ in zip(harvests, summ):
            reg = PF.assign(s_, th)
            sets = np.asarray(h.meta["set"])
            for s in sorted(set(sets.tolist())):
                # the same model, normalisation and set in two harvests: the first one stands for it
                groups.setdefault((info["meta"]["model"]["name"] + "|" + h.schema["normalisation"], s), (reg, sets == s))
        h3 = PF.between_vs_within(groups)
        md += ["Profiles on shared axes (thresholds fitted on the pooled training rows: "
               + ", ".join(f"{a} = {b:.3f}" for a, b in th.to_dict().items() if a != "k")
               + "); shares of regime x sync cells per model and set:", ""]
        md += ["| model | set | " + " | ".join(f"{a}/{b}" for a, b in PF.CELLS) + " |", "|---|---|" + "---|" * len(PF.CELLS)]
        for (mname, s), (reg, rows) in groups.items():
            v = PF.profile_vector(reg, np.flatnonzero(rows))
            md.append(f"| {mname} | {s} | " + " | ".join(f"{x:.2f}" for x in v) + " |")
        md += ["", _hyp_md("H3", h3), ""]
        js["H3"] = h3
        norms = {}
        for _, h, info in harvests:
            norms.setdefault(info["meta"]["model"]["name"], []).append(
                (h.schema["normalisation"], info["summary"]["hypotheses"]["H1"]))
        rows = [(mn, n, hh) for mn, lst in norms.items() if len({x[0] for x in lst}) > 1 for n, hh in lst]
        if rows:
            md += ["H1 by hidden-state normalisation (same model):", "", "| model | normalisation | H1 effect [CI] | verdict |",
                   "|---|---|---|---|"]
            md += [f"| {mn} | {n} | {hh['effect']:+.3f} [{hh['ci'][0]:+.3f}, {hh['ci'][1]:+.3f}] | {hh['verdict']} |"
                   for mn, n, hh in rows]
            md.append("")
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    atomic_write_json(out / "report.json", js)
