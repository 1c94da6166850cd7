"""Logistic probes fitted exactly by scikit-learn into :class:`~riskprobe.probes.modules.LinearProbe`
weights: one regularised logistic regression (``logreg``), or per-layer logistic probes stacked by a
logistic meta-learner (``stacked``). Both export as one linear layer, one ONNX graph.

Every fit reads the probe's own input, :func:`~riskprobe.probes.modules.flat_design` of the standardised
features, so the exported module computes exactly what scikit-learn fitted.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from ..errors import UserError
from .modules import LinearProbe, RiskModel, flat_design

# The inverse L2 strengths riskprobe's logistic regressions choose among, one place for all of them:
CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)  # a probe's own CV (cv_logreg)
SELECTION_CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)  # recipe selection's default grid (training.selection)
TRANSFER_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # CV grouped by source (training.loso)
BASELINE_CS = (0.001, 0.01, 0.1, 1.0)  # the scikit-learn baselines (evaluation.baselines)
CROSS_MODEL_CS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)  # one dynamics probe across models (training.transfer)


def _logreg(C: float, **kw):
    return LogisticRegression(C=C, class_weight="balanced", max_iter=kw.pop("max_iter", 5000), **kw)


def design(rm: RiskModel, seq, mask, static) -> np.ndarray:
    """The linear probe's input for these rows, in float64 (standardised by ``rm``'s training moments)."""
    with torch.no_grad():
        return flat_design(*rm.standardise(seq.double(), mask, static.double())).numpy()


def standardised_design(inputs: dict[str, torch.Tensor], standardizer, idx=None) -> np.ndarray:
    """:func:`design` of probe ``inputs`` (rows ``idx``, default all) under a fitted ``standardizer``, without
    a probe."""
    rm = RiskModel(torch.nn.Identity(), inputs["seq"].shape[-1], inputs["static"].shape[1])
    rm.set_standardizer(standardizer)
    i = slice(None) if idx is None else torch.as_tensor(idx)
    return design(rm, inputs["seq"][i], inputs["mask"][i], inputs["static"][i])


def group_folds(ids: list[str], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` folds of row positions, grouped by question id (scikit-learn's ``GroupKFold``)."""
    ids = np.asarray(ids)
    n_groups = len(set(ids.tolist()))
    if n_groups < n:
        raise UserError(f"{n}-fold selection needs at least {n} questions in the training split (it has {n_groups}); "
                        "harvest more questions or lower selection.folds", field="selection.folds")
    return list(GroupKFold(n).split(np.zeros(len(ids)), groups=ids))


def cv_logreg(X: np.ndarray, y: np.ndarray, folds, Cs=CS, *, oof: bool = False) -> dict[str, Any]:
    """Grouped cross-validation of a logistic regression over a grid of ``C``: each fold walks the grid from
    the strongest penalty up, warm-starting every fit from the last.

    Returns ``{"C", "auroc", "sd", "folds"}`` at the best ``C`` (highest mean held-out AUROC) and, with
    ``oof``, ``"oof"``: every row's held-out decision value at that ``C``."""
    Cs = sorted(float(c) for c in Cs)
    scores = np.full((len(folds), len(Cs)), np.nan)
    held = np.zeros((len(Cs), len(y))) if oof else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for f, (a, b) in enumerate(folds):
            if len(np.unique(y[a])) < 2:
                continue
            lr = _logreg(Cs[0], tol=1e-3, max_iter=2000, warm_start=True)
            for j, C in enumerate(Cs):
                d = lr.set_params(C=C).fit(X[a], y[a]).decision_function(X[b])
                if held is not None:
                    held[j, b] = d
                if len(np.unique(y[b])) == 2:
                    scores[f, j] = roc_auc_score(y[b], d)
    if np.isnan(scores).all():
        n_wrong = int(np.sum(y))
        raise UserError(f"no cross-validation fold holds both right and wrong answers (the training rows hold "
                        f"{len(y) - n_wrong} right and {n_wrong} wrong answers in {len(folds)} folds); harvest more "
                        "questions (a larger --limit, or sets the model answers about half right) or use fewer "
                        "selection.folds", field="selection.folds")
    mean = np.nanmean(scores, 0)
    j = int(np.argmax(mean))
    out = {"C": Cs[j], "auroc": float(mean[j]), "sd": float(np.nanstd(scores[:, j])),
           "folds": [float(v) for v in scores[:, j]]}
    if held is not None:
        out["oof"] = held[j]
    return out


