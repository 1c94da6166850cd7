"""Selection of the probe recipe by grouped cross-validation on the training split only."""

import json
import os

import numpy as np
import pytest
import torch
from synth import fit_args, make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.training.data import HarvestDataModule
from riskprobe.training.selection import SelectionGrid, group_folds, select_recipe

GRID = dict(families=[["commitment"], ["lens"], ["raw"], ["commitment", "raw"]], Cs=[0.01, 0.1, 1.0], folds=3)


def _dm(path):
    dm = HarvestDataModule(paths=[str(path)], families=["commitment"], k=2)
    dm.setup("fit")
    return dm


def test_selection_finds_the_planted_features_and_never_reads_val_or_test(tmp_path):
    # the label is planted in step-1 entropy (commitment) and in raw layer 0 at step 0 (make_harvest)
    dm = _dm(make_harvest(tmp_path / "h", n=600, signal=1.5))
    res = select_recipe(dm, SelectionGrid(probes=["logreg"], **GRID), progress=False)
    assert res.best.families == ["commitment", "raw"] and res.best.raw_layers in ([0], None), res.table[:3]
    assert res.best.raw_pool == "first"  # the raw signal is at step 0; the mean of steps 1..k only adds noise
    lens = next(t for t in res.table if t["families"] == ["lens"])
    assert abs(lens["cv_auroc"] - 0.5) < 0.1  # no signal there
    assert dm.selection.families == ["commitment"]  # the data module is left on its own selection
    # plant a perfect leak in the lens features of the validation and test rows, and flip their labels:
    # a selection that read them would now choose lens; this one returns the very same table
    held = np.r_[dm.idx["val"], dm.idx["test"]]
    lab = np.asarray(dm.harvests.meta["label"])
    lab[held] = 1 - lab[held]
    dm.harvests.meta["label"] = lab.tolist()
    dm.harvests.tensors["lens"] = dm.harvests.tensors["lens"].clone()  # harvest columns are read-only views
    dm.harvests.tensors["lens"][torch.as_tensor(held)] = torch.as_tensor(lab[held], dtype=torch.float32).view(-1, 1, 1, 1) * 10
    dm.use(dm.selection)
    again = select_recipe(dm, SelectionGrid(probes=["logreg"], **GRID), progress=False)
    assert [(t["recipe"], t["C"], t["cv_auroc"]) for t in again.table] == [(t["recipe"], t["C"], t["cv_auroc"])
                                                                          for t in res.table]


def test_selection_on_shuffled_labels_stays_at_chance(tmp_path):
    dm = _dm(make_harvest(tmp_path / "h", n=600, signal=2.0, shuffle_labels=True, seed=3))
    res = select_recipe(dm, SelectionGrid(probes=["logreg"], **GRID), progress=False)
    assert abs(res.table[0]["cv_auroc"] - 0.5) < 0.1, res.table[0]  # even the best of 15 candidates


def test_folds_group_questions():
    ids = [f"q{i // 3}" for i in range(90)]  # three samples per question
    folds = group_folds(ids, 5)
    assert len(folds) == 5
    for tr, va in folds:
        assert not {ids[i] for i in tr} & {ids[i] for i in va}
    with pytest.raises(UserError, match="at least 5 questions"):
        group_folds(["a", "a", "b"], 5)


def test_fit_with_selection_writes_the_table_and_a_config_that_rebuilds_the_probe(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=400, signal=2.0)
    sel = json.dumps({"probes": ["logreg", "mlp"], "families": [["commitment"], ["commitment", "raw"]],
                      "raw_layers": [None], "raw_pool": ["first"], "Cs": [0.01, 0.1], "folds": 3, "max_epochs": 4,
                      "baselines": False})
    assert main(fit_args(tmp_path, h, "--selection", sel, "--sweep_ks", "null")) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    s = m["selection"]
    assert len(s["table"]) == 3 and s["folds"] == 3 and s["best"] == {k: s["table"][0][k] for k in s["best"]}
    assert m["probe"]["name"].startswith(s["best"]["probe"]) and m["probe"]["auroc"] > 0.8
    assert "selection: 3-fold CV" in capsys.readouterr().out
    # the saved config names the chosen recipe: testing the checkpoint with it rebuilds the same probe
    assert main(["test", "--config", str(tmp_path / "run" / "config.yaml"), "--ckpt_path",
                 str(tmp_path / "ck" / "final.ckpt")]) == 0
    tm = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert tm["probe"]["auroc"] == m["probe"]["auroc"]
    with pytest.raises(UserError, match="unknown probe 'forest'"):
        SelectionGrid(probes=["forest"]).validate()


