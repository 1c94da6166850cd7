"""``probe.json``, typed: what an exported probe says about itself, checked field by field on write and on read.

:class:`ProbeMeta` is the schema: each section a dataclass whose annotations are the types the file must hold;
:meth:`ProbeMeta.from_dict` checks a mapping against it (a missing or mistyped field is a :class:`UserError`
naming its dotted path) and the ranges that types cannot say. Keys the schema does not name are kept as they
are (``extra``), so that an artifact's digest, computed over the whole file, still holds after a round trip:
``ProbeMeta.from_dict(d).to_dict() == d``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import UserError
from .modules import PROBES

#: the columns every row of an artifact's leave-one-source-out table has
TRANSFER_KEYS = ("source", "n", "n_wrong", "auroc", "best_training_free", "margin")
PROVENANCES = ("own", "other", "reference")


@dataclass
class ModelRef:
    """The model the probe reads (the harvest's ``ModelIdentity``; its other keys are kept in ``extra``)."""

    name: str
    fingerprint: str
    architecture: str
    n_layers: int
    hidden_size: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dims:
    n_steps: int  # k + 1
    n_feat: int
    n_static: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    k: int
    families: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureSpec:
    selection: Selection
    dims: Dims
    feature_schema: dict[str, Any]
    step_features: Optional[list[Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeSpec:
    kind: str
    hparams: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Calibration:
    a: float
    b: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ood:
    threshold: float
    quantile: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransferTable:
    rows: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeMeta:
    """The whole of ``probe.json``."""

    model_identity: ModelRef
    feature_spec: FeatureSpec
    probe: ProbeSpec
    calibration: Calibration
    version: Optional[int] = None
    threshold: Optional[float] = None
    ood: Optional[Ood] = None
    answer_provenance: Optional[list[str]] = None
    given_probe: Optional[str] = None
    transfer: Optional[TransferTable] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, *, file: str | Path | None = None) -> "ProbeMeta":
        """Check ``d`` against the schema and the ranges; raise a :class:`UserError` naming the first bad field."""
        meta = _build(cls, d, "", file)
        meta._check_ranges(file)
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The mapping back, unknown keys included, absent optional sections left out."""
        return _unbuild(self)

    def _check_ranges(self, file) -> None:
        ident, dims, sel = self.model_identity, self.feature_spec.dims, self.feature_spec.selection
        _need(ident.n_layers > 0 and ident.hidden_size > 0, "must be positive", file, "model_identity.n_layers")
        for k in ("n_steps", "n_feat", "n_static"):
            v = getattr(dims, k)
            _need(0 <= v <= 10_000_000 and (k != "n_steps" or v >= 1), "out of range", file, f"feature_spec.dims.{k}")
        _need(all(isinstance(f, str) for f in sel.families), "expected a list of names", file,
              "feature_spec.selection.families")
        _need(dims.n_steps == sel.k + 1, f"n_steps {dims.n_steps} does not match k = {sel.k}", file,
              "feature_spec.dims.n_steps")
        kind = self.probe.kind
        _need(kind in PROBES, f"unknown probe kind {kind[:40]!r} (known: {', '.join(PROBES)})", file, "probe.kind")
        hidden = self.probe.hparams.get("hidden", 64)
        _need(isinstance(hidden, int) and not isinstance(hidden, bool) and 1 <= hidden <= 65536,
              "must be a positive integer", file, "probe.hparams.hidden")
        for c in ("a", "b"):
            _need(math.isfinite(getattr(self.calibration, c)), "must be a finite number", file, f"calibration.{c}")
        if self.threshold is not None:
            _need(0.0 <= self.threshold <= 1.0, f"must be a risk in [0, 1], got {self.threshold!r}", file, "threshold")
        if self.ood is not None:
            t = self.ood.threshold
            _need(math.isfinite(t) and t > 0, f"must be a positive distance, got {t!r}", file, "ood.threshold")
        if self.answer_provenance is not None:
            _need(all(p in PROVENANCES for p in self.answer_provenance), "expected own, other or reference", file,
                  "answer_provenance")
        for i, row in enumerate(self.transfer.rows if self.transfer else []):
            _need(isinstance(row, dict) and all(k in row for k in TRANSFER_KEYS),
                  f"row {i} lacks one of {', '.join(TRANSFER_KEYS)}", file, "transfer.rows")
            _need(isinstance(row["source"], str) and _is(row["n"], int) and _is(row["n_wrong"], int),
                  f"row {i}: source, n and n_wrong must be a name and counts", file, "transfer.rows")


def _need(cond: bool, msg: str, file, path: str) -> None:
    if not cond:
        raise UserError(msg, file=file, field=path)


def _is(v: Any, typ) -> bool:
    """``isinstance`` for a JSON value: a bool is not a number, an int is a float."""
    if isinstance(v, bool):
        return typ is bool
    if typ is float:
        return isinstance(v, (int, float))
    return isinstance(v, typing.get_origin(typ) or typ)


def _build(cls, d: Any, prefix: str, file):
    where = prefix.rstrip(".") or "probe.json"
    _need(isinstance(d, dict), f"expected an object, got {type(d).__name__}", file, where)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "extra":
            continue
        path = prefix + f.name
        typ, optional = _unwrap(hints[f.name])
        if f.name not in d or d[f.name] is None:
            _need(optional or f.name not in d and f.default is not dataclasses.MISSING, "missing", file, path)
            continue
        v = d[f.name]
        if dataclasses.is_dataclass(typ):
            kw[f.name] = _build(typ, v, path + ".", file)
        else:
            _need(_is(v, typ), f"expected {getattr(typing.get_origin(typ) or typ, '__name__', typ)}, got "
                  f"{type(v).__name__}", file, path)
            kw[f.name] = v
    # unknown keys, and known ones present as null, come back as they were (the file's digest covers them)
    kw["extra"] = {k: v for k, v in d.items() if k not in names or v is None}
    return cls(**kw)


def _unwrap(hint) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; ``X`` -> ``(X, False)``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _unbuild(obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name == "extra":
            out.update(v)
        elif v is not None:
            out[f.name] = _unbuild(v) if dataclasses.is_dataclass(v) else v
    return out
