"""Transfer experiments on a model's harvests (leave one source out), side by side in one run:

* ``recipes``: several :class:`TransferRecipe` s per held-out source, and the one each fold's own CV grouped by source
  (on the training sources only) prefers: a nested choice, never reading the held-out source;
* ``ood``: per held-out source, the share of its rows the blend backs off from against the AUROC lost there (the
  in-distribution AUROC of the same recipe fitted on every source's training split, on that source's test split,
  minus its held-out AUROC);
* ``adapt``: the learning curve of ``riskprobe adapt``'s head refit: 25 .. 400 labels of the held-out source (three
  draws of questions), AUROC on the rest of it, against the unadapted blend and the best training-free score there.

    python benchmarks/experiments/transfer.py --harvest runs/sources/smollm2-135m --harvest runs/sources/smollm2-more \
        --out benchmarks/results/2026-12-06/transfer-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import numpy as np

from riskprobe.evaluation.baselines import training_free_scores
from riskprobe.evaluation.metrics import auroc
from riskprobe.evaluation.versus import versus_training_free
from riskprobe.prompts.sets import split_of
from riskprobe.training.adapt import HeadInputs, choose_lambda, fit_head
from riskprobe.training.grouped import confidence_scores
from riskprobe.training.loso import (
    SourceView,
    TransferRecipe,
    design,
    fit_transfer,
    held_out,
    predict_transfer,
    summarize,
)

RECIPES = {
    "raw (shipped)": TransferRecipe(families=["raw"], k=4, balance="class", blend=False),
    "confidence": TransferRecipe(families=["commitment"], k=4, balance="source", blend=False),
    "confidence+raw, blend": TransferRecipe(families=["commitment", "raw"], k=4, balance="source", blend=True),
    "dynamics, blend": TransferRecipe(families=["commitment", "sync", "trajectory", "lens"], k=4, layer_bins=6,
                                      balance="source", blend=True),
    "all, blend": TransferRecipe(families=["commitment", "sync", "trajectory", "lens", "raw"], k=4, layer_bins=6,
                                 balance="source", blend=True),
    # the same, each source's features centred on that source's own mean (its unlabelled rows: for a held-out
    # source, what a user has when scoring a batch of their questions; not available one question at a time)
    "confidence+raw, blend, centred": TransferRecipe(families=["commitment", "raw"], k=4, balance="source", blend=True,
                                                     name="centred"),
    "raw 1024, blend": TransferRecipe(families=["commitment", "raw"], k=4, balance="source", blend=True, raw_dims=1024),
    "raw first, blend": TransferRecipe(families=["commitment", "raw"], k=4, raw_pool="first", balance="source",
                                       blend=True),
}
RECIPES["whole answer, blend"] = TransferRecipe(families=["commitment", "raw"], k=32, balance="source", blend=True,
                                                name="whole answer: commitment@k32+raw")
RECIPES["raw, class, blend"] = TransferRecipe(families=["raw"], k=4, balance="class", blend=True)
RECIPES["raw middle layers"] = TransferRecipe(families=["raw"], k=4, raw_layers=[2, 3, 4, 5], balance="class",
                                              blend=False)
RECIPES["confidence, blend, centred"] = TransferRecipe(families=["commitment"], k=4, balance="source", blend=True,
                                                      name="confidence-centred")
CENTRED = {"confidence+raw, blend, centred", "confidence, blend, centred"}
# the shipped recipe with the directions that separate the training sources projected out of its design (fold by fold,
# from the training sources' mean rows only; no labels, nothing of the held-out source)
RECIPES["raw, class, blend, desourced"] = TransferRecipe(families=["raw"], k=4, balance="class", blend=True,
                                                        name="raw-desourced")
DESOURCED = {"raw, class, blend, desourced"}


def desource(X: np.ndarray, source: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``X`` with the directions spanned by the training sources' mean rows (in columns standardised on the training
    rows) projected out: every training source has the same mean afterwards, so a probe cannot tell them apart by
    where their rows sit."""
    Xt = X[train]
    mu, sd = Xt.mean(0, dtype=np.float64), Xt.std(0, dtype=np.float64)
    sd = np.where(sd > 1e-9, sd, 1.0)
    src = source[train]
    M = np.stack([(Xt[src == s].mean(0, dtype=np.float64) - mu) / sd for s in np.unique(src)])
    U = np.linalg.svd(M, full_matrices=False)[2]  # [n_sources, columns]: the source-mean directions
    U = U[np.linalg.svd(M, compute_uv=False) > 1e-9].astype(np.float32)
    out = np.empty_like(X, dtype=np.float32)
    for i in range(0, len(X), 4096):  # in blocks: X can hold gigabytes
        Z = ((X[i:i + 4096] - mu) / sd).astype(np.float32)
        out[i:i + 4096] = ((Z - (Z @ U.T) @ U) * sd + mu).astype(np.float32)
    return out


