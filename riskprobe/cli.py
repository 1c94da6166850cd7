"""The ``riskprobe`` command: thin, parses arguments, calls one stage, prints.

A user mistake (:class:`~riskprobe.errors.UserError`) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import UserError
from .resources import shipped_configs


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer, or ``auto`` (chosen from the model and the device)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1 << 16:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {1 << 16} or auto, got {text!r}")
    return value


def _harvest_parser(sub, name: str = "harvest") -> None:
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
    p.add_argument("--batch-size", type=_batch_size, dest="batch_size",
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
    from .harvest.config import load_config
    from .harvest.run import harvest
    from .harvest.store import read_manifest
    from .resources import resolve_config

    cfg_path = resolve_config("harvest", args.config or "default")
    over = {k: getattr(args, k) for k in ("model", "prompts", "limit", "max_new_tokens", "batch_size", "out", "device",
                                          "dtype", "seed", "datasets_root", "threads")}
    cfg = load_config(cfg_path, over, {"K": args.K, "layers": args.layers, "normalisation": args.normalisation})
    t0 = time.perf_counter()
    out = harvest(cfg, progress=not args.no_progress)
    from .harvest.run import dist_rank

    if dist_rank()[0] != 0:
        return 0
    m = read_manifest(out)
    print(f"harvest: {out}  ({m['n_rows']} rows, model {m['model']['name']}, {time.perf_counter() - t0:.1f} s, "
          f"{m['timing']['tokens'] / max(m['timing']['seconds'], 1e-9):.1f} generated tokens/s)")
    print(f"{'set':<14}{'n':>7}{'correct':>10}{'echo':>8}")
    for s, v in m["summary"].items():
        print(f"{s:<14}{v['n']:>7}{v['correct_rate']:>10.1%}{v['echo_rate']:>8.1%}")
    return 0


def cmd_generate(args) -> int:
    from .harvest.config import load_config
    from .harvest.run import dist_rank, generate
    from .resources import resolve_config

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
    from .harvest.generations import read_corpus_manifest

    m = read_corpus_manifest(out)
    print(f"corpus: {out}  ({m['n_rows']} answers, model {m['model']['name']}, {time.perf_counter() - t0:.1f} s)")
    _print_summary(m["summary"])
    return 0


def _features_arg(args) -> dict:
    """The feature spec of ``--features`` (a harvest config or YAML) with the single-setting options applied."""
    from .resources import resolve_config

    features: dict = {}
    if args.features is not None:
        from .fsutil import load_yaml

        path = resolve_config("harvest", args.features)
        data = load_yaml(path) if path is not None and path.is_file() else None
        if data is None:
            raise UserError("not found (give a harvest config or a YAML file with a 'features:' mapping)",
                            file=args.features, field="features")
        features = data.get("features", data) if isinstance(data, dict) else None
        if not isinstance(features, dict):
            raise UserError("expected a mapping of feature settings", file=path, field="features")
        features = dict(features)
        features.pop("version", None)
    for k, v in (("K", args.K), ("layers", args.layers), ("normalisation", args.normalisation),
                 ("raw_layers", args.raw_layers), ("families", args.families)):
        if v is not None:
            features[k] = [f.strip() for f in v.split(",")] if k == "families" else v
    return features


def cmd_given_harvest(args) -> int:
    from .harvest.forced import build_given_harvest, standard_answers
    from .prompts.answers import describe

    for f in ("halueval", "per_question", "gold", "other_rows", "own", "efficientqa"):
        if getattr(args, f) < 0:
            raise UserError(f"must be 0 or more, got {getattr(args, f)}", field=f.replace("_", "-"))
    _positive(args.batch_size, "batch-size", 4096)
    extra = []
    if args.input:
        from .prompts.answers import given_rows

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
    from .models import load_model, set_threads

    features = _features_arg(args)
    set_threads(args.threads)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    out = build_given_harvest(lm, rows, args.out, features=features, batch_size=args.batch_size,
                              progress=not args.no_progress, description=f"given answers ({args.out})")
    print(f"given-answer harvest: {out}")
    return 0


def cmd_extract(args) -> int:
    from .harvest.extract import extract_corpus
    from .harvest.run import dist_rank
    from .harvest.store import read_manifest

    features = _features_arg(args)
    _positive(args.limit, "limit")
    from .signatures.spec import NORMALISATIONS

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
    _print_summary(m["summary"])
    return 0


def _print_summary(summary) -> None:
    print(f"{'set':<14}{'n':>7}{'correct':>10}{'echo':>8}")
    for s, v in summary.items():
        print(f"{s:<14}{v['n']:>7}{v['correct_rate']:>10.1%}{v['echo_rate']:>8.1%}")


def cmd_merge(args) -> int:
    from .harvest.store import merge_shards, read_manifest

    ds = merge_shards(args.out)
    m = read_manifest(args.out)
    print(f"merged {len(ds)} rows into {args.out}; " + ", ".join(
        f"{s}: {v['correct_rate']:.1%} correct" for s, v in m["summary"].items()))
    return 0


def cmd_models(args) -> int:
    import importlib.metadata as md

    from .models import BUNDLED

    for name, b in BUNDLED.items():
        have = []
        for d in b.distributions:
            try:
                md.distribution(d)
                have.append(True)
            except md.PackageNotFoundError:
                have.append(False)
        state = "installed" if all(have) else ("partly installed" if any(have) else "not installed")
        print(f"{name:<14}{state:<18}{b.description}{'  (optional)' if b.optional else ''}")
    return 0


def cmd_sets(args) -> int:
    from .prompts.sets import REGISTRY
    from .resources import datasets_root

    root = datasets_root()
    where = root if root is not None and root.is_dir() else f"{root} (not found: set RISKPROBE_DATASETS)"
    print(f"public sets root: {where}")
    from .prompts.sets import load_items

    for name, (_, desc) in REGISTRY.items():
        n = f" [{len(load_items(name))} items]" if name.startswith("builtin") else ""
        print(f"{name:<20}{desc}{n}")
    return 0


def cmd_demo(args) -> int:
    from .evaluation.versus import format_versus
    from .models import set_threads
    from .pipeline import demo

    _positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    res = demo(args.out, size=args.size, progress=not args.no_progress)
    print(f"\ndemo finished in {res.seconds:.0f} s; report: {res.report}; probe artifact: {res.artifact}")
    print(f"scored {res.score_stats['scored']} sample rows -> {res.scored}")
    for title, summ in (("trained sources", res.harvest_summary), ("never trained on", res.unseen_summary)):
        print(f"\n{title}:")
        _print_summary(summ)
    print(f"\nthe probe at k = {res.k} (AUROC of 'this answer is wrong', 95% intervals; best training-free = the "
          "strongest of the model's own confidence scores on those very rows)")
    print(format_versus(res.versus, k=res.k))
    print(res.verdict)
    return 0


def cmd_compare(args) -> int:
    from .models import set_threads
    from .pipeline import compare

    _positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    res = compare(args.models, args.out, prompts=args.prompts, progress=not args.no_progress)
    for s in res["skipped"]:
        print(f"skipped {s}")
    print(f"report: {res['report']}")
    return 0


def cmd_cross_model(args) -> int:
    from .fsutil import check_result_path, write_result_json
    from .harvest.store import read_manifest
    from .training.transfer import cross_model, format_cross_model

    if args.json:
        check_result_path(args.json, "cross-model")
    paths, seen = {}, {}
    for spec in args.harvest:
        given, sep, path = spec.partition("=") if "=" in spec and not Path(spec).is_dir() else ("", "", spec)
        if sep and (not given or not path):
            raise UserError(f"expected DIR or NAME=DIR, got '{spec}'", field="harvest")
        if not Path(path).is_dir():
            raise UserError("harvest directory not found", file=path, field="harvest")
        ident = read_manifest(path)["model"]
        name, fp = ident.get("name"), ident.get("fingerprint")
        if given and given != name:  # the table is labelled by what the harvest says, never by a typed name
            raise UserError(f"this harvest is of model '{name}', not '{given}'; give it as {path} or {name}={path}",
                            file=path, field="harvest")
        if fp in seen:
            raise UserError(f"the same model (fingerprint {str(fp)[:12]}) as {seen[fp]}: each harvest must be of "
                            "another model", file=path, field="harvest")
        if name in paths:
            raise UserError(f"a second harvest of model '{name}' (the first: {paths[name]})", file=path,
                            field="harvest")
        seen[fp] = path
        paths[name] = path
    _positive(args.k, "k", 4096)
    _positive(args.layer_bins, "layer-bins", 64)
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    res = cross_model(paths, k=args.k, layer_bins=args.layer_bins, families=families, n_boot=args.n_boot)
    print(format_cross_model(res))
    if args.json:
        write_result_json(args.json, res, "cross-model")
        print(f"\nwritten: {args.json}")
    return 0


def cmd_transfer(args) -> int:
    from .fsutil import check_result_path, write_result_json
    from .training.loso import CS, TransferRecipe, format_loso, loso

    if args.json:
        check_result_path(args.json, "transfer")
    for h in args.harvest:
        if not Path(h).is_dir():
            raise UserError("harvest directory not found", file=h, field="harvest")
    _positive(args.n_boot, "n-boot", 100000)
    probe_fams = [f.strip() for f in args.probe_families.split(",") if f.strip()] if args.probe_families else None
    recipe = TransferRecipe(families=[f.strip() for f in args.families.split(",") if f.strip()], k=args.k,
                            raw_pool=args.raw_pool, layer_bins=args.layer_bins, balance=args.balance,
                            blend=not args.no_blend, Cs=CS, probe_families=probe_fams)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    res = loso(args.harvest, recipe, sources=sources, n_boot=args.n_boot, progress=not args.no_progress,
               group=args.group)
    print(format_loso(res))
    if args.json:
        write_result_json(args.json, res, "transfer")
        print(f"\nwritten: {args.json}")
    return 0


def cmd_adapt(args) -> int:
    from .models import set_threads
    from .pipeline import adapt

    _positive(args.limit, "limit")
    _positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    res = adapt(args.probe, args.out, prompts=args.prompts, harvest_dir=args.harvest, work=args.work, limit=args.limit,
                model=args.model, progress=not args.no_progress, allow_old=args.allow_old_artifact)
    head = ", ".join(f"{v:+.3f}" for v in res["head"])
    prior = ", ".join(f"{v:+.3f}" for v in res["prior_head"])
    print(f"adapted on {res['n']} labelled answers ({res['n_wrong']} wrong) of {res['harvest']}: penalty "
          f"{res['lambda']:g} (CV AUROC by penalty: " + ", ".join(f"{k}: {v:.3f}" for k, v in
                                                                  res["cv_auroc_by_lambda"].items()) + ")")
    print(f"head (probe weight, four confidence weights, intercept): {head}  (was {prior})")
    print(f"adapted probe: {res['artifact']}")
    return 0


def cmd_export(args) -> int:
    from .probes.artifact import export_checkpoint

    extra = {"given_probe": args.given_probe} if args.given_probe else None
    transfer = None
    if args.transfer:
        from .fsutil import read_text

        try:
            transfer = json.loads(read_text(args.transfer))
        except (ValueError, RecursionError) as e:
            raise UserError(f"not valid JSON ({str(e)[:80]})", file=args.transfer, field="transfer") from None
    out = export_checkpoint(args.ckpt, args.out, force=args.force, extra=extra, transfer=transfer,
                            transfer_file=args.transfer)
    meta = json.loads((out / "probe.json").read_text())
    print(f"exported {args.ckpt} -> {out} (probe.safetensors, probe.json, probe.onnx; model "
          f"{meta['model_identity']['name']}, k={meta['feature_spec']['selection']['k']}, threshold "
          f"{meta['threshold']:.3f})")
    return 0


def _positive(value: int | None, field: str, hi: int = 1 << 20) -> None:
    if value is not None and not 1 <= value <= hi:
        raise UserError(f"must be an integer from 1 to {hi}, got {value}", field=field)


def _load_scorer(args, *, given_rows: bool = False):
    """The probe with all its checks, and the options checked, before any model loads. ``given_rows``: the input
    holds rows with a response, which need a given-answer head (refused here, naming the fix, if there is none)."""
    from .models import check_device, set_threads
    from .serving.scorer import Scorer

    _positive(getattr(args, "batch_size", None), "batch-size", 4096)
    _positive(getattr(args, "max_new_tokens", None), "max-new-tokens", 4096)
    _positive(getattr(args, "max_batch", None), "max-batch", 4096)
    _positive(getattr(args, "limit", None), "limit")
    _positive(getattr(args, "max_queue", None), "max-queue")
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        raise UserError(f"must be a port number from 0 to 65535, got {args.port}", field="port")
    if args.device:
        check_device(args.device)
    _positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    scorer = Scorer.load(args.probe, given=getattr(args, "given_probe", None),
                         allow_old=getattr(args, "allow_old_artifact", False))
    if given_rows:
        scorer.head_for_given()
    return scorer


def _load_model_for(args, scorer):
    """The model the probe reads (``--model``, else the probe's own), checked against the probe and its head."""
    from .models import load_model

    model = args.model or scorer.model_identity["name"]
    lm = load_model(model, device=getattr(args, "device", None))
    scorer.check_model(lm, allow_model_mismatch=args.allow_model_mismatch)
    if scorer.given is not None:  # the given-answer head must fit the model too
        scorer.given.check_model(lm, allow_model_mismatch=args.allow_model_mismatch)
    return lm


def _scorer_and_model(args, *, given_rows: bool = False):
    """Load the probe (all its checks), check the options, then load the model: cheap checks first."""
    scorer = _load_scorer(args, given_rows=given_rows)
    return scorer, _load_model_for(args, scorer)


def cmd_score(args) -> int:
    from .serving.jsonl import check_paths, read_requests, score_file

    inp, _ = check_paths(args.input, args.output)
    errors: list[str] = []
    requests = read_requests(inp, args.on_error, errors, quiet=True)  # a malformed line fails here with --on-error fail
    scorer, lm = _scorer_and_model(args, given_rows=any(r.get("response") is not None for r in requests))
    st = score_file(scorer, lm, args.input, args.output, batch_size=args.batch_size, on_error=args.on_error,
                    max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                    allow_model_mismatch=args.allow_model_mismatch)
    rate = st["scored"] / st["seconds"] if st["seconds"] else 0.0
    print(f"scored {st['scored']} rows into {args.output} ({rate:.2f} rows/s); {st['skipped_done']} already done; "
          f"{st['failed']} malformed line(s) skipped")
    return 1 if st["failed"] else 0


def cmd_serve(args) -> int:
    from .serving.http import serve

    scorer, lm = _scorer_and_model(args)
    serve(scorer, lm, host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
          allow_model_mismatch=args.allow_model_mismatch)
    return 0


def cmd_eval_given(args) -> int:
    from .evaluation.given import evaluate_given, evaluate_given_harvest, format_groups

    if args.json:
        from .fsutil import check_result_path

        check_result_path(args.json, "eval-given")
    if args.harvest:
        from .serving.scorer import Scorer

        scorer = Scorer.load(args.probe, given=args.given_probe, allow_old=args.allow_old_artifact)
        r = evaluate_given_harvest(scorer, args.harvest, split=args.split or "test")
        what = f"{args.harvest} ({r['split']} split)"
    else:
        if not (args.set or args.input):
            raise UserError("give --set, --input or --harvest", field="set")
        scorer, lm = _scorer_and_model(args, given_rows=True)
        r = evaluate_given(scorer, lm, args.input or args.set, limit=args.limit, split=args.split,
                           progress=not args.no_progress, allow_model_mismatch=args.allow_model_mismatch)
        what = f"{args.input or args.set}" + (f" ({args.split} split)" if args.split else "")
    a = r["groups"]["all"]
    auroc = "-" if a["auroc"] is None else f"{a['auroc']:.3f} [{a['auroc_ci'][0]:.3f}, {a['auroc_ci'][1]:.3f}]"
    print(f"{what}: AUROC {auroc} on {a['n']} answers ({a['n_wrong']} wrong) of {r['questions']} questions, "
          f"head {r['head']}")
    print(format_groups(r["groups"]))
    if args.json:
        from .fsutil import write_result_json

        write_result_json(args.json, {k: v for k, v in r.items() if k not in ("risk", "ood_distance")}, "eval-given")
    return 0


def cmd_report(args) -> int:
    from .report.build import write_report

    if args.k < 0:
        raise UserError(f"must be a non-negative integer, got {args.k}", field="k")
    path = write_report(args.run, args.out, k=args.k)
    print(f"report: {path}")
    return 0


def _threads_arg(p) -> None:
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's own, one per core); set it "
                   "when several riskprobe processes share the cores")


