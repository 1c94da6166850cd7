"""Each model as the judge of answers other systems wrote: the EfficientQA test questions' answers by real QA systems,
rated by people, teacher forced through each model in turn; the AUROC of every training-free score (the model's own
confidence in the given answer) against the human ratings, with bootstrap intervals, the models side by side.

    python benchmarks/experiments/judge.py --model smollm2-135m --model qwen2.5-1.5b --limit 600 \
        --out benchmarks/results/2026-12-06/judge-efficientqa.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from riskprobe.evaluation.baselines import training_free_scores
from riskprobe.evaluation.given import forced_in_batches
from riskprobe.evaluation.metrics import auroc, bootstrap_ci
from riskprobe.models import load_model, set_threads
from riskprobe.prompts.answers import efficientqa_answers
from riskprobe.signatures import FeatureSpec
from riskprobe.signatures.extract import Extractor

K = 32  # the whole of a short given answer


def judge(name: str, rows, batch_size: int) -> dict:
    lm = load_model(name, device="cpu")
    spec = FeatureSpec(K=K, families=["commitment", "lens"], lens_steps=0, raw_steps=0).resolve(lm)
    t0 = time.perf_counter()
    sig, _ = forced_in_batches(lm, rows, Extractor(lm, spec).extract_answers, batch_size=batch_size,
                               label=f"judge {name}")
    t = {k: torch.as_tensor(sig[k]) for k in ("commitment", "step_mask")}
    y = np.asarray([r.label for r in rows])
    out = {}
    for score, v in training_free_scores(t, K).items():
        v = np.asarray(v, dtype=float)
        lo, hi = bootstrap_ci(auroc, y, v, n_boot=1000, seed=0)
        out[score] = {"auroc": float(auroc(y, v)), "ci": [float(lo), float(hi)]}
    return {"model": name, "identity": lm.identity.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
            "scores": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--limit", type=int, default=600, help="EfficientQA questions (all their rated answers)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    set_threads(a.threads)
    rows = efficientqa_answers(limit=a.limit)
    y = np.asarray([r.label for r in rows])
    res = {"rows": len(rows), "wrong": int(y.sum()), "questions": len({r.id for r in rows}),
           "models": [judge(m, rows, a.batch_size) for m in a.model]}
    print(f"EfficientQA: {res['rows']} answers by real QA systems to {res['questions']} questions, {res['wrong']} rated "
          "wrong by people; AUROC of each model's own confidence in the answer (95% CI)")
    names = list(res["models"][0]["scores"])
    print(f"{'score':<28}" + "".join(f"{m['model']:>24}" for m in res["models"]))
    for s in names:
        print(f"{s:<28}" + "".join("{:>24}".format("{:.3f} [{:.3f}, {:.3f}]".format(m["scores"][s]["auroc"],
                                                                                   *m["scores"][s]["ci"]))
                                   for m in res["models"]))
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
