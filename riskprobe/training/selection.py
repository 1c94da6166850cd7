"""Choosing a probe recipe (probe kind, feature families, raw layers, pooling, regularisation) by
cross-validation on the training split only.

Folds are grouped by question id (every sample of a question lies in one fold). The validation and test
splits are never read: validation stays for calibration and the threshold, test for the one final
evaluation. Logistic-regression candidates are scored by scikit-learn's ``LogisticRegressionCV`` over a
grid of ``C``; gradient-trained probe kinds (``mlp``, ``temporal``, ``linear``) are scored on the best
feature set found for the logistic probe, each fold trained as a fit is (early stopping on the fold's own
held-out part).

Example:
    >>> grid = SelectionGrid(probes=["logreg"], families=[["commitment"], ["commitment", "raw"]],
    ...                      raw_layers=[None], raw_pool=["first"], Cs=[0.01, 0.1], folds=3)
    >>> [c.label() for c in grid.feature_candidates(n_raw_layers=2)]
    ['commitment', 'commitment+raw[all]/first']
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import UserError
from ..evaluation.metrics import auroc
from ..probes.inputs import ALL_FAMILIES, RAW_POOLS, STEP_FAMILIES, FeatureSelection
from ..probes.logistic import BASELINE_CS, SELECTION_CS, cv_logreg, group_folds, stack_score, standardised_design
from ..probes.modules import PROBES
from ..progress import bar as progress_bar
from ..signatures.spec import MONITOR_COST
from .module import fit_probe

log = logging.getLogger(__name__)

DYNAMICS = list(STEP_FAMILIES)


@dataclass
class Recipe:
    """One candidate: a probe kind on a feature selection (``k`` is the fit's own)."""

    probe: str
    families: list[str]
    raw_layers: Optional[list[int]] = None
    raw_pool: str = "first+mean"
    C: Optional[float] = None

    def selection(self, k: int) -> FeatureSelection:
        return FeatureSelection(list(self.families), k, self.raw_layers, self.raw_pool)

    def features(self) -> str:
        fam = "+".join(self.families)
        if "raw" not in self.families:
            return fam
        layers = "all" if self.raw_layers is None else ",".join(map(str, self.raw_layers))
        return f"{fam}[{layers}]/{self.raw_pool}"

    def label(self) -> str:
        return self.features() if self.probe == "" else f"{self.probe} {self.features()}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "families": list(self.families), "raw_layers": self.raw_layers,
                "raw_pool": self.raw_pool, "C": self.C}