def _probe_args(p) -> None:
    p.add_argument("--probe", default="default", help="probe artifact folder, or default (the shipped probe for smollm2-135m)")
    p.add_argument("--model", help="model to run (default: the one the probe was trained for)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU when there is one)")
    p.add_argument("--allow-model-mismatch", action="store_true", help="score with a model the probe was not trained for")
    p.add_argument("--given-probe", help="the given-answer head for rows with a response (an artifact trained on "
                   "answers the model did not write; default: the one the probe names, e.g. 'given' for default)")
    p.add_argument("--allow-old-artifact", action="store_true", dest="allow_old_artifact",
                   help="load a probe exported by an older riskprobe (artifact versions 1-2, whose probe.json carries "
                        "no digest or an older one)")
    _threads_arg(p)


class _Help(argparse.HelpFormatter):
    """Help lines with the default where there is one worth saying."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in h.lower():
            h += " (default: %(default)s)"
        return h


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (``riskprobe harvest: error: ...``) and exit status 2, and help that
    shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())[:300]} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="riskprobe", description="Predict, from a language model's dynamic signatures, "
                                "whether its answer is about to be wrong.")
    p.add_argument("--version", action="version", version=f"riskprobe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _harvest_parser(sub)
    _harvest_parser(sub, "generate")
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
    x.add_argument("--batch-size", type=_batch_size, default="auto", dest="batch_size",
                   help="rows per forward pass, or auto (default: 64 on a CPU, up to 512 by free memory on a GPU)")
    x.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    x.add_argument("--dtype", help="float32, bfloat16 or float16")
    _threads_arg(x)
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
    _threads_arg(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser("merge", help="merge a harvest's finished shards (after a multi-process run)")
    m.add_argument("--out", required=True)
    d = sub.add_parser("demo", help="the whole job on the bundled default (smollm2-135m): harvest, fit the shipped "
                       "recipe, export, score, report, and the early risk against the model's own confidence")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--size", choices=["full", "small"], default="full",
                   help="full: the README's demo (about 7 minutes on two CPU cores); small: the same steps on a few "
                        "hundred questions (about 2 minutes; what the test suite runs)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_arg(d)
    for name, text in (("fit", "train a risk probe from a YAML config (LightningCLI; see `riskprobe fit --help`)"),
                       ("validate", "run validation of a trained probe (LightningCLI)"),
                       ("test", "evaluate a trained probe on the test split (LightningCLI)")):
        sub.add_parser(name, help=text, add_help=False)
    e = sub.add_parser("export", help="export a trained probe checkpoint as a self-contained artifact")
    e.add_argument("--ckpt", required=True, help="checkpoint of a fit run (checkpoints/<run>/final.ckpt)")
    e.add_argument("--out", required=True, help="artifact directory to write (new, or an earlier artifact: replaced)")
    e.add_argument("--force", action="store_true",
                   help="if --out holds anything else, keep it under a new name (OUT.bak-N) and write the artifact")
    e.add_argument("--given-probe", help="record the given-answer head that goes with this probe (a shipped name, "
                   "or a folder beside --out)")
    e.add_argument("--transfer", help="a `riskprobe transfer --json` result of the probe's recipe: its table of unseen "
                   "sources is recorded in probe.json (key 'transfer')")
    sc = sub.add_parser("score", help="score a JSONL file of prompts (generated) or prompt/response pairs (teacher forced)")
    _probe_args(sc)
    sc.add_argument("--input", required=True, help='JSONL, one {"id"?, "prompt", "response"?} per line')
    sc.add_argument("--output", required=True, help="JSONL output; rerun to resume (ids already there are skipped)")
    sc.add_argument("--batch-size", type=int, default=16, help="rows per batch")
    sc.add_argument("--max-new-tokens", type=int, default=33, help="answer budget for rows without a response")
    sc.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                    help="malformed lines: skip (exit 1) or fail (exit 2)")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")
    sv = sub.add_parser("serve", help="run the HTTP scorer (POST /score, GET /health)")
    _probe_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8321)
    sv.add_argument("--max-batch", type=int, default=16)
    sv.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; beyond, 503")
    eg = sub.add_parser("eval-given", help="AUROC of the risk on given right/wrong answers (teacher forcing)")
    _probe_args(eg)
    eg.add_argument("--set", choices=["halueval", "truthfulqa_mc"], help="a public given-answer set")
    eg.add_argument("--input", help="a JSONL file of {question, answer, label (1 = wrong)} rows (optional: id, "
                    "provenance own/other/reference, source)")
    eg.add_argument("--harvest", help="a given-answer harvest (signatures already extracted): its --split rows")
    eg.add_argument("--split", choices=["train", "val", "test"],
                    help="only the questions of this split (questions never trained on: test)")
    eg.add_argument("--limit", type=int, default=200, help="questions to use")
    eg.add_argument("--json", help="write the result here")
    eg.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp = sub.add_parser("report", help="plots and a Markdown report from fit runs and harvests")
    rp.add_argument("--run", nargs="+", required=True, help="fit run directories (metrics.json) and/or harvests")
    rp.add_argument("--out", default="runs/report")
    rp.add_argument("--k", type=int, default=8, help="early window for dynamic profiles (steps 0..k)")
    c = sub.add_parser("compare", help="harvest the same prompts on several models and report them side by side")
    c.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
    c.add_argument("--prompts", default="builtin-factual:200+triviaqa:200")
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    _threads_arg(c)
    xm = sub.add_parser("cross-model", help="a dynamics-only probe trained on some models, tested zero-shot on another",
                        description="Every rotation: train a logistic probe on the scalar dynamics of all models but "
                                    "one, test it on that one's test split (per-model standardisation on unlabelled "
                                    "rows), beside the target's own probe and best training-free score.")
    xm.add_argument("--harvest", action="append", required=True, metavar="DIR",
                    help="a model's harvest (give two or more, each of another model; named by its manifest. NAME=DIR "
                         "is accepted when NAME is that model's name)")
    xm.add_argument("--k", type=int, default=4, help="early steps after step 0")
    xm.add_argument("--layer-bins", type=int, default=3, dest="layer_bins", help="bins of relative depth")
    xm.add_argument("--families", help="comma-separated dynamics families (default: commitment,sync,trajectory,lens; "
                    "commitment alone is output confidence)")
    xm.add_argument("--n-boot", type=int, default=1000, dest="n_boot", help="bootstrap resamples")
    xm.add_argument("--json", help="write the table here")
    tr = sub.add_parser("transfer", help="leave one source out: the risk on each question source when trained on the "
                        "others, against the model's own confidence",
                        description="For every source (prompt set; each EntityQuestions relation is one) with enough "
                                    "right and wrong answers: train on the other sources (C and the blend chosen by CV "
                                    "grouped by source, on them only), test on all of its answers beside the best "
                                    "training-free scores, with paired-bootstrap margins.")
    tr.add_argument("--harvest", action="append", required=True, metavar="DIR",
                    help="a harvest (repeatable: harvests of one model with the same features are joined)")
    tr.add_argument("--families", default="commitment,raw", help="feature families the probe and its blend read")
    tr.add_argument("--probe-families", dest="probe_families",
                    help="the families the logistic probe itself reads, when fewer (raw: the blend alone reads the "
                         "model's confidence)")
    tr.add_argument("--k", type=int, default=4, help="early steps after step 0")
    tr.add_argument("--raw-pool", dest="raw_pool", default="first+mean", choices=["first", "mean", "first+mean"])
    tr.add_argument("--layer-bins", dest="layer_bins", type=int, help="pool per-layer features into bins of depth")
    tr.add_argument("--balance", default="source", choices=["source", "class"],
                    help="source: every training source weighs the same; class: right and wrong answers only")
    tr.add_argument("--no-blend", action="store_true", help="the probe alone, not blended with the model's confidence")
    tr.add_argument("--sources", help="comma-separated sources to hold out (default: every one with 20+ right and "
                    "20+ wrong answers)")
    tr.add_argument("--group", default="set", choices=["set", "writer"],
                    help="what a source is: the prompt set (default), or who wrote the answer (given-answer harvests: "
                         "leave one writer out)")
    tr.add_argument("--n-boot", type=int, default=1000, dest="n_boot", help="bootstrap resamples")
    tr.add_argument("--json", help="write the table here")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    ad = sub.add_parser("adapt", help="refit a blend probe's head on a few labelled questions of your own",
                        description="Answer, grade and extract your labelled questions (or take a harvest of them), "
                                    "refit the head of a blend probe (how much of its learned probe and of the model's "
                                    "confidence to trust) with the probe as the prior, and export the adapted probe.")
    ad.add_argument("--probe", default="default", help="a blend probe artifact (default: the shipped one)")
    ad.add_argument("--prompts", help="a prompt set spec, or a JSONL of {id, question, answers} rows")
    ad.add_argument("--harvest", help="instead of --prompts: a harvest of your questions with the probe's features")
    ad.add_argument("--out", required=True, help="the adapted probe's artifact folder")
    ad.add_argument("--work", help="where the harvest of --prompts goes (default: OUT-harvest)")
    ad.add_argument("--limit", type=int, help="take this many of the questions")
    ad.add_argument("--model", help="the model to answer with (default: the probe's)")
    ad.add_argument("--allow-old-artifact", action="store_true", dest="allow_old_artifact",
                    help="accept a probe of an older artifact version")
    _threads_arg(ad)
    ad.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("models", help="list bundled models and whether they are installed")
    sub.add_parser("sets", help="list prompt sets")
    return p


COMMANDS = {"demo": cmd_demo, "harvest": cmd_harvest, "generate": cmd_generate, "extract": cmd_extract,
            "export": cmd_export, "score": cmd_score, "serve": cmd_serve,
            "eval-given": cmd_eval_given, "given-harvest": cmd_given_harvest, "report": cmd_report,
            "compare": cmd_compare, "merge": cmd_merge,
            "cross-model": cmd_cross_model, "transfer": cmd_transfer, "adapt": cmd_adapt,
            "models": cmd_models, "sets": cmd_sets}


LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _run_lightning(argv: list[str]) -> int:
    """``fit``/``validate``/``test`` go to LightningCLI (a shipped config by name or a YAML file, --print_config, overrides)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from .training.cli import run_cli
    except ImportError as e:
        raise UserError(f"training needs the 'train' extras ({e.name} is missing): pip install 'riskprobe[train]'") from None
    try:
        run = run_cli(argv)
        if run is not None:  # a fit's plots, drawn by the report from the run's files
            from .report.plots import draw_run

            draw_run(run)
        return 0
    except SystemExit as e:  # jsonargparse's --help / --print_config, or its own error exit
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exception as e:  # argument errors from jsonargparse
        if type(e).__name__ in ("ArgumentError", "NSKeyError") or "jsonargparse" in type(e).__module__:
            raise UserError(" ".join(str(e).split())[:500]) from None
        raise


