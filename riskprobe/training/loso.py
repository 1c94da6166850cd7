"""Risk on question sources a probe never saw: leave one source out (LOSO).

For every *source* of a harvest (a prompt set; each EntityQuestions relation is one), a probe is trained on every
other source and tested on all of that source's answers, beside the best training-free score on the same rows (the
strongest of those that see the whole answer, and of those that see only steps 0..k) with paired-bootstrap margins
(:mod:`riskprobe.evaluation.versus`). Everything the probe is chosen by (its regularisation, and the blend with the
model's own confidence) is chosen by cross-validation grouped **by source** on the training sources only: the held-out
source never reaches selection (a leak planted there leaves the choice unchanged; tested).

A recipe (:class:`TransferRecipe`) names the features the probe reads, whether each source weighs the same in
training, and whether the probe's logit is *blended* with the model's confidence and *backed off* toward it as the
input's distance from the training rows grows (:func:`fit_blend`): the blend's weights are fitted on the training
sources' out-of-source predictions, so they say how far the probe can be trusted on a source it has not seen.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.decomposition import PCA

from ..errors import UserError
from ..evaluation.baselines import training_free_scores
from ..evaluation.metrics import auroc
from ..evaluation.versus import at_k, cells, versus_training_free
from ..harvest.store import load_harvests
from ..probes.inputs import STEP_FAMILIES, FeatureSelection, inputs_from_signatures
from ..probes.logistic import TRANSFER_CS
from ..probes.modules import BlendProbe
from ..progress import bar as progress_bar
from ..prompts.answers import writer_of
from .grouped import Blend, Scaler, confidence_scores, cv_by_source, fit_blend, logreg, ood_distance, sample_weights

MIN_PER_CLASS = 20  # a source is held out (reported) when it has at least this many right and wrong answers


# ----------------------------------------------------------------------------------------------- features
@dataclass
class TransferRecipe:
    """How a probe for unseen sources is built.

    Attributes:
        families: the feature families the probe reads (``commitment``, ``sync``, ``trajectory``, ``lens``, ``raw``).
        k: early steps after step 0.
        raw_layers: indices into the harvest's stored raw layers (``None`` = all).
        raw_pool: ``first``, ``mean`` or ``first+mean`` (see :class:`~riskprobe.probes.inputs.FeatureSelection`).
        layer_bins: per-layer scalar features pooled into this many bins of relative depth (``None``: every layer).
        balance: ``source`` gives every training source the same total weight (and, within it, right and wrong
            answers the same weight); ``class`` only balances right and wrong answers.
        blend: blend the probe's logit with the model's confidence and back off toward it with the distance from
            the training rows (:func:`fit_blend`); ``False``: the probe alone.
        raw_dims: the standardised raw states are read through their first ``raw_dims`` principal components (fitted
            on the training rows, no labels); ``None``: every column. A linear map, so the exported probe folds it
            into its weights.
        probe_families: the families the logistic probe itself reads (``None``: all of ``families``); the others are
            there for the blend alone (``["raw"]`` with ``families: [commitment, raw]``: the probe reads the hidden
            states, the blend the model's confidence).
        Cs: inverse L2 strengths tried (chosen by CV grouped by source).
        name: a label for tables.
    """

    families: list[str] = field(default_factory=lambda: ["commitment", "raw"])
    k: int = 4
    raw_layers: list[int] | None = None
    raw_pool: str = "first+mean"
    layer_bins: int | None = None
    balance: str = "source"
    blend: bool = True
    raw_dims: int | None = 256
    probe_families: list[str] | None = None
    Cs: Sequence[float] = TRANSFER_CS
    name: str = ""

    def selection(self) -> FeatureSelection:
        return FeatureSelection(list(self.families), self.k, self.raw_layers, self.raw_pool, self.layer_bins)

    def label(self) -> str:
        if self.name:
            return self.name
        fam = "+".join(self.families)
        if self.probe_families and set(self.probe_families) < set(self.families):
            fam = "+".join(self.probe_families) + f" (blend: {fam})"
        return f"{fam}@k{self.k}" + (f"/{self.balance}" if self.balance != "class" else "") + ("+blend" if self.blend else "")

    def validate(self) -> None:
        if self.balance not in ("source", "class"):
            raise UserError(f"balance must be source or class, got {self.balance!r}", field="balance")
        if not self.families:
            raise UserError("give at least one feature family", field="families")


def design(t: dict[str, torch.Tensor], recipe: TransferRecipe) -> np.ndarray:
    """The flat design of ``recipe``'s features (unstandardised): every step's features and a valid-step indicator,
    then the pooled raw states (:func:`n_step_columns` of them come first)."""
    x = inputs_from_signatures(t, recipe.selection())
    seq, mask = x["seq"] * x["mask"].unsqueeze(-1), x["mask"]
    flat = torch.cat([seq, mask.unsqueeze(-1).float()], -1).flatten(1)
    return torch.cat([flat, x["static"]], 1).numpy().astype(np.float32)


def n_step_columns(t: dict[str, torch.Tensor], recipe: TransferRecipe) -> int:
    """How many columns of :func:`design` are per-step features (the rest are pooled raw states)."""
    x = inputs_from_signatures({k: v[:1] for k, v in t.items()}, recipe.selection())
    return int(x["seq"].shape[1] * (x["seq"].shape[2] + 1))


def probe_columns(t: dict[str, torch.Tensor], recipe: TransferRecipe) -> tuple[np.ndarray, int] | None:
    """``(columns, per-step columns among them)``: which columns of :func:`design` the logistic probe reads when
    ``recipe.probe_families`` names fewer families than ``recipe.families`` (every step's valid-step indicator is
    always read); ``None`` when it reads them all."""
    fams = recipe.probe_families
    if not fams or set(fams) >= set(recipe.families):
        return None
    one = {k: v[:1] for k, v in t.items()}
    widths = []
    for f in STEP_FAMILIES:
        if f in recipe.families:
            r = FeatureSelection([f], recipe.k, recipe.raw_layers, recipe.raw_pool, recipe.layer_bins)
            widths.append((f, int(inputs_from_signatures(one, r)["seq"].shape[2])))
    x = inputs_from_signatures(one, recipe.selection())
    n_steps, n_static = int(x["seq"].shape[1]), int(x["static"].shape[1])
    cols, j = [], 0
    for _ in range(n_steps):
        for f, w in widths:
            if f in fams:
                cols += range(j, j + w)
            j += w
        cols.append(j)  # the valid-step indicator
        j += 1
    n_step = len(cols)
    if "raw" in fams:
        cols += range(j, j + n_static)
    return np.asarray(cols), n_step


# ------------------------------------------------------------------------------------------------ LOSO
@dataclass
class SourceView:
    """Rows of one or more harvests as a LOSO sees them: labels, sources, signatures and training-free scores."""

    y: np.ndarray
    source: np.ndarray
    ids: np.ndarray
    tensors: dict[str, torch.Tensor]
    n_tokens: np.ndarray

    @classmethod
    def load(cls, paths: Sequence[str], group: str = "set") -> "SourceView":
        """Rows of harvests, each source a prompt set (``group="set"``) or, for given answers, whoever wrote the
        answer (``group="writer"``: :func:`~riskprobe.prompts.answers.writer_of`)."""
        h = load_harvests(list(paths))
        if group == "writer":

            src = np.asarray([writer_of(s, p) for s, p in zip(h.meta["source"], h.meta["provenance"])])
        elif group == "set":
            src = np.asarray(h.meta["set"])
        else:
            raise UserError(f"group must be set or writer, got {group!r}", field="group")
        return cls(np.asarray(h.meta["label"]).astype(int), src, np.asarray(h.meta["id"]), h.tensors,
                   np.asarray(h.meta["n_tokens"]))

    def sources(self, min_per_class: int = MIN_PER_CLASS) -> list[str]:
        """The sources with at least ``min_per_class`` right and wrong answers each (the ones held out in turn)."""
        out = []
        for s in sorted(np.unique(self.source).tolist()):
            m = self.source == s
            n_wrong = int(self.y[m].sum())
            if n_wrong >= min_per_class and int(m.sum()) - n_wrong >= min_per_class:
                out.append(s)
        return out


class Projection:
    """The design a probe is fitted on: every column standardised by the training rows (``scaler``), then the raw-state
    columns read through their first principal components, each standardised again. Linear, so :meth:`fold` turns a
    logistic regression on the projection into one on the standardised design."""

    def __init__(self, X: np.ndarray, n_step: int, raw_dims: int | None, seed: int = 0, max_rows: int = 6000):
        self.scaler, self.n_step = Scaler(X), n_step
        self.V = None
        # fewer training rows than components: the rows span at most n - 1 directions, so keep those
        dims = min(raw_dims, len(X) - 1) if raw_dims else 0
        if dims >= 1 and X.shape[1] - n_step > dims:

            rows = np.random.default_rng(seed).permutation(len(X))[:max_rows]  # the components of a subsample
            Z = self.scaler(X[np.sort(rows)])
            pca = PCA(n_components=dims, svd_solver="randomized", random_state=seed).fit(Z[:, n_step:])
            self.V = pca.components_.T.astype(np.float64)  # [raw cols, raw_dims]
            P = Z[:, n_step:] @ self.V
            self.p_sd = np.where(P.std(0) > 1e-9, P.std(0), 1.0)

    def standardised(self, X: np.ndarray) -> np.ndarray:
        return self.scaler(X)

    def __call__(self, X: np.ndarray, Z: np.ndarray | None = None) -> np.ndarray:
        Z = self.scaler(X) if Z is None else Z
        if self.V is None:
            return Z
        return np.concatenate([Z[:, : self.n_step], (Z[:, self.n_step:] @ self.V.astype(Z.dtype)) / self.p_sd], 1)

    def fold(self, coef: np.ndarray) -> np.ndarray:
        """Weights on the standardised design equal to ``coef`` on the projection."""
        coef = np.asarray(coef, dtype=np.float64).ravel()
        if self.V is None:
            return coef
        return np.concatenate([coef[: self.n_step], self.V @ (coef[self.n_step:] / self.p_sd)])


def fit_transfer(view: SourceView, train: np.ndarray, recipe: TransferRecipe, *, X: np.ndarray | None = None,
                 conf: np.ndarray | None = None, folds: int = 5) -> dict[str, Any]:
    """Fit ``recipe`` on the rows ``train`` of ``view``: C by CV grouped by source, then the probe on every training
    row, then (with ``recipe.blend``) the blend on the out-of-source rows of that CV. Returns the fitted parts:
    ``{"scaler", "coef", "intercept", "C", "cv_auroc", "cv_by_C", "blend", "folds_by"}`` (``coef`` on the whole
    design standardised by ``scaler``, 0 on the columns the probe does not read; ``X``, ``conf``: the precomputed
    design and confidence of all rows)."""
    recipe.validate()
    X = design(view.tensors, recipe) if X is None else X
    conf = confidence_scores(view.tensors, recipe.k) if conf is None else conf
    y, g = view.y[train], view.source[train]
    w = sample_weights(y, g, recipe.balance)
    Xt = X[train]
    scaler = Scaler(Xt)
    Zt = scaler(Xt)  # the whole design: what the distance (and the back-off) reads
    sub = probe_columns(view.tensors, recipe)
    cols, n_step = sub if sub is not None else (None, n_step_columns(view.tensors, recipe))
    proj = Projection(Xt if cols is None else Xt[:, cols], n_step, recipe.raw_dims)
    Pt = proj(None, Zt if cols is None else Zt[:, cols])
    # folds grouped by source; with a single training source (a user's one set), by question: the blend then
    # learns in-source trust only, which the result records
    by_source = len(np.unique(g)) >= 2
    cv = cv_by_source(Pt, y, g if by_source else view.ids[train], w, recipe.Cs, folds=folds,
                      X_dist=Zt if (proj.V is not None or cols is not None) else None, within=g)
    lr = logreg(cv["C"]).fit(Pt, y, sample_weight=w)
    coef = proj.fold(lr.coef_[0])
    if cols is not None:
        full = np.zeros(X.shape[1])
        full[cols] = coef
        coef = full
    blend = fit_blend(cv["oof"], conf[train], cv["oof_distance"], y, w) if recipe.blend else None
    return {"scaler": scaler, "coef": coef, "intercept": float(lr.intercept_[0]), "C": cv["C"],
            "cv_auroc": cv["cv_auroc"], "cv_by_C": cv["cv_by_C"], "blend": blend,
            "folds_by": "source" if by_source else "question"}


def predict_transfer(fit: dict[str, Any], X: np.ndarray, conf: np.ndarray) -> dict[str, np.ndarray]:
    """The fitted probe's logit, the distance from its training rows, and the blended logit (the probe's own where
    there is no blend) for rows ``X``."""
    Z = fit["scaler"](X)
    probe = Z @ fit["coef"] + fit["intercept"]
    d = ood_distance(Z)
    blend = fit["blend"]
    risk = blend.logit(probe, conf, d) if blend is not None else probe
    weight = blend.weight(d) if blend is not None else np.ones(len(d))
    return {"probe": probe, "risk": risk, "distance": d, "weight": weight}


def held_out(view: SourceView, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(test, train)`` rows when ``source`` is held out: all of its rows, and every other source's rows except
    those of a question the held-out source also asks (several writers answer one question; FreebaseQA repeats a
    few TriviaQA questions): no question is both trained on and tested."""
    test = np.flatnonzero(view.source == source)
    asked = set(view.ids[test].tolist())
    train = np.flatnonzero((view.source != source) & ~np.isin(view.ids, list(asked)))
    return test, train