@torch.no_grad()
def fit_logreg(rm: RiskModel, seq, mask, static, labels, *, C: float = 0.01):
    """Fit ``rm``'s linear probe as an L2-regularised logistic regression (scikit-learn's lbfgs) on the rows
    given, in place; returns the fitted estimator, whose ``decision_function`` on :func:`design` equals
    ``rm.logits``. Wrong and right answers weigh equally (as the trained probes' ``pos_weight`` does);
    Platt scaling on validation then restores calibrated probabilities."""
    _check_linear(rm)
    lr = _logreg(C).fit(design(rm, seq, mask, static), torch.as_tensor(labels).numpy().astype(int))
    _set(rm, lr.coef_[0], lr.intercept_[0])
    return lr


def layer_columns(n_seq_cols: int, n_static: int, n_layers: int, hidden: int, layer: int) -> np.ndarray:
    """Columns of the flat design that a one-layer member reads: every per-step column, and the static
    columns of raw layer ``layer`` in each pooled part (the static block is ``[part][layer][hidden]``)."""
    if n_layers < 1 or hidden < 1 or n_static % (n_layers * hidden):
        raise ValueError(f"{n_static} static columns are not parts x {n_layers} layers x {hidden}")
    parts = n_static // (n_layers * hidden)
    static = [n_seq_cols + (p * n_layers + layer) * hidden + np.arange(hidden) for p in range(parts)]
    return np.concatenate([np.arange(n_seq_cols), *static])


def fit_stacked(rm: RiskModel, seq, mask, static, labels, groups, *, n_layers: int, hidden: int, Cs=CS,
                folds: int = 5) -> dict[str, Any]:
    """Stacking, fitted into ``rm``'s linear probe in place: one logistic member per raw layer (the per-step
    features plus that layer's pooled state, ``C`` chosen by CV grouped by ``groups``), combined by a
    logistic meta-learner fitted on the members' out-of-fold logits. As every member is linear in the same
    design, the stack is one linear map: ``w = sum_l a_l w_l``, ``b = b_0 + sum_l a_l b_l``.

    Returns ``{"members": [{"layer", "C", "cv_auroc"}], "meta": [a_l...], "meta_bias": b_0}``."""
    _check_linear(rm)
    X = design(rm, seq, mask, static)
    y = torch.as_tensor(labels).numpy().astype(int)
    n_seq_cols = X.shape[1] - static.shape[1]
    fl = group_folds(list(groups), folds)
    members, oof, w, b = [], [], np.zeros(X.shape[1]), 0.0
    fitted = []
    for layer in range(n_layers):
        cols = layer_columns(n_seq_cols, static.shape[1], n_layers, hidden, layer)
        cv = cv_logreg(X[:, cols], y, fl, Cs, oof=True)
        fitted.append((cols, _logreg(cv["C"]).fit(X[:, cols], y)))
        oof.append(cv["oof"])
        members.append({"layer": layer, "C": cv["C"], "cv_auroc": cv["auroc"]})
    meta = _logreg(1.0).fit(np.column_stack(oof), y)
    a = meta.coef_[0]
    for (cols, m), al in zip(fitted, a):
        w[cols] += al * m.coef_[0]
        b += al * m.intercept_[0]
    _set(rm, w, b + meta.intercept_[0])
    return {"members": members, "meta": [float(v) for v in a], "meta_bias": float(meta.intercept_[0])}


def stack_score(oofs: list[np.ndarray], y: np.ndarray, folds) -> tuple[float, float, list[float]]:
    """Held-out AUROC of a logistic meta-learner over members' out-of-fold logits, on the same folds (the
    members' ``C`` were chosen on all folds: a slightly optimistic estimate, not a nested one)."""
    Z = np.column_stack(oofs)
    per = []
    for a, b in folds:
        if len(np.unique(y[b])) == 2:
            per.append(float(roc_auc_score(y[b], _logreg(1.0).fit(Z[a], y[a]).decision_function(Z[b]))))
    return float(np.mean(per)), float(np.std(per)), per


def _check_linear(rm: RiskModel) -> None:
    if not isinstance(rm.probe, LinearProbe):
        raise TypeError("a logistic fit needs a linear probe")


def _set(rm: RiskModel, w, b) -> None:
    fc = rm.probe.fc
    with torch.no_grad():
        fc.weight.copy_(torch.as_tensor(np.asarray(w).reshape(1, -1), dtype=fc.weight.dtype))
        fc.bias.copy_(torch.as_tensor([float(b)], dtype=fc.bias.dtype))
