"""What decides a harvest: :class:`HarvestConfig`, read from YAML (``version: 1``) and type-checked before any
model loads."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import UserError, short
from ..fsutil import load_yaml
from ..models.loader import valid_device_name
from ..signatures import FeatureSpec


@dataclass
class HarvestConfig:
    """Everything that decides what a harvest produces (see the shipped ``riskprobe/assets/configs/harvest/default.yaml``)."""

    model: str = "smollm2-135m"
    prompts: str = "builtin"
    limit: int | None = None
    out: str = "runs/harvest"
    max_new_tokens: int = 33
    batch_size: int | str = "auto"
    shard_size: int = 256
    seed: int = 0
    do_sample: bool = False
    samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    prompt_style: str = "auto"
    device: str | None = None
    dtype: str | None = None
    datasets_root: str | None = None
    threads: int | None = None
    truncate_prompts: bool = False
    features: dict[str, Any] = field(default_factory=dict)

    # Keys that change rows: a rerun into the same directory must agree on these.
    COMPAT = ("model", "prompts", "limit", "max_new_tokens", "shard_size", "seed", "do_sample", "samples",
              "temperature", "top_p", "prompt_style", "dtype", "truncate_prompts", "features")
    # Expected types, checked before anything is loaded (bool is not an int here).
    TYPES = {"model": str, "prompts": str, "limit": (int, type(None)), "out": str, "max_new_tokens": int,
             "batch_size": (int, str), "shard_size": int, "seed": int, "do_sample": bool, "samples": int,
             "temperature": (int, float),
             "top_p": (int, float), "prompt_style": str, "device": (str, type(None)), "dtype": (str, type(None)),
             "datasets_root": (str, type(None)), "threads": (int, type(None)), "truncate_prompts": bool,
             "features": dict}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> "HarvestConfig":
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise UserError(f"unknown key (known: {', '.join(sorted(known))})", file=source, field=k)
        cfg = cls(**d)
        cfg.validate(source)
        return cfg

    def validate(self, source: str | None = None) -> None:
        def need(cond: bool, key: str, msg: str):
            if not cond:
                raise UserError(msg, file=source, field=key)

        for key, typ in self.TYPES.items():
            v = getattr(self, key)
            typs = typ if isinstance(typ, tuple) else (typ,)
            if (isinstance(v, bool) and bool not in typs) or not isinstance(v, typs):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in typs)
                raise UserError(f"expected {names}, got {type(v).__name__} {short(v)}", file=source, field=key)
        need(self.model.strip() != "", "model", "must not be empty")
        need(self.prompts.strip() != "", "prompts", "must not be empty")
        need(self.out.strip() != "", "out", "must not be empty")
        need(0 < self.temperature <= 100, "temperature", "must be in (0, 100]")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.threads is None or 1 <= self.threads <= 1024, "threads", "must be a positive integer")
        need(self.dtype is None or self.dtype in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"),
             "dtype", "must be float32, bfloat16 or float16")
        need(self.device is None or valid_device_name(self.device), "device", "must be cpu, cuda, cuda:N or mps")
        need(self.limit is None or (isinstance(self.limit, int) and self.limit > 0), "limit", "must be a positive integer")
        need(isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 4096, "max_new_tokens",
             "must be an integer from 1 to 4096")
        need(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size > 0), "batch_size",
             "must be a positive integer or auto")
        need(isinstance(self.shard_size, int) and self.shard_size > 0, "shard_size", "must be a positive integer")
        need(1 <= self.samples <= 1000, "samples", "must be an integer from 1 to 1000")
        need(self.samples == 1 or self.do_sample, "samples", "more than one sample per question needs do_sample: true")
        need(self.prompt_style in ("auto", "chat", "fewshot"), "prompt_style", "must be auto, chat or fewshot")
        need(isinstance(self.features, dict), "features", "must be a mapping")

        try:
            FeatureSpec.from_dict(self.features)
        except UserError as e:
            raise UserError(e.message, file=source, field=e.field) from None

    @property
    def answers_per_question(self) -> int:
        """``samples`` when sampling, else 1 (one greedy answer)."""
        return self.samples if self.do_sample else 1

    def compat(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.COMPAT}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None,
                feature_overrides: dict[str, Any] | None = None) -> HarvestConfig:
    """A :class:`HarvestConfig` from a YAML file (``version: 1``) plus overrides of its keys and of its
    ``features:`` keys (``None`` values ignored).

    A bad value is reported where it came from: the file and line of a key in the file, or the command-line
    option of an override (``--max-new-tokens``, ``--K``)."""
    data: dict[str, Any] = {}
    src, lines = None, {}
    if path is not None:
        src = str(path)
        p = Path(path)
        data, lines = load_yaml(p, with_lines=True)
        data = data or {}
        if not isinstance(data, dict):
            raise UserError("expected a mapping at the top level", file=p)
        version = data.pop("version", 1)
        if version != 1:
            raise UserError(f"unsupported config version {short(version)} (this riskprobe reads version 1)", file=p,
                            field="version", line=lines.get("version"))
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    feats = {k: v for k, v in (feature_overrides or {}).items() if v is not None}
    data.update(over)
    if feats and isinstance(data.get("features", {}), dict):
        data["features"] = {**data.get("features", {}), **feats}
    try:
        return HarvestConfig.from_dict(data, src)
    except UserError as e:
        sub = e.field.removeprefix("features.") if (e.field or "").startswith("features.") else None
        opt = sub if sub in feats else e.field if e.field in over else None
        if opt:
            raise UserError(e.message, field="--" + opt.replace("_", "-")) from None
        if e.file is not None and e.file == src and e.line is None and e.field in lines:
            raise UserError(e.message, file=src, line=lines[e.field], field=e.field) from None
        raise
