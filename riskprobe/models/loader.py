"""Load a causal LM from a bundled name, a ``.gguf`` file, a local directory or a hub id.

GGUF files are dequantised by transformers (17-60 s); the float weights are then cached once as
safetensors under :func:`~riskprobe.models.bundled.cache_root` and reloaded from there in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import UserError
from ..fsutil import atomic_dir, sha256_files
from .bundled import BUNDLED, cache_root, check_sha256, resolve_bundled

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class ModelIdentity:
    """What a model is, recorded by every file that depends on it.

    ``fingerprint`` is the sha256 of the weights file (GGUF or directory weights) or the hub revision;
    two models with the same fingerprint and architecture produce the same features.
    """

    name: str
    source: str  # "bundled" | "gguf" | "dir" | "hub" | "memory"
    fingerprint: str
    architecture: str
    n_layers: int
    hidden_size: int
    vocab_size: int
    has_chat_template: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelIdentity":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def same_model(self, other: "ModelIdentity | dict[str, Any]") -> bool:
        """Whether two identities name the same weights (names and sources may differ)."""
        return same_model(self, other)

    def same_shape(self, other: "ModelIdentity | dict[str, Any]") -> bool:
        """Whether two models have the same layer count and width (their signatures have the same shapes)."""
        return same_shape(self, other)


# The identity rule, in one place: these fields decide "the same model" (names and sources may differ).
IDENTITY_KEYS = ("fingerprint", "architecture", "n_layers", "hidden_size")
SHAPE_KEYS = ("n_layers", "hidden_size")


def _get(ident: "ModelIdentity | dict[str, Any]", key: str):
    return ident.get(key) if isinstance(ident, dict) else getattr(ident, key)


def same_model(a: "ModelIdentity | dict[str, Any]", b: "ModelIdentity | dict[str, Any]") -> bool:
    """Whether two identities (objects or their dicts, as files record them) name the same weights."""
    return all(_get(a, k) == _get(b, k) for k in IDENTITY_KEYS)


def same_shape(a: "ModelIdentity | dict[str, Any]", b: "ModelIdentity | dict[str, Any]") -> bool:
    """Whether two models' signatures have the same shapes (layer count and width)."""
    return all(_get(a, k) == _get(b, k) for k in SHAPE_KEYS)


def identity_diff(a: "ModelIdentity | dict[str, Any]", b: "ModelIdentity | dict[str, Any]") -> list[str]:
    """The identity fields that differ, as ``key: a -> b``."""
    return [f"model.{k}: {_get(a, k)!r} -> {_get(b, k)!r}" for k in IDENTITY_KEYS if _get(a, k) != _get(b, k)]


@dataclass
class LoadedModel:
    """A model ready to generate: the ``transformers`` model, its tokenizer and its identity."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity
    #: the key/value cache of shared prompt prefixes, batch 1, filled by :func:`~.generation.encode` (LRU)
    prefix_cache: dict = field(default_factory=dict, repr=False, compare=False)
    #: signature captures attached to the model now (each is told when ended rows leave a batch)
    watchers: list = field(default_factory=list, repr=False, compare=False)

    @property
    def device(self):
        return next(self.model.parameters()).device


def _identity(model, tokenizer, name: str, source: str, fingerprint: str) -> ModelIdentity:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return ModelIdentity(
        name=name,
        source=source,
        fingerprint=fingerprint,
        architecture=str(cfg.model_type),
        n_layers=int(cfg.num_hidden_layers),
        hidden_size=int(cfg.hidden_size),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def prepare_tokenizer(tokenizer):
    """Left padding (for batched generation) and a pad token (the EOS token where there is none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def wrap_model(model, tokenizer, *, name: str = "in-memory", source: str = "memory",
               fingerprint: str | None = None) -> LoadedModel:
    """Wrap an already-built model (e.g. a tiny random one in tests) with an identity."""
    if fingerprint is None:

        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
        fingerprint = h.hexdigest()
    model.eval()
    return LoadedModel(model, prepare_tokenizer(tokenizer), _identity(model, tokenizer, name, source, fingerprint))


def _load_dir(path: Path, dtype, device):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, tok


def _load_gguf_file(gguf: Path):
    """Dequantise a GGUF file into a float32 model and its tokenizer (slow: 20-60 s)."""
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tok


def _load_gguf(gguf: Path, sha: str, dtype, device):
    """Load a GGUF file, through the float safetensors cache keyed by the file's sha256."""
    cdir = cache_root() / "models" / f"{sha[:24]}-v{CACHE_VERSION}"
    if (cdir / "riskprobe-cache.json").is_file():
        return _load_dir(cdir, dtype, device)

    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a .gguf file needs the 'gguf' package: pip install gguf") from None
    log.info("dequantising %s once (cached in %s)", gguf.name, cdir)
    model, tok = _load_gguf_file(gguf)
    # A GGUF-loaded model refuses save_pretrained until its quantizer record is gone.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_dir(cdir, replace=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "riskprobe-cache.json").write_text(json.dumps({"gguf_sha256": sha, "version": CACHE_VERSION}))
    except OSError as e:  # a read-only cache is not fatal: we keep the model in memory
        log.warning("could not cache dequantised weights in %s: %s", cdir, e)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model.to(device), tok


def _resolve_dtype(dtype):
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[str(dtype)]
    except KeyError:
        raise UserError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)", field="dtype") from None