@dataclass
class SelectionGrid:
    """What ``riskprobe fit`` may choose among (the ``selection:`` section of a fit config).

    Attributes:
        probes: probe kinds; ``logreg`` is scored on every feature candidate; ``stacked`` (per-layer logistic
            probes combined by a logistic meta-learner) on every family set and pooling whose layers were each
            scored alone (``each`` in ``raw_layers``), from their out-of-fold logits; the gradient-trained
            kinds on the best feature candidate of ``logreg`` (or on the first candidate).
        families: feature family sets to try.
        raw_layers: raw-layer choices for sets holding ``raw``: ``null`` (every stored layer), ``each``
            (each stored layer alone), or a list of indices into the stored layers.
        raw_pool: raw-state poolings to try (``first``, ``mean``, ``first+mean``).
        Cs: inverse L2 strengths for ``logreg``.
        folds: cross-validation folds, grouped by question id.
        max_epochs, patience: training of gradient-trained probes within each fold.
        within_se: choose the candidate cheapest to monitor (:data:`~riskprobe.signatures.spec.MONITOR_COST`
            of its families) among those whose CV AUROC is within this many standard errors (fold sd /
            sqrt(folds)) of the best; 0 (the default): the best.
        baselines: also score, as candidates, the recipes of the logistic baselines every fit is compared with
            (output confidence alone, each stored layer's last-prompt-token state, the fit's own families) and
            their ``C`` values, so that selection never fits a probe that cross-validation already knew to be
            worse than one of them.
    """

    probes: list[str] = field(default_factory=lambda: ["logreg", "mlp"])
    families: list[list[str]] = field(default_factory=lambda: [list(DYNAMICS), ["raw"], [*DYNAMICS, "raw"]])
    raw_layers: list[Union[str, list[int], None]] = field(default_factory=lambda: [None, "each"])
    raw_pool: list[str] = field(default_factory=lambda: ["first", "first+mean"])
    Cs: list[float] = field(default_factory=lambda: list(SELECTION_CS))
    folds: int = 5
    max_epochs: int = 40
    patience: int = 6
    within_se: float = 0.0
    baselines: bool = True

    def validate(self) -> None:
        for p in self.probes:
            if p not in PROBES:
                raise UserError(f"unknown probe '{p}' (known: {', '.join(PROBES)})", field="selection.probes")
        for fams in self.families:
            for f in fams:
                if f not in ALL_FAMILIES:
                    raise UserError(f"unknown feature family '{f}' (known: {', '.join(ALL_FAMILIES)})",
                                    field="selection.families")
        for p in self.raw_pool:
            if p not in RAW_POOLS:
                raise UserError(f"unknown raw pooling '{p}' (known: {', '.join(RAW_POOLS)})", field="selection.raw_pool")
        for r in self.raw_layers:
            if not (r is None or r == "each" or isinstance(r, list)):
                raise UserError(f"expected null, 'each' or a list of indices, got {r!r}", field="selection.raw_layers")
        if "stacked" in self.probes and ("logreg" not in self.probes or "each" not in self.raw_layers):
            raise UserError("stacked is scored from the one-layer logreg candidates: list logreg in probes and "
                            "'each' in raw_layers", field="selection.probes")
        if not self.probes or not self.families:
            raise UserError("give at least one probe and one family set", field="selection")
        if self.folds < 2:
            raise UserError("needs at least 2 folds", field="selection.folds")
        if not self.Cs or any(c <= 0 for c in self.Cs):
            raise UserError("Cs must be positive numbers", field="selection.Cs")
        if not self.within_se >= 0:
            raise UserError(f"must be 0 or more, got {self.within_se}", field="selection.within_se")

    def feature_candidates(self, n_raw_layers: int) -> list[Recipe]:
        """Every feature selection of the grid (probe left empty), without repeats."""
        out: list[Recipe] = []
        for fams in self.families:
            if "raw" not in fams:
                out.append(Recipe("", list(fams)))
                continue
            layer_opts: list[Optional[list[int]]] = []
            for r in self.raw_layers:
                if r == "each":
                    layer_opts += [[i] for i in range(n_raw_layers)]
                else:
                    layer_opts.append(None if r is None or len(r) == n_raw_layers and sorted(r) == list(range(n_raw_layers))
                                      else list(r))
            for layers in layer_opts:
                for pool in self.raw_pool:
                    out.append(Recipe("", list(fams), layers, pool))
        seen, uniq = set(), []
        for r in out:
            if r.features() not in seen:
                seen.add(r.features())
                uniq.append(r)
        return uniq


def monitor_cost(families) -> float:
    """What monitoring a recipe's feature families costs per step (:data:`~riskprobe.signatures.spec.MONITOR_COST`)."""
    return float(sum(MONITOR_COST[f] for f in families))


def choose(table: list[dict[str, Any]], folds: int, within_se: float) -> dict[str, Any]:
    """The row of ``table`` to fit: the best CV AUROC, or with ``within_se`` > 0 the cheapest to monitor among
    the rows within ``within_se`` standard errors of the best (ties: the higher AUROC).

    >>> rows = [{"cv_auroc": 0.834, "cv_sd": 0.005, "families": ["lens", "raw"]},
    ...         {"cv_auroc": 0.831, "cv_sd": 0.002, "families": ["raw"]},
    ...         {"cv_auroc": 0.700, "cv_sd": 0.002, "families": ["raw"]}]
    >>> choose(rows, 5, 0.0)["cv_auroc"], choose(rows, 5, 1.0)["cv_auroc"], choose(rows, 5, 2.0)["cv_auroc"]
    (0.834, 0.834, 0.831)
    """
    best = max(table, key=lambda t: t["cv_auroc"])
    if within_se <= 0:
        return best
    floor = best["cv_auroc"] - within_se * best["cv_sd"] / np.sqrt(folds)
    near = [t for t in table if t["cv_auroc"] >= floor]
    return min(near, key=lambda t: (monitor_cost(t["families"]), -t["cv_auroc"]))


