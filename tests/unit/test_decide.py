"""The hypothesis decision rule: Holm by hand, planted effects decided, equivalence, clusters, controls."""

import numpy as np
import pytest

from riskprobe.report.decide import MIN_ROWS, cell_effect, decide, holm, rows_to_decide


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, 0.04, 0.04 (step-down, kept monotone)
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm([0.5]), [0.5])


def _cells(effect, n, seed):
    rng = np.random.default_rng(seed)
    a = np.arange(2 * n) < n
    y = np.where(a, rng.random(2 * n) < 0.3 + effect, rng.random(2 * n) < 0.3).astype(float)
    return y, a, ~a, np.arange(2 * n).astype(str)


@pytest.mark.parametrize("effect,want", [(0.15, "held"), (-0.15, "reversed"), (0.0, "no effect")])
def test_planted_effects_are_decided(effect, want):
    n = 4000 if effect == 0 else 600
    y, a, b, ids = _cells(effect, n, seed=1)
    c = cell_effect(y, a, b, ids, n_boot=400)
    info = decide([c])
    assert info["tests"] == 1 and c["verdict"] == want, c
    assert abs(c["effect"] - effect) < 0.05 and c["ci"][0] < c["effect"] < c["ci"][1]
    assert (c["odds_ratio"] > 1) == (c["effect"] > 0)


def test_small_regimes_are_not_tested_and_undecided_cells_say_how_many_rows():
    y, a, b, ids = _cells(0.1, MIN_ROWS - 1, seed=2)
    c = cell_effect(y, a, b, ids)
    assert c["verdict"] == "too small" and not c["tested"]
    # by hand: 200 rows, effect 0.05, half-width 0.1 -> (0.1 / 0.05)^2 x 200 = 800 rows for one test
    cell = {"tested": True, "verdict": "undecided", "n_a": 100, "n_b": 100, "effect": 0.05, "ci": [-0.05, 0.15]}
    assert rows_to_decide(cell) == 800
    assert rows_to_decide(cell, tests=10) == 1641  # z 2.807 instead of 1.960: x (2.807 / 1.960)^2
    # an effect near zero is decided sooner by equivalence: 200 x (0.05 / (0.03 - 0.01))^2 = 1250
    near = dict(cell, effect=0.01, ci=[-0.04, 0.06])
    assert rows_to_decide(near) == 1250
    assert rows_to_decide({"tested": True, "verdict": "held"}) is None


def test_more_tests_raise_the_corrected_p():
    y, a, b, ids = _cells(0.15, 400, seed=5)
    alone = cell_effect(y, a, b, ids, n_boot=400)
    decide([alone])
    assert alone["p_holm"] == alone["p"] < 0.01
    many = [dict(alone)] + [cell_effect(*_cells(0.0, 400, seed=10 + i), n_boot=400) for i in range(20)]
    decide(many)
    assert many[0]["p_holm"] > 5 * alone["p_holm"]


def test_clustered_bootstrap_widens_for_repeated_questions():
    y, a, b, ids = _cells(0.1, 300, seed=5)
    single = cell_effect(y, a, b, ids, n_boot=400)
    rep = 4  # every question answered four times identically: no new information
    clustered = cell_effect(np.repeat(y, rep), np.repeat(a, rep), np.repeat(b, rep), np.repeat(ids, rep), n_boot=400)
    naive = cell_effect(np.repeat(y, rep), np.repeat(a, rep), np.repeat(b, rep), np.arange(len(y) * rep).astype(str),
                      n_boot=400)
    w = lambda c: c["ci"][1] - c["ci"][0]  # noqa: E731
    assert w(clustered) == pytest.approx(w(single), rel=0.25) and w(naive) < 0.7 * w(clustered)


def test_control_removes_a_length_confound():
    """Regime a holds the long answers and only length decides errors: a raw effect, none within strata."""
    rng = np.random.default_rng(6)
    n = 6000
    length = rng.integers(0, 5, n)
    a = rng.random(n) < 0.2 + 0.15 * length
    y = (rng.random(n) < 0.1 + 0.15 * length).astype(float)
    c = cell_effect(y, a, ~a, np.arange(n).astype(str), strata=length, n_boot=300)
    assert c["effect"] > 0.1 and c["ci"][0] > 0
    assert abs(c["controlled"]["effect"]) < 0.03 and c["controlled"]["ci"][0] < 0 < c["controlled"]["ci"][1]
    info = decide([c])
    assert info["controlled_tests"] == 1 and c["verdict"] == "held" and c["controlled"]["verdict"] != "held"
