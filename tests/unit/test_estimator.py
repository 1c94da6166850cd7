"""The scikit-learn face: estimator checks, and behaviour on planted and shuffled signals."""

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks

from riskprobe.evaluation.metrics import auroc
from riskprobe.probes.estimator import RiskProbe


@parametrize_with_checks([RiskProbe(epochs=10)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_planted_and_shuffled():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 6))
    y = (X[:, 2] + 0.3 * rng.normal(size=800) > 0.5).astype(int)
    est = RiskProbe(probe="linear", epochs=300).fit(X[:600], y[:600])
    assert est.n_features_in_ == 6 and list(est.classes_) == [0, 1]
    assert auroc(y[600:], est.predict_proba(X[600:])[:, 1]) > 0.9
    ys = rng.permutation(y)
    est2 = RiskProbe(probe="linear", epochs=300).fit(X[:600], ys[:600])
    assert abs(auroc(ys[600:], est2.predict_proba(X[600:])[:, 1]) - 0.5) < 0.12
