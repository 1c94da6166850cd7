"""Export a trained probe as a self-contained artifact, and read it back with checks.

An artifact directory holds:

* ``probe.safetensors``: the :class:`~riskprobe.probes.RiskModel` weights with its standardisation and
  calibration buffers;
* ``probe.json``: schema version, riskprobe version, model identity, feature spec (selection, step
  feature names, harvest feature schema, dims), probe kind and hyperparameters, calibration, threshold,
  test metrics, training-data fingerprint and the sha256 of ``probe.safetensors``;
* ``probe.onnx``: the same function (seq, mask, static -> risk) for runtimes without torch.

Reading an artifact never unpickles anything: JSON, safetensors and ONNX only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .fsutil import atomic_dir, sha256_files
from .probes import RiskModel, build_probe

ARTIFACT_VERSION = 1
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"


def build_risk_model(meta: dict[str, Any]) -> RiskModel:
    """An untrained RiskModel with the architecture an artifact or checkpoint describes."""
    d = meta["feature_spec"]["dims"]
    hp = meta["probe"]["hparams"]
    probe = build_probe(meta["probe"]["kind"], d["n_steps"], d["n_feat"], d["n_static"], hidden=hp.get("hidden", 64),
                        dropout=hp.get("dropout", 0.0))
    return RiskModel(probe, d["n_feat"], d["n_static"]).eval()


def _example_inputs(meta: dict[str, Any], n: int = 2):
    d = meta["feature_spec"]["dims"]
    seq = torch.randn(n, d["n_steps"], d["n_feat"])
    mask = torch.ones(n, d["n_steps"], dtype=torch.bool)
    mask[0, max(1, d["n_steps"] // 2):] = False
    return seq, mask, torch.randn(n, d["n_static"])


def export_onnx(rm: RiskModel, meta: dict[str, Any], path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rm.eval(), _example_inputs(meta), str(path), input_names=["seq", "mask", "static"],
                          output_names=["risk"], dynamo=False, opset_version=17,
                          dynamic_axes={"seq": {0: "n"}, "mask": {0: "n"}, "static": {0: "n"}, "risk": {0: "n"}})


def export_checkpoint(ckpt: str | Path, out: str | Path, *, metrics: dict[str, Any] | None = None,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact for a probe checkpoint (``final.ckpt`` of a fit run) into ``out``.

    ``metrics`` (a run's ``metrics.json``) is looked up beside the run when not given.
    """
    from safetensors.torch import save_file

    from . import __version__

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise UserError("checkpoint not found", file=ckpt, field="ckpt")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"not a riskprobe checkpoint ({type(e).__name__}); export the final.ckpt of a fit run",
                        file=ckpt) from None
    if "riskprobe" not in state:
        raise UserError("not a riskprobe checkpoint (no riskprobe section)", file=ckpt)
    spec = state["riskprobe"]
    hp = state.get("hyper_parameters", {})
    sd = {k.removeprefix("risk_model."): v for k, v in state["state_dict"].items() if k.startswith("risk_model.")}
    meta: dict[str, Any] = {
        "artifact_version": ARTIFACT_VERSION,
        "riskprobe_version": __version__,
        "model_identity": spec["model_identity"],
        "feature_spec": {k: spec[k] for k in ("selection", "step_features", "feature_schema", "dims")},
        "probe": {"kind": hp.get("probe", "mlp"), "hparams": {k: hp[k] for k in ("hidden", "dropout") if k in hp}},
        "calibration": {"a": float(sd["calib"][0]), "b": float(sd["calib"][1])},
        "data_fingerprint": spec.get("data_fingerprint"),
        "training": {"harvests": spec.get("harvests"), "split": spec.get("split")},
    }
    if metrics is None:
        for cand in (ckpt.parent / "metrics.json",):
            if cand.is_file():
                metrics = json.loads(cand.read_text())
    if metrics:
        meta["threshold"] = metrics.get("calibration", {}).get("threshold")
        meta["test_metrics"] = {"probe": metrics.get("probe"), "margin": metrics.get("margin")}
    meta["threshold"] = meta.get("threshold") if meta.get("threshold") is not None else 0.5
    if (ckpt.parent / "config.yaml").is_file():
        meta["training"]["config"] = (ckpt.parent / "config.yaml").read_text()
    meta.update(extra or {})
    rm = build_risk_model(meta)
    rm.load_state_dict(sd)
    with atomic_dir(Path(out), replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in rm.state_dict().items()}, str(tmp / "probe.safetensors"))
        meta["weights_sha256"] = sha256_files([tmp / "probe.safetensors"])
        export_onnx(rm, meta, tmp / "probe.onnx")
        meta["onnx_sha256"] = sha256_files([tmp / "probe.onnx"])
        (tmp / "probe.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
    return Path(out)


def resolve_artifact(path: str | Path) -> Path:
    """An artifact directory; ``default`` names the shipped probe in ``checkpoints/default``."""
    p = Path(path)
    if str(path) == "default" and not p.exists():
        p = SHIPPED / "default"
    if not (p / "probe.json").is_file():
        raise UserError("not a probe artifact (no probe.json); create one with `riskprobe export`", file=p,
                        field="probe")
    return p


def read_artifact(path: str | Path) -> tuple[RiskModel, dict[str, Any]]:
    """Load an artifact after checking its schema version and the sha256 of its weights."""
    from safetensors.torch import load_file

    p = resolve_artifact(path)
    try:
        meta = json.loads((p / "probe.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"probe.json is not valid JSON ({e.msg})", file=p / "probe.json", line=e.lineno) from None
    if meta.get("artifact_version") != ARTIFACT_VERSION:
        raise UserError(f"artifact version {meta.get('artifact_version')!r} is not supported (this riskprobe reads "
                        f"{ARTIFACT_VERSION})", file=p / "probe.json", field="artifact_version")
    w = p / "probe.safetensors"
    if not w.is_file():
        raise UserError("probe.safetensors is missing", file=p)
    got = sha256_files([w])
    if got != meta.get("weights_sha256"):
        raise UserError(f"weights hash mismatch: sha256 {got[:16]}..., probe.json says "
                        f"{str(meta.get('weights_sha256'))[:16]}...; the artifact was modified or damaged", file=w)
    rm = build_risk_model(meta)
    rm.load_state_dict(load_file(str(w)))
    return rm.eval(), meta
