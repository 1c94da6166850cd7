"""Harvest overhead: tokens/s of plain generation vs generation with signature capture, side by side.

Same model, prompts, batch size and max tokens; the two are interleaved over several rounds so that
machine noise hits both. Also prints bytes stored per example and, with --memory, the peak resident
memory of a plain-generation process and of harvest processes over N1 and N2 prompts.

    python benchmarks/perf/bench_harvest.py --model smollm2-135m --n 64 --rounds 3
    python benchmarks/perf/bench_harvest.py --memory --mem-prompts 200 2000
    python benchmarks/perf/bench_harvest.py --memory --mem-prompts 256 2560 --mem-repeat
    python benchmarks/perf/bench_harvest.py --settings --n 128 --batch-size 64 --rounds 2
    python benchmarks/perf/bench_harvest.py --device cuda --dtype bfloat16 --n 1024 --batch-sizes 16 64 256 1024
    python benchmarks/perf/bench_harvest.py --decode --model qwen2.5-1.5b --n 128 --batch-sizes 32 64 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _hidden_states_generate(lm, rps, max_new_tokens):
    """The alternative to hooks: ask generate for every layer's states at every step (kept until the end)."""
    import torch

    from riskprobe.models.generation import finish_rows, tokenize

    enc = tokenize(lm, rps)
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_hidden_states=True,
                                output_logits=True, return_dict_in_generate=True,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return finish_rows(lm, out.sequences[:, enc["input_ids"].shape[1]:], ())


def _gen_rate(lm, items, spec, batch_size, max_new_tokens, *, share=True, bucket=False):
    """Generated tokens and seconds for ``items`` in batches; ``bucket`` orders prompts by answer kind and token
    length first (what the harvest does), ``share`` computes a batch's shared prompt prefix once (``encode``) and
    lets ended rows leave the batch where that pays (``generate``'s default: on a CPU); ``share=False`` is
    generation as it was before both."""
    from riskprobe.models import render
    from riskprobe.models.generation import batch_order, generate
    from riskprobe.signatures import Capture

    n_tok, t0 = 0, time.perf_counter()
    rendered = [render(lm.tokenizer, it.prompt, it.answer_kind) for it in items]
    if bucket:
        lengths = [len(x) for x in lm.tokenizer([r.text for r in rendered], add_special_tokens=True)["input_ids"]]
        rendered = [rendered[i] for i in batch_order([it.answer_kind for it in items], lengths)]  # as the harvest
    compact = None if share else False  # None: generate's default for the device
    for b in range(0, len(rendered), batch_size):
        rps = rendered[b:b + batch_size]
        if spec == "hidden_states":
            gens = _hidden_states_generate(lm, rps, max_new_tokens)
        elif spec is None:
            gens = generate(lm, rps, max_new_tokens=max_new_tokens, share_prefix=share, compact=compact)
        else:
            cap = Capture(lm, spec)
            with cap:
                gens = generate(lm, rps, max_new_tokens=max_new_tokens, share_prefix=share, compact=compact)
            cap.finish([g.token_ids for g in gens])
        n_tok += sum(g.n_tokens for g in gens)
    return n_tok, time.perf_counter() - t0


def _device_name(lm) -> str:
    import torch

    if lm.device.type == "cuda":
        return torch.cuda.get_device_name(lm.device)
    return f"cpu ({os.cpu_count()} cores)"


def batch_table(args):
    """tokens/s of plain generation and of a harvest against batch size (interleaved rounds per size), prompts
    bucketed by answer kind and length as the harvest does."""
    import torch

    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items
    from riskprobe.signatures import FeatureSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    items = load_items(args.prompts, limit=args.n)
    spec = FeatureSpec().resolve(lm)
    _gen_rate(lm, items[: min(args.batch_sizes)], None, min(args.batch_sizes), 4)  # warm-up
    print(f"model {lm.identity.name} on {_device_name(lm)} ({next(lm.model.parameters()).dtype}), {len(items)} prompts, "
          f"{args.rounds} rounds per size, max_new_tokens {args.max_new_tokens}, threads {torch.get_num_threads()}")
    print(f"{'batch':>6}{'plain tok/s':>13}{'harvest tok/s':>15}{'ratio':>8}")
    rows = []
    for bs in args.batch_sizes:
        acc = {"plain": [0, 0.0], "harvest": [0, 0.0]}
        for sp in (None, spec):  # warm-up at this size: allocator, kernels and caches for these shapes
            _gen_rate(lm, items[:bs], sp, bs, args.max_new_tokens, bucket=True)
        for r in range(args.rounds):
            order = (("plain", None), ("harvest", spec))
            for name, sp in (order if r % 2 == 0 else order[::-1]):  # alternate: drift hits both alike
                n, s = _gen_rate(lm, items, sp, bs, args.max_new_tokens, bucket=True)
                acc[name][0] += n
                acc[name][1] += s
        p, h = (acc[k][0] / acc[k][1] for k in ("plain", "harvest"))
        rows.append((bs, p, h))
        print(f"{bs:>6}{p:>13.1f}{h:>15.1f}{h / p:>8.3f}", flush=True)
    return rows


