"""Baselines on the same split as the probe: training-free output scores and scikit-learn probes.

Training-free scores read only the model's output distribution (what a user already has). Each is a
risk score (higher = riskier); for Brier and ECE it is mapped to a probability by Platt scaling fitted
on the validation split, which leaves AUROC, AUPRC and PRR unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..probes.inputs import FeatureSelection, inputs_from_signatures
from ..probes.logistic import BASELINE_CS
from ..probes.modules import fit_platt, flat_design
from ..signatures.features import CI, masked_step_mean
from .metrics import auroc

ENT, TOP1, LOGP = CI["entropy"], CI["top1_prob"], CI["chosen_logprob"]


def training_free_scores(tensors: dict[str, torch.Tensor], k: int) -> dict[str, np.ndarray]:
    """Output-only risk scores: first-token entropy; mean entropy, mean top-1 probability and mean
    log-prob over steps 0..k; mean entropy, mean log-prob and lowest token probability over the whole answer
    (the captured steps)."""
    c = tensors["commitment"].float()
    m = tensors["step_mask"].bool()
    mk = m[:, : k + 1]
    p_chosen = c[..., LOGP].exp()
    lowest = torch.where(m, p_chosen, torch.ones_like(p_chosen)).min(1).values
    out = {
        "first_token_entropy": c[:, 0, ENT],
        f"mean_entropy@k{k}": masked_step_mean(c[:, : k + 1, ENT], mk),
        f"neg_mean_top1@k{k}": -masked_step_mean(c[:, : k + 1, TOP1], mk),
        f"neg_mean_logprob@k{k}": -masked_step_mean(c[:, : k + 1, LOGP], mk),
        "mean_entropy@answer": masked_step_mean(c[..., ENT], m),
        "neg_mean_logprob@answer": -masked_step_mean(c[..., LOGP], m),
        "lowest_token_prob@answer": 1.0 - lowest,
    }
    return {k_: v.numpy().astype(np.float64) for k_, v in out.items()}


def platt(train_scores: np.ndarray, y: np.ndarray):
    """A function mapping scores to probabilities, by the probes' own Platt scaling fitted on (score, label)."""
    a, b = fit_platt(train_scores, y)
    return lambda s: 1.0 / (1.0 + np.exp(-(a * np.asarray(s, dtype=np.float64) + b)))


def _flat(inputs: dict[str, torch.Tensor]) -> np.ndarray:
    seq, mask = inputs["seq"], inputs["mask"]
    return flat_design(seq * mask.unsqueeze(-1), mask, inputs["static"]).numpy().astype(np.float64)




def sklearn_logreg(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   Cs=BASELINE_CS):
    """Standardised, class-balanced logistic regression with C chosen by validation AUROC.

    Returns ``(fitted pipeline, chosen C, validation AUROC)``.
    """
    best = None
    for C in Cs:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
        pipe.fit(train_x, train_y)
        a = auroc(val_y, pipe.predict_proba(val_x)[:, 1])
        if best is None or a > best[2]:
            best = (pipe, C, a)
    return best


def sklearn_baselines(inputs: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], idx: dict[str, np.ndarray],
                      schema: dict, cache: dict | None = None, features: bool = True) -> dict[str, dict]:
    """scikit-learn probes on the same split: logistic regression on the probe's features, on output
    confidence alone (the commitment family of steps 0..k: entropy, top-1 probability, chosen-token
    log-probability, ...), and on the last-prompt-token hidden state (step 0) at each stored raw layer, the
    best layer chosen on validation.

    ``features=False`` leaves out the first (when the probe is itself a logistic regression on those features).
    Returns ``{name: {"test": scores, "val": scores, "info": {...}}}`` with probabilities.
    """
    y = inputs["label"].numpy()
    out = {}
    if features:
        X = _flat(inputs)
        pipe, C, va = sklearn_logreg(X[idx["train"]], y[idx["train"]], X[idx["val"]], y[idx["val"]])
        out["sklearn_logreg@features"] = {"test": pipe.predict_proba(X[idx["test"]])[:, 1],
                                          "val": pipe.predict_proba(X[idx["val"]])[:, 1], "info": {"C": C}}
    if "commitment" in tensors:

        k = int(inputs["seq"].shape[1]) - 1
        Xc = _flat(inputs_from_signatures(tensors, FeatureSelection(["commitment"], k)))
        pipe, C, va = sklearn_logreg(Xc[idx["train"]], y[idx["train"]], Xc[idx["val"]], y[idx["val"]])
        out["sklearn_logreg@confidence"] = {"test": pipe.predict_proba(Xc[idx["test"]])[:, 1],
                                            "val": pipe.predict_proba(Xc[idx["val"]])[:, 1], "info": {"C": C}}
    if cache is not None and "sklearn_logreg@prompt_hidden" in cache:  # does not depend on k
        out["sklearn_logreg@prompt_hidden"] = cache["sklearn_logreg@prompt_hidden"]
    elif "raw" in tensors:
        raw0 = tensors["raw"][:, 0].float().numpy()  # [N, M, H]
        best = None
        for j, layer in enumerate(schema["raw_layers"]):
            Xl = raw0[:, j]
            pipe, C, va = sklearn_logreg(Xl[idx["train"]], y[idx["train"]], Xl[idx["val"]], y[idx["val"]])
            if best is None or va > best[0]:
                best = (va, layer, pipe, Xl, C)
        va, layer, pipe, Xl, C = best
        out["sklearn_logreg@prompt_hidden"] = {"test": pipe.predict_proba(Xl[idx["test"]])[:, 1],
                                               "val": pipe.predict_proba(Xl[idx["val"]])[:, 1],
                                               "info": {"layer": int(layer), "C": C}}
        if cache is not None:
            cache["sklearn_logreg@prompt_hidden"] = out["sklearn_logreg@prompt_hidden"]
    return out
