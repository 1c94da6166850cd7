"""Training: planted signals are learned, shuffled labels are not, splits and normalisation are honest,
the LightningCLI run writes its files, bad configs fail with one line, DDP runs on 2 CPU processes."""

import json
import os

import numpy as np
import pytest
import torch
from synth import fit_args, make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.harvest.store import load_harvests
from riskprobe.probes.inputs import Standardizer
from riskprobe.training.data import HarvestDataModule
from riskprobe.training.evaluate import calibrate_and_evaluate
from riskprobe.training.module import fit_probe

FAST = dict(max_epochs=40, patience=6)


def _dm(paths, **kw):
    dm = HarvestDataModule(paths=[str(p) for p in paths], families=kw.pop("families", ["commitment", "sync", "raw"]),
                           k=kw.pop("k", 2), batch_size=64, **kw)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("probe", ["logreg", "linear", "mlp", "temporal"])
def test_planted_signal_is_learned(tmp_path, probe):
    dm = _dm([make_harvest(tmp_path / "h", n=500, signal=2.5)])
    mod = fit_probe(dm, {"probe": probe, "hidden": 16, "lr": 1e-2}, **FAST)
    res = calibrate_and_evaluate(mod, dm, n_boot=50, baselines=False)
    assert res["probe"]["auroc"] > 0.9, res["probe"]
    assert res["probe"]["ece"] < 0.15  # calibrated on validation


