"""``riskprobe harvest | generate | extract | given-harvest | merge``: answers, grades and signatures.
"""

from __future__ import annotations

import time

from ..errors import UserError
from ..resources import shipped_configs
from .common import add_threads, batch_size_type, check_positive, features_arg, print_summary


def add_harvest_parser(sub, name: str = "harvest") -> None:
    if name == "harvest":
        p = sub.add_parser("harvest", help="generate, grade and record signatures into a dataset",
                           description="Generate answers to labelled prompts and grade them (a corpus, kept in "
                                       "OUT/generations), then extract per-step signatures by teacher forcing into a "
                                       "resumable `datasets` dataset with a riskprobe.json manifest.")
    else:
        p = sub.add_parser("generate", help="generate and grade answers into a corpus (no signatures)",
                           description="Phase one of a harvest alone: graded answers as a small, resumable corpus "
                                       "(question ids, response token ids and text, labels, generation config, model "
                                       "fingerprint) with a corpus card; `riskprobe extract` turns it into signatures.")
        p.add_argument("--samples", type=int, help="sampled answers per question (implies sampling; default 1 greedy)")
        p.add_argument("--temperature", type=float, help="sampling temperature")
        p.add_argument("--reuse", help="an earlier corpus of the same model and settings (say a smaller --limit): "
                       "its answers are taken over, not generated again")
    p.add_argument("--config", help="YAML config: a file, or a shipped one by name ("
                   + ", ".join(sorted(shipped_configs("harvest"))) + "); default: the shipped default")
    p.add_argument("--model", help="bundled name (smollm2-135m, gemma3-270m, qwen2.5-0.5b), .gguf file, directory or hub id")
    p.add_argument("--prompts", help="set name (builtin, triviaqa, nq_open, gsm8k, ...), name+name, or a .jsonl file")
    p.add_argument("--limit", type=int, help="take this many items (a deterministic subsample)")
    p.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    p.add_argument("--batch-size", type=batch_size_type, dest="batch_size",
                   help="rows per batch, or auto (default: 64 on a CPU, up to 512 by free memory on a GPU)")
    p.add_argument("--out", help="output directory (rerun with the same config to resume)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: GPU when there is one)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--seed", type=int)
    p.add_argument("--datasets-root", dest="datasets_root", help="folder of the public sets (else RISKPROBE_DATASETS)")
    p.add_argument("--K", type=int, help="signature steps after step 0 (default 32)")
    p.add_argument("--layers", help="monitored layers: all, early, middle, late, sparseN")
    p.add_argument("--normalisation", help="hidden-state normalisation: raw, final_norm or unit")
    p.add_argument("--threads", type=int, help="intra-op CPU threads of this process (default: torch's own; "
                   "under torchrun, the cores shared out among the ranks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_harvest(args) -> int:
    from ..harvest.config import load_config
    from ..harvest.run import harvest
    from ..harvest.store import read_manifest
    from ..resources import resolve_config

    cfg_path = resolve_config("harvest", args.config or "default")
    over = {k: getattr(args, k) for k in ("model", "prompts", "limit", "max_new_tokens", "batch_size", "out", "device",
                                          "dtype", "seed", "datasets_root", "threads")}
    cfg = load_config(cfg_path, over, {"K": args.K, "layers": args.layers, "normalisation": args.normalisation})
    t0 = time.perf_counter()
    out = harvest(cfg, progress=not args.no_progress)
    from ..harvest.run import dist_rank

    if dist_rank()[0] != 0:
        return 0
    m = read_manifest(out)
    print(f"harvest: {out}  ({m['n_rows']} rows, model {m['model']['name']}, {time.perf_counter() - t0:.1f} s, "
          f"{m['timing']['tokens'] / max(m['timing']['seconds'], 1e-9):.1f} generated tokens/s)")
    print_summary(m["summary"])
    return 0


def cmd_generate(args) -> int:
    from ..harvest.config import load_config
    from ..harvest.run import dist_rank, generate
    from ..resources import resolve_config

    cfg_path = resolve_config("harvest", args.config or "default")
    over = {k: getattr(args, k) for k in ("model", "prompts", "limit", "max_new_tokens", "batch_size", "out", "device",
                                          "dtype", "seed", "datasets_root", "threads", "samples", "temperature")}
    if args.samples is not None and args.samples > 1:
        over["do_sample"] = True
    cfg = load_config(cfg_path, over)
    t0 = time.perf_counter()
    out = generate(cfg, progress=not args.no_progress, reuse=args.reuse)
    if dist_rank()[0] != 0:
        return 0
    from ..harvest.generations import read_corpus_manifest

    m = read_corpus_manifest(out)
    print(f"corpus: {out}  ({m['n_rows']} answers, model {m['model']['name']}, {time.perf_counter() - t0:.1f} s)")
    print_summary(m["summary"])
    return 0


def cmd_given_harvest(args) -> int:
    from ..harvest.forced import build_given_harvest, standard_answers
    from ..prompts.answers import describe

    check_positive(args.batch_size, "batch-size", 4096)
    extra = []
    if args.input:
        from ..prompts.answers import given_rows

        extra = given_rows(args.input, None)
    rows = standard_answers(corpus=args.corpus, others=args.other, halueval=args.halueval,
                            truthfulqa=not args.no_truthfulqa, per_question=args.per_question, gold=args.gold,
                            other_rows=args.other_rows, extra=extra, own=args.own, efficientqa=args.efficientqa)
    d = describe(rows)
    print(f"{d['rows']} answers of {d['questions']} questions")
    for src, c in d["by_source"].items():
        print(f"  {src:<32}{c['n']:>7} answers, {c['wrong']:>6} wrong")
    if args.dry_run:
        return 0
    from ..models import load_model, set_threads

    features = features_arg(args)
    set_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    out = build_given_harvest(lm, rows, args.out, features=features, batch_size=args.batch_size,
                              progress=not args.no_progress, description=f"given answers ({args.out})")
    print(f"given-answer harvest: {out}")
    return 0


def cmd_extract(args) -> int:
    from ..harvest.extract import extract_corpus
    from ..harvest.run import dist_rank
    from ..harvest.store import read_manifest

    features = features_arg(args)
    check_positive(args.limit, "limit")
    from ..signatures.spec import NORMALISATIONS

    arms = {}
    for a in args.arm or []:
        norm, sep, folder = a.partition("=")
        if not sep or not folder or norm not in NORMALISATIONS:
            raise UserError(f"expected NORMALISATION=FOLDER with one of {', '.join(NORMALISATIONS)}, got {a!r}",
                            field="arm")
        arms[folder] = {**features, "normalisation": norm}
    t0 = time.perf_counter()
    out = extract_corpus(args.generations, args.out, features=features, model=args.model, batch_size=args.batch_size,
                         device=args.device, dtype=args.dtype, threads=args.threads, progress=not args.no_progress,
                         max_rows=args.limit, arms=arms)
    if dist_rank()[0] != 0:
        return 0
    for folder in [out, *arms]:
        m = read_manifest(folder)
        print(f"extract: {folder}  ({m['n_rows']} rows, model {m['model']['name']}, "
              f"normalisation {m['feature_schema'].get('normalisation', '?')}, {time.perf_counter() - t0:.1f} s, "
              f"{m['n_rows'] / max(m['timing']['seconds'], 1e-9):.1f} rows/s)")
    print_summary(m["summary"])
    return 0


def cmd_merge(args) -> int:
    from ..harvest.store import merge_shards, read_manifest

    ds = merge_shards(args.out)
    m = read_manifest(args.out)
    print(f"merged {len(ds)} rows into {args.out}; " + ", ".join(
        f"{s}: {v['correct_rate']:.1%} correct" for s, v in m["summary"].items()))
    return 0


def register(sub) -> None:
    """Add this group's subcommands (:data:`COMMANDS`) to ``sub``."""
    add_harvest_parser(sub)
    add_harvest_parser(sub, "generate")
    x = sub.add_parser("extract", help="signatures for a corpus's answers by teacher forcing (no generation)",
                       description="Phase two of a harvest alone: re-extract a corpus (riskprobe generate, or a "
                                   "harvest's OUT/generations) with another feature spec into a new harvest folder.")
    x.add_argument("--generations", required=True, help="corpus folder (data/corpora/<model>, or HARVEST/generations)")
    x.add_argument("--out", required=True, help="harvest folder to write (rerun with the same arguments to resume)")
    x.add_argument("--features", help="a harvest config (file or shipped name) or YAML whose 'features:' to use "
                   "(default: the built-in defaults)")
    x.add_argument("--K", type=int, help="signature steps after step 0")
    x.add_argument("--layers", help="monitored layers: all, early, middle, late, sparseN")
    x.add_argument("--normalisation", help="hidden-state normalisation: raw, final_norm or unit")
    x.add_argument("--raw-layers", dest="raw_layers", help="layers whose raw states are stored")
    x.add_argument("--families", help="comma-separated feature families (commitment,sync,trajectory,lens,raw)")
    x.add_argument("--arm", action="append", metavar="NORMALISATION=FOLDER",
                   help="also write the same features with another hidden-state normalisation into FOLDER, from the "
                        "same forward passes (repeatable: --arm unit=runs/x-unit --arm final_norm=runs/x-fn)")
    x.add_argument("--limit", type=int, help="extract this many answers (a subsample fixed by question id)")
    x.add_argument("--model", help="the model to load (default: the one the corpus was made with)")
    x.add_argument("--batch-size", type=batch_size_type, default="auto", dest="batch_size",
                   help="rows per forward pass, or auto (default: 64 on a CPU, up to 512 by free memory on a GPU)")
    x.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    x.add_argument("--dtype", help="float32, bfloat16 or float16")
    add_threads(x)
    x.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = sub.add_parser("given-harvest", help="signatures of answers the model did not write, with their provenance",
                       description="Teacher-forced signatures of given answers (HaluEval QA, TruthfulQA, gold "
                                   "answers of a corpus's questions, another model's corpus answers, your own JSONL), "
                                   "each row with its provenance, as a harvest: the training data of a given-answer "
                                   "head (riskprobe fit --config given).")
    g.add_argument("--out", required=True, help="harvest folder to write (rerun with the same arguments to resume)")
    g.add_argument("--model", default="smollm2-135m", help="the model to force the answers through")
    g.add_argument("--corpus", help="the model's own corpus: its questions get gold answers, and --other answers "
                   "are taken on them")
    g.add_argument("--other", nargs="*", default=[], help="other models' corpora (their graded answers)")
    g.add_argument("--halueval", type=int, default=1500, help="HaluEval QA questions (0: none)")
    g.add_argument("--no-truthfulqa", action="store_true", help="leave TruthfulQA out")
    g.add_argument("--per-question", type=int, default=3, dest="per_question",
                   help="TruthfulQA answers of each kind per training or validation question")
    g.add_argument("--gold", type=int, default=1500, help="corpus questions whose gold answer is added")
    g.add_argument("--other-rows", type=int, default=2000, dest="other_rows", help="answers taken from each --other")
    g.add_argument("--own", type=int, default=0, help="the corpus's own answers to add (provenance own), so that one "
                   "harvest holds every writer (for transfer --group writer)")
    g.add_argument("--efficientqa", type=int, default=0, help="EfficientQA test questions whose human-rated answers "
                   "of real QA systems to add")
    g.add_argument("--input", help="a JSONL file of your own {question, answer, label} rows to add")
    g.add_argument("--features", default="corpus", help="a harvest config (file or shipped name) whose 'features:' "
                   "to use; the same as the harvests it will be mixed with")
    for name in ("K", "layers", "normalisation", "raw_layers", "families"):
        g.set_defaults(**{name: None})
    g.add_argument("--batch-size", type=int, default=32, dest="batch_size")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", help="float32, bfloat16 or float16")
    g.add_argument("--dry-run", action="store_true", help="print the row counts only")
    add_threads(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser("merge", help="merge a harvest's finished shards (after a multi-process run)")
    m.add_argument("--out", required=True)


COMMANDS = {"harvest": cmd_harvest, "generate": cmd_generate, "extract": cmd_extract, "given-harvest": cmd_given_harvest,
            "merge": cmd_merge}