def speed(args):
    import torch

    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items
    from riskprobe.signatures import FeatureSpec

    torch.set_num_threads(args.threads or torch.get_num_threads())
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    items = load_items(args.prompts, limit=args.n)
    specs = {"plain": None, "harvest (defaults)": FeatureSpec().resolve(lm)}
    if args.variants:
        specs["no lens"] = FeatureSpec(families=["commitment", "sync", "trajectory", "raw"]).resolve(lm)
        specs["commitment only"] = FeatureSpec(families=["commitment"]).resolve(lm)
        specs["output_hidden_states (no features)"] = "hidden_states"
    _gen_rate(lm, items[: args.batch_size], None, args.batch_size, 4)  # warm-up
    res = {k: [0, 0.0] for k in specs}
    for r in range(args.rounds):
        for name, spec in (list(specs.items()) if r % 2 == 0 else list(specs.items())[::-1]):
            n, s = _gen_rate(lm, items, spec, args.batch_size, args.max_new_tokens)
            res[name][0] += n
            res[name][1] += s
    base = res["plain"][0] / res["plain"][1]
    print(f"model {lm.identity.name} on {_device_name(lm)} ({next(lm.model.parameters()).dtype}), {len(items)} prompts x "
          f"{args.rounds} rounds, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'variant':<36}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ratio':>8}")
    for name, (n, s) in res.items():
        print(f"{name:<36}{n:>8}{s:>10.2f}{n / s:>10.1f}{(n / s) / base:>8.3f}")
    return res


def settings(args):
    """The old settings (batch ``--old-batch``, prompts in file order, every prompt computed whole) against the
    new ones (batch ``--batch-size``, prompts bucketed by answer kind and length, a shared prompt prefix computed once, ended rows
    leaving the batch), plain generation and harvest, same prompts, interleaved rounds; prints tokens/s and the
    ratios."""
    import torch

    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items
    from riskprobe.signatures import FeatureSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    items = load_items(args.prompts, limit=args.n)
    spec = FeatureSpec().resolve(lm)
    arms = {("old", "plain"): (None, args.old_batch, False, False), ("old", "harvest"): (spec, args.old_batch, False, False),
            ("new", "plain"): (None, args.batch_size, True, True), ("new", "harvest"): (spec, args.batch_size, True, True)}
    for sp, bs, share, bucket in arms.values():  # warm-up: allocator and kernels for these shapes
        _gen_rate(lm, items[:bs], sp, bs, 4, share=share, bucket=bucket)
    for _ in range(args.warmup_rounds):  # untimed full rounds: every batch shape an arm meets (a GPU needs this)
        for sp, bs, share, bucket in arms.values():
            _gen_rate(lm, items, sp, bs, args.max_new_tokens, share=share, bucket=bucket)
    acc = {k: [0, 0.0] for k in arms}
    per_round = {k: [] for k in arms}
    for r in range(args.rounds):
        order = list(arms.items()) if r % 2 == 0 else list(arms.items())[::-1]  # alternate: drift hits all alike
        for k, (sp, bs, share, bucket) in order:
            n, s = _gen_rate(lm, items, sp, bs, args.max_new_tokens, share=share, bucket=bucket)
            acc[k][0] += n
            acc[k][1] += s
            per_round[k].append(n / s)
    rate = {k: n / s for k, (n, s) in acc.items()}
    print(f"model {lm.identity.name} on {_device_name(lm)} ({next(lm.model.parameters()).dtype}), {len(items)} prompts x "
          f"{args.rounds} rounds, max_new_tokens {args.max_new_tokens}, threads {torch.get_num_threads()}")
    from riskprobe.models.generation import compacts_by_default

    print("old: batch {0}, file order, whole prompts; new: batch {1}, bucketed by answer kind and length, shared "
          "prefix once{2}".format(args.old_batch, args.batch_size,
                                  ", ended rows leave the batch" if compacts_by_default(lm.device) else ""))
    print(f"{'settings':<10}{'plain tok/s':>13}{'harvest tok/s':>15}{'harvest/plain':>15}")
    for which in ("old", "new"):
        p, h = rate[(which, "plain")], rate[(which, "harvest")]
        print(f"{which:<10}{p:>13.1f}{h:>15.1f}{h / p:>15.3f}")
    med = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"by the median round: new / old plain {med[('new', 'plain')] / med[('old', 'plain')]:.2f}x, harvest "
          f"{med[('new', 'harvest')] / med[('old', 'harvest')]:.2f}x; harvest / plain old "
          f"{med[('old', 'harvest')] / med[('old', 'plain')]:.3f}, new {med[('new', 'harvest')] / med[('new', 'plain')]:.3f}")
    print(f"new / old: plain {rate[('new', 'plain')] / rate[('old', 'plain')]:.2f}x, "
          f"harvest {rate[('new', 'harvest')] / rate[('old', 'harvest')]:.2f}x")
    print("per-round tokens/s: " + "; ".join(f"{a} {b}: " + ", ".join(f"{x:.1f}" for x in v)
                                            for (a, b), v in per_round.items()))
    return rate


