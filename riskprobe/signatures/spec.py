"""The feature schema: which steps, layers, normalisation and families a signature holds.

Layer indices name states of the residual stream: ``0`` is the input to the first decoder layer
(embeddings, plus positions where the architecture adds them) and ``l`` (1..L) the output of decoder layer
``l``, *before* the final norm. (transformers' ``hidden_states[-1]`` is after the final norm; riskprobe
captures with hooks and is explicit: normalisation ``final_norm`` applies the model's own final norm to
every captured state.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import UserError, check_version, short
from .features import COMMITMENT, LENS, SYNC, TRAJECTORY

SCHEMA_VERSION = 1
FAMILIES = ("commitment", "sync", "trajectory", "lens", "raw")
# What capturing a family costs while a monitored model generates, in milliseconds per step for 64 rows of
# SmolLM2-135M on two CPU cores (each feature function timed inside a harvest, 2026-11-26): the logit lens is
# three unembeddings per row, the commitment one full-vocabulary softmax, sync and trajectory cosines and norms
# per layer, raw a copy of a few states. Selection uses it to prefer the cheaper of two equally good recipes.
MONITOR_COST = {"lens": 130.0, "commitment": 13.0, "sync": 3.5, "trajectory": 2.3, "raw": 0.1}
NORMALISATIONS = ("raw", "final_norm", "unit")
LAYER_SETS = ("all", "none", "early", "middle", "late")


def normalise_schema(schema: dict[str, Any], file=None) -> dict[str, Any]:
    """A stored feature schema, its version checked (``schema_version`` is the name older files used)."""
    d = dict(schema)
    v = d.pop("schema_version", None)
    d["version"] = check_version(d.get("version", v), SCHEMA_VERSION, kind="feature schema", file=file,
                                 field="feature_schema.version")
    return d


def resolve_layers(sel: Any, n_layers: int, what: str) -> list[int]:
    """Concrete layer indices (0..L) for a selection: ``all``, ``early``, ``middle``, ``late``,
    ``sparseN`` (N evenly spaced, ending at L), ``none``, or an explicit list (negative counts from L+1)."""
    L = n_layers
    body = list(range(1, L + 1))
    if isinstance(sel, str):
        if sel == "all":
            return body
        if sel == "none":
            return []
        thirds = {"early": body[: L // 3], "middle": body[L // 3: 2 * L // 3], "late": body[2 * L // 3:]}
        if sel in thirds:
            return thirds[sel]
        if sel.startswith("sparse") and sel[6:].isdigit():
            n = max(1, min(int(sel[6:]), L))
            return sorted({round(L * (i + 1) / n) for i in range(n)})
        raise UserError(f"unknown layer set '{sel}' (all, early, middle, late, sparseN, none, or a list)", field=what)
    if isinstance(sel, (list, tuple)):
        out = []
        for v in sel:
            if not isinstance(v, int) or not -(L + 1) <= v <= L:
                raise UserError(f"layer {v!r} is out of range for a model with {L} layers (0..{L})", field=what)
            out.append(v % (L + 1))
        return sorted(set(out))
    raise UserError(f"expected a layer set name or a list of ints, got {sel!r}", field=what)


@dataclass
class FeatureSpec:
    """What to record per step (see module doc). Unresolved fields may hold layer-set names.

    Attributes:
        K: number of generated steps recorded after step 0 (the signature has ``K + 1`` steps).
        families: feature families to record.
        layers: layers for synchronisation and trajectory features.
        normalisation: ``raw``, ``final_norm`` or ``unit``.
        lens_layers: layers read through the logit lens; ``lens_steps``: lens only for steps 0..lens_steps.
        raw_layers: layers whose raw states are stored (float16) for steps 0..raw_steps.
    """

    K: int = 32
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    layers: Any = "all"
    normalisation: str = "raw"
    lens_layers: Any = "sparse4"
    lens_steps: int = 4
    raw_layers: Any = "sparse3"
    raw_steps: int = 8
    n_layers: int | None = None
    hidden_size: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "FeatureSpec":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        for k in d:
            if k not in known:
                raise UserError(f"unknown feature setting (known: {', '.join(sorted(known))})", field=f"features.{k}")
        spec = cls(**d)
        if not isinstance(spec.families, list) or not all(isinstance(f, str) for f in spec.families):
            raise UserError(f"expected a list of family names, got {short(spec.families)}", field="features.families")
        for k in ("layers", "lens_layers", "raw_layers"):
            v = getattr(spec, k)
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                         for x in v))):
                raise UserError(f"expected a layer set name or a list of ints, got {short(v)}", field=f"features.{k}")
            if isinstance(v, str) and not (v in LAYER_SETS or (v.startswith("sparse") and v[6:].isdigit()
                                                               and int(v[6:]) > 0)):
                raise UserError(f"unknown layer set {short(v)} (all, early, middle, late, sparseN, none, or a list)",
                                field=f"features.{k}")
        if not isinstance(spec.normalisation, str):
            raise UserError(f"expected a string, got {short(spec.normalisation)}", field="features.normalisation")
        for f in spec.families:
            if f not in FAMILIES:
                raise UserError(f"unknown feature family '{f}' (known: {', '.join(FAMILIES)})", field="features.families")
        if spec.normalisation not in NORMALISATIONS:
            raise UserError(f"must be one of {', '.join(NORMALISATIONS)}", field="features.normalisation")
        for k in ("K", "lens_steps", "raw_steps"):
            v = getattr(spec, k)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 4096:
                raise UserError(f"must be an integer from 0 to 4096, got {short(v)}", field=f"features.{k}")
        for k in ("n_layers", "hidden_size"):
            v = getattr(spec, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise UserError(f"must be a positive integer, got {short(v)}", field=f"features.{k}")
        return spec

    @property
    def steps(self) -> int:
        return self.K + 1

    def resolve(self, lm_or_layers, hidden_size: int | None = None) -> "FeatureSpec":
        """Concrete layer lists for a model (a LoadedModel, or ``n_layers, hidden_size``)."""
        if isinstance(lm_or_layers, int):
            L, H = lm_or_layers, hidden_size
        else:
            L, H = lm_or_layers.identity.n_layers, lm_or_layers.identity.hidden_size
        return replace(
            self, n_layers=L, hidden_size=H,
            layers=resolve_layers(self.layers, L, "features.layers"),
            lens_layers=resolve_layers(self.lens_layers, L, "features.lens_layers"),
            raw_layers=resolve_layers(self.raw_layers, L, "features.raw_layers"),
            lens_steps=min(self.lens_steps, self.K), raw_steps=min(self.raw_steps, self.K),
        )

    def has(self, family: str) -> bool:
        if family == "lens":
            return "lens" in self.families and bool(self.lens_layers)
        if family == "raw":
            return "raw" in self.families and bool(self.raw_layers)
        if family in ("sync", "trajectory"):
            return family in self.families and bool(self.layers)
        return family in self.families

    def shapes(self) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...]]]:
        """``{column: (shape, dtype, names of the last axis)}`` for a resolved spec."""
        S = self.steps
        out = {"step_mask": ((S,), "bool", ("valid",))}
        if self.has("commitment"):
            out["commitment"] = ((S, len(COMMITMENT)), "float32", COMMITMENT)
        if self.has("sync"):
            out["sync"] = ((S, len(self.layers), len(SYNC)), "float32", SYNC)
        if self.has("trajectory"):
            out["trajectory"] = ((S, len(self.layers), len(TRAJECTORY)), "float32", TRAJECTORY)
        if self.has("lens"):
            out["lens"] = ((S, len(self.lens_layers), len(LENS)), "float32", LENS)
        if self.has("raw"):
            out["raw"] = ((self.raw_steps + 1, len(self.raw_layers), self.hidden_size), "float16", ("hidden",))
        return out

    def schema(self) -> dict[str, Any]:
        """The schema recorded in manifests and probe artifacts; equal schemas mean compatible rows."""
        d = asdict(self)
        d["version"] = SCHEMA_VERSION
        d["columns"] = {k: {"shape": list(s), "dtype": t, "names": list(n)} for k, (s, t, n) in self.shapes().items()}
        return d