def test_a_dynamics_probe_transfers_across_models_of_different_depth(tmp_path, capsys):
    from riskprobe.training.transfer import cross_model

    # three "models" with 3, 5 and 7 layers; the label is planted in step-1 entropy on all of them
    hs = {f"m{n}": str(make_harvest(tmp_path / f"m{n}", n=500, signal=1.5, seed=n, n_layers=n, model_fp=str(n) * 64,
                                    model_name=f"m{n}")) for n in (3, 5, 7)}
    res = cross_model(hs, k=2, layer_bins=2, n_boot=50)
    assert len(res["rows"]) == 3
    for r in res["rows"]:
        assert len(r["sources"]) == 2 and r["target"] not in r["sources"]
        assert r["transferred"]["auroc"] > 0.75 and r["in_model"]["auroc"] > 0.75, r
    # a target whose labels are shuffled: whatever the sources taught, the transferred probe sits at chance
    shuffled = make_harvest(tmp_path / "t7", n=1200, signal=1.5, seed=7, n_layers=7, shuffle_labels=True,
                            model_fp="7" * 64, model_name="m7")
    row = next(r for r in cross_model({**hs, "m7": str(shuffled)}, k=2, layer_bins=2, n_boot=50)["rows"]
               if r["target"] == "m7")
    assert abs(row["transferred"]["auroc"] - 0.5) < 0.12, row
    assert main(["cross-model", "--harvest", hs["m3"], "--harvest", f"m5={hs['m5']}", "--k", "2",
                 "--n-boot", "20"]) == 0
    assert "regression on commitment+sync+trajectory+lens" in capsys.readouterr().out
    # output confidence alone (the planted signal is an entropy): still learned, and said so in the table
    js = tmp_path / "xm.json"
    assert main(["cross-model", "--harvest", hs["m3"], "--harvest", f"m5={hs['m5']}", "--k", "2",
                 "--n-boot", "20", "--families", "commitment", "--json", str(js)]) == 0
    assert "regression on commitment (k = 2" in capsys.readouterr().out
    res = json.loads(js.read_text())
    assert res["settings"]["families"] == ["commitment"]
    assert all(r["transferred"]["auroc"] > 0.75 for r in res["rows"]), res["rows"]
    assert main(["cross-model", "--harvest", hs["m3"], "--harvest", f"m5={hs['m5']}", "--families", "raw"]) == 2
    with pytest.raises(UserError, match="at least two models"):
        cross_model({"a": hs["m3"]})


