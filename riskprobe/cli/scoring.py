"""``riskprobe export | score | serve | eval-given``: a probe as an artifact, and scoring with it.
"""

from __future__ import annotations

import json

from ..errors import UserError
from .common import add_probe_args, check_positive, write_json_result


def cmd_export(args) -> int:
    from ..probes.artifact import export_checkpoint

    extra = {"given_probe": args.given_probe} if args.given_probe else None
    transfer = None
    if args.transfer:
        from ..fsutil import read_text

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


def load_scorer(args, *, given_rows: bool = False):
    """The probe with all its checks, and the options checked, before any model loads. ``given_rows``: the input
    holds rows with a response, which need a given-answer head (refused here, naming the fix, if there is none)."""
    from ..models import check_device, set_threads
    from ..serving.scorer import Scorer

    check_positive(getattr(args, "batch_size", None), "batch-size", 4096)
    check_positive(getattr(args, "max_new_tokens", None), "max-new-tokens", 4096)
    check_positive(getattr(args, "max_batch", None), "max-batch", 4096)
    check_positive(getattr(args, "limit", None), "limit")
    check_positive(getattr(args, "max_queue", None), "max-queue")
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        raise UserError(f"must be a port number from 0 to 65535, got {args.port}", field="port")
    if args.device:
        check_device(args.device)
    check_positive(args.threads, "threads", 1024)
    set_threads(args.threads)
    scorer = Scorer.load(args.probe, given=getattr(args, "given_probe", None),
                         allow_old=getattr(args, "allow_old_artifact", False))
    if given_rows:
        scorer.head_for_given()
    return scorer


def load_model_for(args, scorer):
    """The model the probe reads (``--model``, else the probe's own), checked against the probe and its head."""
    from ..models import load_model

    model = args.model or scorer.model_identity["name"]
    lm = load_model(model, device=getattr(args, "device", None))
    scorer.check_model(lm, allow_model_mismatch=args.allow_model_mismatch)
    if scorer.given is not None:  # the given-answer head must fit the model too
        scorer.given.check_model(lm, allow_model_mismatch=args.allow_model_mismatch)
    return lm


def scorer_and_model(args, *, given_rows: bool = False):
    """Load the probe (all its checks), check the options, then load the model: cheap checks first."""
    scorer = load_scorer(args, given_rows=given_rows)
    return scorer, load_model_for(args, scorer)


def cmd_score(args) -> int:
    from ..serving.jsonl import check_paths, read_requests, score_file

    inp, _ = check_paths(args.input, args.output)
    errors: list[str] = []
    requests = read_requests(inp, args.on_error, errors, quiet=True)  # a malformed line fails here with --on-error fail
    scorer, lm = scorer_and_model(args, given_rows=any(r.get("response") is not None for r in requests))
    st = score_file(scorer, lm, args.input, args.output, batch_size=args.batch_size, on_error=args.on_error,
                    max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                    allow_model_mismatch=args.allow_model_mismatch)
    rate = st["scored"] / st["seconds"] if st["seconds"] else 0.0
    print(f"scored {st['scored']} rows into {args.output} ({rate:.2f} rows/s); {st['skipped_done']} already done; "
          f"{st['failed']} malformed line(s) skipped")
    return 1 if st["failed"] else 0


def cmd_serve(args) -> int:
    from ..serving.http import serve

    scorer, lm = scorer_and_model(args)
    serve(scorer, lm, host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
          allow_model_mismatch=args.allow_model_mismatch)
    return 0


def cmd_eval_given(args) -> int:
    from ..evaluation.given import evaluate_given, evaluate_given_harvest, format_groups

    if args.json:
        from ..fsutil import check_result_path

        check_result_path(args.json, "eval-given")
    if args.harvest:
        from ..serving.scorer import Scorer

        scorer = Scorer.load(args.probe, given=args.given_probe, allow_old=args.allow_old_artifact)
        r = evaluate_given_harvest(scorer, args.harvest, split=args.split or "test")
        what = f"{args.harvest} ({r['split']} split)"
    else:
        if not (args.set or args.input):
            raise UserError("give --set, --input or --harvest", field="set")
        scorer, lm = scorer_and_model(args, given_rows=True)
        r = evaluate_given(scorer, lm, args.input or args.set, limit=args.limit, split=args.split,
                           progress=not args.no_progress, allow_model_mismatch=args.allow_model_mismatch)
        what = f"{args.input or args.set}" + (f" ({args.split} split)" if args.split else "")
    a = r["groups"]["all"]
    auroc = "-" if a["auroc"] is None else f"{a['auroc']:.3f} [{a['auroc_ci'][0]:.3f}, {a['auroc_ci'][1]:.3f}]"
    print(f"{what}: AUROC {auroc} on {a['n']} answers ({a['n_wrong']} wrong) of {r['questions']} questions, "
          f"head {r['head']}")
    print(format_groups(r["groups"]))
    write_json_result(args.json, {k: v for k, v in r.items() if k not in ("risk", "ood_distance")}, "eval-given")
    return 0


def register(sub) -> None:
    """Add this group's subcommands (:data:`COMMANDS`) to ``sub``."""
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
    add_probe_args(sc)
    sc.add_argument("--input", required=True, help='JSONL, one {"id"?, "prompt", "response"?} per line')
    sc.add_argument("--output", required=True, help="JSONL output; rerun to resume (ids already there are skipped)")
    sc.add_argument("--batch-size", type=int, default=16, help="rows per batch")
    sc.add_argument("--max-new-tokens", type=int, default=33, help="answer budget for rows without a response")
    sc.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                    help="malformed lines: skip (exit 1) or fail (exit 2)")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")
    sv = sub.add_parser("serve", help="run the HTTP scorer (POST /score, GET /health)")
    add_probe_args(sv)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8321)
    sv.add_argument("--max-batch", type=int, default=16)
    sv.add_argument("--max-queue", type=int, default=256, help="requests waiting at most; beyond, 503")
    eg = sub.add_parser("eval-given", help="AUROC of the risk on given right/wrong answers (teacher forcing)")
    add_probe_args(eg)
    eg.add_argument("--set", choices=["halueval", "truthfulqa_mc"], help="a public given-answer set")
    eg.add_argument("--input", help="a JSONL file of {question, answer, label (1 = wrong)} rows (optional: id, "
                    "provenance own/other/reference, source)")
    eg.add_argument("--harvest", help="a given-answer harvest (signatures already extracted): its --split rows")
    eg.add_argument("--split", choices=["train", "val", "test"],
                    help="only the questions of this split (questions never trained on: test)")
    eg.add_argument("--limit", type=int, default=200, help="questions to use")
    eg.add_argument("--json", help="write the result here")
    eg.add_argument("--no-progress", action="store_true", help="no progress bar")


COMMANDS = {"export": cmd_export, "score": cmd_score, "serve": cmd_serve, "eval-given": cmd_eval_given}
