"""RiskMonitor overhead and offline scoring throughput, measured side by side in one run.

    python benchmarks/perf/bench_monitor.py --probe default --n 64 --rounds 8

Plain ``model.generate`` vs the same call with a RiskMonitor (flag only), same prompts, batch size and max
tokens, each batch run plain and monitored back to back (the order alternating; ``--pairing round`` runs whole
rounds instead); prints tokens/s, the ratio of the totals, and per round the ratio by wall clock and by process
CPU time: median, IQR, range and a bootstrap 95% interval of the median (the interval is what more rounds
narrow; a single round's spread is the machine's noise).
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
    ap.add_argument("--pairing", choices=("batch", "round"), default="batch",
                    help="run plain and monitored back to back per batch (default) or per round")
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

    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)

    def one(enc, monitor: bool):
        """One batch: (tokens, wall seconds, process CPU seconds)."""
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            if monitor:
                with RiskMonitor(scorer, lm, allow_model_mismatch=args.allow_model_mismatch) as mon:
                    out = lm.model.generate(**enc, **kw, stopping_criteria=StoppingCriteriaList([mon]))
            else:
                out = lm.model.generate(**enc, **kw)
        if lm.device.type == "cuda":
            torch.cuda.synchronize(lm.device)
        return count(out, enc["input_ids"].shape[1]), time.perf_counter() - t0, time.process_time() - c0

    import numpy as np

    names = ("plain", "with RiskMonitor")
    for enc in batches:  # warm-up
        one(enc, False)
        one(enc, True)
    res = {name: np.zeros(3) for name in names}  # tokens, wall s, cpu s
    wall_ratios, cpu_ratios = [], []
    for r in range(args.rounds):
        rnd = {name: np.zeros(3) for name in names}
        if args.pairing == "batch":
            # each batch runs plain and monitored back to back (order alternating), so that both halves of a
            # pair see the same state of a shared machine; a round sums its batches
            for b, enc in enumerate(batches):
                for name in (names if (r + b) % 2 == 0 else names[::-1]):
                    rnd[name] += one(enc, name != "plain")
        else:
            for name in (names if r % 2 == 0 else names[::-1]):
                for enc in batches:
                    rnd[name] += one(enc, name != "plain")
        for name in names:
            res[name] += rnd[name]
        p, m = rnd["plain"], rnd["with RiskMonitor"]
        wall_ratios.append((m[0] / m[1]) / (p[0] / p[1]))
        cpu_ratios.append((m[0] / m[2]) / (p[0] / p[2]))
    base = res["plain"][0] / res["plain"][1]
    dev = torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"model {lm.identity.name} on {dev} ({next(lm.model.parameters()).dtype}), probe k={scorer.k}, "
          f"{len(items)} prompts x {args.rounds} rounds, batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, threads {torch.get_num_threads()}, paired by {args.pairing}")
    print(f"{'variant':<20}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ratio':>8}{'cpu s':>10}")
    for name, (n, s, c) in res.items():
        print(f"{name:<20}{int(n):>8}{s:>10.2f}{n / s:>10.1f}{(n / s) / base:>8.3f}{c:>10.2f}")
    for what, ratios in (("wall-clock", wall_ratios), ("process CPU time", cpu_ratios)):
        print(f"per-round ratio of tokens/s by {what} (monitor / plain) over {len(ratios)} rounds: "
              + ratio_summary(ratios))
    if args.profile:
        profile_batch(scorer, lm, batches[0], args)


def ratio_summary(ratios, n_boot: int = 10_000, seed: int = 0) -> str:
    """Median, IQR, range and a bootstrap 95% interval of the median of per-round ratios. The interval is what
    more rounds narrow (the spread of single rounds is the machine's noise and does not shrink).

    >>> ratio_summary([0.98, 1.0, 1.02]).split("; ")[0]
    'median 1.0000 [95% CI 0.9800, 1.0200], IQR [0.9900, 1.0100], min 0.9800, max 1.0200'
    """
    import numpy as np

    r = np.asarray(ratios, dtype=float)
    q = np.quantile(r, [0.0, 0.25, 0.5, 0.75, 1.0])
    boot = np.median(np.random.default_rng(seed).choice(r, (n_boot, len(r))), axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return (f"median {q[2]:.4f} [95% CI {lo:.4f}, {hi:.4f}], IQR [{q[1]:.4f}, {q[3]:.4f}], min {q[0]:.4f}, "
            f"max {q[4]:.4f}; median overhead {100 * (1 - q[2]):.2f}% (CI half-width {50 * (hi - lo):.2f}%)")


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
