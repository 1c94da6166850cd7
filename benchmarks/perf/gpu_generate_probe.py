"""Where a GPU's decode step goes, and whether a static key/value cache with ``torch.compile`` pays.

Part ``a``: plain generation of ``--n`` questions by riskprobe's ``generate`` with and without compaction
(rows that ended leave the batch) and by transformers' own ``generate`` without stop strings, at each batch
size of ``BS``, two rounds; then one batch under ``cProfile`` and one under ``torch.profiler`` (CPU time of
the Python side against the GPU's kernel time). Part ``b``: transformers' ``generate`` with
``cache_implementation="static"`` (which compiles the decode step on CUDA) for three rounds, then with the
dynamic cache, in one process. The HF rows count every generated position (padding after EOS included), so
compare seconds, not tokens/s, between the HF and riskprobe rows.

    python benchmarks/perf/gpu_generate_probe.py MODEL a        # DEV=cpu N=16 BS=8 for a smoke run on a CPU
    python benchmarks/perf/gpu_generate_probe.py MODEL b
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time

import torch

from riskprobe.models import load_model, render
from riskprobe.models.generation import generate, tokenize
from riskprobe.models.loader import auto_batch_size
from riskprobe.prompts import load_items

DEV = os.environ.get("DEV", "cuda")
BS = tuple(int(x) for x in os.environ.get("BS", "128 512").split())


def _sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


class Bench:
    def __init__(self, model: str, n: int):
        self.lm = load_model(model, device=DEV, dtype="bfloat16" if DEV == "cuda" else None)
        items = load_items("builtin-factual+arithmetic", limit=n, seed=0)
        self.rps = [render(self.lm.tokenizer, it.prompt, it.answer_kind) for it in items]
        self.order = sorted(range(len(self.rps)), key=lambda i: len(self.rps[i].text))
        self.forwards = 0
        self.lm.model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.forwards += 1

    def batches(self, bs):
        return [[self.rps[i] for i in self.order[b:b + bs]] for b in range(0, len(self.order), bs)]

    def timed(self, one_batch):
        _sync()
        self.forwards, n, t0 = 0, 0, time.perf_counter()
        for b in self.batches(self.bs):
            n += one_batch(b)
        _sync()
        return time.perf_counter() - t0, n, self.forwards

    def ours(self, bs, **kw):
        self.bs = bs
        return self.timed(lambda b: sum(g.n_tokens for g in generate(self.lm, b, max_new_tokens=33, **kw)))

    def hf(self, bs, **kw):
        self.bs = bs

        def one(b):
            enc = tokenize(self.lm, b)
            out = self.lm.model.generate(**enc, max_new_tokens=33, do_sample=False, temperature=None, top_p=None,
                                         top_k=None, pad_token_id=self.lm.tokenizer.pad_token_id, **kw)
            return out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])
        return self.timed(one)


def show(name, r):
    dt, n, s = r
    print(f"{name:<34} {dt:7.2f} s  {n / dt:8.0f} tok/s  {s:4d} forwards  {1000 * dt / max(s, 1):6.1f} ms/forward",
          flush=True)


def part_a(b: Bench):
    print("auto batch size:", auto_batch_size(b.lm), flush=True)
    b.ours(BS[0])
    b.hf(BS[0])
    for _ in range(2):
        for bs in BS:
            show(f"riskprobe compact bs{bs}", b.ours(bs, compact=True))
            show(f"riskprobe no-compact bs{bs}", b.ours(bs, compact=False))
            show(f"HF generate (no stops) bs{bs}", b.hf(bs))
    pr = cProfile.Profile()
    pr.enable()
    b.ours(BS[0], compact=True)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22)
    print(s.getvalue()[-6000:])
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if DEV == "cuda" else [])
    with torch.profiler.profile(activities=acts) as p:
        b.ours(BS[0], compact=False)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def part_b(b: Bench):
    for rnd in range(3):
        show(f"HF static+compile bs{BS[0]} round{rnd}", b.hf(BS[0], cache_implementation="static"))
    show(f"HF dynamic bs{BS[0]}", b.hf(BS[0]))


if __name__ == "__main__":
    bench = Bench(sys.argv[1], int(os.environ.get("N", "512")))
    (part_a if sys.argv[2] == "a" else part_b)(bench)
