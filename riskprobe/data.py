"""Read harvests into probe inputs: feature families, the first k steps, id-hash splits, standardisation.

Nothing here knows how features were computed: it reads the columns and the schema of a harvest's
manifest. A probe input has two parts:

* ``seq``  ``[N, k+1, F]``: per-step scalar features of steps 0..k (commitment, synchronisation,
  trajectory, lens), with ``mask`` ``[N, k+1]`` false after the row's end;
* ``static`` ``[N, G]``: pooled raw hidden states (step 0, and the mean of steps 1..k) when the ``raw``
  family is selected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .prompts import split_of

STEP_FAMILIES = ("commitment", "sync", "trajectory", "lens")
ALL_FAMILIES = (*STEP_FAMILIES, "raw")


@dataclass
class Harvests:
    """Rows of one or more compatible harvests, with their signature tensors."""

    meta: dict[str, list]  # id, set, category, label, split, ...
    tensors: dict[str, torch.Tensor]
    schema: dict[str, Any]
    model: dict[str, Any]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.meta["id"])

    def fingerprint(self) -> str:
        from .fsutil import stable_hash

        return stable_hash(json.dumps({"ids": sorted(self.meta["id"]), "model": self.model.get("fingerprint"),
                                       "schema": self.schema}, sort_keys=True, default=str))


def load_harvests(paths: list[str | Path]) -> Harvests:
    """Load and concatenate harvests; refuse ones whose models or feature schemas differ."""
    import datasets

    from .harvest import MANIFEST, signature_tensors

    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("no harvest given (--data.paths '[DIR, ...]')", field="data.paths")
    metas, tens, first = [], [], None
    for p in paths:
        p = Path(p)
        if not (p / MANIFEST).is_file():
            raise UserError(f"not a riskprobe harvest (no {MANIFEST}); run `riskprobe harvest --out {p}` first",
                            file=p, field="data.paths")
        m = json.loads((p / MANIFEST).read_text())
        if m.get("status") != "complete":
            raise UserError("harvest is not complete; rerun the harvest command to finish it", file=p)
        if first is None:
            first = (p, m)
        else:
            p0, m0 = first
            ident = lambda d: {k: d["model"][k] for k in ("fingerprint", "architecture", "n_layers", "hidden_size")}  # noqa: E731
            if ident(m) != ident(m0):
                raise UserError(f"harvests of different models cannot be mixed: {m['model']['name']} here, "
                                f"{m0['model']['name']} in {p0}", file=p, field="data.paths")
            if m["feature_schema"] != m0["feature_schema"]:
                diff = [k for k in set(m["feature_schema"]) | set(m0["feature_schema"])
                        if m["feature_schema"].get(k) != m0["feature_schema"].get(k)]
                raise UserError(f"feature schemas differ from {p0} ({', '.join(sorted(diff)[:4])})", file=p,
                                field="data.paths")
        ds = datasets.load_from_disk(str(p))
        cols = [c for c in ("id", "set", "category", "label", "correct", "n_tokens", "prompt", "response")
                if c in ds.column_names]
        metas.append({c: list(ds[c]) for c in cols})
        tens.append(signature_tensors(ds))
    meta = {c: sum((m[c] for m in metas), []) for c in metas[0]}
    tensors = {k: torch.cat([t[k] for t in tens]) if len(tens) > 1 else tens[0][k] for k in tens[0]}
    if len(paths) > 1:  # a question harvested twice counts once: the first harvest's row is kept
        seen: set[str] = set()
        keep = [i for i, q in enumerate(meta["id"]) if not (q in seen or seen.add(q))]
        if len(keep) < len(meta["id"]):
            meta = {c: [v[i] for i in keep] for c, v in meta.items()}
            idx = torch.as_tensor(keep)
            tensors = {k: v[idx] for k, v in tensors.items()}
    _, m0 = first
    return Harvests(meta, tensors, m0["feature_schema"], m0["model"], [str(p) for p in paths])


@dataclass
class FeatureSelection:
    """Which families and how many early steps a probe sees.

    Attributes:
        families: any of ``commitment``, ``sync``, ``trajectory``, ``lens``, ``raw``.
        k: steps after step 0 (``k = 0``: before generation).
        raw_layers: indices into the harvest's ``raw_layers`` (``None`` = all stored).
    """

    families: list[str] = field(default_factory=lambda: ["commitment", "sync", "trajectory", "lens"])
    k: int = 4
    raw_layers: list[int] | None = None

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
        if self.raw_layers is not None and "raw" in schema["columns"]:
            n = len(schema["raw_layers"])
            if any(not 0 <= i < n for i in self.raw_layers):
                raise UserError(f"raw layer indices must lie in 0..{n - 1}", field="data.raw_layers")

    def to_dict(self) -> dict[str, Any]:
        return {"families": list(self.families), "k": self.k, "raw_layers": self.raw_layers}


def step_feature_names(schema: dict[str, Any], families: list[str]) -> list[str]:
    """Names of the per-step features, in column order (``family.name@layer``)."""
    names = []
    for fam in STEP_FAMILIES:
        if fam not in families:
            continue
        col = schema["columns"][fam]
        if fam == "commitment":
            names += [f"commitment.{n}" for n in col["names"]]
        else:
            layers = schema["lens_layers"] if fam == "lens" else schema["layers"]
            names += [f"{fam}.{n}@{l}" for l in layers for n in col["names"]]
    return names


def build_inputs(h: Harvests, sel: FeatureSelection) -> dict[str, torch.Tensor]:
    """``{"seq": [N, k+1, F], "mask": [N, k+1], "static": [N, G], "label": [N]}`` as float32 tensors."""
    out = inputs_from_signatures(h.tensors, sel)
    out["label"] = torch.tensor(h.meta["label"], dtype=torch.float32)
    return out


def inputs_from_signatures(t: dict[str, torch.Tensor], sel: FeatureSelection) -> dict[str, torch.Tensor]:
    """Probe inputs ``seq``, ``mask``, ``static`` from signature tensors ``[N, ...]`` (as harvested or
    captured live); steps beyond ``k`` are ignored."""
    k = sel.k
    mask = t["step_mask"][:, : k + 1].bool()
    parts = []
    for fam in STEP_FAMILIES:
        if fam in sel.families:
            x = t[fam][:, : k + 1].float()
            parts.append(x.reshape(x.shape[0], k + 1, -1))
    N = int(t["step_mask"].shape[0])
    seq = torch.cat(parts, dim=-1) if parts else torch.zeros(N, k + 1, 0)
    static = torch.zeros(N, 0)
    if "raw" in sel.families:
        raw = t["raw"]  # [N, R, M, H]
        if sel.raw_layers is not None:
            raw = raw[:, :, sel.raw_layers]
        raw = raw.float()
        pooled = [raw[:, 0].reshape(N, -1)]
        kk = min(k, raw.shape[1] - 1)
        if kk >= 1:
            m = t["step_mask"][:, 1: kk + 1].float().view(N, kk, 1, 1)
            mean = (raw[:, 1: kk + 1] * m).sum(1) / m.sum(1).clamp_min(1.0)
            pooled.append(mean.reshape(N, -1))
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
        valid = seq[mask] if seq.shape[-1] else torch.zeros(1, 0)
        if valid.shape[0] == 0:
            valid = torch.zeros(1, seq.shape[-1])
        sm, ss = valid.mean(0), valid.std(0, unbiased=False)
        if static.shape[0] and static.shape[1]:
            gm, gs = static.mean(0), static.std(0, unbiased=False)
        else:
            gm, gs = torch.zeros(static.shape[1]), torch.ones(static.shape[1])
        fix = lambda s: torch.where(s > 1e-6, s, torch.ones_like(s))  # noqa: E731
        return cls(sm, fix(ss), gm, fix(gs))


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
            raise UserError(f"the {k} split is empty ({len(h)} rows); harvest more questions", field="data.paths")
    return out
