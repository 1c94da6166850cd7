"""One probe across models: a dynamics-only logistic probe trained on some models' harvests and tested,
zero-shot, on another's.

Raw hidden states mean different things on every model; the scalar dynamics (commitment, synchronisation,
trajectory, lens) do not, once per-layer features are pooled into bins of relative depth
(:attr:`FeatureSelection.layer_bins`) and each model's features are standardised by that model's own
moments. Those moments are fitted on the model's rows without reading a label, so the target model lends
unlabelled rows only. Each rotation reports the transferred probe beside the target's own in-model probe
and the target's best training-free score, on the target's test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from ..errors import UserError
from ..evaluation import metrics as M
from ..evaluation.baselines import training_free_scores
from ..harvest.store import load_harvests
from ..probes.inputs import FeatureSelection, Standardizer
from ..probes.logistic import CROSS_MODEL_CS, cv_logreg, group_folds, standardised_design
from .data import build_inputs, split_indices
from .selection import DYNAMICS


def _model_view(path: str, sel: FeatureSelection) -> dict[str, Any]:
    h = load_harvests([path])
    sel.validate(h.schema)
    x = build_inputs(h, sel)
    X = standardised_design(x, Standardizer.fit(x["seq"], x["mask"], x["static"]))  # every row, no label read
    return {"X": X, "y": x["label"].numpy().astype(int), "idx": split_indices(h), "ids": np.asarray(h.meta["id"]),
            "tf": training_free_scores(h.tensors, sel.k), "model": h.model.get("name"), "n": len(h)}


def _fit(X, y, ids, folds: int = 5):
    cv = cv_logreg(X, y, group_folds(list(ids), folds), CROSS_MODEL_CS)
    return LogisticRegression(C=cv["C"], class_weight="balanced", max_iter=5000).fit(X, y), cv["C"], cv["auroc"]


def cross_model(paths: dict[str, str], *, k: int = 4, layer_bins: int = 3, families: list[str] | None = None,
                n_boot: int = 1000) -> dict[str, Any]:
    """Every rotation (train on all models but one, test on that one) of a dynamics-only logistic probe.

    ``paths`` maps a model name to its harvest. ``C`` is chosen by 5-fold CV grouped by question on the
    source models' training splits. Returns ``{"rows": [...], "settings": {...}}``."""
    if len(paths) < 2:
        raise UserError("give harvests of at least two models", field="harvest")
    families = list(families or DYNAMICS)
    if "raw" in families:
        raise UserError("raw hidden states do not transfer between models; use the dynamics families",
                        field="families")
    sel = FeatureSelection(families, k, None, "first+mean", layer_bins)
    views = {name: _model_view(p, sel) for name, p in paths.items()}
    widths = {name: v["X"].shape[1] for name, v in views.items()}
    if len(set(widths.values())) != 1:
        raise UserError(f"the models' inputs differ in width ({widths}): extract them with the same K, lens layer "
                        "count and families", field="harvest")
    rows = []
    for target, tv in views.items():
        sources = [n for n in views if n != target]
        tr = [(views[n]["X"][views[n]["idx"]["train"]], views[n]["y"][views[n]["idx"]["train"]],
               [f"{n}:{q}" for q in views[n]["ids"][views[n]["idx"]["train"]]]) for n in sources]
        X = np.concatenate([t[0] for t in tr])
        y = np.concatenate([t[1] for t in tr])
        ids = sum((t[2] for t in tr), [])
        lr, C, cv = _fit(X, y, ids)
        te = tv["idx"]["test"]
        yt = tv["y"][te]
        transferred = lr.decision_function(tv["X"][te])
        own, C_own, _ = _fit(tv["X"][tv["idx"]["train"]], tv["y"][tv["idx"]["train"]], tv["ids"][tv["idx"]["train"]])
        tf = {n: s[te] for n, s in tv["tf"].items()}
        best_tf = max(tf, key=lambda n: M.auroc(yt, tf[n]))

        def ev(s, yt=yt):
            return {"auroc": M.auroc(yt, s), "auroc_ci": M.bootstrap_ci(M.auroc, yt, s, n_boot=n_boot)}

        rows.append({"target": target, "sources": sources, "n_test": int(len(te)), "n_wrong": int(yt.sum()),
                     "C": C, "cv_auroc_sources": cv, "transferred": ev(transferred),
                     "in_model": {**ev(own.decision_function(tv["X"][te])), "C": C_own},
                     "best_training_free": {"name": best_tf, **ev(tf[best_tf])}})
    return {"rows": rows, "settings": {"k": k, "layer_bins": layer_bins, "families": families,
                                       "models": {n: v["model"] for n, v in views.items()},
                                       "rows": {n: v["n"] for n, v in views.items()}}}


def format_cross_model(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"one probe across models: logistic regression on {'+'.join(s['families'])} (k = {s['k']}, "
             f"{s['layer_bins']} depth bins), per-model standardisation on unlabelled rows; target's test split",
             f"{'target':<16}{'trained on':<30}{'transferred':>22}{'in-model':>22}{'best training-free':>40}"]
    for r in res["rows"]:
        def cell(m):
            return f"{m['auroc']:.3f} [{m['auroc_ci'][0]:.2f},{m['auroc_ci'][1]:.2f}]"
        b = r["best_training_free"]
        lines.append(f"{r['target']:<16}{'+'.join(r['sources'])[:29]:<30}{cell(r['transferred']):>22}"
                     f"{cell(r['in_model']):>22}{b['name'][:16]:>18} {cell(b):>21}")
    return "\n".join(lines)
