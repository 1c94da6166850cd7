"""Models: loading (bundled, GGUF, directory, hub), identity, and prompting."""

from .bundled import BUNDLED, DEFAULT_MODEL, BundledModel, cache_root
from .loader import (
    LoadedModel,
    ModelIdentity,
    auto_batch_size,
    check_device,
    context_length,
    default_device,
    load_model,
    set_threads,
    wrap_model,
)
from .prompting import RenderedPrompt, render

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "BundledModel",
    "cache_root",
    "LoadedModel",
    "ModelIdentity",
    "auto_batch_size",
    "check_device",
    "context_length",
    "default_device",
    "load_model",
    "set_threads",
    "wrap_model",
    "RenderedPrompt",
    "render",
]
