"""Optional: lm-polygraph's single-pass estimators on the same prompts, beside riskprobe (never in CI).

    pip install lm-polygraph      # heavy; not a riskprobe dependency
    python benchmarks/perf/bench_polygraph.py --harvest runs/tqa --model HuggingFaceTB/SmolLM2-135M-Instruct

For the test-split questions of a harvest, runs lm-polygraph's MaximumSequenceProbability, Perplexity and
MeanTokenEntropy through its WhiteboxModel, and prints their AUROC against the harvest's labels and the
time they take, next to the training-free scores riskprobe computed during the harvest.
"""

from __future__ import annotations

import argparse
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harvest", required=True)
    ap.add_argument("--model", required=True, help="a hub id or directory lm-polygraph can load")
    ap.add_argument("--limit", type=int, default=300)
    args = ap.parse_args()
    try:
        from lm_polygraph.estimators import (
            MaximumSequenceProbability,
            MeanTokenEntropy,
            Perplexity,
        )
        from lm_polygraph.utils.manager import estimate_uncertainty
        from lm_polygraph.utils.model import WhiteboxModel
    except ImportError:
        print("lm-polygraph is not installed (pip install lm-polygraph); nothing to compare", file=sys.stderr)
        return 0
    import datasets
    import numpy as np

    from riskprobe.evaluation.baselines import training_free_scores
    from riskprobe.evaluation.metrics import auroc
    from riskprobe.harvest.store import load_harvests

    h = load_harvests([args.harvest])
    ds = datasets.load_from_disk(args.harvest)
    test = [i for i, s in enumerate(ds["split"]) if s == "test"][: args.limit]
    y = np.asarray([ds[i]["label"] for i in test])
    model = WhiteboxModel.from_pretrained(args.model, device_map="cpu")
    for est in (MaximumSequenceProbability(), Perplexity(), MeanTokenEntropy()):
        t0 = time.perf_counter()
        u = [estimate_uncertainty(model, est, input_text=ds[i]["input_text"]).uncertainty for i in test]
        print(f"lm-polygraph {type(est).__name__:<28} AUROC {auroc(y, np.asarray(u)):.3f}  "
              f"{(time.perf_counter() - t0) / len(test) * 1000:.0f} ms/question")
    for name, s in training_free_scores(h.tensors, 4).items():
        print(f"riskprobe    {name:<28} AUROC {auroc(y, s[test]):.3f}  (computed during the harvest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
