"""Export a trained probe as a self-contained artifact, and read it back with checks.

An artifact directory holds:

* ``probe.safetensors``: the :class:`~riskprobe.probes.RiskModel` weights with its standardisation and
  calibration buffers;
* ``probe.json``: schema version, riskprobe version, model identity, feature spec (selection, step
  feature names, harvest feature schema, dims), probe kind and hyperparameters, calibration, threshold,
  test metrics, training-data fingerprint and the sha256 of ``probe.safetensors``;
* ``probe.onnx``: the same function (seq, mask, static -> risk) for runtimes without torch.

Integrity covers every file: ``probe.json`` records the sha256 of the weights and of the ONNX graph, and
``json_sha256``, a digest of its own canonical form (without that field), so that an edited threshold or
model name, or a swapped graph, is refused on load. Reading an artifact never unpickles anything: JSON,
safetensors and ONNX only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import UserError, check_version
from ..evaluation.results import FitMetrics
from ..fsutil import atomic_dir, move_aside, owned_dir, read_text, sha256_files
from ..resources import shipped_probe
from ..signatures.spec import normalise_schema
from .modules import RiskModel, build_probe
from .schema import TRANSFER_KEYS, ProbeMeta

ARTIFACT_VERSION = 3  # 3: the key is "version" (1 and 2 wrote "artifact_version"; 1 had no json_sha256)


ARTIFACT_FILES = ("probe.json", "probe.safetensors", "probe.onnx")




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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(rm.eval(), _example_inputs(meta), str(path), input_names=["seq", "mask", "static"],
                          output_names=["risk"], dynamo=False, opset_version=17,
                          dynamic_axes={"seq": {0: "n"}, "mask": {0: "n"}, "static": {0: "n"}, "risk": {0: "n"}})


def check_checkpoint(path: str | Path, field: str = "ckpt_path") -> dict:
    """Load a fit checkpoint without unpickling any object (tensors and plain data only) and check that it
    is a riskprobe one; a UserError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UserError("checkpoint not found" if not p.exists() else "is not a file", file=p, field=field)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle with code, a text file, a truncated zip...
        raise UserError(f"not a riskprobe checkpoint ({type(e).__name__}); give the final.ckpt of a fit run",
                        file=p, field=field) from None
    if not isinstance(state, dict) or not isinstance(state.get("riskprobe"), dict) or \
            not isinstance(state.get("state_dict"), dict):
        raise UserError("not a riskprobe checkpoint (no riskprobe section or state_dict)", file=p, field=field)
    return state


