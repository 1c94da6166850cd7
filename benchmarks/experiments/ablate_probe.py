"""What helps the early probe: feature families, k, probe kind and regularisation, on one harvest.

    python benchmarks/experiments/ablate_probe.py --data runs/tqa [runs/builtin] --test-sets triviaqa

Every variant uses the same id-hash split; prints test AUROC with its bootstrap interval.
"""

from __future__ import annotations

import argparse
import logging
import warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--test-sets", nargs="*", default=None, help="evaluate on these sets only (train on all)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="fewer variants")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from riskprobe.training.data import HarvestDataModule
    from riskprobe.training.evaluate import calibrate_and_evaluate
    from riskprobe.training.module import fit_probe

    all_f = ["commitment", "sync", "trajectory", "lens", "raw"]
    k = args.k
    variants = [
        ("mlp, all families", all_f, k, {"probe": "mlp"}),
        ("linear, all families", all_f, k, {"probe": "linear", "weight_decay": 0.1, "lr": 1e-3}),
        ("temporal, all families", all_f, k, {"probe": "temporal", "dropout": 0.2}),
        ("mlp, scalar dynamics only", ["commitment", "sync", "trajectory", "lens"], k, {"probe": "mlp"}),
        ("mlp, raw states only", ["raw"], k, {"probe": "mlp"}),
        ("linear, raw states only", ["raw"], k, {"probe": "linear", "weight_decay": 0.1, "lr": 1e-3}),
        ("mlp, commitment only", ["commitment"], k, {"probe": "mlp"}),
        ("mlp, all, k=0", all_f, 0, {"probe": "mlp"}),
        ("mlp, all, k=8", all_f, 8, {"probe": "mlp"}),
        ("mlp, all, strong decay", all_f, k, {"probe": "mlp", "weight_decay": 0.3, "dropout": 0.3}),
    ]
    if args.quick:
        variants = variants[:5]
    print(f"{'variant':<32}{'k':>3}{'AUROC [95% CI]':>24}{'PRR':>8}{'ECE':>7}")
    for name, fams, kk, hp in variants:
        dm = HarvestDataModule(paths=args.data, families=fams, k=kk, test_sets=args.test_sets,
                               train_sets=None)
        dm.setup("fit")
        mod = fit_probe(dm, {"hidden": 64, "dropout": 0.1, "lr": 3e-3, "weight_decay": 0.01, **hp})
        r = calibrate_and_evaluate(mod, dm, n_boot=500, baselines=False)["probe"]
        print(f"{name:<32}{kk:>3}{r['auroc']:>8.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]"
              f"{r['prr']:>8.3f}{r['ece']:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
