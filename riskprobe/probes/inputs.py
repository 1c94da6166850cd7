"""Read harvests into probe inputs: feature families, the first k steps, id-hash splits, standardisation.

Nothing here knows how features were computed: it reads the columns and the schema of a harvest's
manifest. A probe input has two parts:

* ``seq``  ``[N, k+1, F]``: per-step scalar features of steps 0..k (commitment, synchronisation,
  trajectory, lens), with ``mask`` ``[N, k+1]`` false after the row's end;
* ``static`` ``[N, G]``: pooled raw hidden states (step 0, and the mean of steps 1..k) when the ``raw``
  family is selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..signatures.spec import FAMILIES

ALL_FAMILIES = FAMILIES  # the families a harvest records (signatures.spec), the per-step ones first
STEP_FAMILIES = tuple(f for f in FAMILIES if f != "raw")  # per step and layer; raw states are pooled apart
RAW_POOLS = ("first", "first+mean", "mean")


@dataclass
class FeatureSelection:
    """Which families and how many early steps a probe sees.

    Attributes:
        families: any of ``commitment``, ``sync``, ``trajectory``, ``lens``, ``raw``.
        k: steps after step 0 (``k = 0``: before generation).
        raw_layers: indices into the harvest's ``raw_layers`` (``None`` = all stored).
        raw_pool: how raw states of steps 0..k become static features: ``first`` (step 0, the last prompt
            token), ``mean`` (the mean of the generated steps 1..k; step 0 when ``k = 0``) or ``first+mean``
            (both, concatenated).
        layer_bins: pool the per-layer features (sync, trajectory, lens) into this many bins of relative
            depth (the mean over each bin's layers), so that models with different layer counts give inputs of
            one shape (``None``: every layer apart).
    """

    families: list[str] = field(default_factory=lambda: list(STEP_FAMILIES))
    k: int = 4
    raw_layers: list[int] | None = None
    raw_pool: str = "first+mean"
    layer_bins: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSelection":
        """As recorded in checkpoints and artifacts (older ones have no ``raw_pool``: ``first+mean``)."""
        return cls(list(d["families"]), int(d["k"]), d.get("raw_layers"), d.get("raw_pool", "first+mean"),
                   d.get("layer_bins"))

    def validate(self, schema: dict[str, Any]) -> None:
        for f in self.families:
            if f not in ALL_FAMILIES:
                raise UserError(f"unknown feature family '{f}' (known: {', '.join(ALL_FAMILIES)})", field="data.families")
            if f not in schema["columns"]:
                raise UserError(f"feature family '{f}' was not harvested (harvested: "
                                f"{', '.join(c for c in schema['columns'] if c != 'step_mask')})", field="data.families")
        if not self.families:
            raise UserError("select at least one feature family", field="data.families")
        if not isinstance(self.k, int) or self.k < 0 or self.k > schema["K"]:
            raise UserError(f"k = {self.k} is outside 0..K = 0..{schema['K']} of this harvest", field="data.k")
        if self.raw_pool not in RAW_POOLS:
            raise UserError(f"unknown raw pooling '{self.raw_pool}' (known: {', '.join(RAW_POOLS)})",
                            field="data.raw_pool")
        if self.layer_bins is not None and (not isinstance(self.layer_bins, int) or self.layer_bins < 1):
            raise UserError("layer_bins must be a positive integer or null", field="data.layer_bins")
        if self.raw_layers is not None and "raw" in schema["columns"]:
            n = len(schema["raw_layers"])
            if any(not 0 <= i < n for i in self.raw_layers):
                raise UserError(f"raw layer indices must lie in 0..{n - 1}", field="data.raw_layers")

    def to_dict(self) -> dict[str, Any]:
        return {"families": list(self.families), "k": self.k, "raw_layers": self.raw_layers, "raw_pool": self.raw_pool,
                "layer_bins": self.layer_bins}


def depth_bins(n_layers: int, bins: int) -> list[list[int]]:
    """Positions ``0..n_layers-1`` split into ``bins`` consecutive groups of relative depth (fewer when there
    are fewer layers than bins)."""
    return [g.tolist() for g in np.array_split(np.arange(n_layers), min(bins, n_layers)) if len(g)]


def step_feature_names(schema: dict[str, Any], families: list[str], layer_bins: int | None = None) -> list[str]:
    """Names of the per-step features, in column order (``family.name@layer``, or ``family.name@depth<i>of<n>``
    with layer bins)."""
    names = []
    for fam in STEP_FAMILIES:
        if fam not in families:
            continue
        col = schema["columns"][fam]
        if fam == "commitment":
            names += [f"commitment.{n}" for n in col["names"]]
        else:
            layers = schema["lens_layers"] if fam == "lens" else schema["layers"]
            if layer_bins:
                nb = len(depth_bins(len(layers), layer_bins))
                names += [f"{fam}.{n}@depth{b + 1}of{nb}" for b in range(nb) for n in col["names"]]
            else:
                names += [f"{fam}.{n}@{layer}" for layer in layers for n in col["names"]]
    return names


def inputs_from_signatures(t: dict[str, torch.Tensor], sel: FeatureSelection) -> dict[str, torch.Tensor]:
    """Probe inputs ``seq``, ``mask``, ``static`` from signature tensors ``[N, ...]`` (as harvested or
    captured live); steps beyond ``k`` are ignored."""
    k = sel.k
    mask = t["step_mask"][:, : k + 1].bool()
    parts = []
    for fam in STEP_FAMILIES:
        if fam in sel.families:
            x = t[fam][:, : k + 1].float()
            if sel.layer_bins and x.dim() == 4:  # [N, S, layers, F] -> [N, S, bins, F]
                x = torch.stack([x[:, :, g].mean(2) for g in depth_bins(x.shape[2], sel.layer_bins)], 2)
            parts.append(x.reshape(x.shape[0], k + 1, -1))
    N = int(t["step_mask"].shape[0])
    seq = torch.cat(parts, dim=-1) if parts else torch.zeros(N, k + 1, 0)
    static = torch.zeros(N, 0)
    if "raw" in sel.families:
        raw = t["raw"]  # [N, R, M, H]
        if sel.raw_layers is not None:
            raw = raw[:, :, sel.raw_layers]
        raw = raw.float()
        pooled = [raw[:, 0].reshape(N, -1)] if sel.raw_pool != "mean" else []
        kk = min(k, raw.shape[1] - 1)
        if sel.raw_pool != "first" and kk >= 1:
            # rows that end before step 1 have no generated states: their mean is 0 (after the valid-step mask)
            m = t["step_mask"][:, 1: kk + 1].float().view(N, kk, 1, 1)
            mean = (raw[:, 1: kk + 1] * m).sum(1) / m.sum(1).clamp_min(1.0)
            pooled.append(mean.reshape(N, -1))
        elif sel.raw_pool == "mean":  # k = 0: nothing generated yet, the mean of steps 1..k is step 0's state
            pooled.append(raw[:, 0].reshape(N, -1))
        static = torch.cat(pooled, dim=-1)
    return {"seq": seq, "mask": mask, "static": static}


@dataclass
class Standardizer:
    """Per-feature mean and standard deviation fitted on training rows (valid steps only)."""

    seq_mean: torch.Tensor
    seq_std: torch.Tensor
    static_mean: torch.Tensor
    static_std: torch.Tensor

    @classmethod
    def fit(cls, seq: torch.Tensor, mask: torch.Tensor, static: torch.Tensor) -> "Standardizer":
        def moments(x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
            if width == 0 or x.shape[0] == 0:  # no features, or no rows: the identity transform
                return torch.zeros(width), torch.ones(width)
            sd = x.std(0, unbiased=False)
            return x.mean(0), torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # constant columns stay as they are

        return cls(*moments(seq[mask], seq.shape[-1]), *moments(static, static.shape[1]))
