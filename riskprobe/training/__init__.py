"""Training: the DataModule over harvests, the LightningModule around a plain probe, evaluation after a fit,
and the LightningCLI behind ``riskprobe fit|validate|test``; :func:`fit` trains from a config in Python and
:func:`evaluate_run` evaluates a run's checkpoint again."""

from .cli import cli_main, evaluate_run, fit
from .data import HarvestDataModule
from .evaluate import calibrate_and_evaluate
from .module import ProbeModule

__all__ = ["HarvestDataModule", "ProbeModule", "calibrate_and_evaluate", "cli_main", "evaluate_run", "fit"]
