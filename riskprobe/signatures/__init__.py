"""Signatures: per-step, per-layer features of a generation (pure functions, schema, capture)."""

from .capture import Capture, capture_sites
from .spec import FAMILIES, SCHEMA_VERSION, FeatureSpec, normalise_schema, resolve_layers

__all__ = ["Capture", "capture_sites", "FeatureSpec", "FAMILIES", "SCHEMA_VERSION", "normalise_schema", "resolve_layers"]
