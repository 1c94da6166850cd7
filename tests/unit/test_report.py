"""Dynamic profiles and hypotheses on planted truths; the report renders from tiny data."""

import json

import numpy as np
import pytest
import torch
from synth import make_harvest

from riskprobe.report import profiles as PF


def _summary(n, rng):
    return {"entropy_early": rng.random(n) * 3, "entropy_late": rng.random(n) * 3, "curvature_early": rng.random(n) * 2,
            "stability_early": rng.random(n), "sync": rng.random(n), "has_late": np.ones(n, bool)}


def _planted(direction: float, n=4000, seed=0):
    """Rows whose error probability depends on regime as ``direction`` says (+1 as hypothesised, -1 reversed, 0 none)."""
    rng = np.random.default_rng(seed)
    s = _summary(n, rng)
    train = rng.random(n) < 0.5
    th = PF.Thresholds.fit(s, train, k=8)
    reg = PF.assign(s, th)
    p = np.full(n, 0.5)
    com = reg["regime"] == "committed"
    p[com & (reg["sync_level"] == "low")] = 0.5 + 0.25 * direction
    p[com & (reg["sync_level"] == "high")] = 0.5 - 0.25 * direction
    p[reg["regime"] == "turbulent_unresolved"] = 0.5 + 0.25 * direction
    p[reg["regime"] == "turbulent_resolved"] = 0.5 - 0.25 * direction
    y = (rng.random(n) < p).astype(float)
    return PF.hypotheses(y, reg, ~train)


@pytest.mark.parametrize("direction,verdict", [(1, "held"), (-1, "failed"), (0, "undecided")])
def test_h1_h2_recover_planted_truth(direction, verdict):
    h = _planted(direction)
    assert h["H1"]["verdict"] == verdict and h["H2"]["verdict"] == verdict, h
    if direction:
        assert np.sign(h["H1"]["effect"]) == direction and abs(h["H1"]["effect"] - 0.5 * direction) < 0.15


def test_thresholds_use_training_rows_only():
    rng = np.random.default_rng(1)
    s = _summary(1000, rng)
    train = np.arange(1000) < 600
    th = PF.Thresholds.fit(s, train, k=8)
    s2 = {k: v.copy() for k, v in s.items()}
    for k in ("entropy_early", "curvature_early", "stability_early", "sync"):
        s2[k][~train] += 100.0  # held-out rows change: thresholds must not
    assert PF.Thresholds.fit(s2, train, k=8) == th
    assert th.entropy_low == pytest.approx(np.quantile(s["entropy_early"][train], 0.33))


def test_h3_between_vs_within_on_planted_profiles():
    rng = np.random.default_rng(2)

    def group(share_committed, n=1500):
        reg = {"regime": np.where(rng.random(n) < share_committed, "committed", "other"),
               "sync_level": np.where(rng.random(n) < 0.5, "high", "low")}
        return reg, np.ones(n, bool)

    differ = {("m1", "a"): group(0.1), ("m1", "b"): group(0.12), ("m2", "a"): group(0.6), ("m2", "b"): group(0.62)}
    assert PF.between_vs_within(differ, n_boot=200)["verdict"] == "held"
    same = {("m1", "a"): group(0.1), ("m1", "b"): group(0.6), ("m2", "a"): group(0.12), ("m2", "b"): group(0.62)}
    assert PF.between_vs_within(same, n_boot=200)["verdict"] == "failed"
    assert PF.between_vs_within({("m1", "a"): group(0.1)})["verdict"].startswith("undecided")


def test_wilson():
    lo, hi = PF.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)


def test_early_summary_by_hand():
    t = {"step_mask": torch.tensor([[True, True, True, False, False]]),
         "commitment": torch.zeros(1, 5, 6), "sync": torch.zeros(1, 5, 2, 3), "trajectory": torch.zeros(1, 5, 2, 3)}
    t["commitment"][0, :, 0] = torch.tensor([2.0, 1.0, 0.5, 9.0, 9.0])  # entropy; steps 3, 4 are masked
    t["sync"][0, :, :, 0] = 0.5
    t["trajectory"][0, 1, :, 0] = torch.tensor([0.2, 0.4])
    s = PF.early_summary(t, k=4)  # early window steps 0..1, late window 2..4
    assert s["entropy_early"][0] == pytest.approx(1.5) and s["entropy_late"][0] == pytest.approx(0.5)
    assert s["stability_early"][0] == pytest.approx(0.3) and s["sync"][0] == pytest.approx(0.5)


def test_report_renders_from_tiny_data(tmp_path, monkeypatch):
    import os

    from riskprobe.cli import main

    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    a = make_harvest(tmp_path / "a", n=240, signal=1.5)
    b = make_harvest(tmp_path / "b", n=200, signal=1.0, seed=3, set_name="other")
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", f"[{a}]", "--trainer.default_root_dir",
                 str(tmp_path / "run"), "--checkpoint_dir", str(tmp_path / "ck"), "--trainer.max_epochs", "3",
                 "--n_boot", "20", "--sweep_ks", "[0,2]", "--data.families", "[commitment,sync,raw]"]) == 0
    assert main(["report", "--run", str(tmp_path / "run"), str(a), str(b), "--out", str(tmp_path / "rep"), "--k", "4"]) == 0
    rep = tmp_path / "rep"
    text = (rep / "report.md").read_text()
    for png in ("fit0_auroc_vs_k.png", "fit0_reliability.png", "fit0_risk_coverage.png", "fit0_importance.png",
                "harvest1_trajectories.png", "harvest2_trajectories.png", "side_by_side.png"):
        assert (rep / png).stat().st_size > 2000, png
        assert png in text
    for needle in ("AUROC vs k", "**H1**", "**H2**", "**H3**", "Thresholds, fitted on the training split",
                   "### Selection: 5-fold CV grouped by question", "Chosen: **", "within confidence strata",
                   "base error rate"):
        assert needle in text
    js = json.loads((rep / "report.json").read_text())
    assert len(js["harvests"]) == 2 and js["H3"]["verdict"]