def loso(paths: Sequence[str], recipe: TransferRecipe, *, sources: Sequence[str] | None = None,
         min_per_class: int = MIN_PER_CLASS, n_boot: int = 1000, folds: int = 5, progress: bool = True,
         view: SourceView | None = None, group: str = "set") -> dict[str, Any]:
    """Leave each source out in turn: train ``recipe`` on the others (selection by CV grouped by source, on them
    only), test on all of its rows beside the best training-free scores. Returns ``{"recipe", "rows": [...],
    "summary"}``; each row has the held-out source's n, n_wrong, the probe's AUROC (``probe``: the probe alone;
    ``auroc``: the shipped risk, blended where the recipe blends), the best training-free scores and the margins."""
    view = view or SourceView.load(paths, group)
    held = list(sources) if sources else view.sources(min_per_class)
    unknown = [s for s in held if s not in set(view.source.tolist())]
    if unknown:
        raise UserError(f"not in the harvests: {', '.join(unknown)} (they hold {', '.join(sorted(set(view.source)))})",
                        field="sources")
    if len(set(view.source.tolist())) < 3:
        raise UserError("leave-one-source-out needs at least three sources", field="sources")
    X = design(view.tensors, recipe)
    conf = confidence_scores(view.tensors, recipe.k)
    tf = training_free_scores(view.tensors, recipe.k)
    rows = []
    bar = progress_bar(len(held), f"leave one source out ({recipe.label()})", "source", enabled=progress)
    for s in held:
        test, train = held_out(view, s)
        fit = fit_transfer(view, train, recipe, X=X, conf=conf, folds=folds)
        pred = predict_transfer(fit, X[test], conf[test])
        yt = view.y[test]
        tf_t = {n: v[test] for n, v in tf.items()}
        res = versus_training_free(yt, pred["risk"], tf_t, n_boot=n_boot)

        res.update(source=s, probe_alone=auroc(yt, pred["probe"]), C=fit["C"], cv_auroc=fit["cv_auroc"],
                   backed_off=float(np.mean(pred["weight"] < 0.5)), mean_weight=float(np.mean(pred["weight"])),
                   blend=fit["blend"].to_dict() if fit["blend"] is not None else None)
        rows.append(res)
        bar.update(1)
    bar.close()
    return {"recipe": {**asdict(recipe), "label": recipe.label(), "Cs": list(recipe.Cs)}, "rows": rows,
            "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over held-out sources: AUROC, margins (whole answer and at k), the worst margin, how many sources the
    risk loses on (interval below 0)."""
    def mean(key):
        v = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
        return float(np.mean(v)) if v else float("nan")

    margins = [r["margin"] for r in rows if not math.isnan(r["margin"])]
    return {"sources": len(rows), "mean_auroc": mean("auroc"), "mean_probe_alone": mean("probe_alone"),
            "mean_margin": mean("margin"), "mean_margin_at_k": mean("margin_at_k"),
            "worst_margin": float(min(margins)) if margins else float("nan"),
            "worst_source": min(rows, key=lambda r: r["margin"] if not math.isnan(r["margin"]) else 9)["source"]
            if rows else None,
            "losses": sum(1 for r in rows if r["margin_ci"][1] < 0),
            "wins": sum(1 for r in rows if r["margin_ci"][0] > 0)}


def format_loso(res: dict[str, Any]) -> str:
    """The LOSO table as text: per held-out source, n right / wrong, the risk's AUROC, the probe alone, the best
    training-free scores and the margins with their intervals; then the means."""
    def f(v, ci=None, sign=False):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        s = f"{v:+.3f}" if sign else f"{v:.3f}"
        return s + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci and not any(math.isnan(c) for c in ci) else "")

    k = res["recipe"]["k"]
    lines = [f"leave one source out: {res['recipe']['label']} (selection grouped by source on the other sources)",
             f"{'held-out source':<18}{'right/wrong':>12}  {'risk AUROC':<11}{'probe alone':<12}"
             f"{'best training-free':<36}{'margin':<25}{'best at k=' + str(k):<34}{'margin at k':<25}{'backed off':>10}"]
    for r in res["rows"]:
        c = cells(r)
        lines.append(f"{r['source'][:17]:<18}{c['counts']:>12}  {f(r['auroc']):<11}{f(r['probe_alone']):<12}"
                     f"{c['best'][:35]:<36}{c['margin']:<25}{c['best_k'][:33]:<34}{c['margin_k']:<25}"
                     f"{r['backed_off']:>10.1%}")
    s = res["summary"]
    lines.append(f"mean over {s['sources']} sources: risk AUROC {f(s['mean_auroc'])} (probe alone "
                 f"{f(s['mean_probe_alone'])}), margin {f(s['mean_margin'], sign=True)} (worst {f(s['worst_margin'], sign=True)}"
                 f", {s['worst_source']}), margin at k {f(s['mean_margin_at_k'], sign=True)}; wins {s['wins']}, "
                 f"losses {s['losses']} (95% interval of the margin above / below 0)")
    return "\n".join(lines)


def tf_names_at_k(names: Sequence[str]) -> list[str]:
    """The training-free scores a probe at its own k may be compared with."""
    return [n for n in names if at_k(n)]


def fit_into_blend(rm, dm, *, balance: str = "source", folds: int = 5, raw_dims: int | None = 256,
                   group: str = "set", blend: bool = True, probe_families: list[str] | None = None) -> dict[str, Any]:
    """Fit a :class:`~riskprobe.probes.modules.BlendProbe` (inside ``rm``) on the training split of the data module
    ``dm``: C by CV grouped by source, the logistic probe on every training row, the blend on the out-of-source rows.
    With ``blend=False`` the head keeps the probe alone (weight 1 everywhere, no confidence). Returns what was chosen
    (C, CV AUROC by C, the blend)."""
    if not isinstance(rm.probe, BlendProbe):
        raise TypeError("a blend fit needs a BlendProbe")
    sel = dm.selection
    if blend and "commitment" not in sel.families:
        raise UserError("the blend reads the model's confidence from the commitment family: add 'commitment' to "
                        "data.families", field="data.families")
    h = dm.harvests
    if group == "writer":

        src = np.asarray([writer_of(s, p) for s, p in zip(h.meta["source"], h.meta["provenance"])])
    else:
        src = np.asarray(h.meta["set"])
    view = SourceView(np.asarray(h.meta["label"]).astype(int), src, np.asarray(h.meta["id"]), h.tensors,
                      np.asarray(h.meta["n_tokens"]))
    recipe = TransferRecipe(families=list(sel.families), k=sel.k, raw_layers=sel.raw_layers, raw_pool=sel.raw_pool,
                            layer_bins=sel.layer_bins, balance=balance, blend=blend, raw_dims=raw_dims,
                            probe_families=list(probe_families) if probe_families else None)
    fit = fit_transfer(view, np.asarray(dm.idx["train"]), recipe, folds=folds)
    p, b, sc = rm.probe, fit["blend"], fit["scaler"]
    if b is None:  # the probe alone: kept whole at every distance, no confidence term
        b = Blend(a=1.0, b=[0.0] * 4, c=0.0, d0=1e9, s=1.0, conf_mean=[0.0] * 4, conf_std=[1.0] * 4)
    with torch.no_grad():
        p.fc.weight.copy_(torch.as_tensor(fit["coef"], dtype=p.fc.weight.dtype).reshape(1, -1))
        p.fc.bias.copy_(torch.tensor([fit["intercept"]], dtype=p.fc.bias.dtype))
        p.x_mean.copy_(torch.as_tensor(sc.mu, dtype=p.x_mean.dtype))
        p.x_std.copy_(torch.as_tensor(sc.sd, dtype=p.x_std.dtype))
        p.head.copy_(torch.tensor([b.a, b.c, b.d0, b.s], dtype=p.head.dtype))
        p.conf_b.copy_(torch.tensor(b.b, dtype=p.conf_b.dtype))
        p.conf_mean.copy_(torch.tensor(b.conf_mean, dtype=p.conf_mean.dtype))
        p.conf_std.copy_(torch.tensor(b.conf_std, dtype=p.conf_std.dtype))
    return {"C": fit["C"], "cv_auroc_by_source": fit["cv_auroc"], "cv_by_C": fit["cv_by_C"],
            "blend": b.to_dict() if blend else None, "folds_by": fit["folds_by"] if fit["folds_by"] == "question" else group}
