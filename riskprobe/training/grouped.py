"""Fits chosen by cross-validation grouped by source, for probes that must hold on sources they never saw: the
sample weights that make every source (or class) weigh the same, the grouped CV of the regularisation, the model's
own confidence scores, and the monotone blend of a probe with them that backs off toward them far from the training
rows (:class:`Blend`, :func:`fit_blend`). Used by :mod:`riskprobe.training.loso` and the ``blend`` probe's fit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from ..errors import UserError
from ..signatures.features import CI, masked_step_mean


def confidence_scores(t: dict[str, torch.Tensor], k: int) -> np.ndarray:
    """``[N, 4]``: the training-free scores a probe at ``k`` may read (first-token entropy; mean entropy, mean top-1
    probability and mean chosen-token log-probability over steps 0..k), oriented so that higher is riskier. They are
    the inputs of the blend with the model's own confidence."""
    c = t["commitment"][:, : k + 1].float()
    m = t["step_mask"][:, : k + 1].bool()
    cols = [c[:, 0, CI["entropy"]], masked_step_mean(c[..., CI["entropy"]], m),
            -masked_step_mean(c[..., CI["top1_prob"]], m), -masked_step_mean(c[..., CI["chosen_logprob"]], m)]
    return torch.stack(cols, 1).numpy().astype(np.float64)


CONFIDENCE_NAMES = ("first_token_entropy", "mean_entropy", "neg_mean_top1", "neg_mean_logprob")


def sample_weights(y: np.ndarray, groups: np.ndarray, balance: str) -> np.ndarray:
    """Weights that make right and wrong answers weigh the same (``class``), and every source too (``source``:
    each source's right and wrong answers each weigh 1/2 of that source's equal share). Mean 1.

    >>> w = sample_weights(np.array([0, 0, 0, 1, 0, 1]), np.array(["a", "a", "a", "a", "b", "b"]), "source")
    >>> [round(float(v), 3) for v in w]
    [0.5, 0.5, 0.5, 1.5, 1.5, 1.5]
    """
    y = np.asarray(y).astype(int)
    w = np.zeros(len(y))
    if balance == "class":
        for c in (0, 1):
            m = y == c
            w[m] = 0.5 / max(m.mean(), 1e-12)
        return w
    srcs = np.unique(groups)
    for s in srcs:
        for c in (0, 1):
            m = (groups == s) & (y == c)
            if m.any():
                w[m] = 1.0 / (2 * len(srcs) * m.sum())
    return w * len(y) / w.sum()


class Scaler:
    """Per-column mean and standard deviation of training rows (constant columns left as they are); the standardised
    design keeps the input's float type (a raw-state design is large)."""

    def __init__(self, X: np.ndarray):
        self.mu = X.mean(0, dtype=np.float64)
        sd = X.std(0, dtype=np.float64)
        self.sd = np.where(sd > 1e-6, sd, 1.0)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu.astype(X.dtype)) / self.sd.astype(X.dtype)).astype(X.dtype, copy=False)


def ood_distance(Z: np.ndarray) -> np.ndarray:
    """The root mean square of standardised features: about 1 for a typical training row, larger far from them."""
    return np.sqrt(np.mean(np.square(Z), 1))


def logreg(C: float, warm: bool = False):
    return LogisticRegression(C=C, max_iter=3000, tol=1e-4, warm_start=warm)


