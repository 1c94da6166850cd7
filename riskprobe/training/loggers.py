"""The loggers and the config callback a fit declares in YAML (``riskprobe/assets/configs/trainer.yaml``).

Both loggers write inside the run's folder: their ``save_dir`` is left empty in the config and filled with the
fit's (staging) run folder before they are built, so that a failed fit leaves no logs behind.
"""

from __future__ import annotations

import os
from typing import Optional

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

WANDB_MODES = ("offline", "online", "disabled")


class RunCSVLogger(CSVLogger):
    """Lightning's CSV logger, writing to ``<run>/csv`` unless ``save_dir`` says otherwise."""

    def __init__(self, save_dir: Optional[str] = None, name: str = "csv", **kwargs):
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)


class WandbRunLogger(WandbLogger):
    """Lightning's wandb logger on a run that riskprobe starts (offline by default: no key, no network).

    The run is started here with wandb's public ``init`` and handed to the logger as its experiment
    (Lightning's own start passes a setting that wandb warns about on every fit). ``WANDB_MODE`` overrides ``mode``.
    """

    def __init__(self, save_dir: Optional[str] = None, project: str = "riskprobe", name: Optional[str] = None,
                 mode: str = "offline"):
        import wandb  # here: a fit with wandb disabled never loads it

        mode = os.environ.get("WANDB_MODE") or mode
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, name=name, dir=save_dir, mode="online" if mode == "online" else "offline")
        super().__init__(experiment=self.run, save_dir=save_dir)

    def finish(self) -> None:
        """Close the run (before its folder is renamed into place)."""
        if self.run is not None:
            self.run.finish()
            self.run = None


class RunConfigCallback(SaveConfigCallback):
    """The parsed config goes to the loggers as hyperparameters (wandb's run config, the CSV ``hparams.yaml``).

    The file ``config.yaml`` is written by the fit itself when it publishes the run, as resolved after any
    recipe selection (:meth:`riskprobe.training.cli.RiskprobeCLI.resolved_config`), not at the start.
    """

    def __init__(self, parser, config, **kwargs):
        kwargs["save_to_log_dir"] = False
        super().__init__(parser, config, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.loggers:
            text = self.parser.dump(self.config, skip_none=False)
            for lg in trainer.loggers:
                lg.log_hyperparams({"config": text})
