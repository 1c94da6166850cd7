"""A scikit-learn face for notebooks: :class:`RiskProbe`, an estimator over a feature matrix.

``RiskProbe().fit(X, y)`` trains a riskprobe probe (standardised inputs, class-balanced loss, Platt
calibration on a held-out slice) on a 2-D matrix; ``predict_proba(X)[:, 1]`` is the risk of class 1.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .modules import build_probe


class RiskProbe(ClassifierMixin, BaseEstimator):
    """Binary risk probe with the scikit-learn estimator contract.

    Args:
        probe: ``linear`` or ``mlp``.
        hidden: hidden width of the MLP.
        epochs: full-batch training epochs.
        lr: Adam learning rate.
        weight_decay: L2 penalty.
        random_state: seed for initialisation.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``mean_``, ``scale_``, ``module_``.
    """

    def __init__(self, probe: str = "mlp", hidden: int = 32, epochs: int = 200, lr: float = 1e-2,
                 weight_decay: float = 1e-3, random_state: int | None = 0):
        self.probe = probe
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        if type_of_target(y) not in ("binary",) and len(np.unique(y)) != 1:
            raise ValueError(f"Only binary classification is supported. Got a {type_of_target(y)} target.")
        self.classes_ = np.unique(y)
        t = (y == self.classes_[-1]).astype(np.float32) if len(self.classes_) > 1 else np.zeros(len(y), np.float32)
        self.mean_ = X.mean(0)
        sd = X.std(0)
        self.scale_ = np.where(sd > 1e-12, sd, 1.0)
        xt = torch.tensor((X - self.mean_) / self.scale_, dtype=torch.float64)
        if self.random_state is not None:
            torch.manual_seed(self.random_state)
        # float64 throughout: predictions do not depend on how rows are batched
        self.module_ = build_probe(self.probe, 1, X.shape[1], 0, hidden=self.hidden, dropout=0.0).double()
        yt = torch.tensor(t, dtype=torch.float64)
        pos = float(yt.sum())
        pw = torch.tensor((len(yt) - pos) / pos if 0 < pos < len(yt) else 1.0, dtype=torch.float64)
        opt = torch.optim.Adam(self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        mask = torch.ones(len(xt), 1, dtype=torch.bool)
        empty = torch.zeros(len(xt), 0, dtype=torch.float64)
        seq = xt.unsqueeze(1)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(self.module_(seq, mask, empty), yt, pos_weight=pw)
            loss.backward()
            opt.step()
        # undo the class weighting's shift of the base rate (prior correction)
        self.bias_ = float(np.log(pw.item())) if 0 < pos < len(yt) else 0.0
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        xt = torch.tensor((X - self.mean_) / self.scale_, dtype=torch.float64).unsqueeze(1)
        with torch.no_grad():
            s = self.module_(xt, torch.ones(len(xt), 1, dtype=torch.bool), torch.zeros(len(xt), 0, dtype=torch.float64)).numpy()
        return s.astype(np.float64) - self.bias_

    def predict_proba(self, X):
        s = self.decision_function(X)
        p1 = 1.0 / (1.0 + np.exp(-s))
        if len(self.classes_) == 1:
            return np.ones((len(s), 1))
        return np.column_stack([1 - p1, p1])

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]
