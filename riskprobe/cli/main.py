"""The ``riskprobe`` command: thin, parses arguments, calls one stage, prints. One module per group of subcommands
(:mod:`.harvest`, :mod:`.scoring`, :mod:`.study`); ``fit | validate | test`` go to the training stage's LightningCLI.

A user mistake (:class:`~riskprobe.errors.UserError`) prints one line and exits with status 2. The subcommands import
their stage when they run, so that ``riskprobe --help`` and ``riskprobe sets`` start in a second, without torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import UserError
from . import harvest, scoring, study
from .common import Parser, one_line

COMMANDS = {**harvest.COMMANDS, **study.COMMANDS, **scoring.COMMANDS}  # subcommand -> handler


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = Parser(prog="riskprobe", description="Predict, from a language model's dynamic signatures, "
                                "whether its answer is about to be wrong.")
    p.add_argument("--version", action="version", version=f"riskprobe {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    harvest.register(sub)
    study.register_jobs(sub)
    scoring.register(sub)
    study.register(sub)
    return p


LIGHTNING_COMMANDS = ("fit", "validate", "test")


def run_lightning(argv: list[str]) -> int:
    """``fit``/``validate``/``test`` go to LightningCLI (a shipped config by name or a YAML file, --print_config, overrides)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from ..training.cli import run_cli
    except ImportError as e:
        raise UserError(f"training needs the 'train' extras ({e.name} is missing): pip install 'riskprobe[train]'") from None
    try:
        run = run_cli(argv)
        if run is not None:  # a fit's plots, drawn by the report from the run's files
            from ..report.plots import draw_run

            draw_run(run)
        return 0
    except SystemExit as e:  # jsonargparse's --help / --print_config, or its own error exit
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)


def run_guarded(fn, *args, verbose: bool = False) -> int:
    """The error boundary of every command: a user mistake is one line on stderr and exit status 2; an
    unexpected failure is one line and exit status 1 (the traceback with -v or RISKPROBE_DEBUG=1)."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"riskprobe: error: {one_line(e, 500)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("riskprobe: interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130
    except UnicodeDecodeError as e:
        print(f"riskprobe: error: a file is not UTF-8 text (byte {e.start}: {e.reason})", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"riskprobe: error: {where}{one_line(e.strerror or e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"riskprobe: error: {where}{one_line(e.strerror or e)}", file=sys.stderr)
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
        print(f"riskprobe: internal error: {type(e).__name__}: {one_line(e)} (rerun with -v for the traceback; "
              "please report it)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``riskprobe`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool({"-v", "--verbose"} & set(argv[:1]))
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return run_guarded(run_lightning, argv, verbose=bool(os.environ.get("RISKPROBE_DEBUG")))
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