def decode_table(args):
    """Per batch size: Hugging Face ``generate`` as it is (every row decoded until the batch ends) against riskprobe's
    decode loop (shared prompt prefix once; a row leaves the batch and the cache at the step it ends) and a harvest
    (signature capture) on that loop; the same prompts bucketed as the harvest does, interleaved rounds; tokens/s
    and ratios. (The 2026-12-06 files also time the earlier loop that restarted ``model.generate`` every four tokens,
    ``stretch``, since removed.)"""
    import torch

    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items
    from riskprobe.signatures import FeatureSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    items = load_items(args.prompts, limit=args.n)
    spec = FeatureSpec().resolve(lm)
    arms = {"hf generate": (None, False), "loop": (None, True), "harvest": (spec, True)}
    print(f"model {lm.identity.name} on {_device_name(lm)} ({next(lm.model.parameters()).dtype}), {len(items)} "
          f"prompts of {args.prompts} x {args.rounds} rounds, max_new_tokens {args.max_new_tokens}, threads "
          f"{torch.get_num_threads()}; tokens/s")
    print(f"{'batch':>6}" + "".join(f"{a:>14}" for a in arms) + f"{'loop/hf':>10}{'harvest/loop':>14}")
    rows = []
    for bs in args.batch_sizes:
        for sp, new in arms.values():  # warm-up at this size
            _gen_rate(lm, items[:bs], sp, bs, 4, share=new, bucket=True)
        acc = {a: [0, 0.0] for a in arms}
        for r in range(args.rounds):
            for a in (list(arms) if r % 2 == 0 else list(arms)[::-1]):  # drift hits every arm alike
                sp, new = arms[a]
                n, sec = _gen_rate(lm, items, sp, bs, args.max_new_tokens, share=new, bucket=True)
                acc[a][0] += n
                acc[a][1] += sec
        hf, loop, harv = (n / sec for n, sec in acc.values())
        rows.append((bs, hf, loop, harv))
        print(f"{bs:>6}{hf:>14.1f}{loop:>14.1f}{harv:>14.1f}{loop / hf:>10.2f}{harv / loop:>14.3f}", flush=True)
    return rows


def _peak_rss_of(cmd: list[str]) -> tuple[float, float, float]:
    """Run a child; its peak RSS (MB), its peak anonymous RSS (MB; nan where /proc is missing) and seconds."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-2000:])
    line = [x for x in p.stdout.splitlines() if x.startswith("PEAK_RSS_MB")][-1].split()
    return float(line[1]), float(line[2]), time.perf_counter() - t0


def _anon_mb() -> float:
    """This process's anonymous resident memory (heap, tensors; not the pages of mapped files), MB; nan where
    /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _child(mode: str, model: str, prompts: str, n: int, out: str, max_new_tokens: int, batch_size: int):
    import threading

    from riskprobe.harvest.config import HarvestConfig
    from riskprobe.harvest.run import harvest
    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items

    peak = [_anon_mb()]

    def sample():  # ru_maxrss counts mapped file pages too; the anonymous peak is sampled every 20 ms
        while True:
            peak[0] = max(peak[0], _anon_mb())
            time.sleep(0.02)

    if peak[0] == peak[0]:  # not nan: /proc is there
        threading.Thread(target=sample, daemon=True).start()
    if mode == "plain":
        lm = load_model(model)
        _gen_rate(lm, load_items(prompts, limit=n), None, batch_size, max_new_tokens)
    else:
        harvest(HarvestConfig(model=model, prompts=prompts, limit=n, out=out, max_new_tokens=max_new_tokens,
                              batch_size=batch_size), progress=False)
    time.sleep(0.05)
    print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, max(peak[0], _anon_mb()))


