"""After a fit: calibration on validation, test metrics of the probe and of the baselines in the same run,
permutation importance, and the sweep over k."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from ..evaluation import metrics as M
from ..evaluation.baselines import platt, sklearn_baselines, training_free_scores
from ..evaluation.given import evaluate_groups
from ..probes.inputs import step_feature_names
from ..probes.modules import RiskModel, ood_distance
from ..progress import bar as progress_bar
from .data import HarvestDataModule
from .module import ProbeModule, fit_probe

log = logging.getLogger(__name__)

OOD_QUANTILE = 0.99  # a row farther from the training rows than 99% of the validation rows is flagged


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def _logits(rm: RiskModel, seq, mask, static) -> torch.Tensor:
    rm.eval()
    return rm.logits(seq, mask, static)


def baseline_metrics(val_scores, yv, test_scores, yt, *, n_boot: int = 1000) -> dict[str, Any]:
    """Metrics of a baseline score on the test split: oriented and calibrated on validation (Platt), its
    threshold chosen there, and every number (AUROC and its interval included) computed from that one
    calibrated score."""
    to_p = platt(np.asarray(val_scores), np.asarray(yv))
    pv, pt = to_p(val_scores), to_p(test_scores)
    return M.evaluate(np.asarray(yt), pt, threshold=M.best_threshold(np.asarray(yv), pv), n_boot=n_boot)


def blend_ood(d0: float, d_val: np.ndarray, d_test: np.ndarray) -> dict[str, Any]:
    """The out-of-distribution flag of a blend probe: the distance ``d0`` where it keeps half of its probe. A fit with
    ``d0 <= 0`` trusts its probe at no distance, so every row is flagged; the threshold stays a positive distance, as
    an artifact's must.

    >>> blend_ood(-1.85, np.array([0.5, 1.0]), np.array([0.7]))
    {'threshold': 1e-06, 'quantile': 0.0, 'rule': 'blend back-off', 'test_flagged': 1.0}
    >>> blend_ood(1.2, np.array([0.5, 1.0, 2.0, 3.0]), np.array([0.7, 1.5]))["test_flagged"]
    0.5
    """
    thr = max(d0, 1e-6)
    return {"threshold": thr, "quantile": float(np.mean(d_val <= thr)), "rule": "blend back-off",
            "test_flagged": float(np.mean(d_test > thr))}


def calibrate_and_evaluate(module: ProbeModule, dm: HarvestDataModule, *, n_boot: int = 1000,
                           baselines: bool = True, cache: dict | None = None, calibrate: bool = True) -> dict[str, Any]:
    """Calibrate the probe on validation (unless ``calibrate=False``: a trained probe is evaluated as it is),
    pick its threshold there, and evaluate it and the baselines on the test split.
    Returns ``{"probe": {...}, "baselines": {name: {...}}, "margin": {...}, ...}``."""
    rm = module.risk_model.eval()  # no dropout when evaluating
    vs, vm, vg, vy = dm.split_inputs("val")
    ts, tm, tg, ty = dm.split_inputs("test")
    if calibrate:
        rm.calibrate(_logits(rm, vs, vm, vg), vy)
    with torch.no_grad():
        val_risk, test_risk = rm(vs, vm, vg).numpy(), rm(ts, tm, tg).numpy()
    thr = M.best_threshold(vy.numpy(), val_risk)
    out: dict[str, Any] = {"probe": {"name": f"{module.hparams.probe}@k{dm.selection.k}",
                                     **M.evaluate(ty.numpy(), test_risk, threshold=thr, n_boot=n_boot)},
                           "baselines": {}}
    held: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # baseline scores (validation, test) by name
    free = training_free_scores(dm.harvests.tensors, dm.selection.k) if baselines else {}
    if baselines:
        idx = dm.idx
        yv, yt = vy.numpy(), ty.numpy()
        for name, s in free.items():
            r = baseline_metrics(s[idx["val"]], yv, s[idx["test"]], yt, n_boot=n_boot)
            out["baselines"][name] = {**r, "kind": "training-free"}
            held[name] = (s[idx["val"]], s[idx["test"]])
        length = np.asarray(dm.harvests.meta["n_tokens"], dtype=float)  # control: answer length alone
        r = baseline_metrics(length[idx["val"]], yv, length[idx["test"]], yt, n_boot=n_boot)
        out["baselines"]["answer_length"] = {**r, "kind": "control"}
        same = module.hparams.probe in ("logreg", "blend")  # the probe is that baseline already (a logistic on its features)
        for name, d in sklearn_baselines(dm.inputs, dm.harvests.tensors, idx, dm.harvests.schema, cache,
                                         features=not same).items():
            # class-balanced training skews the probabilities: recalibrate on validation like the probe
            r = baseline_metrics(d["val"], yv, d["test"], yt, n_boot=n_boot)
            out["baselines"][name] = {**r, "kind": "sklearn", **d["info"]}
            held[name] = (d["val"], d["test"])
        best = max(out["baselines"].items(), key=lambda kv: kv[1]["auroc"])
        tf = [kv for kv in out["baselines"].items() if kv[1]["kind"] == "training-free"]
        best_tf = max(tf, key=lambda kv: kv[1]["auroc"])
        out["margin"] = {"best_baseline": best[0], "auroc_margin": out["probe"]["auroc"] - best[1]["auroc"],
                         "best_training_free": best_tf[0],
                         "auroc_margin_training_free": out["probe"]["auroc"] - best_tf[1]["auroc"]}
    meta, idx = dm.harvests.meta, dm.idx
    n_tok = np.asarray(meta["n_tokens"], dtype=float)
    yv, yt = vy.numpy(), ty.numpy()
    scores = {"probe": (val_risk, test_risk)}
    if baselines:
        conf = _best_confidence(free, dm.idx["val"], yv)
        if conf is not None:
            name, s_all = conf
            strata = {f"within confidence strata ({name}, quintiles)": M.quantile_strata(s_all[idx["test"]]),
                      "within length strata (answer tokens, quintiles)": M.quantile_strata(n_tok[idx["test"]]),
                      "within set": np.asarray(meta["set"])[idx["test"]]}
            out["controls"] = stratified_controls(yt, test_risk, strata, n_boot=n_boot)
            scores[f"best training-free ({name})"] = (s_all[idx["val"]], s_all[idx["test"]])
        best_name = out["margin"]["best_baseline"]
        if best_name in held:
            scores[f"best baseline ({best_name})"] = held[best_name]
    out["selective"] = selective_table(yt, {n: v[1] for n, v in scores.items()}, n_boot=n_boot)
    out["early_stop"] = early_stop_savings(yv, val_risk, yt, test_risk, n_tok[idx["test"]], dm.selection.k)
    out["calibration"] = {"a": float(rm.calib[0]), "b": float(rm.calib[1]), "threshold": thr}
    d_val, d_test = ood_distance(rm, vs, vm, vg).numpy(), ood_distance(rm, ts, tm, tg).numpy()
    if hasattr(rm.probe, "weight") and float(rm.probe.head[2]) < 1e8:  # a blend flags what it backs off from
        out["ood"] = blend_ood(float(rm.probe.head[2]), d_val, d_test)
        if getattr(module, "blend_info", None):
            out["blend"] = module.blend_info
    else:
        ood_thr = float(np.quantile(d_val, OOD_QUANTILE))
        out["ood"] = {"threshold": ood_thr, "quantile": OOD_QUANTILE, "test_flagged": float(np.mean(d_test > ood_thr))}
        if getattr(module, "blend_info", None):
            out["blend"] = module.blend_info
    prov = np.asarray(meta["provenance"]) if "provenance" in meta else np.asarray(["own"] * len(meta["id"]))
    out["answer_provenance"] = sorted(set(prov[idx["train"]].tolist()))
    if set(prov.tolist()) != {"own"}:  # given answers in the data: the risk by provenance and by source

        src = np.asarray(meta["source"])[idx["test"]]
        pt, st = prov[idx["test"]], np.asarray(meta["set"])[idx["test"]]
        groups = {f"provenance {p}": pt == p for p in sorted(set(pt.tolist()))}
        both = lambda g: 0 < yt[g].sum() < g.sum()  # noqa: E731  (only groups holding right and wrong answers)
        groups.update({f"source {s_}": src == s_ for s_ in sorted(set(src.tolist())) if both(src == s_)})
        groups.update({f"{p} · {s_}": (pt == p) & (st == s_) for p in sorted(set(pt.tolist()))
                       for s_ in sorted(set(st.tolist())) if both((pt == p) & (st == s_))})
        keys = [f"{meta['id'][i]}:{meta['source'][i]}:{meta['sample'][i]}" for i in idx["test"]]
        out["given"] = evaluate_groups(yt, test_risk, n_tok[idx["test"]], groups,
                                       baselines={k: v[idx["test"]] for k, v in free.items()}, keys=keys,
                                       ood=d_test > ood_thr, n_boot=min(n_boot, 500))
    out["reliability"] = M.reliability(ty.numpy(), test_risk)
    te = dm.idx["test"]
    out["predictions"] = {"id": [dm.harvests.meta["id"][i] for i in te], "set": [dm.harvests.meta["set"][i] for i in te],
                          "category": [dm.harvests.meta["category"][i] for i in te],
                          "label": [int(v) for v in ty.tolist()], "risk": [round(float(v), 6) for v in test_risk],
                          "n_tokens": [int(n_tok[i]) for i in te]}
    if "given" in out:
        out["predictions"].update(provenance=[str(prov[i]) for i in te],
                                  source=[dm.harvests.meta["source"][i] for i in te])
    out["importance"] = permutation_importance(rm, dm, ts, tm, tg, ty.numpy())
    return out


def _best_confidence(scores: dict[str, np.ndarray], val: np.ndarray, yv: np.ndarray) -> tuple[str, np.ndarray] | None:
    """Of the training-free output-confidence ``scores`` (over all rows), the one that ranks the validation rows
    ``val`` best, oriented so that higher = riskier: what "more than output confidence" is measured against."""
    best = None
    for name, s in scores.items():
        a = M.auroc(yv, s[val])
        if np.isnan(a):
            continue
        oriented = s if a >= 0.5 else -s
        if best is None or max(a, 1 - a) > best[0]:
            best = (max(a, 1 - a), name, oriented)
    return None if best is None else (best[1], best[2])


def stratified_controls(y: np.ndarray, risk: np.ndarray, strata: dict[str, np.ndarray], *,
                        n_boot: int = 1000) -> dict[str, dict[str, Any]]:
    """The probe's AUROC within strata of a confounder (pairs compared only inside a stratum), with intervals."""
    out = {}
    for name, g in strata.items():
        out[name] = {"auroc": M.stratified_auroc(y, risk, g),
                     "auroc_ci": M.bootstrap_ci_strata(M.stratified_auroc, y, risk, g, n_boot=n_boot) if n_boot
                     else [float("nan")] * 2,
                     "strata": int(len(np.unique(g)))}
    return out


