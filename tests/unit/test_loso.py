"""Leave one source out: planted signals learned across sources, shuffled labels at chance, the held-out source
never reaching selection, the blend equal to its formula."""

import json

import numpy as np
import pytest
import torch
from synth import make_artifact, make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.training.grouped import Blend, confidence_scores, fit_blend, sample_weights
from riskprobe.training.loso import SourceView, TransferRecipe, design, fit_transfer, loso, predict_transfer


def _sources(tmp_path, n_sources=4, n=160, signal=1.5, shuffle=(), seed=0):
    paths = []
    for i in range(n_sources):
        name = f"src{i}"
        paths.append(str(make_harvest(tmp_path / name, n=n, signal=signal, seed=seed + i, set_name=name,
                                      shuffle_labels=name in shuffle)))
    return paths


def test_a_signal_shared_by_every_source_transfers_to_each_held_out_one(tmp_path):
    paths = _sources(tmp_path)
    res = loso(paths, TransferRecipe(families=["commitment"], k=2, blend=False), n_boot=50, progress=False)
    assert [r["source"] for r in res["rows"]] == ["src0", "src1", "src2", "src3"]
    for r in res["rows"]:
        assert r["auroc"] > 0.75 and r["n"] == 160 and 0 < r["n_wrong"] < 160, r
    assert res["summary"]["mean_auroc"] > 0.78


def test_shuffled_labels_of_a_held_out_source_are_at_chance(tmp_path):
    paths = _sources(tmp_path, n=300, shuffle=("src3",))
    res = loso(paths, TransferRecipe(families=["commitment"], k=2), sources=["src0", "src3"], n_boot=50,
               progress=False)
    by = {r["source"]: r for r in res["rows"]}
    assert by["src0"]["auroc"] > 0.75 and abs(by["src3"]["auroc"] - 0.5) < 0.1


def test_the_held_out_source_never_reaches_selection(tmp_path):
    view = SourceView.load(_sources(tmp_path, n=200))
    recipe = TransferRecipe(families=["commitment", "raw"], k=2)
    train = np.flatnonzero(view.source != "src2")
    test = np.flatnonzero(view.source == "src2")
    a = fit_transfer(view, train, recipe)
    # plant a perfect leak in the held-out source (a raw feature equal to its label) and flip its labels: a fit
    # that read those rows would now choose otherwise; this one is the very same
    view.tensors = {k: v.clone() for k, v in view.tensors.items()}
    view.tensors["raw"][test, 0, 0, 1] = torch.as_tensor(50.0 * (1 - view.y[test])).half()
    view.y = view.y.copy()
    view.y[test] = 1 - view.y[test]
    b = fit_transfer(view, train, recipe)
    assert a["C"] == b["C"] and a["cv_by_C"] == b["cv_by_C"] and a["blend"] == b["blend"]
    np.testing.assert_array_equal(a["coef"], b["coef"])


def test_sources_weigh_the_same_when_balanced():
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    g = np.array(["a"] * 6 + ["b"] * 2)
    w = sample_weights(y, g, "source")
    total = {s: w[g == s].sum() for s in "ab"}
    assert total["a"] == pytest.approx(total["b"]) and w.mean() == pytest.approx(1.0)
    assert w[(g == "a") & (y == 1)].sum() == pytest.approx(w[(g == "a") & (y == 0)].sum())
    wc = sample_weights(y, g, "class")
    assert wc[y == 1].sum() == pytest.approx(wc[y == 0].sum())


def test_the_blend_is_its_formula_and_backs_off_far_from_the_training_rows():
    b = Blend(a=2.0, b=[0.5, -1.0], c=0.1, d0=3.0, s=4.0, conf_mean=[1.0, 0.0], conf_std=[2.0, 1.0])
    probe, conf, d = np.array([1.0, 1.0]), np.array([[3.0, 1.0], [3.0, 1.0]]), np.array([1.0, 10.0])
    w = 1 / (1 + np.exp(-4.0 * (3.0 - d)))
    want = w * 2.0 * probe + (1.0 * 0.5 + 1.0 * -1.0) + 0.1
    np.testing.assert_allclose(b.logit(probe, conf, d), want)
    assert b.weight(np.array([1.0]))[0] > 0.99 and b.weight(np.array([10.0]))[0] < 0.01


