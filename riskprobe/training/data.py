"""Probe inputs from harvests for training: the LightningDataModule, the id-hash splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import UserError
from ..harvest.store import Harvests, load_harvests
from ..probes.inputs import (
    STEP_FAMILIES,
    FeatureSelection,
    Standardizer,
    inputs_from_signatures,
    step_feature_names,
)
from ..prompts.sets import split_of


def build_inputs(h: Harvests, sel: FeatureSelection) -> dict[str, torch.Tensor]:
    """``{"seq": [N, k+1, F], "mask": [N, k+1], "static": [N, G], "label": [N]}`` as float32 tensors."""
    out = inputs_from_signatures(h.tensors, sel)
    out["label"] = torch.tensor(h.meta["label"], dtype=torch.float32)
    return out


def split_indices(h: Harvests, *, fractions=(0.7, 0.15, 0.15), salt: str = "riskprobe",
                  train_sets: list[str] | None = None, test_sets: list[str] | None = None) -> dict[str, np.ndarray]:
    """Row indices of train/val/test, assigned by a hash of the question id (never by row order).

    With ``test_sets`` different from ``train_sets`` (a cross-set run), train and val come from the
    train sets' train and val splits and test is every row of the test sets whose question was not
    trained on. With ``test_sets`` alone, the test split is restricted to those sets.
    """
    sets = np.asarray(h.meta["set"])
    splits = np.asarray([split_of(i, fractions, salt) for i in h.meta["id"]])
    known = set(sets.tolist())
    for name, sel in (("data.train_sets", train_sets), ("data.test_sets", test_sets)):
        for s in sel or []:
            if s not in known:
                raise UserError(f"set '{s}' is not in the given harvests (they hold: {', '.join(sorted(known))})",
                                field=name)
    tr_mask = np.isin(sets, train_sets) if train_sets else np.ones(len(sets), bool)
    out = {"train": np.flatnonzero(tr_mask & (splits == "train")), "val": np.flatnonzero(tr_mask & (splits == "val"))}
    if test_sets and train_sets and set(test_sets) != set(train_sets):  # cross-set: all unseen rows of the test sets
        te = np.isin(sets, test_sets)
        ids = np.asarray(h.meta["id"])
        te &= ~np.isin(ids, ids[np.r_[out["train"], out["val"]]])  # never test on a trained question
        out["test"] = np.flatnonzero(te)
    else:
        te_mask = np.isin(sets, test_sets) if test_sets else tr_mask
        out["test"] = np.flatnonzero(te_mask & (splits == "test"))
    for k, v in out.items():
        if len(v) == 0:
            sizes = ", ".join(f"{n} {len(i)}" for n, i in out.items())
            raise UserError(f"the {k} split is empty ({len(h)} rows: {sizes}; questions go to train/val/test "
                            "70/15/15 by a hash of their id); harvest more questions (a larger --limit)",
                            field="data.paths")
    return out


class HarvestDataModule(L.LightningDataModule):
    """Probe inputs from one or more harvests (see :mod:`riskprobe.training.data`).

    Args:
        paths: harvest directories (same model and feature schema).
        families: feature families (commitment, sync, trajectory, lens, raw).
        k: early steps after step 0 that the probe sees.
        raw_layers: indices into the harvest's stored raw layers (None = all).
        raw_pool: raw states as step 0 (``first``), the mean of steps 1..k (``mean``) or both (``first+mean``).
        layer_bins: pool per-layer features into this many bins of relative depth (None = every layer apart).
        batch_size: rows per batch.
        train_sets: sets to train and validate on (None = all).
        test_sets: sets to test on; different from train_sets makes a cross-set run.
        split_fractions: train/val/test fractions, assigned by a hash of the question id.
        split_salt: changes the hash assignment (a different, still deterministic, split).
    """

    def __init__(self, paths: list[str] = [], families: list[str] = list(STEP_FAMILIES),  # noqa: B006, B008
                 k: int = 4, raw_layers: Optional[list[int]] = None, raw_pool: str = "first+mean",
                 layer_bins: Optional[int] = None, batch_size: int = 64,
                 train_sets: Optional[list[str]] = None, test_sets: Optional[list[str]] = None,
                 split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), split_salt: str = "riskprobe"):
        super().__init__()
        self.save_hyperparameters()
        self.selection = FeatureSelection(list(families), k, raw_layers, raw_pool, layer_bins)
        self._ready = False

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        hp = self.hparams
        for p in hp.paths:
            if not Path(p).exists():
                raise UserError("harvest directory not found", file=p, field="data.paths")
        self.harvests = load_harvests(hp.paths)
        self.idx = split_indices(self.harvests, fractions=tuple(hp.split_fractions), salt=hp.split_salt,
                                 train_sets=hp.train_sets, test_sets=hp.test_sets)
        self.use(self.selection)
        y = self.inputs["label"][self.idx["train"]]
        n_pos = float(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise UserError(f"the training split has only one class ({int(n_pos)} wrong of {len(y)}); "
                            "harvest more or different questions", field="data.paths")
        self.pos_weight = (len(y) - n_pos) / n_pos  # balances wrong vs right answers in the loss
        self._ready = True

    def use(self, selection: FeatureSelection) -> None:
        """Build the probe inputs of another feature selection (same rows and splits); the standardisation is
        fitted on the training split again."""
        selection.validate(self.harvests.schema)
        self.selection = selection
        self.inputs = build_inputs(self.harvests, selection)
        tr = self.idx["train"]
        self.standardizer = Standardizer.fit(self.inputs["seq"][tr], self.inputs["mask"][tr], self.inputs["static"][tr])

    @property
    def dims(self) -> dict[str, int]:
        s = self.inputs["seq"]
        return {"n_steps": int(s.shape[1]), "n_feat": int(s.shape[2]), "n_static": int(self.inputs["static"].shape[1])}

    def spec(self) -> dict[str, Any]:
        """What a trained probe needs to know about its inputs (recorded in checkpoints and artifacts)."""
        return {"selection": self.selection.to_dict(), "dims": self.dims,
                "step_features": step_feature_names(self.harvests.schema, self.selection.families,
                                                    self.selection.layer_bins),
                "feature_schema": self.harvests.schema, "model_identity": self.harvests.model,
                "data_fingerprint": self.harvests.fingerprint(), "harvests": self.harvests.paths,
                "split": {"fractions": list(self.hparams.split_fractions), "salt": self.hparams.split_salt,
                          "train_sets": self.hparams.train_sets, "test_sets": self.hparams.test_sets,
                          "n": {k: int(len(v)) for k, v in self.idx.items()}}}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        i = torch.as_tensor(self.idx[split])
        x = self.inputs
        ds = TensorDataset(x["seq"][i], x["mask"][i], x["static"][i], x["label"][i])
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def split_inputs(self, split: str) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(self.idx[split])
        x = self.inputs
        return x["seq"][i], x["mask"][i], x["static"][i], x["label"][i]