def _repeated_prompts(spec: str, n: int, total: int, folder: str) -> str:
    """A JSONL file of the first ``n`` questions of ``spec`` repeated to ``total`` rows under fresh ids: every size
    then has the same prompt lengths, so a peak that grows with the size is memory that accumulates, not a longer
    prompt in a larger sample."""
    from riskprobe.prompts.sets import load_items

    items = load_items(spec, limit=n)
    path = os.path.join(folder, f"repeat-{total}.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for j in range(total):
            it = items[j % len(items)]
            f.write(json.dumps({"id": f"{it.id}-r{j // len(items)}", "question": it.prompt, "answers": list(it.answers),
                                "category": it.category, "answer_kind": it.answer_kind}) + "\n")
    return path


def memory(args):
    me = [sys.executable, __file__]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.mem_prompts:
            prompts = _repeated_prompts(args.prompts, min(args.mem_prompts), n, tmp) if args.mem_repeat else args.prompts
            plain, plain_anon, tp = _peak_rss_of(me + ["--child", "plain", "--model", args.model, "--prompts",
                                                       prompts, "--n", str(n), "--max-new-tokens",
                                                       str(args.mem_max_new_tokens)])
            out = os.path.join(tmp, f"h{n}")
            harv, harv_anon, th = _peak_rss_of(me + ["--child", "harvest", "--model", args.model, "--prompts",
                                                     prompts, "--n", str(n), "--out", out, "--max-new-tokens",
                                                     str(args.mem_max_new_tokens)])
            size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file() and "shards" not in f.parts)
            rows.append((n, plain, harv, harv / plain, plain_anon, harv_anon, harv_anon / plain_anon, size / n, tp, th))
    print(f"peak resident memory, max_new_tokens {args.mem_max_new_tokens} (each a fresh process); RSS = ru_maxrss "
          "(mapped file pages included), anon = peak anonymous RSS (sampled every 20 ms)")
    print(f"{'prompts':>8}{'plain MB':>10}{'harvest MB':>12}{'ratio':>8}{'plain anon':>12}{'harv anon':>11}"
          f"{'ratio':>8}{'bytes/example':>15}{'plain s':>9}{'harvest s':>11}")
    for n, p, h, r, pa, ha, ra, b, tp, th in rows:
        print(f"{n:>8}{p:>10.0f}{h:>12.0f}{r:>8.2f}{pa:>12.0f}{ha:>11.0f}{ra:>8.2f}{b:>15.0f}{tp:>9.1f}{th:>11.1f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"harvest of {b[0]} prompts against {a[0]}: RSS {b[2] / a[2] - 1:+.1%}, anon {b[5] / a[5] - 1:+.1%} "
              "(target: within 10%); harvest / plain at the larger: RSS {:.2f}, anon {:.2f} (target <= 1.2)".format(b[3], b[6]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default="triviaqa")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="print tokens/s against batch size instead")
    ap.add_argument("--settings", action="store_true",
                    help="old settings (--old-batch, file order, whole prompts) vs new (--batch-size, bucketed, "
                         "shared prefix), side by side")
    ap.add_argument("--decode", action="store_true",
                    help="HF generate vs riskprobe's decode loop and a harvest on it, at each of --batch-sizes")
    ap.add_argument("--old-batch", type=int, default=16)
    ap.add_argument("--warmup-rounds", type=int, default=0,
                    help="--settings: untimed full rounds of every arm first (on a GPU the first round is slow)")
    ap.add_argument("--max-new-tokens", type=int, default=33)
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--variants", action="store_true", help="also time feature subsets (where time goes)")
    ap.add_argument("--memory", action="store_true", help="measure peak RSS instead of speed")
    ap.add_argument("--mem-prompts", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--mem-max-new-tokens", type=int, default=8)
    ap.add_argument("--mem-repeat", action="store_true", help="--memory: every size repeats the smallest size's "
                    "questions (the same prompt lengths), so that growth is accumulation alone")
    ap.add_argument("--child", choices=["plain", "harvest"])
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.child:
        _child(args.child, args.model, args.prompts, args.n, args.out, args.max_new_tokens, args.batch_size)
    elif args.memory:
        memory(args)
    elif args.settings:
        settings(args)
    elif args.decode:
        decode_table(args)
    elif args.batch_sizes:
        batch_table(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