def test_fit_blend_learns_to_trust_the_probe_only_near_its_training_rows():
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.random(n) < 0.5
    d = rng.uniform(0.5, 4.0, n)
    near = d < 2.0
    probe = np.where(near, 2.0 * (y - 0.5) + rng.normal(size=n), rng.normal(size=n))  # informative only when near
    conf = (0.6 * (y - 0.5) + rng.normal(size=n))[:, None]  # a weak signal everywhere
    bl = fit_blend(probe, conf, d, y.astype(float))
    assert bl.weight(np.array([1.0]))[0] > 0.8 and bl.weight(np.array([3.5]))[0] < 0.3
    assert bl.b[0] > 0  # the confidence is used
    flat = fit_blend(probe, conf, d, y.astype(float), backoff=False)
    assert flat.s == 0.0 and flat.weight(np.array([100.0]))[0] == pytest.approx(0.5) or flat.d0 > 1e8


def test_confidence_scores_are_the_training_free_scores_at_k(tmp_path):
    from riskprobe.evaluation.baselines import training_free_scores

    view = SourceView.load(_sources(tmp_path, n_sources=1, n=50))
    c = confidence_scores(view.tensors, 2)
    tf = training_free_scores(view.tensors, 2)
    for j, name in enumerate(("first_token_entropy", "mean_entropy@k2", "neg_mean_top1@k2", "neg_mean_logprob@k2")):
        np.testing.assert_allclose(c[:, j], tf[name], rtol=1e-6)


def test_predict_on_the_training_design(tmp_path):
    view = SourceView.load(_sources(tmp_path, n=120))
    r = TransferRecipe(families=["commitment"], k=2)
    X, conf = design(view.tensors, r), confidence_scores(view.tensors, 2)
    fit = fit_transfer(view, np.arange(len(view.y)), r, X=X, conf=conf)
    p = predict_transfer(fit, X, conf)
    assert set(p) == {"probe", "risk", "distance", "weight"}
    assert 0.8 < p["distance"].mean() <= 1.0  # RMS of standardised training rows: 1 on average (Jensen: at most 1)


def test_transfer_command(tmp_path, capsys):
    paths = _sources(tmp_path, n=120)
    out = tmp_path / "t.json"
    argv = ["transfer", *sum((["--harvest", p] for p in paths), []), "--families", "commitment", "--k", "2",
            "--n-boot", "20", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "leave one source out: commitment@k2/source+blend" in text and "mean over 4 sources" in text
    res = json.loads(out.read_text())
    assert res["riskprobe_result"] == "transfer" and len(res["rows"]) == 4
    assert main([*argv[:-3], "--sources", "nope"]) == 2
    assert "not in the harvests: nope" in capsys.readouterr().err
    with pytest.raises(UserError, match="at least three sources"):
        loso(paths[:2], TransferRecipe(families=["commitment"], k=2), progress=False)


def test_a_blend_probe_fits_exports_and_equals_its_parts(tmp_path, monkeypatch):
    import os

    from riskprobe.evaluation.metrics import auroc
    from riskprobe.probes.artifact import read_artifact
    from riskprobe.serving.scorer import Scorer, onnx_risk

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paths = _sources(tmp_path, n=200)
    run, ck = tmp_path / "run", tmp_path / "ck"
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", "[" + ",".join(paths) + "]",
                 "--data.families", "[commitment,raw]", "--data.k", "2", "--model.probe", "blend", "--selection", "null",
                 "--n_boot", "20", "--sweep_ks", "null", "--trainer.default_root_dir", str(run), "--checkpoint_dir",
                 str(ck)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["probe"]["name"] == "blend@k2" and m["probe"]["auroc"] > 0.75
    assert m["ood"]["rule"] == "blend back-off" and m["blend"]["folds_by"] == "set" and "cv_by_C" in m["blend"]
    assert main(["export", "--ckpt", str(ck / "final.ckpt"), "--out", str(tmp_path / "art")]) == 0
    rm, meta = read_artifact(tmp_path / "art")
    assert meta["probe"]["kind"] == "blend"
    # the exported module is the formula of its parts: the probe, the distance, the back-off, the confidence
    view = SourceView.load(paths)
    sc = Scorer.load(tmp_path / "art")
    x = sc._inputs(view.tensors)
    with torch.no_grad():
        s, mk, g = rm.standardise(x["seq"], x["mask"], x["static"])
        p = rm.probe
        z = (design(view.tensors, TransferRecipe(families=["commitment", "raw"], k=2)) - p.x_mean.numpy()) / p.x_std.numpy()
        probe = z @ p.fc.weight.numpy()[0] + float(p.fc.bias)
        d = np.sqrt(np.mean(z ** 2, 1))
        a, c, d0, sl = p.head.tolist()
        conf = (confidence_scores(view.tensors, 2) - p.conf_mean.numpy()) / p.conf_std.numpy()
        want = 1 / (1 + np.exp(-sl * (d0 - d))) * a * probe + conf @ p.conf_b.numpy() + c
        got = rm.logits(x["seq"], x["mask"], x["static"]).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(p.distance(s, mk, g).numpy(), d, rtol=1e-4)
    risk = sc.risk(view.tensors)
    np.testing.assert_allclose(onnx_risk(tmp_path / "art", x["seq"], x["mask"], x["static"]), risk, atol=1e-5)
    assert auroc(view.y, risk) > 0.75
    # rows far from the training rows are scored by the model's confidence, and say so
    r = sc.readings(view.tensors)
    assert r["probe_weight"] is not None and r["probe_weight"].shape == (len(view.y),)
    far = {k: v.clone() for k, v in view.tensors.items()}
    far["raw"] = far["raw"] * 0 + 1e3
    assert (sc.readings(far)["probe_weight"] < 0.5).all() and sc.ood(far)[1].all()


def test_the_raw_states_projection_folds_into_weights_on_the_design():
    from riskprobe.training.loso import Projection

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40)) * rng.uniform(0.5, 3, 40) + rng.normal(size=40)
    proj = Projection(X, n_step=10, raw_dims=5)
    P = proj(X)
    assert P.shape == (300, 15) and np.allclose(P[:, 10:].std(0), 1.0)
    coef = rng.normal(size=15)
    np.testing.assert_allclose(P @ coef, proj.standardised(X) @ proj.fold(coef), rtol=1e-9, atol=1e-9)
    assert Projection(X, n_step=10, raw_dims=None)(X).shape == (300, 40)
    # a harvest with fewer training rows than components (a small demo): the rows' own n - 1 directions
    few = Projection(X[:12], n_step=10, raw_dims=256)
    assert few(X[:12]).shape == (12, 10 + 11)
    coef = rng.normal(size=21)
    np.testing.assert_allclose(few(X) @ coef, few.standardised(X) @ few.fold(coef), rtol=1e-9, atol=1e-9)