@dataclass
class SelectionResult:
    """The recipe to fit and the CV table it was chosen from (best CV AUROC first)."""

    best: Recipe
    table: list[dict[str, Any]]
    folds: int
    n_train: int
    within_se: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best.to_dict(), "best_label": self.best.label(), "folds": self.folds,
                "n_train": self.n_train, "within_se": self.within_se,
                "best_by_cv": self.table[0]["recipe"] if self.table else self.best.label(), "table": self.table}


def _design(dm, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logistic probe's input (standardised by the training split) and labels of rows ``idx``."""
    return standardised_design(dm.inputs, dm.standardizer, idx), dm.inputs["label"][torch.as_tensor(idx)].numpy().astype(int)


def _cv_trained(dm, recipe: Recipe, folds, tr: np.ndarray, grid: SelectionGrid, module_kwargs: dict[str, Any],
                seed: int) -> list[float]:
    """Per-fold held-out AUROC of a gradient-trained probe (early stopping on that fold's held-out part)."""
    out = []
    for f_tr, f_va in folds:
        d = copy.copy(dm)
        d.idx = {"train": tr[f_tr], "val": tr[f_va], "test": tr[f_va]}
        d.use(recipe.selection(dm.selection.k))
        y = d.inputs["label"][d.idx["train"]]
        d.pos_weight = float((len(y) - y.sum()) / max(float(y.sum()), 1.0))
        kw = {**module_kwargs, "probe": recipe.probe}
        mod = fit_probe(d, kw, max_epochs=grid.max_epochs, patience=grid.patience, seed=seed)
        s, m, g, yy = d.split_inputs("val")
        with torch.no_grad():
            out.append(auroc(yy.numpy(), mod.risk_model.eval().logits(s, m, g).numpy()))
    return out


def select_recipe(dm, grid: SelectionGrid, *, module_kwargs: dict[str, Any] | None = None, seed: int = 0,
                  progress: bool = True) -> SelectionResult:
    """Score every candidate of ``grid`` by grouped cross-validation on ``dm``'s training split and return
    the best (highest mean AUROC over folds) with the whole table. ``dm`` is left on its own selection."""
    grid.validate()
    tr = np.asarray(dm.idx["train"])
    ids = [dm.harvests.meta["id"][i] for i in tr]
    folds = group_folds(ids, grid.folds)
    n_raw = len(dm.harvests.schema.get("raw_layers") or []) if "raw" in dm.harvests.schema["columns"] else 0
    cands = [c for c in grid.feature_candidates(n_raw) if "raw" not in c.families or n_raw]
    if not cands:
        raise UserError("no feature candidate of the grid was harvested", field="selection.families")
    original = dm.selection
    Cs = list(grid.Cs)
    if grid.baselines and "logreg" in grid.probes:  # the baselines' recipes compete too

        cols = dm.harvests.schema["columns"]
        extra = [Recipe("", ["commitment"])] if "commitment" in cols else []
        extra += [Recipe("", ["raw"], [i], "first") for i in range(n_raw)]
        extra.append(Recipe("", list(original.families), original.raw_layers, original.raw_pool))
        have = {c.features() for c in cands}
        cands += [c for c in extra if c.features() not in have and all(f in cols for f in c.families)]
        Cs = sorted(set(Cs) | set(BASELINE_CS))
    k = original.k
    table: list[dict[str, Any]] = []
    trained = [p for p in grid.probes if p not in ("logreg", "stacked")]
    oofs: dict[tuple, dict[int, np.ndarray]] = {}  # (families, pool) -> layer -> out-of-fold logits
    bar = progress_bar(len(cands) * ("logreg" in grid.probes) + len(trained), "selection (grouped CV)", "candidate",
                       enabled=progress)
    try:
        if "logreg" in grid.probes:
            for c in cands:
                dm.use(c.selection(k))
                X, y = _design(dm, tr)
                cv = cv_logreg(X, y, folds, Cs, oof=True)
                C, mean, sd, per, oof = cv["C"], cv["auroc"], cv["sd"], cv["folds"], cv["oof"]
                if c.raw_layers is not None and len(c.raw_layers) == 1:
                    oofs.setdefault((tuple(c.families), c.raw_pool), {})[c.raw_layers[0]] = oof
                r = Recipe("logreg", c.families, c.raw_layers, c.raw_pool, C)
                table.append({"recipe": r.label(), **r.to_dict(), "dim": int(X.shape[1]), "cv_auroc": mean,
                              "cv_sd": sd, "folds": per})
                bar.update(1)
        if "stacked" in grid.probes:

            y = dm.inputs["label"][torch.as_tensor(tr)].numpy().astype(int)
            for (fams, pool), by_layer in oofs.items():
                if n_raw < 2 or sorted(by_layer) != list(range(n_raw)):
                    continue  # stacking needs every stored layer scored alone ("each")
                mean, sd, per = stack_score([by_layer[i] for i in range(n_raw)], y, folds)
                r = Recipe("stacked", list(fams), None, pool)
                table.append({"recipe": r.label(), **r.to_dict(), "dim": None, "cv_auroc": mean, "cv_sd": sd,
                              "folds": per, "note": "meta-learner CV on the members' out-of-fold logits (not nested)"})
        base = (Recipe(**{k_: v for k_, v in table[int(np.argmax([t["cv_auroc"] for t in table]))].items()
                          if k_ in ("probe", "families", "raw_layers", "raw_pool", "C")}) if table else cands[0])
        for p in trained:
            r = Recipe(p, base.families, base.raw_layers, base.raw_pool)
            per = _cv_trained(dm, r, folds, tr, grid, module_kwargs or {}, seed)
            table.append({"recipe": r.label(), **r.to_dict(), "dim": None, "cv_auroc": float(np.mean(per)),
                          "cv_sd": float(np.std(per)), "folds": per})
            bar.update(1)
    finally:
        bar.close()
        dm.use(original)
    for t in table:
        if t["raw_layers"] is not None:
            t["raw_layer_ids"] = [dm.harvests.schema["raw_layers"][i] for i in t["raw_layers"]]
    table.sort(key=lambda t: -t["cv_auroc"])
    row = choose(table, grid.folds, grid.within_se)
    best = Recipe(row["probe"], row["families"], row["raw_layers"], row["raw_pool"], row["C"])
    return SelectionResult(best, table, grid.folds, int(len(tr)), grid.within_se)


def format_selection(res: dict[str, Any], top: int = 12) -> str:
    """The CV table (best first) as text."""
    rule = ""
    if res.get("within_se"):
        rule = (f" (the cheapest to monitor within {res['within_se']:g} standard error(s) of the best, "
                f"{res['best_by_cv']})" if res.get("best_by_cv") != res["best_label"] else
                f" (also the cheapest to monitor within {res['within_se']:g} standard error(s))")
    lines = [f"selection: {res['folds']}-fold CV grouped by question on the training split ({res['n_train']} rows); "
             f"chosen: {res['best_label']}{rule}",
             f"{'recipe':<58}{'C':>8}{'CV AUROC':>10}{'sd':>7}"]
    for t in res["table"][:top]:
        c = f"{t['C']:g}" if t.get("C") is not None else "-"
        lines.append(f"{t['recipe'][:57]:<58}{c:>8}{t['cv_auroc']:>10.3f}{t['cv_sd']:>7.3f}")
    if len(res["table"]) > top:
        lines.append(f"... {len(res['table']) - top} more in metrics.json")
    return "\n".join(lines)