def test_stacked_probe_is_one_linear_map_that_exports_and_reloads(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from riskprobe.probes import export_checkpoint, read_artifact
    from riskprobe.probes.logistic import design, layer_columns
    from riskprobe.training.evaluate import calibrate_and_evaluate
    from riskprobe.training.module import fit_probe, save_calibrated

    dm = HarvestDataModule(paths=[str(make_harvest(tmp_path / "h", n=600, signal=1.5))],
                           families=["commitment", "raw"], k=2, raw_pool="first")
    dm.setup("fit")
    mod = fit_probe(dm, {"probe": "stacked"}, max_epochs=3, patience=1)
    info = mod.stack_info
    assert [m["layer"] for m in info["members"]] == [0, 1] and len(info["meta"]) == 2
    assert info["meta"][0] > info["meta"][1]  # the label is planted in raw layer 0, not layer 1
    # the exported linear layer is exactly the stack: members refitted by hand, combined by the meta weights
    rm = mod.risk_model
    seq, mask, static, y = dm.split_inputs("train")
    X = design(rm, seq, mask, static)
    ts, tm, tg, _ = dm.split_inputs("test")
    Xt = design(rm, ts, tm, tg)
    n_seq = X.shape[1] - static.shape[1]
    want = info["meta_bias"]
    for m, a in zip(info["members"], info["meta"]):
        cols = layer_columns(n_seq, static.shape[1], 2, 8, m["layer"])
        lr = LogisticRegression(C=m["C"], class_weight="balanced", max_iter=5000).fit(X[:, cols], y.int().numpy())
        want = want + a * lr.decision_function(Xt[:, cols])
    with torch.no_grad():
        got = rm.double().logits(ts.double(), tm, tg.double()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    rm.float()
    res = calibrate_and_evaluate(mod, dm, n_boot=0, baselines=False)
    assert res["probe"]["auroc"] > 0.8
    save_calibrated(mod, tmp_path / "final.ckpt")
    back, meta = read_artifact(export_checkpoint(tmp_path / "final.ckpt", tmp_path / "art"))
    assert meta["probe"]["kind"] == "stacked"
    with torch.no_grad():
        torch.testing.assert_close(back(ts, tm, tg), mod.risk_model(ts, tm, tg))
    # selection scores it from the one-layer candidates' out-of-fold logits
    grid = SelectionGrid(probes=["logreg", "stacked"], families=[["commitment", "raw"]], raw_layers=["each"],
                         raw_pool=["first"], Cs=[0.01, 0.1], folds=3, baselines=False)
    res = select_recipe(dm, grid, progress=False)
    assert [t["probe"] for t in res.table].count("stacked") == 1 and len(res.table) == 3
    with pytest.raises(UserError, match="stacked is scored"):
        SelectionGrid(probes=["stacked"]).validate()


def test_selection_prefers_the_cheaper_recipe_within_standard_errors(tmp_path):
    """within_se > 0: among the candidates whose CV AUROC is within that many standard errors of the best, the
    one cheapest to monitor (no logit lens, no softmax where raw states do as well); 0: the best."""
    from riskprobe.signatures.spec import MONITOR_COST
    from riskprobe.training.selection import choose, format_selection, monitor_cost

    dm = _dm(make_harvest(tmp_path / "h", n=600, signal=1.5))
    grid = dict(families=[["commitment", "raw"], ["raw"], ["commitment"], ["lens"]], raw_layers=[None],
                raw_pool=["first"], Cs=[0.01, 0.1, 1.0], folds=3)
    plain = select_recipe(dm, SelectionGrid(probes=["logreg"], **grid), progress=False)
    assert plain.best.families == ["commitment", "raw"] and plain.to_dict()["best_by_cv"] == plain.best.label()
    anything = select_recipe(dm, SelectionGrid(probes=["logreg"], within_se=1e6, **grid), progress=False)
    assert anything.best.families == ["raw"]  # every candidate is near: the cheapest (raw 0.1 ms per step)
    assert anything.table == plain.table  # the CV table itself does not change
    d = anything.to_dict()
    assert d["best_by_cv"] == plain.best.label() != d["best_label"]
    assert "the cheapest to monitor within 1e+06 standard error(s) of the best" in format_selection(d)
    one = select_recipe(dm, SelectionGrid(probes=["logreg"], within_se=1.0, **grid), progress=False)
    top = plain.table[0]
    floor = top["cv_auroc"] - top["cv_sd"] / np.sqrt(3)
    row = next(t for t in one.table if t["recipe"] == one.best.label())
    assert row["cv_auroc"] >= floor
    assert not [t for t in one.table if t["cv_auroc"] >= floor and monitor_cost(t["families"]) < monitor_cost(row["families"])]
    assert monitor_cost(["commitment", "lens"]) == MONITOR_COST["commitment"] + MONITOR_COST["lens"]
    assert choose(plain.table, 3, 0.0) is plain.table[0]
    with pytest.raises(UserError, match="within_se"):
        SelectionGrid(within_se=-1).validate()


def test_the_baselines_recipes_are_candidates_so_selection_never_keeps_a_worse_probe(tmp_path):
    # the label lives in the output confidence (step-1 entropy) and raw layer 0; the grid offers only lens and the
    # raw mean pooling, which miss both. The logistic baselines' recipes (confidence alone, each layer's
    # last-prompt-token state) compete as candidates, so one of them is chosen, at a C of the baselines' grid too.
    dm = _dm(make_harvest(tmp_path / "h", n=600, signal=1.5))
    grid = dict(probes=["logreg"], families=[["lens"], ["raw"]], raw_layers=[None], raw_pool=["mean"], Cs=[1e-4],
                folds=3)
    off = select_recipe(dm, SelectionGrid(**grid, baselines=False), progress=False)
    on = select_recipe(dm, SelectionGrid(**grid), progress=False)
    assert {t["recipe"] for t in off.table} == {"logreg lens", "logreg raw[all]/mean"}
    labels = {t["recipe"] for t in on.table}
    assert {"logreg commitment", "logreg raw[0]/first", "logreg raw[1]/first"} <= labels
    assert on.table[0]["cv_auroc"] > off.table[0]["cv_auroc"] + 0.1
    assert on.best.families in (["commitment"], ["raw"]) and on.best.label() != off.best.label()
    assert {t["C"] for t in on.table} <= {1e-4, 0.001, 0.01, 0.1, 1.0}


def test_cross_model_names_come_from_the_manifests(tmp_path, capsys):
    a = make_harvest(tmp_path / "a", n=120, model_fp="a" * 64, model_name="alpha")
    b = make_harvest(tmp_path / "b", n=120, model_fp="b" * 64, model_name="beta")
    again = make_harvest(tmp_path / "a2", n=120, model_fp="a" * 64, model_name="alpha")
    # a typed name that is not the harvest's own is refused (it would relabel the table)
    assert main(["cross-model", "--harvest", f"beta={a}", "--harvest", str(b), "--n-boot", "5"]) == 2
    assert "is of model 'alpha', not 'beta'" in capsys.readouterr().err
    # one model under two names, or the same harvest twice, is not a transfer
    assert main(["cross-model", "--harvest", str(a), "--harvest", str(again), "--n-boot", "5"]) == 2
    assert "the same model" in capsys.readouterr().err
    # a --json that is a user's file is refused before any work, and left as it was
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    assert main(["cross-model", "--harvest", str(a), "--harvest", str(b), "--json", str(mine)]) == 2
    assert mine.read_text() == '{"my": "notes"}' and "not a riskprobe cross-model result" in capsys.readouterr().err
    out = tmp_path / "xm.json"
    for _ in range(2):  # its own result file is replaced on a rerun
        assert main(["cross-model", "--harvest", str(a), "--harvest", str(b), "--n-boot", "5", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["riskprobe_result"] == "cross-model" and {r["target"] for r in res["rows"]} == {"alpha", "beta"}