def test_exported_logreg_equals_scikit_learn_and_onnx(tmp_path):
    """The logistic probe is scikit-learn's LogisticRegression on the standardised flat input, written into the
    same artifact: torch within 1e-6 of scikit-learn's own probabilities, ONNX within 1e-5."""
    import onnxruntime as ort
    from sklearn.linear_model import LogisticRegression

    from riskprobe.probes import export_checkpoint, read_artifact
    from riskprobe.training.module import save_calibrated

    dm = _dm([make_harvest(tmp_path / "h", n=400, signal=1.0)], families=["commitment", "lens", "raw"])
    mod = fit_probe(dm, {"probe": "logreg", "C": 0.05}, max_epochs=5, patience=2)
    calibrate_and_evaluate(mod, dm, n_boot=0, baselines=False)
    save_calibrated(mod, tmp_path / "final.ckpt")
    rm, meta = read_artifact(export_checkpoint(tmp_path / "final.ckpt", tmp_path / "art"))
    assert meta["probe"]["kind"] == "logreg" and meta["probe"]["hparams"]["C"] == 0.05

    # the same model built by hand: standardise with the training split's moments, flatten, fit scikit-learn
    st = dm.standardizer

    def design(seq, mask, static):
        m = mask.double().unsqueeze(-1)
        z = (seq.double() - st.seq_mean.double()) / st.seq_std.double() * m
        g = (static.double() - st.static_mean.double()) / st.static_std.double()
        return torch.cat([torch.cat([z, m], -1).flatten(1), g], -1).numpy()

    seq, mask, static, y = dm.split_inputs("train")
    sk = LogisticRegression(C=0.05, max_iter=5000, class_weight="balanced").fit(design(seq, mask, static), y.int().numpy())
    ts, tm, tg, _ = dm.split_inputs("test")
    a, b = meta["calibration"]["a"], meta["calibration"]["b"]
    want = 1 / (1 + np.exp(-(a * sk.decision_function(design(ts, tm, tg)) + b)))
    with torch.no_grad():
        got = rm.double()(ts.double(), tm, tg.double()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    sess = ort.InferenceSession(str(tmp_path / "art" / "probe.onnx"))
    onnx = sess.run(None, {"seq": ts.numpy(), "mask": tm.numpy(), "static": tg.numpy()})[0]
    np.testing.assert_allclose(onnx, want, atol=1e-5, rtol=0)
    assert 0.1 < want.mean() < 0.9 and want.std() > 0.05  # not a constant: the comparison can fail


def test_shuffled_labels_sit_at_chance(tmp_path):
    dm = _dm([make_harvest(tmp_path / "h", n=1200, signal=2.5, shuffle_labels=True, seed=1)])
    mod = fit_probe(dm, {"probe": "mlp", "hidden": 16}, **FAST)
    res = calibrate_and_evaluate(mod, dm, n_boot=200, baselines=False)
    lo, hi = res["probe"]["auroc_ci"]
    assert abs(res["probe"]["auroc"] - 0.5) < 0.1 and lo < 0.5 < hi, res["probe"]


def test_no_question_crosses_splits_and_cross_set(tmp_path):
    shared_ids = [f"q{i}" for i in range(200)]
    a = make_harvest(tmp_path / "a", n=200, set_name="seta", ids=shared_ids)
    b = make_harvest(tmp_path / "b", n=200, set_name="setb", ids=shared_ids[:100] + [f"r{i}" for i in range(100)])
    dm = _dm([a, b])
    ids = np.asarray(dm.harvests.meta["id"])
    parts = {k: set(ids[v]) for k, v in dm.idx.items()}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
    assert len(dm.harvests) == 300  # the 100 questions harvested twice count once
    dm2 = _dm([a, b], train_sets=["seta"], test_sets=["setb"])
    ids_tr = set(ids[dm2.idx["train"]])
    assert not ids_tr & set(ids[dm2.idx["test"]])  # shared questions are never tested after training on them
    assert set(np.asarray(dm2.harvests.meta["set"])[dm2.idx["test"]]) == {"setb"}


def test_normalisation_is_fitted_on_train_only(tmp_path):
    dm = _dm([make_harvest(tmp_path / "h", n=300)])
    tr = dm.idx["train"]
    x = dm.inputs
    ref = Standardizer.fit(x["seq"][tr], x["mask"][tr], x["static"][tr])
    torch.testing.assert_close(dm.standardizer.seq_mean, ref.seq_mean)
    # changing the test rows does not change the fitted normalisation
    x["seq"][dm.idx["test"]] += 100.0
    again = Standardizer.fit(x["seq"][tr], x["mask"][tr], x["static"][tr])
    torch.testing.assert_close(again.seq_mean, dm.standardizer.seq_mean)
    full = Standardizer.fit(x["seq"], x["mask"], x["static"])
    assert not torch.allclose(full.seq_mean, dm.standardizer.seq_mean)
    mod = fit_probe(dm, {"probe": "linear"}, max_epochs=2, patience=1)
    torch.testing.assert_close(mod.risk_model.seq_mean, dm.standardizer.seq_mean)  # the probe carries it


def test_mixed_models_or_schemas_are_refused(tmp_path):
    a = make_harvest(tmp_path / "a", n=50)
    b = make_harvest(tmp_path / "b", n=50, model_fp="e" * 64)
    with pytest.raises(UserError, match="different models"):
        load_harvests([a, b])
    c = make_harvest(tmp_path / "c", n=50, K=3)
    with pytest.raises(UserError, match="feature schemas differ"):
        load_harvests([a, c])


def test_cli_fit_writes_metrics_config_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=300, signal=2.0)
    assert main(fit_args(tmp_path, h, "--data.families", "[commitment,sync,raw]")) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for entry in [m["probe"], *m["baselines"].values()]:
        for key in ("auroc", "auroc_ci", "auprc", "prr", "brier", "ece", "n", "n_incorrect"):
            assert key in entry
    assert "lowest_token_prob@answer" in m["baselines"] and "sklearn_logreg@prompt_hidden" in m["baselines"]
    assert {"answer_length", "sklearn_logreg@confidence"} <= set(m["baselines"])
    assert m["probe"]["auroc"] > 0.8
    # controls: the planted signal is not confidence, length or set, so it survives stratification
    ctl = m["controls"]
    assert len(ctl) == 3 and all(c["auroc"] > 0.7 for c in ctl.values()), ctl
    sel = m["selective"]
    assert set(sel["scores"]) >= {"probe"} and sel["scores"]["probe"]["error"]["0.5"]["value"] < sel["base_error"]
    assert 0 < m["early_stop"]["recall"] <= 1 and (tmp_path / "run" / "risk_coverage.png").stat().st_size > 1000
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "ck" / "final.ckpt").is_file()
    assert (tmp_path / "run" / "auroc_vs_k.png").stat().st_size > 1000
    sweep = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert sweep["ks"] == [0, 2]
    out = capsys.readouterr().out
    assert "AUROC [95% CI]" in out and "probe - best baseline" in out and "base error rate" in out
    assert "within confidence strata" in out and "selective prediction" in out and "monitor: stopping rows" in out
    # the test subcommand evaluates the saved checkpoint as it is: no retraining, nothing written over
    import hashlib

    def digest(root):
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}

    before = {**digest(tmp_path / "run"), **digest(tmp_path / "ck")}
    assert main(["test", "--config", str(tmp_path / "run" / "config.yaml"), "--ckpt_path",
                 str(tmp_path / "ck" / "final.ckpt")]) == 0  # the saved config asks for a sweep: test ignores it
    tm = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    after = {**digest(tmp_path / "run"), **digest(tmp_path / "ck")}
    assert {k: v for k, v in after.items() if not k.endswith("test_metrics.json")} == before
    assert tm["probe"]["auroc"] == m["probe"]["auroc"]  # the same calibrated probe, the same test rows


def test_wandb_offline_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    h = make_harvest(tmp_path / "h", n=200)
    assert main(fit_args(tmp_path, h, "--sweep_ks", "null", "--data.families", "[commitment]")) == 0
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, list((tmp_path / "run").rglob("*"))[:20]


@pytest.mark.parametrize("override,want", [
    (["--data.families", "[commitment,vibes]"], "unknown feature family 'vibes'"),
    (["--data.k", "99"], "k = 99 is outside 0..K = 0..4"),
    (["--data.paths", "[/nonexistent/harvest]"], "/nonexistent/harvest: field 'data.paths': harvest directory not found"),
    (["--model.probe", "transformer"], "unknown probe 'transformer'"),
])
def test_bad_configs_fail_with_one_line(tmp_path, monkeypatch, capsys, override, want):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=60)
    rc = main(fit_args(tmp_path, h, *override))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and want in err[0], err




