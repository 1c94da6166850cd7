"""Metrics as text tables: the probe beside its baselines, and AUROC by k."""

from __future__ import annotations

from typing import Any

from .given import format_groups


def format_table(res: dict[str, Any]) -> str:
    """The metrics of the probe and baselines as a text table."""
    rows = [(res["probe"]["name"], res["probe"])] + list(res.get("baselines", {}).items())
    p = res["probe"]
    lines = [f"test split: {p['n']} answers, {p['n_incorrect']} wrong (base error rate {p['n_incorrect'] / max(p['n'], 1):.3f}, "
             f"the AUPRC of a random score)",
             f"{'score':<30}{'AUROC [95% CI]':>22}{'AUPRC':>8}{'PRR':>8}{'Brier':>8}{'ECE':>7}{'n':>6}{'wrong':>6}"]
    for name, r in rows:
        ci = r["auroc_ci"]
        lines.append(f"{name:<30}{r['auroc']:>8.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{r['auprc']:>8.3f}{r['prr']:>8.3f}"
                     f"{r['brier']:>8.3f}{r['ece']:>7.3f}{r['n']:>6}{r['n_incorrect']:>6}")
    if "margin" in res:
        m = res["margin"]
        lines.append(f"probe - best baseline ({m['best_baseline']}): {m['auroc_margin']:+.3f} AUROC; "
                     f"- best training-free ({m['best_training_free']}): {m['auroc_margin_training_free']:+.3f}")
    return "\n".join(lines)


def format_controls(res: dict[str, Any]) -> str:
    """Controls (the probe's AUROC within strata of confidence, length and set), selective prediction and
    the monitor's early-stop savings, as text."""
    lines = []
    if res.get("controls"):
        lines.append("controls: the probe's AUROC comparing only answers within the same stratum (95% CI)")
        for name, c in res["controls"].items():
            lines.append(f"  {name:<62}{c['auroc']:.3f} [{c['auroc_ci'][0]:.3f}, {c['auroc_ci'][1]:.3f}]"
                         f"  ({c['strata']} strata)")
    sel = res.get("selective")
    if sel:
        cov = sel["coverages"]
        lines.append(f"selective prediction: error rate among the answers kept (lowest risk first); "
                     f"all kept: {sel['base_error']:.3f}")
        lines.append(f"  {'score':<52}" + "".join(f"{f'{int(c * 100)}% kept':>22}" for c in cov) + f"{'AURC':>8}")
        for name, r in sel["scores"].items():
            cells = "".join(f"{r['error'][str(c)]['value']:>8.3f} [{r['error'][str(c)]['ci'][0]:.2f},"
                            f"{r['error'][str(c)]['ci'][1]:.2f}]" for c in cov)
            lines.append(f"  {name[:51]:<52}{cells}{r['aurc']:>8.3f}")
    e = res.get("early_stop")
    if e:
        lines.append(f"monitor: stopping rows with risk >= {e['threshold']:.3f} at step {e['k']} (set on validation for "
                     f"{e['target_recall']:.0%} recall of wrong answers) catches {e['recall']:.1%} of wrong answers on "
                     f"test, stops {e['right_answers_stopped']:.1%} of right ones, saves {e['tokens_saved']:.1%} of "
                     f"generated tokens")
    if res.get("ood"):
        o = res["ood"]
        lines.append(f"out of distribution: distance > {o['threshold']:.3f} (the {o['quantile']:.0%} quantile on "
                     f"validation) flags {o['test_flagged']:.1%} of test rows")
    if res.get("given"):

        lines.append("given answers, test split: by provenance and source (length-matched: as many right as wrong "
                     "answers of each length; best training-free chosen on these rows)")
        lines.append(format_groups(res["given"]))
    return "\n".join(lines)


def sweep_series(sweep: dict[str, Any]) -> dict[str, list[dict[str, Any] | None]]:
    """Per score (``probe`` and each baseline, named without its ``@k``), its metrics at each k of a sweep."""
    rows = sweep["rows"]
    series: dict[str, list] = {"probe": [r["probe"] for r in rows]}
    for name in rows[0].get("controls") or {}:
        base = name.split(" (")[0]  # the stratifying score's name may change with k
        series["probe " + base] = [next((v for kk, v in (r.get("controls") or {}).items() if kk.split(" (")[0] == base),
                                        None) for r in rows]
    for name in rows[0]["baselines"]:
        base = name.split("@k")[0]
        series[base] = [next((v for kk, v in r["baselines"].items() if kk.split("@k")[0] == base), None) for r in rows]
    return series


def format_sweep(sweep: dict[str, Any]) -> str:
    """AUROC [95% CI] by k for the probe and every baseline."""
    lines = [f"{'score':<28}" + "".join(f"{'k=' + str(r['k']):>22}" for r in sweep["rows"])]
    for name, ms in sweep_series(sweep).items():
        cells = [f"{m['auroc']:.3f} [{m['auroc_ci'][0]:.2f},{m['auroc_ci'][1]:.2f}]" if m else "-" for m in ms]
        lines.append(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)
