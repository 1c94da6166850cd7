"""Generate once, extract many: the capture loop vs plain generation + teacher-forced extraction vs extraction
alone, side by side on the same rows and model, and re-extraction of a stored corpus with another
normalisation.

    (a) capture   generation with the signature hooks on, one token at a time (the harvest before two phases)
    (b) two-phase plain generation, then one teacher-forced pass per batch over the generated tokens
    (c) extract   the teacher-forced pass alone, over the tokens (b) generated (what `riskprobe extract` does)

The three are interleaved over ``--rounds`` rounds so that machine noise hits all of them; the medians are
reported with tokens/s (answer tokens whose signature steps are computed) and rows/s, and the ratios that the
targets name. With ``--corpus DIR`` it also re-extracts up to ``--corpus-rows`` rows of a stored corpus with
``normalisation: unit`` and compares that with the harvest time of the same rows estimated from (a).

    python benchmarks/perf/bench_extract.py --n 128 --rounds 3
    python benchmarks/perf/bench_extract.py --n 128 --rounds 3 --corpus data/corpora/smollm2-135m --corpus-rows 3000
"""

from __future__ import annotations

import argparse
import statistics
import time


def run(args) -> dict:
    import torch

    from riskprobe.models import load_model, render, set_threads
    from riskprobe.models.generation import generate
    from riskprobe.prompts import load_items
    from riskprobe.signatures import Capture, FeatureSpec
    from riskprobe.signatures.extract import Extractor

    set_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    spec = FeatureSpec.from_dict({"K": args.K}).resolve(lm)
    items = load_items(args.prompts, limit=args.n, seed=0)
    rps = [render(lm.tokenizer, it.prompt, it.answer_kind) for it in items]
    order = sorted(range(len(rps)), key=lambda i: len(rps[i].text))  # batches of similar length, as the harvest does
    batches = [[rps[i] for i in order[b:b + args.batch_size]] for b in range(0, len(order), args.batch_size)]
    ex = Extractor(lm, spec)

    def sync():
        if str(lm.device).startswith("cuda"):
            torch.cuda.synchronize()

    def capture():
        toks = []
        for b in batches:
            cap = Capture(lm, spec)
            with cap:
                gens = generate(lm, b, max_new_tokens=args.max_new_tokens)
            cap.finish([g.token_ids for g in gens])
            toks += [g.token_ids for g in gens]
        sync()
        return toks

    def two_phase():
        toks = []
        for b in batches:
            gens = generate(lm, b, max_new_tokens=args.max_new_tokens)
            ex.extract(b, [g.token_ids for g in gens])
            toks += [g.token_ids for g in gens]
        sync()
        return toks

    def extract_only(toks):
        # as `riskprobe extract` batches a corpus: by answer kind, then by prompt + answer length
        flat = [rps[i] for i in order]
        idx = sorted(range(len(flat)), key=lambda j: (flat[j].text[:40], len(flat[j].text) + 4 * len(toks[j])))
        for b in range(0, len(idx), args.batch_size):
            sel = idx[b:b + args.batch_size]
            ex.extract([flat[j] for j in sel], [toks[j] for j in sel])
        sync()

    times = {"capture": [], "two_phase": [], "extract": []}
    toks = two_phase()  # warm-up, and the tokens that (c) forces
    for _ in range(args.rounds):
        for name in times:
            t0 = time.perf_counter()
            if name == "capture":
                capture()
            elif name == "two_phase":
                two_phase()
            else:
                extract_only(toks)
            times[name].append(time.perf_counter() - t0)
    n_rows = len(rps)
    n_tok = sum(min(len(t), spec.steps) for t in toks)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"device": str(lm.device), "model": lm.identity.name, "rows": n_rows, "signature_tokens": n_tok, "median_s": med,
           "all_s": times}
    print(f"{lm.identity.name} on {lm.device}, {n_rows} rows, batch {args.batch_size}, K={args.K}, "
          f"{args.rounds} rounds (medians)")
    print(f"{'path':<12}{'seconds':>10}{'tokens/s':>12}{'rows/s':>10}")
    for k in times:
        print(f"{k:<12}{med[k]:>10.2f}{n_tok / med[k]:>12.1f}{n_rows / med[k]:>10.2f}")
    print(f"extraction alone vs capture loop: {med['capture'] / med['extract']:.1f}x faster (target >= 5x)")
    print(f"two-phase harvest vs capture loop: {med['capture'] / med['two_phase']:.2f}x the speed (target >= 1.0)")
    if args.corpus:
        res["corpus"] = corpus_reextract(args, lm, med["capture"] / n_rows)
    return res


def corpus_reextract(args, lm, capture_s_per_row: float) -> dict:
    import shutil
    import tempfile

    from riskprobe.harvest.extract import extract_corpus
    from riskprobe.harvest.generations import read_corpus_manifest
    from riskprobe.harvest.store import read_manifest

    m = read_corpus_manifest(args.corpus)
    tmp = tempfile.mkdtemp(prefix="bench-extract-")
    try:
        t0 = time.perf_counter()
        out = extract_corpus(args.corpus, f"{tmp}/x", features={"K": args.K, "normalisation": "unit"}, lm=lm,
                             batch_size=args.batch_size, progress=False, max_rows=args.corpus_rows)
        dt = time.perf_counter() - t0
        n = read_manifest(out)["n_rows"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gen_s = (m.get("timing") or {}).get("seconds")
    est_harvest = capture_s_per_row * n
    print(f"re-extract {n} corpus rows (normalisation unit): {dt:.1f} s, {n / dt:.1f} rows/s; a capture-loop harvest of "
          f"the same rows ~{est_harvest:.0f} s (from (a)): {dt / est_harvest:.1%} of it (target < 20%)"
          + (f"; the corpus's own generation took {gen_s:.0f} s for {m['n_rows']} rows" if gen_s else ""))
    return {"rows": n, "seconds": dt, "estimated_capture_harvest_s": est_harvest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", default="builtin-factual+geo+arithmetic+triviaqa")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=33)
    ap.add_argument("--K", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--corpus", help="a corpus folder to re-extract with normalisation: unit")
    ap.add_argument("--corpus-rows", type=int, default=3000)
    run(ap.parse_args())


if __name__ == "__main__":
    main()