def cv_by_source(X: np.ndarray, y: np.ndarray, groups: np.ndarray, w: np.ndarray, Cs: Sequence[float],
                 folds: int = 5, X_dist: np.ndarray | None = None, within: np.ndarray | None = None) -> dict[str, Any]:
    """Cross-validation grouped by source over ``Cs``: the mean held-out AUROC per C (within each held-out source, to
    read transfer rather than which source is hard: the mean of the per-source AUROCs), and every row's out-of-source
    logit, fold and standardised distance from the fold's training rows (measured on ``X_dist`` when given)."""
    n_src = len(np.unique(groups))
    if n_src < 2:
        raise UserError("selection by source needs at least two training sources", field="sources")
    within = groups if within is None else np.asarray(within)  # what a held-out AUROC is computed within
    Cs = sorted(Cs)
    splits = list(GroupKFold(min(folds, n_src)).split(X, y, groups))
    score = np.full((len(splits), len(Cs)), np.nan)
    held = np.zeros((len(Cs), len(y)))
    dist = np.zeros(len(y))
    fold_of = np.zeros(len(y), int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for f, (a, b) in enumerate(splits):
            sc = Scaler(X[a])
            Za, Zb = sc(X[a]), sc(X[b])
            if X_dist is None:
                dist[b] = ood_distance(Zb)
            else:
                dist[b] = ood_distance(Scaler(X_dist[a])(X_dist[b]))
            fold_of[b] = f
            lr = logreg(Cs[0], warm=True)
            for j, C in enumerate(Cs):
                held[j, b] = lr.set_params(C=C).fit(Za, y[a], sample_weight=w[a]).decision_function(Zb)
                wb = within[b]
                per = [roc_auc_score(y[b][wb == s], held[j, b][wb == s]) for s in np.unique(wb)
                       if 0 < y[b][wb == s].sum() < (wb == s).sum()]
                score[f, j] = float(np.mean(per)) if per else np.nan
    mean = np.nanmean(score, 0)
    j = int(np.nanargmax(mean))
    return {"C": Cs[j], "cv_auroc": float(mean[j]), "cv_by_C": {str(c): float(m) for c, m in zip(Cs, mean)},
            "oof": held[j], "oof_distance": dist, "fold": fold_of}


@dataclass
class Blend:
    """``logit = sigmoid(s * (d0 - d)) * a * probe + b . standardise(confidence) + c``: the probe's logit, weighted
    down as the input's distance ``d`` from the training rows passes ``d0`` (the back-off), plus the model's own
    confidence scores. Fitted by maximum likelihood on out-of-source rows (:func:`fit_blend`)."""

    a: float
    b: list[float]
    c: float
    d0: float
    s: float
    conf_mean: list[float]
    conf_std: list[float]

    def weight(self, d: np.ndarray) -> np.ndarray:
        """How much of the probe is kept at distance ``d`` (1: all of it; 0: the model's confidence alone)."""
        return 1.0 / (1.0 + np.exp(-self.s * (self.d0 - np.asarray(d, dtype=float))))

    def logit(self, probe: np.ndarray, conf: np.ndarray, d: np.ndarray) -> np.ndarray:
        z = (np.asarray(conf) - np.asarray(self.conf_mean)) / np.asarray(self.conf_std)
        return self.weight(d) * self.a * np.asarray(probe) + z @ np.asarray(self.b) + self.c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_blend(probe: np.ndarray, conf: np.ndarray, d: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *,
              l2: float = 1e-3, backoff: bool = True, monotone: bool = True) -> Blend:
    """Fit :class:`Blend` on out-of-source rows: ``probe`` their held-out probe logits, ``conf`` their confidence
    scores ``[N, C]``, ``d`` their distances from the rows the probe was trained on, ``y`` labels, ``w`` weights.
    With ``backoff=False`` the weight stays 1 (``s = 0``, ``d0`` large).

    ``monotone`` (the default) keeps ``a`` and every ``b`` at or above 0: the risk never falls as a confidence score
    says "riskier" or as the probe does. Unconstrained, the pooled fit plays the collinear confidence scores against
    each other (a negative weight on one, positive on the rest) in ways that fit the training sources and invert on
    a new one."""
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    w_t = torch.as_tensor(np.ones(len(y)) if w is None else np.asarray(w), dtype=torch.float64)
    mu, sd = conf.mean(0), np.where(conf.std(0) > 1e-9, conf.std(0), 1.0)
    Z = torch.as_tensor((conf - mu) / sd, dtype=torch.float64)
    p = torch.as_tensor(probe, dtype=torch.float64)
    p_sd = float(p.std()) or 1.0
    dd = torch.as_tensor(d, dtype=torch.float64)
    d_med = float(dd.median())
    d_sd = float(dd.std()) or 1.0
    # parameters: a, b (C), c, d0, log s; the distance scaled by its spread so that s starts near 1
    nb = Z.shape[1]
    sp = torch.nn.functional.softplus
    params = torch.zeros(nb + 4, dtype=torch.float64)
    params[0] = math.log(math.e - 1.0) if monotone else 1.0  # a starts at 1 / sd(probe) either way
    params[1:1 + nb] = -2.0 if monotone else 0.0
    params[-2] = 2.0  # d0 two spreads above the median: the probe kept on most rows at the start
    params[-1] = 0.0
    params.requires_grad_(True)
    opt = torch.optim.LBFGS([params], lr=0.5, max_iter=300, line_search_fn="strong_wolfe")

    def parts(q):
        a = (sp(q[0]) if monotone else q[0]) / p_sd
        b = sp(q[1:1 + nb]) if monotone else q[1:1 + nb]
        c, d0, log_s = q[1 + nb], q[2 + nb], q[3 + nb]
        wt = torch.sigmoid(torch.exp(log_s) * (d0 - (dd - d_med) / d_sd)) if backoff else torch.ones_like(dd)
        return a, b, c, d0, log_s, wt

    def closure():
        opt.zero_grad()
        a, b, c, d0, log_s, wt = parts(params)
        logit = wt * a * p + Z @ b + c
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, y_t, weight=w_t, reduction="sum")
                / w_t.sum() + l2 * (b.square().sum() + (a * p_sd).square() + log_s.square()))
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    q = params.detach()
    a, b, c, d0, log_s, _ = parts(q)
    if not bool(torch.isfinite(q).all()):
        raise RuntimeError("the blend did not converge")
    s = float(torch.exp(log_s)) / d_sd if backoff else 0.0
    return Blend(a=float(a), b=[float(v) for v in b], c=float(c), d0=float(d0) * d_sd + d_med if backoff else 1e9,
                 s=s, conf_mean=[float(v) for v in mu], conf_std=[float(v) for v in sd])
