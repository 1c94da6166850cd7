"""Does an early raw-state probe transfer to a question source it never saw? On an extracted corpus, a
logistic regression (riskprobe's recipe: raw states of every stored layer, step 0 and the mean of steps 1..k,
standardised, balanced classes) is trained without one set and scored on all of that set, for each pooling,
training on every other set or on the factual sets only, over a grid of C (read the grid as a sensitivity
table: choosing C by the held-out set's AUROC would be a leak). Then C chosen honestly, by leave-one-source-out
CV among the factual training sets, and per-set centring (each set's own unlabelled mean removed).

    python benchmarks/experiments/heldout_transfer.py runs/corpus/smollm2-135m --held triviaqa geo
    python benchmarks/experiments/heldout_transfer.py runs/corpus/smollm2-135m --families commitment sync trajectory lens \
        --Cs 1e-4 1e-3 1e-2 1e-1     # the scalar dynamics alone, which mean the same on every question source
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from riskprobe.probes.logistic import standardised_design
from riskprobe.prompts.sets import split_of
from riskprobe.training.data import HarvestDataModule

FACTUAL = ["builtin", "geo", "halueval_qa", "nq_open", "triviaqa"]
CS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def _fit(X, y, C):
    return LogisticRegression(C=C, class_weight="balanced", max_iter=3000, tol=1e-3).fit(X, y)


def _load(path, pool, k, families=("raw",)):
    dm = HarvestDataModule(paths=[path], families=list(families), k=k, raw_pool=pool)
    dm.setup()
    sets, ids = np.asarray(dm.harvests.meta["set"]), np.asarray(dm.harvests.meta["id"])
    y = dm.inputs["label"].numpy().astype(int)
    split = np.asarray([split_of(i) for i in ids])
    return standardised_design(dm.inputs, dm.standardizer).astype(np.float32), y, sets, split


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="an extracted corpus (riskprobe extract --features corpus)")
    ap.add_argument("--held", nargs="+", default=["triviaqa", "geo"])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", nargs="+", default=["raw"],
                    help="feature families (the shipped recipe reads raw; the scalar dynamics: commitment sync "
                         "trajectory lens)")
    ap.add_argument("--Cs", nargs="+", type=float, default=list(CS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cs = tuple(args.Cs)
    print(f"families {' '.join(args.families)}, k {args.k}", flush=True)
    for pool in ("first+mean", "first", "mean") if "raw" in args.families else ("first+mean",):  # pooling: raw only
        X, y, sets, split = data = _load(args.corpus, pool, args.k, args.families)
        if pool == "first+mean":
            kept = data  # the pooling of the honest selection below
        for held in args.held:
            te = np.flatnonzero(sets == held)
            for train_on in ("all", "factual"):
                ok = (sets != held) & (split == "train") & (np.isin(sets, FACTUAL) if train_on == "factual" else True)
                tr = np.flatnonzero(ok)
                res = [f"{C:g}:{roc_auc_score(y[te], _fit(X[tr], y[tr], C).decision_function(X[te])):.3f}" for C in cs]
                print(f"pool {pool:<10} held {held:<9} train {train_on:<8} n={len(tr)}  " + "  ".join(res), flush=True)
    X, y, sets, split = kept
    for held in args.held:
        fact = [s for s in FACTUAL if s != held and s in set(sets.tolist())]
        tr_all = (split == "train") & np.isin(sets, fact)
        cv = {C: [] for C in cs}
        for s in fact:
            a, b = np.flatnonzero(tr_all & (sets != s)), np.flatnonzero(tr_all & (sets == s))
            for C in cs:
                cv[C].append(roc_auc_score(y[b], _fit(X[a], y[a], C).decision_function(X[b])))
        for C in cs:
            print(f"held {held}: leave-one-source-out CV over {fact}, C {C:g}: "
                  + " ".join(f"{v:.3f}" for v in cv[C]) + f"  mean {np.mean(cv[C]):.3f}")
        best = max(cs, key=lambda C: np.mean(cv[C]))
        te, tr = np.flatnonzero(sets == held), np.flatnonzero(tr_all)
        auc = roc_auc_score(y[te], _fit(X[tr], y[tr], best).decision_function(X[te]))
        print(f"held {held}: C {best:g} chosen by that CV: AUROC {auc:.3f}")
        Xc = X.copy()
        for s in np.unique(sets):
            m = sets == s
            Xc[m] -= Xc[m].mean(0)
        print(f"held {held}: per-set centred, C {best:g}: AUROC "
              f"{roc_auc_score(y[te], _fit(Xc[tr], y[tr], best).decision_function(Xc[te])):.3f}", flush=True)


if __name__ == "__main__":
    main()
