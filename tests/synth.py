"""Synthetic harvests with a planted signal, written through riskprobe's own shard writer (no model)."""

from __future__ import annotations

import numpy as np

from riskprobe.fsutil import atomic_write_json
from riskprobe.harvest.store import (
    MANIFEST,
    dataset_features,
    harvest_row,
    hf_features,
    merge_shards,
    new_manifest,
    write_rows,
)
from riskprobe.signatures import FeatureSpec

K = 4


def make_harvest(path, n=300, *, signal=1.5, seed=0, set_name="synth", shuffle_labels=False, K=4, model_fp="f" * 64,
                 ids=None, n_layers=3, model_name="synthetic"):
    """A harvest of ``n`` rows whose step-1 entropy and one raw dimension carry the label (``signal`` = effect
    size in standard deviations; 0 = no signal)."""
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(K=K, lens_steps=2, raw_steps=2, lens_layers="sparse2", raw_layers="sparse2").resolve(n_layers, 8)
    shapes = spec.shapes()
    y = rng.random(n) < 0.4
    rows = []
    for i in range(n):
        r = {name: rng.normal(size=shape).astype(np.float16 if dt == "float16" else np.float32)
             for name, (shape, dt, _) in shapes.items() if name != "step_mask"}
        length = int(rng.integers(2, K + 2))
        r["step_mask"] = np.arange(K + 1) < length
        r["commitment"][1, 0] += signal * y[i]
        r["raw"][0, 0, 0] += signal * y[i]
        for name in ("commitment", "sync", "trajectory"):
            r[name][length:] = 0
        iid = ids[i] if ids is not None else f"{set_name}-{i:05d}"
        label = int(y[i])
        rows.append({**harvest_row(index=i, id=iid, set=set_name, category="factual", prompt=f"q{i}?",
                                   input_text=f"q{i}?", answers=["a"], answer_kind="alias", response="r", label=label,
                                   n_tokens=length, finish="eos", sample=0), **r})
    if shuffle_labels:
        labels = [r["label"] for r in rows]
        rng.shuffle(labels)
        for r, lab in zip(rows, labels):
            r["label"], r["correct"] = lab, not lab
    model = {"name": model_name, "source": "memory", "fingerprint": model_fp, "architecture": "llama", "n_layers": n_layers,
             "hidden_size": 8, "vocab_size": 10, "has_chat_template": True}
    atomic_write_json(path / MANIFEST, {**new_manifest(model=model, feature_schema=spec.schema(), prompts=set_name,
                                                       n_items=n, items_fingerprint="synthetic", versions={}),
                                        "status": "running", "compat": {}})
    write_rows(path / "shards" / "shard-00000", rows, dataset_features(hf_features(spec)))
    merge_shards(path, 1)
    return path


def make_artifact(lm, out, probe="mlp", seed=0, families=("commitment", "sync", "trajectory", "lens", "raw"),
                  provenance=("other", "own"), ood=None, tweak=None):
    """A probe artifact for ``lm``'s signature with random (but fixed) weights and calibration, recorded as
    trained on answers of ``provenance`` (by default own and others', so it scores given answers too); ``tweak(module)``
    may set weights before the export."""
    import torch

    from riskprobe.models import render
    from riskprobe.models.generation import generate
    from riskprobe.probes.artifact import export_checkpoint
    from riskprobe.probes.inputs import (
        FeatureSelection,
        inputs_from_signatures,
        step_feature_names,
    )
    from riskprobe.signatures import Capture
    from riskprobe.training.module import ProbeModule, save_calibrated

    spec = FeatureSpec(K=K, lens_steps=2, raw_steps=2, raw_layers="sparse2").resolve(lm)
    cap = Capture(lm, spec)
    with cap:
        g = generate(lm, [render(lm.tokenizer, "x?")], max_new_tokens=6)
    sig = cap.finish([x.token_ids for x in g])
    sel = FeatureSelection(list(families), K)
    x = inputs_from_signatures({k: torch.from_numpy(v) for k, v in sig.items()}, sel)
    dims = {"n_steps": x["seq"].shape[1], "n_feat": x["seq"].shape[2], "n_static": x["static"].shape[1]}
    torch.manual_seed(seed)
    mod = ProbeModule(probe=probe, hidden=8)
    mod.build({"selection": sel.to_dict(), "dims": dims, "step_features": step_feature_names(spec.schema(), sel.families),
               "feature_schema": spec.schema(), "model_identity": lm.identity.to_dict(), "data_fingerprint": "test"})
    mod.risk_model.calib.copy_(torch.tensor([0.5, -0.2]))
    if tweak is not None:
        tweak(mod)
    ck = out / "final.ckpt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    save_calibrated(mod, ck)
    metrics = {"calibration": {"threshold": 0.4}, "answer_provenance": list(provenance)}
    if ood is not None:
        metrics["ood"] = {"threshold": ood, "quantile": 0.99}
    art = export_checkpoint(ck, out / "artifact", metrics=metrics)
    return art, mod


def assert_same_dataset(a, b, atol: float = 0.0):
    """Equal rows; signature columns equal exactly, or within ``atol`` (other batch shapes round differently)."""
    assert a.column_names == b.column_names and len(a) == len(b)
    for col in a.column_names:
        x, y = a[col], b[col]
        if col in ("commitment", "sync", "trajectory", "lens", "raw", "step_mask"):
            if atol and col != "step_mask":
                np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol, rtol=1e-3,
                                           err_msg=col)
            else:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=col)
        else:
            assert list(x) == list(y), col


def fit_args(tmp_path, h, *extra):
    return ["fit", "--config", "configs/fit/default.yaml", "--data.paths", f"[{h}]", "--trainer.default_root_dir",
            str(tmp_path / "run"), "--checkpoint_dir", str(tmp_path / "ck"), "--trainer.max_epochs", "20",
            "--n_boot", "50", "--sweep_ks", "[0,2]", *extra]