COVERAGES = (0.5, 0.8, 0.9)


def selective_table(y: np.ndarray, risks: dict[str, np.ndarray], *, coverages=COVERAGES, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Selective prediction: error rate among the answers kept at each coverage (lowest risk kept), with
    bootstrap intervals, and the area under the risk-coverage curve, for each score; ``base_error`` is the
    error rate when everything is kept."""
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(y), len(y)) for _ in range(n_boot)]
    out: dict[str, Any] = {"base_error": float(np.mean(y)), "coverages": list(coverages), "scores": {}}
    for name, r in risks.items():
        r = np.asarray(r, dtype=float)
        cov, err = M.risk_coverage(y, r)
        grid = np.linspace(0.02, 1.0, 50)
        at = np.clip(np.ceil(grid * len(y)).astype(int) - 1, 0, len(y) - 1)
        row = {"aurc": M.aurc(y, r), "error": {}, "curve": {"coverage": [round(float(c), 3) for c in grid],
                                                             "error": [round(float(e), 4) for e in err[at]]}}
        for c in coverages:
            vals = [M.selective_error(y[b], r[b], c) for b in boots]
            row["error"][str(c)] = {"value": M.selective_error(y, r, c),
                                    "ci": [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))] if vals
                                    else [float("nan")] * 2}
        out["scores"][name] = row
    return out


def early_stop_savings(yv: np.ndarray, val_risk: np.ndarray, yt: np.ndarray, test_risk: np.ndarray,
                       n_tokens: np.ndarray, k: int, recall: float = 0.8) -> dict[str, Any]:
    """What the monitor saves by stopping flagged rows at step ``k``: the risk threshold that catches
    ``recall`` of the wrong answers on validation, and on test the recall reached, the share of right answers
    stopped, and the share of generated tokens not generated (tokens after step k of stopped rows)."""
    wrong = np.sort(np.asarray(val_risk)[np.asarray(yv) == 1])[::-1]
    if len(wrong) == 0:
        return {}
    t = float(wrong[max(0, int(np.ceil(recall * len(wrong))) - 1)])
    flag = np.asarray(test_risk) >= t
    n_tokens = np.asarray(n_tokens, dtype=float)
    saved = np.clip(n_tokens - (k + 1), 0, None)[flag].sum() / max(n_tokens.sum(), 1.0)
    return {"target_recall": recall, "threshold": t, "k": k, "recall": float(flag[yt == 1].mean()) if (yt == 1).any()
            else float("nan"), "right_answers_stopped": float(flag[yt == 0].mean()) if (yt == 0).any() else float("nan"),
            "rows_stopped": float(flag.mean()), "tokens_saved": float(saved)}


def feature_groups(dm: "HarvestDataModule") -> dict[str, dict[str, tuple[list[int], list[int]]]]:
    """Column groups of the probe input by feature family and by layer: ``{"family": {name: (seq cols,
    static cols)}, "layer": {...}}``."""
    names = step_feature_names(dm.harvests.schema, dm.selection.families, dm.selection.layer_bins)
    fam: dict[str, tuple[list[int], list[int]]] = {}
    lay: dict[str, tuple[list[int], list[int]]] = {}
    for j, n in enumerate(names):
        fam.setdefault(n.split(".")[0], ([], []))[0].append(j)
        if "@" in n:
            tag = n.split("@")[1]
            lay.setdefault(f"layer {int(tag):02d}" if tag.isdigit() else tag, ([], []))[0].append(j)
    n_static = dm.inputs["static"].shape[1]
    if n_static:
        sch = dm.harvests.schema
        layers = sch["raw_layers"] if dm.selection.raw_layers is None else [sch["raw_layers"][i] for i in dm.selection.raw_layers]
        H = sch["hidden_size"]
        fam["raw"] = ([], list(range(n_static)))
        for c in range(n_static):
            # raw states are stored for a few layers only: their own groups, so that they are not read as
            # "these layers matter most" next to layers that carry only scalar features
            lay.setdefault(f"raw state, layer {layers[(c // H) % len(layers)]:02d}", ([], []))[1].append(c)
    return {"family": fam, "layer": dict(sorted(lay.items()))}


@torch.no_grad()
def permutation_importance(rm: RiskModel, dm: "HarvestDataModule", seq, mask, static, y: np.ndarray,
                           repeats: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """Test-AUROC drop when a group of columns is shuffled across rows (mean over ``repeats``)."""
    rng = np.random.default_rng(seed)
    base = M.auroc(y, rm(seq, mask, static).numpy())
    out: dict[str, dict[str, float]] = {}
    for kind, groups in feature_groups(dm).items():
        out[kind] = {}
        for name, (sc, gc) in groups.items():
            drops = []
            for _ in range(repeats):
                perm = torch.as_tensor(rng.permutation(len(y)))
                s2, g2 = seq.clone(), static.clone()
                if sc:
                    s2[:, :, sc] = seq[perm][:, :, sc]
                if gc:
                    g2[:, gc] = static[perm][:, gc]
                drops.append(base - M.auroc(y, rm(s2, mask, g2).numpy()))
            out[kind][name] = float(np.mean(drops))
    return out


def sweep_k(dm: HarvestDataModule, module_kwargs: dict[str, Any], ks: list[int], *, max_epochs: int = 60,
            patience: int = 8, n_boot: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Probe and baselines for each k: how early the risk becomes visible."""
    K = dm.harvests.schema["K"]
    table = []
    cache: dict = {}

    ks = sorted({min(int(k), K) for k in ks})
    bar = progress_bar(len(ks), "AUROC vs k", "k", enabled=progress)
    for k in ks:
        dmk = copy.copy(dm)
        dmk.use(dataclasses.replace(dm.selection, k=k))
        mod = fit_probe(dmk, module_kwargs, max_epochs=max_epochs, patience=patience, seed=seed)
        res = calibrate_and_evaluate(mod, dmk, n_boot=n_boot, cache=cache)
        table.append({"k": k, "probe": res["probe"], "baselines": res["baselines"], "controls": res.get("controls"),
                      "selective": res.get("selective")})
        log.info("k=%d probe AUROC %.3f", k, res["probe"]["auroc"])
        bar.update(1)
    bar.close()
    return {"ks": [r["k"] for r in table], "rows": table}
