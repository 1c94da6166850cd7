"""Helpers every ``riskprobe`` subcommand shares: option types and checks, the parser class whose errors
are one line, the summary printer.
"""

from __future__ import annotations

import argparse

from ..errors import UserError
from ..fsutil import write_result_json


def batch_size_type(text: str) -> int | str:
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


def check_positive(value: int | None, field: str, hi: int = 1 << 20) -> None:
    if value is not None and not 1 <= value <= hi:
        raise UserError(f"must be an integer from 1 to {hi}, got {value}", field=field)


def add_threads(p) -> None:
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's own, one per core); set it "
                   "when several riskprobe processes share the cores")


def add_probe_args(p) -> None:
    p.add_argument("--probe", default="default", help="probe artifact folder, or default (the shipped probe for smollm2-135m)")
    p.add_argument("--model", help="model to run (default: the one the probe was trained for)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU when there is one)")
    p.add_argument("--allow-model-mismatch", action="store_true", help="score with a model the probe was not trained for")
    p.add_argument("--given-probe", help="the given-answer head for rows with a response (an artifact trained on "
                   "answers the model did not write; default: the one the probe names, e.g. 'given' for default)")
    p.add_argument("--allow-old-artifact", action="store_true", dest="allow_old_artifact",
                   help="load a probe exported by an older riskprobe (artifact versions 1-2, whose probe.json carries "
                        "no digest or an older one)")
    add_threads(p)


class Help(argparse.HelpFormatter):
    """Help lines with the default where there is one worth saying."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in h.lower():
            h += " (default: %(default)s)"
        return h


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (``riskprobe harvest: error: ...``) and exit status 2, and help that
    shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())[:300]} (see {self.prog} --help)\n")


def print_summary(summary) -> None:
    print(f"{'set':<14}{'n':>7}{'correct':>10}{'echo':>8}")
    for s, v in summary.items():
        print(f"{s:<14}{v['n']:>7}{v['correct_rate']:>10.1%}{v['echo_rate']:>8.1%}")


def features_arg(args) -> dict:
    """The feature spec of ``--features`` (a harvest config or YAML) with the single-setting options applied."""
    from ..resources import resolve_config

    features: dict = {}
    if args.features is not None:
        from ..fsutil import load_yaml

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


def one_line(text: str, n: int = 300) -> str:
    t = " ".join(str(text).split())
    return t if len(t) <= n else t[: n - 3] + "..."


def comma_list(text: str | None) -> list[str] | None:
    """``--families a,b``: the names, spaces and empty items dropped; None when the option was not given.

    >>> comma_list(" raw, commitment ,"), comma_list(None)
    (['raw', 'commitment'], None)
    """
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def write_json_result(path: str | None, res: dict, kind: str) -> None:
    """``--json FILE``: the result, written as riskprobe writes results (never over a user's file), and said."""
    if path:
        write_result_json(path, res, kind)
        print(f"\nwritten: {path}")
