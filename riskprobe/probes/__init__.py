"""Probes: plain ``nn.Module`` probes, the probe-input contract, and the self-contained artifact.

``modules`` (linear, MLP, temporal, and the ``RiskModel`` wrapper), ``inputs`` (signature columns -> probe
inputs), ``artifact`` (export and checked loading), ``estimator`` (the scikit-learn face). Nothing here
imports Lightning."""

from .artifact import export_checkpoint, read_artifact, resolve_artifact, write_artifact
from .inputs import (
    FeatureSelection,
    Standardizer,
    inputs_from_signatures,
    step_feature_names,
)
from .modules import PROBES, RiskModel, build_probe

__all__ = [
    "FeatureSelection",
    "PROBES",
    "RiskModel",
    "Standardizer",
    "build_probe",
    "export_checkpoint",
    "inputs_from_signatures",
    "read_artifact",
    "resolve_artifact",
    "step_feature_names",
    "write_artifact",
]