def _one_line(text: str, n: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 3] + "..."


def run_guarded(fn, *args, verbose: bool = False) -> int:
    """The error boundary of every command: a user mistake is one line on stderr and exit status 2; an
    unexpected failure is one line and exit status 1 (the traceback with -v or RISKPROBE_DEBUG=1)."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"riskprobe: error: {_one_line(e, 500)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("riskprobe: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130
    except UnicodeDecodeError as e:
        print(f"riskprobe: error: a file is not UTF-8 text (byte {e.start}: {e.reason})", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"riskprobe: error: {where}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"riskprobe: error: {where}{_one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except RecursionError:
        print("riskprobe: error: input nested too deeply", file=sys.stderr)
        return 2
    except MemoryError:
        print("riskprobe: error: input too large for this machine's memory", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        if verbose or os.environ.get("RISKPROBE_DEBUG"):
            raise
        print(f"riskprobe: internal error: {type(e).__name__}: {_one_line(e)} (rerun with -v for the traceback; "
              "please report it)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``riskprobe`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool({"-v", "--verbose"} & set(argv[:1]))
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_guarded(_run_lightning, argv, verbose=bool(os.environ.get("RISKPROBE_DEBUG")))
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if getattr(args, "no_progress", False):  # libraries' own bars too (transformers' GGUF conversion)
        os.environ["TQDM_DISABLE"] = "1"
    if not args.verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from transformers.utils import logging as tlog

            tlog.set_verbosity_error()
            tlog.disable_progress_bar()
        except ImportError:
            pass
    return run_guarded(COMMANDS[args.command], args, verbose=args.verbose or verbose)


if __name__ == "__main__":
    sys.exit(main())
