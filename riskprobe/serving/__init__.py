"""Serving: score generations with an exported probe, offline (JSONL), live (``RiskMonitor``) or over HTTP.

Reads artifacts (``probes``) and runs models (``models``); imports no training and no harvest loop."""

from .jsonl import score_file
from .monitor import RiskMonitor
from .scorer import Scorer, onnx_risk

__all__ = ["RiskMonitor", "Scorer", "onnx_risk", "score_file"]
