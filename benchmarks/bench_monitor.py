"""RiskMonitor overhead and offline scoring throughput, measured side by side in one run.

    python benchmarks/bench_monitor.py --probe default --n 64 --rounds 8

Plain ``model.generate`` vs the same call with a RiskMonitor (flag only), interleaved rounds (the order
alternates from round to round), same prompts, batch size and max tokens; prints tokens/s, the ratio of the
totals, and the median and spread (min, max, IQR) of the per-round ratios.
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
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=33)
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one batch: where the monitor's time goes (torch.profiler ranges)")
    ap.add_argument("--allow-model-mismatch", action="store_true",
                    help="run the probe on another model of the same shape (e.g. random weights, for timing only)")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import torch
    from transformers import StoppingCriteriaList

    from riskprobe.models import load_model, render
    from riskprobe.models.generation import eos_ids, tokenize
    from riskprobe.prompts.sets import load_items
    from riskprobe.serving.monitor import RiskMonitor
    from riskprobe.serving.scorer import Scorer

    scorer = Scorer.load(args.probe)
    lm = load_model(args.model or scorer.model_identity["name"], device=args.device, dtype=args.dtype)
    scorer.check_model(lm, allow_model_mismatch=args.allow_model_mismatch)
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
                    with RiskMonitor(scorer, lm, allow_model_mismatch=args.allow_model_mismatch) as mon:
                        out = lm.model.generate(**enc, **kw, stopping_criteria=StoppingCriteriaList([mon]))
                else:
                    out = lm.model.generate(**enc, **kw)
            toks += count(out, enc["input_ids"].shape[1])
        return toks, time.perf_counter() - t0

    import numpy as np

    run(False)  # warm-up
    run(True)
    res = {"plain": [0, 0.0], "with RiskMonitor": [0, 0.0]}
    ratios = []
    for r in range(args.rounds):
        rate = {}
        for name in (list(res) if r % 2 == 0 else list(res)[::-1]):
            n, s = run(name != "plain")
            res[name][0] += n
            res[name][1] += s
            rate[name] = n / s
        ratios.append(rate["with RiskMonitor"] / rate["plain"])
    base = res["plain"][0] / res["plain"][1]
    dev = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"model {lm.identity.name} on {dev} ({next(lm.model.parameters()).dtype}), probe k={scorer.k}, "
          f"{len(items)} prompts x {args.rounds} rounds, batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, threads {torch.get_num_threads()}")
    print(f"{'variant':<20}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ratio':>8}")
    for name, (n, s) in res.items():
        print(f"{name:<20}{n:>8}{s:>10.2f}{n / s:>10.1f}{(n / s) / base:>8.3f}")
    q = np.quantile(ratios, [0.0, 0.25, 0.5, 0.75, 1.0])
    print(f"per-round ratio (monitor / plain) over {len(ratios)} rounds: median {q[2]:.4f}, IQR [{q[1]:.4f}, {q[3]:.4f}], "
          f"min {q[0]:.4f}, max {q[4]:.4f}; median overhead {100 * (1 - q[2]):.2f}%")
    if args.profile:
        profile_batch(scorer, lm, batches[0], args)


def profile_batch(scorer, lm, enc, args) -> None:
    """One batch plain and one monitored under torch.profiler, the monitor's phases as named ranges."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import StoppingCriteriaList

    from riskprobe.serving import monitor as mon_mod
    from riskprobe.signatures import capture as cap_mod

    def label(cls, name, key):
        f = getattr(cls, name)

        def g(*a, **k):
            with record_function(key):
                return f(*a, **k)
        setattr(cls, name, g)

    label(mon_mod.RiskMonitor, "__init__", "monitor.init")
    label(mon_mod.RiskMonitor, "__call__", "monitor.criterion")
    label(mon_mod.RiskMonitor, "_compute", "monitor.compute_risk")
    label(cap_mod.Capture, "_step", "capture.step_features")
    label(cap_mod.Capture, "finish", "capture.finish")
    label(type(scorer), "risk", "scorer.risk")
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if lm.device.type == "cuda" else [])
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    for monitored in (False, True):
        with torch.inference_mode(), profile(activities=acts) as prof:
            sync()
            t0 = time.perf_counter()
            if monitored:
                with mon_mod.RiskMonitor(scorer, lm, allow_model_mismatch=args.allow_model_mismatch) as m:
                    lm.model.generate(**enc, **kw, stopping_criteria=StoppingCriteriaList([m]))
            else:
                lm.model.generate(**enc, **kw)
            sync()
            wall = time.perf_counter() - t0
        ev = prof.key_averages()
        n_ops = sum(e.count for e in ev if e.key.startswith("aten::"))
        n_kern = sum(e.count for e in ev if getattr(e, "device_type", None) is not None
                     and str(e.device_type).endswith("CUDA"))
        print(f"profile, {'monitored' if monitored else 'plain'} batch: {wall * 1e3:.1f} ms wall (under the profiler), "
              f"{n_ops} aten calls, {n_kern} device kernels")
        for e in ev:
            if e.key.startswith(("monitor.", "capture.", "scorer.")):
                print(f"    {e.key:<24} calls {e.count:>4}  cpu total {e.cpu_time_total / 1e3:8.2f} ms")
        if monitored:
            print(ev.table(sort_by="self_cpu_time_total", row_limit=12))

if __name__ == "__main__":
    main()