def context_length(lm: "LoadedModel") -> int | None:
    """How many tokens (prompt plus answer) the model takes, from its config (``None`` if it does not say)."""
    cfg = lm.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def valid_device_name(device: str) -> bool:
    """Whether ``device`` is a device name riskprobe takes (``cpu``, ``mps``, ``cuda``, ``cuda:N``), present or not."""
    return re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(device)) is not None


def check_device(device: str) -> str:
    """``device`` if this machine has it; a UserError naming the option otherwise."""
    d = str(device)
    if not valid_device_name(d):
        raise UserError(f"unknown device {d[:40]!r} (cpu, cuda, cuda:N or mps)", field="device")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {d!r} asked for, but this machine has no CUDA GPU (or torch is a CPU build)",
                            field="device")
        n = int(d.split(":")[1]) if ":" in d else 0
        if n >= torch.cuda.device_count():
            raise UserError(f"device {d!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)",
                            field="device")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' asked for, but it is not available here", field="device")
    return d


def set_threads(threads: int | None) -> None:
    """Intra-op threads of this process: ``threads`` if given; under torchrun, the cores shared out among
    the ranks of this machine (processes that each take every core slow each other down many times)."""
    if threads:
        torch.set_num_threads(int(threads))
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if local > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


#: batch size on a CPU: tokens/s against batch size on two cores stopped growing here for plain generation and a
#: harvest alike (README, "Tokens/s against batch size"); larger batches only hold more memory
CPU_BATCH = 64
#: the largest batch chosen on a GPU (the H200 table's largest measured size, the fastest there)
GPU_BATCH_MAX = 512


