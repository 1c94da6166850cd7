"""GPU probe of plain generation: where does a decode step go, and do a static cache + compile pay?"""
import cProfile, io, pstats, sys, time
import torch
from riskprobe.models import load_model, render
from riskprobe.models.generation import generate, tokenize
from riskprobe.prompts import load_items

M, part = sys.argv[1], sys.argv[2]
import os as _o
BS = tuple(int(x) for x in _o.environ.get("BS", "128 512").split())
import os
DEV=os.environ.get("DEV","cuda")
lm = load_model(M, device=DEV, dtype="bfloat16" if DEV=="cuda" else None)
items = load_items("builtin-factual+arithmetic", limit=int(os.environ.get("N","512")), seed=0)
rps = [render(lm.tokenizer, it.prompt, it.answer_kind) for it in items]
order = sorted(range(len(rps)), key=lambda i: len(rps[i].text))
def batches(bs): return [[rps[i] for i in order[b:b + bs]] for b in range(0, len(order), bs)]
steps = [0]
lm.model.register_forward_pre_hook(lambda *a: steps.__setitem__(0, steps[0] + 1))
def run(bs, **kw):
    (torch.cuda.synchronize() if DEV=="cuda" else None); steps[0] = 0
    t0 = time.perf_counter(); n = 0
    for b in batches(bs):
        n += sum(g.n_tokens for g in generate(lm, b, max_new_tokens=33, **kw))
    (torch.cuda.synchronize() if DEV=="cuda" else None); dt = time.perf_counter() - t0
    return dt, n, steps[0]
def hf(bs, **kw):
    (torch.cuda.synchronize() if DEV=="cuda" else None); steps[0] = 0
    t0 = time.perf_counter(); n = 0
    for b in batches(bs):
        enc = tokenize(lm, b)
        out = lm.model.generate(**enc, max_new_tokens=33, do_sample=False, temperature=None, top_p=None, top_k=None,
                                pad_token_id=lm.tokenizer.pad_token_id, **kw)
        n += out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1])
    (torch.cuda.synchronize() if DEV=="cuda" else None); dt = time.perf_counter() - t0
    return dt, n, steps[0]
def show(name, r):
    dt, n, s = r
    print(f"{name:<34} {dt:7.2f} s  {n/dt:8.0f} tok/s  {s:4d} forwards  {1000*dt/max(s,1):6.1f} ms/forward", flush=True)
if part == "a":
    from riskprobe.models.loader import auto_batch_size
    print("auto batch size:", auto_batch_size(lm), flush=True)
    run(128); hf(128)
    for rnd in range(2):
        for bs in BS:
            show(f"riskprobe compact bs{bs}", run(bs))
            show(f"riskprobe no-compact bs{bs}", run(bs, compact=False))
            show(f"HF generate (no stops) bs{bs}", hf(bs))
    pr = cProfile.Profile(); pr.enable(); run(128); pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22); print(s.getvalue()[-6000:])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if DEV=="cuda" else [])) as p:
        run(128, compact=False)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    print("CUDA time total ms:", sum(e.self_device_time_total for e in p.key_averages()) / 1000)
else:
    for rnd in range(3):
        t0 = time.perf_counter()
        show(f"HF static+compile bs128 round{rnd}", hf(128, cache_implementation="static"))
    show("HF dynamic bs128", hf(128))