def artifact_digest(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``meta`` without its ``json_sha256`` field."""
    body = {k: v for k, v in meta.items() if k != "json_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _is_artifact_dir(path: Path) -> bool:
    return owned_dir(lambda name: name in ARTIFACT_FILES)(path)


def prepare_out(out: str | Path, *, force: bool = False) -> Path | None:
    """Check that ``out`` may be written: new, or a folder holding only ``probe.*`` files (replaced).
    With ``force`` anything else there is renamed aside (never deleted); returns that new name."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()) or _is_artifact_dir(out):
        return None
    if not force:
        what = "a file" if out.is_file() else ("a link" if out.is_symlink() else "a folder with other files")
        raise UserError(f"exists and is {what}, not a probe artifact; choose another --out, or pass --force to "
                        "keep it under a new name (PATH.bak-N) and write the artifact here", file=out, field="out")
    return move_aside(out)


def transfer_table(res: dict[str, Any], meta: dict[str, Any], file) -> dict[str, Any]:
    """The ``transfer`` section of an artifact from a ``riskprobe transfer`` result: one row per held-out source
    (``{source, n, n_wrong, auroc, best_training_free: {name, auroc}, margin, ...}``) and the means. The result must
    be of the probe's own recipe (families, k, blend or not), or it would describe another probe."""
    if not isinstance(res, dict) or res.get("riskprobe_result") != "transfer" or not isinstance(res.get("rows"), list):
        raise UserError("not a `riskprobe transfer --json` result", file=file, field="transfer")
    r, sel = res.get("recipe") or {}, meta["feature_spec"]["selection"]
    want = {"families": sel["families"], "k": sel["k"], "blend": meta["probe"]["kind"] == "blend"}
    got = {"families": r.get("families"), "k": r.get("k"), "blend": r.get("blend")}
    if got != want:
        raise UserError(f"this transfer table is of another recipe ({got}) than the probe's ({want}); run "
                        "`riskprobe transfer` with the probe's families and k", file=file, field="transfer")
    keep = (*TRANSFER_KEYS, "margin_ci", "best_at_k", "margin_at_k", "margin_at_k_ci", "probe_alone", "backed_off")
    return {"recipe": r.get("label"), "rows": [{k: row.get(k) for k in keep} for row in res["rows"]],
            "summary": res.get("summary")}


def export_checkpoint(ckpt: str | Path, out: str | Path, *, metrics: FitMetrics | dict[str, Any] | None = None,
                      extra: dict[str, Any] | None = None, force: bool = False,
                      transfer: dict[str, Any] | None = None, transfer_file=None) -> Path:
    """Write the artifact for a probe checkpoint (``final.ckpt`` of a fit run) into ``out``.

    ``out`` must be new or an earlier artifact (a folder of ``probe.*`` files only), which is replaced;
    with ``force`` whatever else is there is renamed to ``out.bak-N`` first. ``metrics`` (a run's
    ``metrics.json``) is looked up beside the run when not given.
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise UserError("checkpoint not found" if not ckpt.exists() else "is not a file", file=ckpt, field="ckpt")
    if not force:
        prepare_out(out)  # refuse early, before any work
    state = check_checkpoint(ckpt, field="ckpt")
    spec = state["riskprobe"]
    missing = [k for k in ("model_identity", "selection", "step_features", "feature_schema", "dims") if k not in spec]
    if missing:
        raise UserError(f"riskprobe section lacks {', '.join(missing)}", file=ckpt, field="riskprobe")
    hp = state.get("hyper_parameters", {}) if isinstance(state.get("hyper_parameters"), dict) else {}
    sd = {k.removeprefix("risk_model."): v for k, v in state["state_dict"].items() if k.startswith("risk_model.")}
    if "calib" not in sd:
        raise UserError("not a riskprobe checkpoint (no risk_model weights)", file=ckpt, field="state_dict")
    meta: dict[str, Any] = {
        "version": ARTIFACT_VERSION,
        "riskprobe_version": __version__,
        "model_identity": spec["model_identity"],
        "feature_spec": {k: spec[k] for k in ("selection", "step_features", "feature_schema", "dims")},
        "probe": {"kind": hp.get("probe", "mlp"), "hparams": {k: hp[k] for k in ("hidden", "dropout", "C") if k in hp}},
        "calibration": {"a": float(sd["calib"][0]), "b": float(sd["calib"][1])},
        "data_fingerprint": spec.get("data_fingerprint"),
        "training": {"harvests": spec.get("harvests"), "split": spec.get("split")},
    }
    if metrics is None and (ckpt.parent / "metrics.json").is_file():
        metrics = FitMetrics.read(ckpt.parent / "metrics.json")
    if isinstance(metrics, FitMetrics):
        metrics = metrics.to_dict()
    if metrics:
        meta["threshold"] = metrics.get("calibration", {}).get("threshold")
        meta["test_metrics"] = {"probe": metrics.get("probe"), "margin": metrics.get("margin")}
        if metrics.get("ood"):
            meta["ood"] = {k: metrics["ood"][k] for k in ("threshold", "quantile")}
        if metrics.get("answer_provenance"):
            meta["answer_provenance"] = list(metrics["answer_provenance"])
    meta["threshold"] = meta.get("threshold") if meta.get("threshold") is not None else 0.5
    if (ckpt.parent / "config.yaml").is_file():
        meta["training"]["config"] = (ckpt.parent / "config.yaml").read_text()
    meta.update(extra or {})
    if transfer is not None:
        meta["transfer"] = transfer_table(transfer, meta, transfer_file)
    validate_meta(meta, ckpt)
    rm = build_risk_model(meta)
    try:
        rm.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"weights do not fit the probe the checkpoint describes ({str(e).splitlines()[0][:120]})",
                        file=ckpt, field="state_dict") from None
    write_artifact(rm, meta, out, force=force)
    return Path(out)


def write_artifact(rm: RiskModel, meta: dict[str, Any], out: str | Path, *, force: bool = False) -> Path:
    """Write ``probe.safetensors``, ``probe.onnx`` and ``probe.json`` (with every hash) into ``out``
    (see :func:`prepare_out` for when an existing ``out`` may be replaced)."""
    meta = dict(meta, version=ARTIFACT_VERSION)
    meta.pop("artifact_version", None)
    moved = prepare_out(out, force=force)
    try:
        with atomic_dir(Path(out), replace=_is_artifact_dir) as tmp:
            save_file({k: v.contiguous() for k, v in rm.state_dict().items()}, str(tmp / "probe.safetensors"))
            meta["weights_sha256"] = sha256_files([tmp / "probe.safetensors"])
            export_onnx(rm, meta, tmp / "probe.onnx")
            meta["onnx_sha256"] = sha256_files([tmp / "probe.onnx"])
            meta = json.loads(json.dumps(meta, default=str))  # what will be read back
            meta["json_sha256"] = artifact_digest(meta)
            (tmp / "probe.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            for f in tmp.iterdir():
                f.chmod(0o644)
    except Exception as e:  # noqa: BLE001 - safetensors, ONNX and the OS each report a full disk their own way
        if isinstance(e, (UserError, FileExistsError)) or not _disk_error(e):
            raise
        raise UserError(f"could not write the artifact ({' '.join(str(e).split())[:120]}): is the disk full, or a "
                        "file size limit set? Nothing was written; free space and export again", file=out,
                        field="out") from None
    if moved is not None:

        logging.getLogger(__name__).warning("kept what was at %s as %s", out, moved)
    return Path(out)


def _disk_error(e: BaseException) -> bool:
    """Whether a failure to write looks like a full disk or a file size limit (ENOSPC, EFBIG, EDQUOT, or a library's
    message saying so)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(e).lower()
    return any(w in text for w in ("no space", "file too large", "disk quota", "errno 28", "errno 27", "write failed",
                                   "failed to write", "os error 28", "os error 27"))


def resolve_artifact(path: str | Path) -> Path:
    """An artifact directory; a bare name that is not a folder here (``default``, ``given``) names a shipped
    probe (``riskprobe/assets/probes/NAME``)."""
    p = Path(path)
    if not p.exists() and len(p.parts) == 1:

        p = shipped_probe(str(path))
    if not (p / "probe.json").is_file():
        raise UserError("not a probe artifact (no probe.json); create one with `riskprobe export`", file=p,
                        field="probe")
    return p


def _need(cond: bool, msg: str, file: Path, field: str) -> None:
    if not cond:
        raise UserError(msg, file=file, field=field)


def validate_meta(meta: Any, file: Path) -> ProbeMeta:
    """Check a probe's metadata against the ``probe.json`` schema (:class:`~riskprobe.probes.schema.ProbeMeta`):
    the fields it must have, their types and ranges; a UserError naming the field otherwise."""
    return ProbeMeta.from_dict(meta, file=file)


def read_artifact(path: str | Path, *, allow_old: bool = False) -> tuple[RiskModel, dict[str, Any]]:
    """Load an artifact after checking its version, its own digest, its fields, and the sha256 of its
    weights and ONNX graph.

    An artifact of an older version (1 and 2: ``artifact_version``, and version 1 without the digest of
    ``probe.json``) is refused unless ``allow_old``: renaming the key or dropping the digest must not turn the
    tamper check off. The digests check integrity (nothing changed since export), not authenticity: anyone
    who can write the files can also recompute them."""
    p = resolve_artifact(path)
    jf = p / "probe.json"
    if jf.stat().st_size > 16 << 20:
        raise UserError("probe.json is larger than 16 MiB", file=jf)
    try:
        meta = json.loads(read_text(jf))
    except json.JSONDecodeError as e:
        raise UserError(f"probe.json is not valid JSON ({e.msg})", file=jf, line=e.lineno) from None
    except RecursionError:
        raise UserError("probe.json is nested too deeply", file=jf) from None
    _need(isinstance(meta, dict), "expected a JSON object", jf, "probe.json")

    key = "version" if "version" in meta else "artifact_version"  # the name versions 1 and 2 used
    version = check_version(meta.get(key), ARTIFACT_VERSION, kind="artifact", file=jf, field=key)
    if version < ARTIFACT_VERSION and not allow_old:
        raise UserError(f"written by an older riskprobe (artifact version {version}; this one reads version "
                        f"{ARTIFACT_VERSION}, whose probe.json carries a digest of itself); re-export it with "
                        "`riskprobe export`, or pass --allow-old-artifact to load it as it is", file=jf, field=key)
    if version >= 2 and meta.get("json_sha256") != artifact_digest(meta):
        raise UserError("probe.json was modified after export (its json_sha256 does not match its content); "
                        "re-export the probe", file=jf, field="json_sha256")
    validate_meta(meta, jf)
    meta["feature_spec"]["feature_schema"] = normalise_schema(meta["feature_spec"]["feature_schema"], file=jf)
    for name, key in (("probe.safetensors", "weights_sha256"), ("probe.onnx", "onnx_sha256")):
        f = p / name
        if not f.is_file():
            raise UserError(f"{name} is missing", file=p)
        got = sha256_files([f])
        if got != meta.get(key):
            raise UserError(f"{name} hash mismatch: sha256 {got[:16]}..., probe.json says "
                            f"{str(meta.get(key))[:16]}...; the artifact was modified or damaged", file=f, field=key)
    rm = build_risk_model(meta)
    try:
        rm.load_state_dict(load_file(str(p / "probe.safetensors")))
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"weights do not fit probe.json ({str(e).splitlines()[0][:120]})",
                        file=p / "probe.safetensors") from None
    return rm.eval(), meta