def _available_ram() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def auto_batch_size(lm: "LoadedModel", *, seq_len: int = 256, steps: int = 33) -> int:
    """A batch size for generation and teacher-forced extraction on ``lm``'s device.

    The largest power of two up to :data:`CPU_BATCH` on a CPU (or Apple's MPS), :data:`GPU_BATCH_MAX` on a
    CUDA GPU, whose rows fit in a quarter of the memory available there; a row holds the key/value cache of
    ``seq_len`` positions, the float32 logits of ``steps`` positions (the extraction pass keeps them) with the
    temporaries of a vocabulary-wide softmax, and the states captured at every layer.
    """
    cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    elem = next(lm.model.parameters()).element_size()
    per_row = (2 * cfg.num_hidden_layers * kv_heads * head_dim * seq_len * elem
               + cfg.vocab_size * 4 * (steps + 4)
               + (cfg.num_hidden_layers + 1) * cfg.hidden_size * 4 * steps)
    if lm.device.type == "cuda":

        free, cap = torch.cuda.mem_get_info(lm.device)[0], GPU_BATCH_MAX
    else:
        free, cap = _available_ram(), CPU_BATCH
    if free is None:
        return cap
    fit = max(1, min(cap, free // 4 // per_row))
    return 1 << (fit.bit_length() - 1)


def resolve_batch_size(batch_size: "int | str", lm: "LoadedModel", **kw) -> int:
    """``batch_size`` itself, or :func:`auto_batch_size` where it is ``"auto"``.

    >>> resolve_batch_size(7, lm=None)
    7
    """
    return auto_batch_size(lm, **kw) if batch_size == "auto" else int(batch_size)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hub_reachable() -> bool:
    """Whether to try the Hugging Face hub: ``HF_HUB_OFFLINE`` is not set, and its host resolves (or a proxy is
    set, which resolves it)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy only the proxy may resolve names: let the hub client try
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def load_model(spec: str, *, device: str | None = None, dtype=None, revision: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for batched generation.

    Args:
        spec: a bundled name (see :data:`~riskprobe.models.bundled.BUNDLED`), a path to a ``.gguf`` file,
            a local model directory, or a Hugging Face hub id (needs internet or a warm hub cache).
        device: ``"cpu"``, ``"cuda"``...; defaults to the GPU where there is one.
        dtype: ``float32`` (default on CPU), ``bfloat16`` (default on GPU) or ``float16``.
        revision: hub revision, for hub ids.

    Raises:
        UserError: unknown name, missing file, checksum mismatch, unreachable hub.
    """
    device = check_device(device or default_device())
    tdtype = _resolve_dtype(dtype)
    if tdtype is None:
        tdtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    path = Path(os.path.expanduser(spec))
    if spec in BUNDLED:
        gguf, bm = resolve_bundled(spec)
        model, tok = _load_gguf(gguf, bm.sha256, tdtype, device)
        return LoadedModel(model.eval(), prepare_tokenizer(tok), _identity(model, tok, spec, "bundled", bm.sha256))
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError("model file not found", file=spec)
        sha = sha256_files([path])
        model, tok = _load_gguf(path, sha, tdtype, device)
        return LoadedModel(model.eval(), prepare_tokenizer(tok), _identity(model, tok, path.name, "gguf", sha))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError("not a model directory (no config.json)", file=spec)
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        sha = sha256_files(weights) if weights else "unknown"
        model, tok = _load_dir(path, tdtype, device)
        return LoadedModel(model.eval(), prepare_tokenizer(tok), _identity(model, tok, path.name, "dir", sha))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        known = ", ".join(sorted(BUNDLED))
        raise UserError(f"unknown model '{spec}': not a bundled name ({known}), an existing .gguf file, "
                        "a model directory, or a hub id of the form org/name", field="model")
    online = _hub_reachable()  # unreachable: the local cache only, rather than a minute of retries
    try:
        tok = AutoTokenizer.from_pretrained(spec, revision=revision, local_files_only=not online)
        model = AutoModelForCausalLM.from_pretrained(spec, revision=revision, dtype=tdtype,
                                                     local_files_only=not online).to(device)
    except OSError as e:
        why = "no such model, or no local cache" if online else "the hub cannot be reached from here and it is " \
              "not in the local Hugging Face cache"
        raise UserError(f"could not load hub model '{spec}' ({why}): {str(e).splitlines()[0][:200]}",
                        field="model") from None
    rev = getattr(model.config, "_commit_hash", None) or revision or "unknown"
    return LoadedModel(model.eval(), prepare_tokenizer(tok), _identity(model, tok, spec, "hub", f"hub:{spec}@{rev}"))


def clear_cache() -> None:
    """Remove cached dequantised weights and concatenated GGUF files."""
    for sub in ("models", "gguf", "sha256"):
        shutil.rmtree(cache_root() / sub, ignore_errors=True)


__all__ = ["ModelIdentity", "LoadedModel", "load_model", "context_length", "check_device", "set_threads", "wrap_model",
           "prepare_tokenizer",
           "clear_cache",
           "check_sha256", "default_device"]
