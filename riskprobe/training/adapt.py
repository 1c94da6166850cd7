"""Adapt a shipped probe to a user's own questions with a few labels.

A blend probe (:class:`~riskprobe.probes.modules.BlendProbe`) keeps its learned probe, its standardisation and its
back-off as they are, and refits only its *head*: how much of the probe's logit to keep (``a``), how much of each of
the model's four confidence scores (``b``) and the intercept (``c``), by a logistic fit on the user's labelled answers
penalised toward the shipped head (the prior), the penalty chosen by cross-validation grouped by question. With a
few dozen labels the head moves little; with a few hundred it follows the user's questions. The result is an
artifact like any other: checked, exported with ONNX, loaded by ``score`` and ``serve``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.model_selection import GroupKFold

from ..errors import UserError
from ..evaluation.metrics import auroc
from ..probes.modules import BlendProbe

LAMBDAS = (0.003, 0.03, 0.3, 3.0)  # penalty toward the prior head, per labelled answer (chosen by grouped CV)


@dataclass
class HeadInputs:
    """What the head of a blend reads for each row: the probe's logit, the back-off weight, the confidence scores."""

    probe: np.ndarray
    weight: np.ndarray
    conf: np.ndarray  # standardised by the probe's own confidence moments

    @classmethod
    def of(cls, rm, seq, mask, static) -> "HeadInputs":
        p = rm.probe
        with torch.no_grad():
            s, m, g = rm.standardise(seq, mask, static)
            z = p._z(s, m, g)
            probe = p.fc(z).squeeze(-1)
            w = torch.sigmoid(p.head[3] * (p.head[2] - z.square().mean(1).sqrt()))
            conf = (p.confidence(s, m) - p.conf_mean) / p.conf_std
        return cls(probe.double().numpy(), w.double().numpy(), conf.double().numpy())

    def logit(self, theta: np.ndarray) -> np.ndarray:
        """``weight * a * probe + conf . b + c`` for ``theta = (a, b..., c)``."""
        return self.weight * theta[0] * self.probe + self.conf @ theta[1:-1] + theta[-1]


def prior_head(rm) -> np.ndarray:
    """The head of a blend probe as a vector ``(a, b1..b4, c)``."""
    p = rm.probe
    return np.r_[float(p.head[0]), p.conf_b.double().numpy(), float(p.head[1])]


def fit_head(x: HeadInputs, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    """The head maximising the likelihood of ``y`` minus ``lam * n * ||theta - prior||^2`` (the probe's term scaled
    by the spread of its logit), class-balanced."""
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    pos = float(y_t.mean())
    w = torch.where(y_t > 0.5, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    scale = torch.ones(len(prior), dtype=torch.float64)
    scale[0] = float(np.std(x.weight * x.probe)) or 1.0
    P = torch.as_tensor(x.probe * x.weight, dtype=torch.float64)
    Z = torch.as_tensor(x.conf, dtype=torch.float64)
    th0 = torch.as_tensor(prior, dtype=torch.float64)
    th = th0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([th], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit = P * th[0] + Z @ th[1:-1] + th[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y_t, weight=w) + \
            lam * (((th - th0) * scale) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    out = th.detach().numpy()
    if not np.isfinite(out).all():
        raise RuntimeError("the head did not converge")
    return out


def choose_lambda(x: HeadInputs, y: np.ndarray, groups: Sequence[str], prior: np.ndarray,
                  lambdas: Sequence[float] = LAMBDAS, folds: int = 5) -> tuple[float, dict[str, float]]:
    """The penalty with the best held-out AUROC over folds grouped by question (the prior's own AUROC breaks ties
    toward more penalty)."""
    groups = np.asarray(groups)
    k = min(folds, len(np.unique(groups)))
    scores = {}
    for lam in sorted(lambdas, reverse=True):
        vals = []
        for a, b in GroupKFold(k).split(x.probe, y, groups):
            if len(np.unique(y[a])) < 2 or len(np.unique(y[b])) < 2:
                continue
            th = fit_head(HeadInputs(x.probe[a], x.weight[a], x.conf[a]), y[a], prior, lam)
            vals.append(auroc(y[b], HeadInputs(x.probe[b], x.weight[b], x.conf[b]).logit(th)))
        scores[str(lam)] = float(np.mean(vals)) if vals else float("nan")
    valid = {float(lam): v for lam, v in scores.items() if not np.isnan(v)}
    best = max(valid, key=lambda lam: (round(valid[lam], 4), lam)) if valid else max(lambdas)
    return best, scores


def adapt_risk_model(rm, x: HeadInputs, y: np.ndarray, groups: Sequence[str], *,
                     lambdas: Sequence[float] = LAMBDAS) -> dict[str, Any]:
    """Refit the head of the blend inside ``rm`` on labelled rows (in place); the calibration becomes the identity
    (the head is itself a calibrated logistic fit). Returns what was chosen."""
    if not isinstance(rm.probe, BlendProbe):
        raise UserError("adapt refits the head of a blend probe (the learned probe blended with the model's own "
                        "confidence); this probe is not one. Fit one with --model.probe blend", field="probe")
    if not rm.probe.has_confidence:
        raise UserError("adapt refits how a blend weighs its probe against the model's confidence; this probe reads "
                        "no confidence (no commitment family)", field="probe")
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise UserError(f"the labelled answers are all {'wrong' if y.sum() else 'right'} ({len(y)} of them); adapt "
                        "needs right and wrong answers of your questions", field="prompts")
    prior = prior_head(rm)
    lam, cv = choose_lambda(x, y, groups, prior, lambdas)
    th = fit_head(x, y, prior, lam)
    p = rm.probe
    with torch.no_grad():
        p.head[0], p.head[1] = float(th[0]), float(th[-1])
        p.conf_b.copy_(torch.as_tensor(th[1:-1], dtype=p.conf_b.dtype))
        rm.calib.copy_(torch.tensor([1.0, 0.0]))
    return {"lambda": lam, "cv_auroc_by_lambda": cv, "prior_head": prior.tolist(), "head": th.tolist(),
            "n": int(len(y)), "n_wrong": int(y.sum())}