def test_the_exported_probe_carries_its_transfer_table(tmp_path, monkeypatch, capsys):
    import os

    from riskprobe.probes.artifact import read_artifact

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paths = _sources(tmp_path, n=150)
    ck = tmp_path / "ck"
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", "[" + ",".join(paths) + "]",
                 "--data.families", "[commitment]", "--data.k", "2", "--model.probe", "blend", "--selection", "null",
                 "--n_boot", "20", "--sweep_ks", "null", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--checkpoint_dir", str(ck)]) == 0
    hs = sum((["--harvest", p] for p in paths), [])
    assert main(["transfer", *hs, "--families", "commitment", "--k", "2", "--n-boot", "20", "--json",
                 str(tmp_path / "t.json"), "--no-progress"]) == 0
    assert main(["export", "--ckpt", str(ck / "final.ckpt"), "--out", str(tmp_path / "art"), "--transfer",
                 str(tmp_path / "t.json")]) == 0
    _, meta = read_artifact(tmp_path / "art")
    rows = meta["transfer"]["rows"]
    assert [r["source"] for r in rows] == ["src0", "src1", "src2", "src3"]
    assert all(set(r) >= {"source", "n", "n_wrong", "auroc", "best_training_free", "margin"} for r in rows)
    assert rows[0]["best_training_free"]["name"] and meta["transfer"]["summary"]["sources"] == 4
    # a table of another recipe (k) describes another probe: refused, nothing written
    assert main(["transfer", *hs, "--families", "commitment", "--k", "1", "--n-boot", "20", "--json",
                 str(tmp_path / "t1.json"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", "--ckpt", str(ck / "final.ckpt"), "--out", str(tmp_path / "art2"), "--transfer",
                 str(tmp_path / "t1.json")]) == 2
    assert "another recipe" in capsys.readouterr().err and not (tmp_path / "art2").exists()


def test_a_question_asked_by_the_held_out_source_is_never_trained_on():
    from riskprobe.training.loso import held_out

    # two writers answer the same questions (ids shared); a third asks others
    shared = [f"q{i}" for i in range(60)]
    view = SourceView(np.zeros(180, int), np.asarray(["a"] * 60 + ["b"] * 60 + ["c"] * 60),
                      np.asarray(shared + shared + [f"c{i}" for i in range(60)]), {}, np.zeros(180))
    test, train = held_out(view, "a")
    assert len(test) == 60 and set(view.source[train]) == {"c"}  # b's rows answer a's questions: left out
    test, train = held_out(view, "c")
    assert len(test) == 60 and len(train) == 120


def test_a_blend_on_a_single_source_folds_by_question(tmp_path):
    view = SourceView.load(_sources(tmp_path, n_sources=1, n=300))
    fit = fit_transfer(view, np.arange(len(view.y)), TransferRecipe(families=["commitment"], k=2))
    assert fit["folds_by"] == "question" and fit["cv_auroc"] > 0.7 and fit["blend"] is not None


def test_the_blend_is_monotone_in_every_confidence_score_and_the_probe():
    rng = np.random.default_rng(1)
    n = 3000
    y = (rng.random(n) < 0.5).astype(float)
    base = y + rng.normal(size=n)
    # two nearly collinear scores: a free fit plays one against the other (a negative weight on one)
    conf = np.c_[base + 0.1 * rng.normal(size=n), base + 0.1 * rng.normal(size=n) + 0.3 * y]
    probe = -(y - 0.5) + rng.normal(size=n)  # a probe pointing the wrong way on these rows
    free = fit_blend(probe, conf, np.ones(n), y, backoff=False, monotone=False)
    mono = fit_blend(probe, conf, np.ones(n), y, backoff=False)
    assert min(free.b) < 0 and free.a < 0
    assert min(mono.b) >= 0 and mono.a >= 0 and mono.a < 0.05


def test_a_transfer_probe_without_the_blend_is_the_probe_alone(tmp_path, monkeypatch):
    import os

    from riskprobe.probes.artifact import read_artifact

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paths = _sources(tmp_path, n=150)
    ck = tmp_path / "ck"
    assert main(["fit", "--config", "transfer", "--data.paths", "[" + ",".join(paths) + "]", "--data.families",
                 "[raw]", "--data.k", "2", "--model.blend", "false", "--n_boot", "10", "--sweep_ks", "null",
                 "--trainer.default_root_dir", str(tmp_path / "run"), "--checkpoint_dir", str(ck)]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["blend"]["blend"] is None and m["ood"]["quantile"] == 0.99 and m["probe"]["auroc"] > 0.7
    assert main(["export", "--ckpt", str(ck / "final.ckpt"), "--out", str(tmp_path / "art")]) == 0
    rm, _ = read_artifact(tmp_path / "art")
    assert rm.probe.head.tolist() == [1.0, 0.0, 1e9, 1.0] and rm.probe.conf_b.abs().sum() == 0


def test_the_probe_may_read_fewer_families_than_the_blend(tmp_path):
    from riskprobe.training.loso import probe_columns

    view = SourceView.load(_sources(tmp_path, n=150))
    r = TransferRecipe(families=["commitment", "raw"], k=2, probe_families=["raw"])
    cols, n_step = probe_columns(view.tensors, r)
    X = design(view.tensors, r)
    full = TransferRecipe(families=["commitment", "raw"], k=2)
    assert probe_columns(view.tensors, full) is None
    # the commitment columns (6 per step) are left out, the valid-step indicators and raw states kept
    assert n_step == 3 and len(cols) == X.shape[1] - 3 * 6
    np.testing.assert_array_equal(design(view.tensors, TransferRecipe(families=["raw"], k=2)), X[:, cols])
    fit = fit_transfer(view, np.arange(len(view.y)), r, X=X)
    zero = np.setdiff1d(np.arange(X.shape[1]), cols)
    assert np.all(fit["coef"][zero] == 0) and np.any(fit["coef"][cols] != 0) and fit["blend"] is not None


@pytest.mark.parametrize("a, path, given_head", [(1.0, "probe", "given"), (0.0, "confidence", "confidence")])
def test_every_scored_row_says_which_path_carried_its_risk(tmp_path, dir_lm, a, path, given_head):
    """A blend whose probe is kept (``a`` = 1, no back-off) scores by the probe; one that gave its probe no weight
    leaves every row to the model's confidence, and each row says so: generated rows keep ``head: generation``, given
    answers are reported as ``head: confidence``."""
    from riskprobe.serving.scorer import Scorer

    def tweak(mod):
        mod.risk_model.probe.head.copy_(torch.tensor([a, 0.0, 1e9, 1.0]))
        mod.risk_model.probe.conf_b.copy_(torch.tensor([0.3, 0.2, 0.1, 0.4]))

    art, _ = make_artifact(dir_lm, tmp_path / "b", probe="blend", families=("commitment", "raw"), tweak=tweak)
    rows = Scorer.load(art, model=dir_lm).score(dir_lm, ["What is 1?", "What is 2?"], [None, "two"], max_new_tokens=4)
    assert [r["path"] for r in rows] == [path, path]
    assert [r["head"] for r in rows] == ["generation", given_head]
