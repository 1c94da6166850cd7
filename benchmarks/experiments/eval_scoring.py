"""Score held-out TriviaQA prompts with an exported probe in a fresh process, then grade and report AUROC.

    python benchmarks/experiments/eval_scoring.py --probe default --n 500 --out runs/eval-scoring

Only questions outside the probe's training split are used (the split is a hash of the id). The scoring
runs as `riskprobe score` in a new process with only the artifact and the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="default")
    ap.add_argument("--prompts", default="triviaqa")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", default="runs/eval-scoring")
    args = ap.parse_args()

    from riskprobe.evaluation.metrics import evaluate
    from riskprobe.prompts.grading import grade
    from riskprobe.prompts.sets import load_items, split_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [it for it in load_items(args.prompts) if split_of(it.id) != "train"][: args.n]
    inp = out / "input.jsonl"
    inp.write_text("".join(json.dumps({"id": it.id, "prompt": it.prompt}) + "\n" for it in items))
    res_path = out / "scored.jsonl"
    res_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "riskprobe", "score", "--probe", args.probe, "--input", str(inp),
                        "--output", str(res_path), "--no-progress"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    rows = {x["id"]: x for x in map(json.loads, res_path.read_text().splitlines())}
    y, risk = [], []
    for it in items:
        row = rows[it.id]
        y.append(int(not grade(row["response"], list(it.answers), it.answer_kind, it.prompt).correct))
        risk.append(row["risk"])
    ev = evaluate(y, risk, n_boot=1000)
    summary = {"n": len(items), "wrong": sum(y), "auroc": ev["auroc"], "auroc_ci": ev["auroc_ci"], "prr": ev["prr"],
               "ece": ev["ece"], "brier": ev["brier"], "wall_seconds_fresh_process": round(wall, 1),
               "rows_per_s": round(len(items) / wall, 2), "stdout": r.stdout.strip().splitlines()[-1:]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
