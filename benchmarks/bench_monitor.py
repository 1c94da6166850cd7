"""RiskMonitor overhead and offline scoring throughput, measured side by side in one run.

    python benchmarks/bench_monitor.py --probe default --n 64 --rounds 3

Plain ``model.generate`` vs the same call with a RiskMonitor (flag only), interleaved rounds, same
prompts, batch size and max tokens; prints tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="default")
    ap.add_argument("--model")
    ap.add_argument("--prompts", default="triviaqa")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=33)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from transformers import StoppingCriteriaList

    from riskprobe.generation import eos_ids, tokenize
    from riskprobe.models import load_model, render
    from riskprobe.monitor import RiskMonitor
    from riskprobe.prompts import load_items
    from riskprobe.scoring import Scorer

    scorer = Scorer.load(args.probe)
    lm = load_model(args.model or scorer.model_identity["name"])
    scorer.check_model(lm)
    items = load_items(args.prompts, limit=args.n)
    batches = [tokenize(lm, [render(lm.tokenizer, it.prompt, it.answer_kind) for it in items[b:b + args.batch_size]])
               for b in range(0, len(items), args.batch_size)]
    ends = eos_ids(lm)

    def count(out, plen):
        n = 0
        for row in out[:, plen:].tolist():
            for t in row:
                n += 1
                if t in ends:
                    break
        return n

    def run(monitor: bool):
        toks, t0 = 0, time.perf_counter()
        for enc in batches:
            kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
            with torch.inference_mode():
                if monitor:
                    with RiskMonitor(scorer, lm) as mon:
                        out = lm.model.generate(**enc, **kw, stopping_criteria=StoppingCriteriaList([mon]))
                else:
                    out = lm.model.generate(**enc, **kw)
            toks += count(out, enc["input_ids"].shape[1])
        return toks, time.perf_counter() - t0

    run(False)  # warm-up
    res = {"plain": [0, 0.0], "with RiskMonitor": [0, 0.0]}
    for _ in range(args.rounds):
        for name in res:
            n, s = run(name != "plain")
            res[name][0] += n
            res[name][1] += s
    base = res["plain"][0] / res["plain"][1]
    print(f"model {lm.identity.name}, probe k={scorer.k}, {len(items)} prompts x {args.rounds} rounds, batch "
          f"{args.batch_size}, max_new_tokens {args.max_new_tokens}, threads {torch.get_num_threads()}")
    print(f"{'variant':<20}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ratio':>8}")
    for name, (n, s) in res.items():
        print(f"{name:<20}{n:>8}{s:>10.2f}{n / s:>10.1f}{(n / s) / base:>8.3f}")


if __name__ == "__main__":
    main()
