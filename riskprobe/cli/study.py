"""``riskprobe demo | report | compare | cross-model | transfer | adapt | models | sets``: whole jobs, studies
across sources and models, and listings.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import add_threads, check_positive, comma_list, print_summary, write_json_result


def cmd_demo(args) -> int:
    from ..evaluation.versus import format_versus
    from ..models import set_threads
    from ..pipeline import demo

    check_positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    res = demo(args.out, size=args.size, progress=not args.no_progress)
    print(f"\ndemo finished in {res.seconds:.0f} s; report: {res.report}; probe artifact: {res.artifact}")
    print(f"scored {res.score_stats['scored']} sample rows -> {res.scored}")
    for title, summ in (("trained sources", res.harvest_summary), ("never trained on", res.unseen_summary)):
        print(f"\n{title}:")
        print_summary(summ)
    print(f"\nthe probe at k = {res.k} (AUROC of 'this answer is wrong', 95% intervals; best training-free = the "
          "strongest of the model's own confidence scores on those very rows)")
    print(format_versus(res.versus, k=res.k))
    print(res.verdict)
    return 0


def cmd_compare(args) -> int:
    from ..models import set_threads
    from ..pipeline import compare

    check_positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    res = compare(args.models, args.out, prompts=args.prompts, progress=not args.no_progress)
    for s in res["skipped"]:
        print(f"skipped {s}")
    print(f"report: {res['report']}")
    return 0


def cmd_cross_model(args) -> int:
    from ..fsutil import check_result_path
    from ..harvest.store import read_manifest
    from ..training.transfer import cross_model, format_cross_model

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
    check_positive(args.k, "k", 4096)
    check_positive(args.layer_bins, "layer-bins", 64)
    res = cross_model(paths, k=args.k, layer_bins=args.layer_bins, families=comma_list(args.families), n_boot=args.n_boot)
    print(format_cross_model(res))
    write_json_result(args.json, res, "cross-model")
    return 0


def cmd_transfer(args) -> int:
    from ..fsutil import check_result_path
    from ..training.loso import TransferRecipe, format_loso, loso

    if args.json:
        check_result_path(args.json, "transfer")
    for h in args.harvest:
        if not Path(h).is_dir():
            raise UserError("harvest directory not found", file=h, field="harvest")
    check_positive(args.n_boot, "n-boot", 100000)
    recipe = TransferRecipe(families=comma_list(args.families) or [], k=args.k, raw_pool=args.raw_pool,
                            layer_bins=args.layer_bins, balance=args.balance, blend=not args.no_blend,
                            probe_families=comma_list(args.probe_families))
    res = loso(args.harvest, recipe, sources=comma_list(args.sources), n_boot=args.n_boot,
               progress=not args.no_progress, group=args.group)
    print(format_loso(res))
    write_json_result(args.json, res, "transfer")
    return 0


def cmd_adapt(args) -> int:
    from ..models import set_threads
    from ..pipeline import adapt

    check_positive(args.limit, "limit")
    check_positive(args.threads, "threads", 1024)
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


def cmd_report(args) -> int:
    from ..report.build import write_report

    if args.k < 0:
        raise UserError(f"must be a non-negative integer, got {args.k}", field="k")
    path = write_report(args.run, args.out, k=args.k)
    print(f"report: {path}")
    return 0


def cmd_models(args) -> int:
    from ..models import BUNDLED

    for name, b in BUNDLED.items():
        extra = "  (optional: make models-large)" if b.optional else ""
        print(f"{name:<14}{b.install_state():<18}{b.description}{extra}")
    return 0


def cmd_sets(args) -> int:
    from ..prompts.sets import REGISTRY
    from ..resources import datasets_root

    root = datasets_root()
    where = root if root is not None and root.is_dir() else f"{root} (not found: set RISKPROBE_DATASETS)"
    print(f"public sets root: {where}")
    from ..prompts.sets import load_items

    for name, (_, desc) in REGISTRY.items():
        n = f" [{len(load_items(name))} items]" if name.startswith("builtin") else ""
        print(f"{name:<20}{desc}{n}")
    return 0


def register_jobs(sub) -> None:
    """Add ``demo`` (and the LightningCLI commands' entries in the help) to ``sub``."""
    d = sub.add_parser("demo", help="the whole job on the bundled default (smollm2-135m): harvest, fit the shipped "
                       "recipe, export, score, report, and the early risk against the model's own confidence")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--size", choices=["full", "small"], default="full",
                   help="full: the README's demo (about 7 minutes on two CPU cores); small: the same steps on a few "
                        "hundred questions (about 2 minutes; what the test suite runs)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(d)
    for name, text in (("fit", "train a risk probe from a YAML config (LightningCLI; see `riskprobe fit --help`)"),
                       ("validate", "run validation of a trained probe (LightningCLI)"),
                       ("test", "evaluate a trained probe on the test split (LightningCLI)")):
        sub.add_parser(name, help=text, add_help=False)


def register(sub) -> None:
    """Add this group's studies and listings to ``sub``."""
    rp = sub.add_parser("report", help="plots and a Markdown report from fit runs and harvests")
    rp.add_argument("--run", nargs="+", required=True, help="fit run directories (metrics.json) and/or harvests")
    rp.add_argument("--out", default="runs/report")
    rp.add_argument("--k", type=int, default=8, help="early window for dynamic profiles (steps 0..k)")
    c = sub.add_parser("compare", help="harvest the same prompts on several models and report them side by side")
    c.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
    c.add_argument("--prompts", default="builtin-factual:200+triviaqa:200")
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads(c)
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
    add_threads(ad)
    ad.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("models", help="list bundled models and whether they are installed")
    sub.add_parser("sets", help="list prompt sets")


COMMANDS = {"demo": cmd_demo, "report": cmd_report, "compare": cmd_compare, "cross-model": cmd_cross_model,
            "transfer": cmd_transfer, "adapt": cmd_adapt, "models": cmd_models, "sets": cmd_sets}
