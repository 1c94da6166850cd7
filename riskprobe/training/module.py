"""The LightningModule around a plain probe, and a quiet one-probe fit (for sweeps)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..errors import UserError
from ..evaluation import metrics as M
from ..probes.logistic import fit_logreg, fit_stacked
from ..probes.modules import PROBES, RiskModel, build_probe
from .data import HarvestDataModule
from .loso import fit_into_blend

log = logging.getLogger(__name__)

EXACT = ("logreg", "stacked", "blend")  # probes fitted exactly by scikit-learn at the start of a fit


class ProbeModule(L.LightningModule):
    """Wraps a plain :class:`~riskprobe.probes.RiskModel`: loss, optimiser, validation AUROC.

    Args:
        probe: ``logreg`` or ``stacked`` (per-layer logistic probes stacked; both fitted exactly by
            scikit-learn at the start of the fit, no gradient steps), ``blend`` (a logistic probe blended with the
            model's own confidence and backing off toward it far from the training rows, its C and blend chosen
            by CV grouped by source: :mod:`riskprobe.training.loso`), ``linear``, ``mlp`` or ``temporal``
            (trained by AdamW).
        hidden: hidden width (mlp, temporal).
        dropout: dropout rate (mlp, temporal).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the regularisation).
        C: inverse L2 strength of ``logreg`` (scikit-learn's ``C``).
        balance: ``blend`` only: ``source`` (every training source weighs the same) or ``class``.
        group: ``blend`` only: what a source is for its CV and balance: ``set`` (the prompt set) or ``writer`` (who
            wrote a given answer: the given-answer head).
        blend: ``blend`` only: ``false`` keeps the transfer-fitted probe alone (no confidence term, no back-off).
        probe_families: ``blend`` only: the families its logistic probe reads (default: all of ``data.families``);
            ``[raw]`` with ``data.families: [commitment, raw]`` leaves the model's confidence to the blend alone.
    """

    def __init__(self, probe: str = "mlp", hidden: int = 64, dropout: float = 0.1, lr: float = 3e-3,
                 weight_decay: float = 1e-2, C: float = 0.01, balance: str = "source", group: str = "set",
                 blend: bool = True, probe_families: Optional[list[str]] = None):
        super().__init__()

        if probe not in PROBES:

            raise UserError(f"unknown probe '{probe}' (known: {', '.join(PROBES)})", field="model.probe")
        self.save_hyperparameters()
        self.automatic_optimization = probe not in EXACT  # fitted exactly by scikit-learn: no optimiser steps
        self.risk_model: Optional[RiskModel] = None
        self.data_spec: dict[str, Any] = {}
        self.pos_weight = 1.0
        self._outs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def use_recipe(self, probe: str, C: float | None = None) -> None:
        """Switch to another probe kind (a selection's choice) before fitting; the probe is built anew."""
        self.hparams.probe = probe
        if C is not None:
            self.hparams.C = float(C)
        self.automatic_optimization = probe not in EXACT
        self.risk_model = None

    def build(self, spec: dict[str, Any]) -> None:
        d = spec["dims"]
        hp = self.hparams
        probe = build_probe(hp.probe, d["n_steps"], d["n_feat"], d["n_static"], hidden=hp.hidden, dropout=hp.dropout)
        self.risk_model = RiskModel(probe, d["n_feat"], d["n_static"])
        self.data_spec = spec

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            dm.setup(stage)
            if self.risk_model is None:
                self.build(dm.spec())
                if self.hparams.probe != "blend":  # the blend carries its own standardisation
                    self.risk_model.set_standardizer(dm.standardizer)
            self.pos_weight = dm.pos_weight

    def on_fit_start(self) -> None:
        if self.hparams.probe in EXACT:  # the one exact fit; the epoch that follows only validates it

            dm = self.trainer.datamodule
            seq, mask, static, y = dm.split_inputs("train")
            if self.hparams.probe == "logreg":
                fit_logreg(self.risk_model, seq, mask, static, y, C=self.hparams.C)
            elif self.hparams.probe == "blend":

                self.blend_info = fit_into_blend(self.risk_model, dm, balance=self.hparams.balance,
                                                 group=self.hparams.group, blend=self.hparams.blend,
                                                 probe_families=self.hparams.probe_families)
            else:
                sch, sel = dm.harvests.schema, dm.selection
                if "raw" not in sel.families:

                    raise UserError("the stacked probe combines per-layer probes of raw states: add 'raw' to the "
                                    "families", field="data.families")
                n_layers = len(sel.raw_layers if sel.raw_layers is not None else sch["raw_layers"])
                self.stack_info = fit_stacked(self.risk_model, seq, mask, static, y,
                                              [dm.harvests.meta["id"][i] for i in dm.idx["train"]],
                                              n_layers=n_layers, hidden=int(sch["hidden_size"]))

    def on_train_epoch_end(self) -> None:
        if self.hparams.probe in EXACT:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["riskprobe"] = json.loads(json.dumps(self.data_spec, default=str))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.risk_model is None:
            self.build(checkpoint["riskprobe"])

    def forward(self, seq, mask, static):
        return self.risk_model(seq, mask, static)

    def training_step(self, batch, _):
        if self.hparams.probe in EXACT:
            return None  # fitted in on_fit_start
        seq, mask, static, y = batch
        logits = self.risk_model.logits(seq, mask, static)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=torch.tensor(self.pos_weight, device=logits.device))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch):
        seq, mask, static, y = batch
        self._outs.append((self.risk_model.logits(seq, mask, static).detach().cpu(), y.cpu()))

    def _eval_end(self, prefix: str):
        if not self._outs:
            return
        lg = torch.cat([o[0] for o in self._outs])
        y = torch.cat([o[1] for o in self._outs])
        self._outs.clear()
        if self.trainer.world_size > 1:
            lg = self.all_gather(lg).reshape(-1).cpu()
            y = self.all_gather(y).reshape(-1).cpu()
        a = M.auroc(y.numpy(), lg.numpy())
        self.log(f"{prefix}_auroc", float(a) if not np.isnan(a) else 0.5, prog_bar=True, sync_dist=False)

    def validation_step(self, batch, _):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, _):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def quiet_lightning() -> None:
    """No start-up banners (seed, accelerators, tips): the metrics tables are what a user reads."""
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric",
                 "lightning.fabric.utilities.seed", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.logger_connector.logger_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fit_probe(dm: HarvestDataModule, module_kwargs: dict[str, Any], *, max_epochs: int = 60, patience: int = 8,
              seed: int = 0, workdir: str | Path | None = None) -> ProbeModule:
    """Train one probe quietly (no loggers) with early stopping on validation AUROC; return the best."""
    quiet_lightning()  # no per-probe banners in sweeps
    L.seed_everything(seed, verbose=False)
    module = ProbeModule(**module_kwargs)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ck = ModelCheckpoint(dirpath=tmp, monitor="val_auroc", mode="max", filename="best")
        trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[ck, EarlyStopping(monitor="val_auroc", mode="max", patience=patience)],
                            accelerator="cpu", devices=1, default_root_dir=tmp, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=dm)
        if ck.best_model_path:
            state = torch.load(ck.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
    return module


def save_calibrated(module: ProbeModule, path: str | Path) -> None:
    """Save a Lightning-compatible checkpoint of a (calibrated) probe from one process."""
    torch.save({"state_dict": module.state_dict(), "riskprobe": json.loads(json.dumps(module.data_spec, default=str)),
                "hyper_parameters": {k: v for k, v in module.hparams.items() if not k.startswith("_")},
                "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0}, path)
