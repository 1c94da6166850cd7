"""Markdown tables of transfer experiment results (the JSON files benchmarks/experiments/transfer.py writes), for the
docs: per recipe the mean over held-out sources, then one recipe's per-source rows, the back-off table and the adapt
curve.

    python benchmarks/experiments/transfer_tables.py benchmarks/results/2026-12-06/transfer-smollm2.json --recipe "raw (shipped)"
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--recipe", help="the recipe whose per-source rows to print")
    a = ap.parse_args()
    rows_by = {}
    for f in a.results:
        res = json.load(open(f))
        for n, rows in res["rows"].items():
            rows_by[n] = (rows, res)
    print("| recipe | sources | mean AUROC | mean margin (whole answer) | worst | mean margin at k | worst at k "
          "| wins / losses |")
    print("|---|---|---|---|---|---|---|---|")
    for n, (rows, _) in rows_by.items():
        m = [r["margin"] for r in rows]
        mk = [r["margin_at_k"] for r in rows]
        wins = sum(r["margin_ci"][0] > 0 for r in rows)
        losses = sum(r["margin_ci"][1] < 0 for r in rows)
        print(f"| {n} | {len(rows)} | {np.mean([r['auroc'] for r in rows]):.3f} | {np.mean(m):+.3f} | {min(m):+.3f} | "
              f"{np.mean(mk):+.3f} | {min(mk):+.3f} | {wins} / {losses} |")
    if a.recipe:
        rows, res = rows_by[a.recipe]
        print(f"\n{a.recipe}, per held-out source:\n")
        print("| held-out source | right / wrong | AUROC [95% CI] | best training-free, whole answer | margin [95% CI] | "
              "best at k | margin at k [95% CI] |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            b, bk = r["best_training_free"], r["best_at_k"]
            print(f"| {r['source']} | {r['n'] - r['n_wrong']} / {r['n_wrong']} | {r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, "
                  f"{r['auroc_ci'][1]:.3f}] | {b['auroc']:.3f} `{b['name']}` | {r['margin']:+.3f} [{r['margin_ci'][0]:+.3f}, "
                  f"{r['margin_ci'][1]:+.3f}] | {bk['auroc']:.3f} `{bk['name']}` | {r['margin_at_k']:+.3f} "
                  f"[{r['margin_at_k_ci'][0]:+.3f}, {r['margin_at_k_ci'][1]:+.3f}] |")
        if res.get("ood"):
            print("\n| held-out source | rows backed off | AUROC in distribution | held out | lost |")
            print("|---|---|---|---|---|")
            for o in res["ood"]:
                print(f"| {o['source']} | {o['flagged']:.1%} | {o['auroc_in_distribution']:.3f} | {o['auroc_held_out']:.3f} | "
                      f"{o['auroc_lost']:+.3f} |")
        if res.get("adapt"):
            ns = sorted({p["n"] for c in res["adapt"] for p in c["points"]})
            print("\n| held-out source | " + " | ".join(f"{n} labels" for n in ns) + " |")
            print("|---|" + "---|" * len(ns))
            for c in res["adapt"]:
                cells = []
                for n in ns:
                    ps = [p for p in c["points"] if p["n"] == n]
                    cells.append(f"{np.mean([p['adapted'] for p in ps]):.3f} / {np.mean([p['unadapted'] for p in ps]):.3f} / "
                                 f"{np.mean([p['best_training_free'] for p in ps]):.3f}" if ps else "-")
                print(f"| {c['source']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
