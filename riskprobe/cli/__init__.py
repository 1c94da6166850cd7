"""The ``riskprobe`` command line (``riskprobe.cli:main``); see :mod:`riskprobe.cli.main`."""

from .main import COMMANDS, LIGHTNING_COMMANDS, build_parser, main, run_guarded

__all__ = ["COMMANDS", "LIGHTNING_COMMANDS", "build_parser", "main", "run_guarded"]
