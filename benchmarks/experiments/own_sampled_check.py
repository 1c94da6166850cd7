"""The model's own sampled answers: their risk while generated live (capture) against the same answers teacher
forced afterwards (the given-answer path), with the generation probe, and the AUROC of each against the grades.

    python benchmarks/experiments/own_sampled_check.py --n 256 --prompts builtin-factual+arithmetic+triviaqa
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="default")
    ap.add_argument("--prompts", default="builtin-factual+arithmetic+triviaqa")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()

    import numpy as np

    from riskprobe.evaluation import metrics as M
    from riskprobe.models import load_model, render
    from riskprobe.models.generation import generate
    from riskprobe.prompts.grading import is_correct
    from riskprobe.prompts.sets import load_items
    from riskprobe.serving.scorer import Scorer
    from riskprobe.signatures import Capture
    from riskprobe.signatures.extract import Extractor

    sc = Scorer.load(args.probe)
    lm = load_model(sc.model_identity["name"])
    sc.check_model(lm)
    items = load_items(args.prompts, limit=args.n, seed=0)
    live, forced, y = [], [], []
    for b in range(0, len(items), args.batch_size):
        chunk = items[b:b + args.batch_size]
        rps = [render(lm.tokenizer, it.prompt, it.answer_kind) for it in chunk]
        cap = Capture(lm, sc.feature_spec())
        with cap:
            gens = generate(lm, rps, max_new_tokens=33, do_sample=True, temperature=args.temperature,
                            row_seeds=[1000 + b + j for j in range(len(chunk))])
        ids = [g.token_ids for g in gens]
        live += sc.risk(cap.finish(ids)).tolist()
        forced += sc.risk(Extractor(lm, sc.feature_spec()).extract(rps, ids)).tolist()
        y += [int(not is_correct(g.text, list(it.answers), it.answer_kind, it.prompt)) for g, it in zip(gens, chunk)]
    live, forced, y = np.asarray(live), np.asarray(forced), np.asarray(y)
    d = np.abs(live - forced)
    print(f"{len(y)} sampled answers (temperature {args.temperature}), {y.sum()} wrong; |live - forced| risk: "
          f"max {d.max():.2e}, mean {d.mean():.2e}, rows over 1e-4: {(d > 1e-4).sum()}")
    for name, s in (("live", live), ("teacher forced", forced)):
        lo, hi = M.bootstrap_ci(M.auroc, y, s, n_boot=500)
        print(f"  AUROC {name:<16}{M.auroc(y, s):.4f} [{lo:.3f}, {hi:.3f}]")


if __name__ == "__main__":
    main()