def test_fit_from_python_trains_from_a_config_mapping(tmp_path, monkeypatch):
    """``riskprobe.training.fit`` takes the same config as ``riskprobe fit --config``, as a mapping, and returns the
    run folder; the run's plots are the report's to draw, from the run's files."""
    from riskprobe.fsutil import load_yaml
    from riskprobe.report.plots import draw_run
    from riskprobe.resources import resolve_config
    from riskprobe.training import fit

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=300, signal=2.0)
    cfg = load_yaml(resolve_config("fit", "default"))
    cfg["data"].update(paths=[str(h)], families=["commitment", "raw"], k=2)
    cfg["trainer"] = {**(cfg.get("trainer") or {}), "default_root_dir": str(tmp_path / "run"), "max_epochs": 20}
    cfg.update(checkpoint_dir=str(tmp_path / "ck"), n_boot=50, sweep_ks=[0, 2], selection=None, wandb="disabled")
    run = fit(cfg, "--model.probe", "logreg")
    assert run == tmp_path / "run" and (tmp_path / "ck" / "final.ckpt").is_file()
    m = json.loads((run / "metrics.json").read_text())
    assert m["probe"]["name"] == "logreg@k2" and m["probe"]["auroc"] > 0.8
    assert not (run / "risk_coverage.png").exists()  # training draws nothing
    assert sorted(os.path.basename(p) for p in draw_run(run)) == ["auroc_vs_k.png", "risk_coverage.png"]
    assert (run / "auroc_vs_k.png").stat().st_size > 1000


def test_metrics_files_are_typed_and_a_broken_one_is_named(tmp_path):
    """metrics.json is read through FitMetrics: every fit's file reads back equal; a missing or mistyped section, or
    a newer version, is one line naming the file and the field."""
    from riskprobe.evaluation.results import FitMetrics

    base = {"probe": {"name": "mlp@k2", "auroc": 0.7}, "baselines": {}, "calibration": {"threshold": 0.5},
            "ood": {"threshold": 1.0}, "answer_provenance": ["own"], "reliability": [{"bin": 0}]}
    p = tmp_path / "metrics.json"
    FitMetrics.from_dict(base).write(p)
    assert FitMetrics.read(p).to_dict() == {**base, "version": 1}
    for broken, field in [({k: v for k, v in base.items() if k != "ood"}, "ood"),
                          ({**base, "selective": [1, 2]}, "selective"),
                          ({**base, "probe": {"auroc": 0.7}}, "probe"),
                          ({**base, "version": 99}, "version")]:
        p.write_text(json.dumps(broken))
        with pytest.raises(UserError, match=f"metrics.json: field '{field}'"):
            FitMetrics.read(p)


def test_callbacks_and_loggers_are_declared_in_the_config(tmp_path, monkeypatch):
    """The checkpoint, early stopping and the loggers come from the YAML defaults, and a fit config (or the command
    line) changes them like any other key; the config reaches the loggers and config.yaml names no staging folder."""
    from riskprobe.fsutil import load_yaml

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    h = make_harvest(tmp_path / "h", n=200)
    base = ("--sweep_ks", "null", "--selection", "null", "--model.probe", "linear", "--trainer.max_epochs", "3",
            "--data.families", "[commitment]", "--wandb", "disabled")
    assert main(fit_args(tmp_path, h, *base, "--checkpoint.filename", "top")) == 0
    run = tmp_path / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["checkpoint"] == str(tmp_path / "ck" / "top.ckpt")
    cfg = load_yaml(run / "config.yaml")
    assert cfg["checkpoint"]["monitor"] == cfg["early_stopping"]["monitor"] == "val_auroc"
    assert cfg["checkpoint"]["dirpath"] is None and ".partial" not in (run / "config.yaml").read_text()
    assert [lg["init_args"]["save_dir"] for lg in cfg["trainer"]["logger"]] == [None, None]
    logged = load_yaml(run / "csv" / "version_0" / "hparams.yaml")["config"]
    assert "val_auroc" in logged and "top" in logged
    assert not (run / "wandb").exists()  # disabled: the wandb logger is dropped, not started

    assert main(fit_args(tmp_path, h, *base, "--trainer.logger", "false")) == 0
    assert not (run / "csv").exists() and (run / "metrics.json").is_file()


def test_evaluate_run_scores_a_run_again_without_changing_it(tmp_path, monkeypatch):
    from riskprobe.training import evaluate_run

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=200, signal=2.0)
    assert main(fit_args(tmp_path, h, "--sweep_ks", "null", "--selection", "null", "--model.probe", "logreg",
                         "--data.families", "[commitment]")) == 0
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    tm = evaluate_run(tmp_path / "run")
    assert tm["probe"]["auroc"] == json.loads(before)["probe"]["auroc"] > 0.7
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