def centre(X: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Each source's rows minus that source's mean row (no labels read)."""
    out = X.astype(np.float32, copy=True)
    for s in np.unique(source):
        m = source == s
        out[m] -= out[m].mean(0)
    return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harvest", action="append", required=True)
    ap.add_argument("--recipes", default=";".join(RECIPES), help="names of RECIPES, separated by semicolons")
    ap.add_argument("--sources", help="comma-separated held-out sources (default: every one with 20+ of each class)")
    ap.add_argument("--adapt-recipe", default="confidence+raw, blend")
    ap.add_argument("--adapt-ns", default="25,50,100,200,400")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--group", default="set", choices=["set", "writer"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    view = SourceView.load(a.harvest, a.group)
    names = [n.strip() for n in a.recipes.split(";") if n.strip()]
    held = [s for s in a.sources.split(",")] if a.sources else view.sources()
    log(f"{len(view.y)} rows, {len(set(view.source.tolist()))} sources, held out in turn: {held}")
    tf_all = training_free_scores(view.tensors, 4)
    cache = {}
    for n in names:
        X, conf = design(view.tensors, RECIPES[n]), confidence_scores(view.tensors, RECIPES[n].k)
        cache[n] = (centre(X, view.source), centre(conf, view.source).astype(np.float64)) if n in CENTRED else (X, conf)
    split = np.asarray([split_of(q) for q in view.ids])
    res = {"recipes": {n: {**asdict(RECIPES[n]), "Cs": list(RECIPES[n].Cs)} for n in names}, "rows": {n: [] for n in names},
           "selected": [], "ood": [], "adapt": []}
    # in-distribution reference: each recipe fitted on every source's training split, read on each source's test split
    in_dist = {}
    for n in names:
        X, conf = cache[n]
        if n in DESOURCED:
            X = desource(X, view.source, np.flatnonzero(split == "train"))
        fit = fit_transfer(view, np.flatnonzero(split == "train"), RECIPES[n], X=X, conf=conf)
        te = np.flatnonzero(split == "test")
        pred = predict_transfer(fit, X[te], conf[te])
        in_dist[n] = {s: auroc(view.y[te][view.source[te] == s], pred["risk"][view.source[te] == s]) for s in held}
        log(f"in distribution {n}: " + ", ".join(f"{s} {v:.3f}" for s, v in in_dist[n].items()))
    res["in_distribution"] = in_dist
    ns = [int(x) for x in a.adapt_ns.split(",")]
    for s in held:
        test, train = held_out(view, s)
        yt = view.y[test]
        tf_t = {k: v[test] for k, v in tf_all.items()}
        best = None
        for n in names:
            X, conf = cache[n]
            t0 = time.perf_counter()
            if n in DESOURCED:
                X = desource(X, view.source, train)
            fit = fit_transfer(view, train, RECIPES[n], X=X, conf=conf)
            pred = predict_transfer(fit, X[test], conf[test])
            row = versus_training_free(yt, pred["risk"], tf_t, n_boot=a.n_boot)
            row.update(source=s, probe_alone=auroc(yt, pred["probe"]), C=fit["C"], cv_auroc=fit["cv_auroc"],
                       backed_off=float(np.mean(pred["weight"] < 0.5)), recipe=n,
                       blend=fit["blend"].to_dict() if fit["blend"] is not None else None)
            res["rows"][n].append(row)
            log(f"{s:<14} {n:<24} AUROC {row['auroc']:.3f} (probe {row['probe_alone']:.3f}) margin {row['margin']:+.3f} "
                f"at k {row['margin_at_k']:+.3f}  cv {fit['cv_auroc']:.3f}  {time.perf_counter() - t0:.0f} s")
            if best is None or fit["cv_auroc"] > best[0]:
                best = (fit["cv_auroc"], n, row, fit, pred)
            if n == a.adapt_recipe:
                res["ood"].append({"source": s, "recipe": n, "flagged": row["backed_off"],
                                   "auroc_in_distribution": in_dist[n][s], "auroc_held_out": row["auroc"],
                                   "auroc_lost": in_dist[n][s] - row["auroc"]})
                res["adapt"].append(curve(view, test, fit, pred, tf_t, ns, a.draws))
        res["selected"].append({**best[2], "recipe": best[1]})
        json.dump(res, open(a.out, "w"), indent=1, default=float)
    res["summary"] = {n: summarize(res["rows"][n]) for n in names}
    res["summary"]["selected"] = summarize(res["selected"])
    json.dump(res, open(a.out, "w"), indent=1, default=float)
    print_tables(res)


def curve(view, test, fit, pred, tf_t, ns, draws) -> dict:
    """Adapt the head on n labelled questions of the held-out source; AUROC on the rest."""
    b = fit["blend"]
    conf = (np.asarray(confidence_scores({k: v[test] for k, v in view.tensors.items()}, 4)) - b.conf_mean) / b.conf_std
    x = HeadInputs(pred["probe"], pred["weight"], conf)
    prior = np.r_[b.a, b.b, b.c]
    y, ids = view.y[test], view.ids[test]
    qs = np.unique(ids)
    out = {"source": s_of(view, test), "points": []}
    for n in ns:
        if n >= len(qs) - 50:
            continue
        for draw in range(draws):
            rng = np.random.default_rng(draw)
            pick = set(rng.choice(qs, n, replace=False).tolist())
            tr = np.asarray([q in pick for q in ids])
            if len(np.unique(y[tr])) < 2 or len(np.unique(y[~tr])) < 2:
                continue
            sub = HeadInputs(x.probe[tr], x.weight[tr], x.conf[tr])
            lam, _ = choose_lambda(sub, y[tr], ids[tr], prior)
            th = fit_head(sub, y[tr], prior, lam)
            rest = HeadInputs(x.probe[~tr], x.weight[~tr], x.conf[~tr])
            tf_rest = {k: v[~tr] for k, v in tf_t.items()}
            best_tf = max(auroc(y[~tr], v) for v in tf_rest.values())
            out["points"].append({"n": n, "draw": draw, "lambda": lam, "adapted": auroc(y[~tr], rest.logit(th)),
                                  "unadapted": auroc(y[~tr], pred["risk"][~tr]), "best_training_free": best_tf})
    return out


def s_of(view, idx) -> str:
    return str(view.source[idx[0]])


def print_tables(res) -> None:
    for n, rows in res["rows"].items():
        s = res["summary"][n]
        print(f"\n{n}: mean AUROC {s['mean_auroc']:.3f}, margin {s['mean_margin']:+.3f} (worst {s['worst_margin']:+.3f} "
              f"{s['worst_source']}), at k {s['mean_margin_at_k']:+.3f}; wins {s['wins']}, losses {s['losses']}")
        for r in rows:
            print(f"  {r['source']:<14}{r['n'] - r['n_wrong']:>6}/{r['n_wrong']:<6} {r['auroc']:.3f}"
                  f"  probe {r['probe_alone']:.3f}  tf {r['best_training_free']['auroc']:.3f} {r['margin']:+.3f}"
                  f" [{r['margin_ci'][0]:+.3f},{r['margin_ci'][1]:+.3f}]"
                  f"  at k {r['best_at_k']['auroc']:.3f} {r['margin_at_k']:+.3f}")
    s = res["summary"]["selected"]
    print(f"\nselected per fold by CV grouped by source: mean AUROC {s['mean_auroc']:.3f}, margin {s['mean_margin']:+.3f}, "
          f"at k {s['mean_margin_at_k']:+.3f}; " + ", ".join(f"{r['source']}: {r['recipe']}" for r in res["selected"]))
    if res["ood"]:
        print("\nback-off against AUROC lost (held-out source):")
        for o in res["ood"]:
            print(f"  {o['source']:<14} backed off {o['flagged']:6.1%}  AUROC in {o['auroc_in_distribution']:.3f} "
                  f"held out {o['auroc_held_out']:.3f} lost {o['auroc_lost']:+.3f}")
    if res["adapt"]:
        print("\nadapt: AUROC on the rest of the source (mean of draws): n -> adapted / unadapted / best training-free")
        for c in res["adapt"]:
            by_n = {}
            for p in c["points"]:
                by_n.setdefault(p["n"], []).append(p)
            cells = "  ".join(f"{n}: {np.mean([p['adapted'] for p in v]):.3f}/{np.mean([p['unadapted'] for p in v]):.3f}"
                              f"/{np.mean([p['best_training_free'] for p in v]):.3f}" for n, v in sorted(by_n.items()))
            print(f"  {c['source']:<14} {cells}")


if __name__ == "__main__":
    main()
