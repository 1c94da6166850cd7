"""Metric functions against hand-computed values."""

import math

import numpy as np
import pytest

from riskprobe.evaluation import metrics as M


def test_auroc_by_hand():
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count one half
    assert M.auroc([0, 1, 1], [0.9, 0.1, 0.2]) == 0.0
    assert math.isnan(M.auroc([1, 1], [0.1, 0.2]))


def test_prr_by_hand():
    y = [0, 1, 0, 1]  # 1 = wrong answer
    assert M.prr(y, [0.1, 0.9, 0.2, 0.8]) == pytest.approx(1.0)
    # riskiest-first order: correct, wrong, correct, wrong -> kept quality 1/2, 1/3, 1/2, 0; mean 1/3
    # oracle: 1/2, 2/3, 1, 1 (mean 19/24); random 1/2 -> (1/3 - 1/2) / (19/24 - 1/2) = -4/7
    assert M.prr(y, [0.9, 0.1, 0.2, 0.8]) == pytest.approx(-4 / 7)
    rng = np.random.default_rng(0)
    yy = rng.random(4000) < 0.3
    assert abs(M.prr(yy, rng.random(4000))) < 0.08  # random scores: about 0


def test_ece_brier_auprc_by_hand():
    y = [0, 1, 1, 0]
    s = [0.05, 0.95, 0.65, 0.35]
    assert M.ece(y, s) == pytest.approx((0.05 + 0.05 + 0.35 + 0.35) / 4)
    assert M.brier(y, s) == pytest.approx((0.05**2 + 0.05**2 + 0.35**2 + 0.35**2) / 4)
    # ranking wrong answers: 0.95 (wrong), 0.65 (wrong) first -> precision 1 at both recalls
    assert M.auprc(y, s) == pytest.approx(1.0)
    assert M.auprc([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


def test_threshold_and_bootstrap():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.7, 0.9])
    t = M.best_threshold(y, s)
    assert 0.2 < t <= 0.7
    ev = M.evaluate(y, s, threshold=t, n_boot=200)
    assert ev["accuracy"] == 1.0 and ev["n"] == 4 and ev["n_incorrect"] == 2
    lo, hi = M.bootstrap_ci(M.auroc, np.r_[y, y, y], np.r_[s, s[::-1], s], n_boot=300)
    assert lo <= M.auroc(np.r_[y, y, y], np.r_[s, s[::-1], s]) <= hi


def test_platt_recovers_a_planted_calibration():
    from riskprobe.probes.modules import fit_platt

    rng = np.random.default_rng(0)
    s = rng.normal(3.0, 2.0, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(0.8 * s - 1.5)))  # true a = 0.8, b = -1.5
    a, b = fit_platt(s, y)
    assert a == pytest.approx(0.8, abs=0.05) and b == pytest.approx(-1.5, abs=0.1)
    a, b = fit_platt(-s, y)  # a reversed score gets a negative slope
    assert a == pytest.approx(-0.8, abs=0.05)


def test_stratified_auroc_counts_only_pairs_within_a_stratum():
    # stratum a: wrong 0.9 vs right 0.1, 0.95 -> 1 of 2 pairs won; stratum b: wrong 0.5, 0.6 vs right 0.2 -> 2 of 2
    y = [1, 0, 0, 1, 1, 0]
    s = [0.9, 0.1, 0.95, 0.5, 0.6, 0.2]
    g = ["a", "a", "a", "b", "b", "b"]
    assert M.stratified_auroc(y, s, g) == pytest.approx(3 / 4)
    assert M.stratified_auroc(y, s, [0] * 6) == pytest.approx(M.auroc(y, s))  # one stratum: the plain AUROC
    assert M.stratified_auroc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1], [0, 0, 1, 1]) != M.stratified_auroc(
        [1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1], [0, 0, 0, 0])
    assert np.isnan(M.stratified_auroc([1, 1, 0, 0], [0.2, 0.3, 0.4, 0.5], [0, 0, 1, 1]))  # no stratum has both
    # a score that only knows the stratum ranks at chance within strata while its plain AUROC is high
    rng = np.random.default_rng(0)
    g = rng.integers(0, 5, 4000)
    y = rng.random(4000) < 0.1 + 0.2 * g
    assert M.auroc(y, g) > 0.7 and M.stratified_auroc(y, g.astype(float), g) == pytest.approx(0.5)
    lo, hi = M.bootstrap_ci_strata(M.stratified_auroc, y, g.astype(float) + rng.normal(0, 1e-3, 4000), g, n_boot=100)
    assert lo < 0.5 < hi


def test_quantile_strata_and_selective_error():
    assert M.quantile_strata(np.arange(10), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert len(set(M.quantile_strata([1, 1, 1, 1, 2], 5).tolist())) == 2  # ties share a stratum
    y = np.array([0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    s = np.arange(10) / 10  # keep the lowest-risk rows first
    assert M.selective_error(y, s, 0.5) == pytest.approx(3 / 5)  # rows 0..4: 0, 1, 0, 1, 1
    assert M.selective_error(y, s, 1.0) == pytest.approx(0.4)
    cov, err = M.risk_coverage(y, s)
    assert cov[-1] == 1.0 and err[1] == 0.5 and M.aurc(y, s) == pytest.approx(err.mean())


def test_early_stop_savings_by_hand():
    from riskprobe.training.evaluate import early_stop_savings

    yv = np.array([1, 1, 1, 1, 1, 0, 0])
    rv = np.array([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3])  # 80% recall of wrong answers: threshold 0.6
    yt = np.array([1, 1, 0, 0])
    rt = np.array([0.95, 0.5, 0.65, 0.1])
    e = early_stop_savings(yv, rv, yt, rt, np.array([10, 6, 8, 4]), k=2)
    assert e["threshold"] == 0.6 and e["recall"] == 0.5 and e["right_answers_stopped"] == 0.5
    assert e["tokens_saved"] == pytest.approx(((10 - 3) + (8 - 3)) / 28)
