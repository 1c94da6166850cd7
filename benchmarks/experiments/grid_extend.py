"""The hypotheses grid extended by more harvests, decided again as one family.

`riskprobe report` writes every cell of its grid to report.json with its uncorrected p. This joins the cells of an
earlier grid with those of a report on more harvests (another model's three normalisations, say) and decides the
union again with the same rule (riskprobe.report.decide: Holm over every tested cell), so that the new row of models is
corrected together with the old ones, as if the grid had been run on all the harvests at once, without extracting the
old harvests again. It prints the verdicts that the larger family changes.

    python benchmarks/experiments/grid_extend.py --grid benchmarks/results/2026-11-26/hypotheses/report.json \
        --add runs/report-q15/report.json --out benchmarks/results/2026-12-06/hypotheses
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from riskprobe.report.build import decisions_md
from riskprobe.report.decide import decide
from riskprobe.report.plots import plot_decisions


def cells_of(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["decisions"]["cells"]


def key(c: dict) -> tuple:
    return c["hypothesis"], c["model"], c["normalisation"], c["category"], c["layers"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", required=True, help="report.json of the earlier grid")
    ap.add_argument("--add", nargs="+", required=True, help="report.json files of reports on more harvests")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    old = cells_of(a.grid)
    before = {key(c): c.get("verdict") for c in old}
    cells = copy.deepcopy(old)
    for p in a.add:
        new = cells_of(p)
        clash = {key(c) for c in new} & set(before)
        if clash:
            raise SystemExit(f"{p}: cells already in the grid, e.g. {sorted(clash)[0]}")
        cells += copy.deepcopy(new)
    info = decide(cells)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_decisions(cells, out / "decisions.png")
    md = ["# The hypotheses grid, extended", "",
          f"Cells of `{a.grid}` and of {', '.join(f'`{p}`' for p in a.add)}, decided again as one family "
          f"(`benchmarks/experiments/grid_extend.py`).", ""]
    md += decisions_md(cells, info, Path(plot).name)
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps({"decisions": {"cells": cells, "rule": info},
                                                 "sources": [a.grid, *a.add]}, indent=1, default=float),
                                     encoding="utf-8")
    changed = [(key(c), before[key(c)], c.get("verdict")) for c in cells[:len(old)] if c.get("verdict") != before[key(c)]]
    print(f"{info['tests']} cells tested of {info['cells']} ({info['controlled_tests']} controlled); "
          f"{len(cells) - len(old)} new cells")
    for k, v, w in changed:
        print(f"changed by the larger family: {' '.join(k)}: {v} -> {w}")
    for c in cells[len(old):]:
        if c.get("tested") and c["verdict"] != "undecided":
            print(f"new: {' '.join(key(c))}: {c['effect']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                  f"{c['verdict']} (Holm p {c['p_holm']:.3g})")


if __name__ == "__main__":
    main()
