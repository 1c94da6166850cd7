"""Training: a LightningDataModule over harvests, a LightningModule around a plain probe, and the
LightningCLI behind ``riskprobe fit|validate|test``.

After ``fit``, the best checkpoint is calibrated on the validation split, evaluated on the test split
against the baselines of :mod:`riskprobe.baselines`, and ``metrics.json`` is written to the run directory
(``--trainer.default_root_dir``), with an optional sweep over k (``--sweep_ks``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from . import metrics as M
from .baselines import platt, sklearn_baselines, training_free_scores
from .data import FeatureSelection, Standardizer, build_inputs, load_harvests, split_indices, step_feature_names
from .errors import UserError
from .fsutil import atomic_write_json
from .probes import RiskModel, build_probe

log = logging.getLogger(__name__)


class HarvestDataModule(L.LightningDataModule):
    """Probe inputs from one or more harvests (see :mod:`riskprobe.data`).

    Args:
        paths: harvest directories (same model and feature schema).
        families: feature families (commitment, sync, trajectory, lens, raw).
        k: early steps after step 0 that the probe sees.
        raw_layers: indices into the harvest's stored raw layers (None = all).
        batch_size: rows per batch.
        train_sets: sets to train and validate on (None = all).
        test_sets: sets to test on; different from train_sets makes a cross-set run.
        split_fractions: train/val/test fractions, assigned by a hash of the question id.
        split_salt: changes the hash assignment (a different, still deterministic, split).
    """

    def __init__(self, paths: list[str] = [], families: list[str] = ["commitment", "sync", "trajectory", "lens"],  # noqa: B006
                 k: int = 4, raw_layers: Optional[list[int]] = None, batch_size: int = 64,
                 train_sets: Optional[list[str]] = None, test_sets: Optional[list[str]] = None,
                 split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), split_salt: str = "riskprobe"):
        super().__init__()
        self.save_hyperparameters()
        self.selection = FeatureSelection(list(families), k, raw_layers)
        self._ready = False

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        hp = self.hparams
        for p in hp.paths:
            if not Path(p).exists():
                raise UserError("harvest directory not found", file=p, field="data.paths")
        self.harvests = load_harvests(hp.paths)
        self.selection.validate(self.harvests.schema)
        self.inputs = build_inputs(self.harvests, self.selection)
        self.idx = split_indices(self.harvests, fractions=tuple(hp.split_fractions), salt=hp.split_salt,
                                 train_sets=hp.train_sets, test_sets=hp.test_sets)
        tr = self.idx["train"]
        self.standardizer = Standardizer.fit(self.inputs["seq"][tr], self.inputs["mask"][tr], self.inputs["static"][tr])
        y = self.inputs["label"][tr]
        n_pos = float(y.sum())
        if n_pos == 0 or n_pos == len(y):
            raise UserError(f"the training split has only one class ({int(n_pos)} wrong of {len(y)}); "
                            "harvest more or different questions", field="data.paths")
        self.pos_weight = (len(y) - n_pos) / n_pos  # balances wrong vs right answers in the loss
        self._ready = True

    @property
    def dims(self) -> dict[str, int]:
        s = self.inputs["seq"]
        return {"n_steps": int(s.shape[1]), "n_feat": int(s.shape[2]), "n_static": int(self.inputs["static"].shape[1])}

    def spec(self) -> dict[str, Any]:
        """What a trained probe needs to know about its inputs (recorded in checkpoints and artifacts)."""
        return {"selection": self.selection.to_dict(), "dims": self.dims,
                "step_features": step_feature_names(self.harvests.schema, self.selection.families),
                "feature_schema": self.harvests.schema, "model_identity": self.harvests.model,
                "data_fingerprint": self.harvests.fingerprint(), "harvests": self.harvests.paths,
                "split": {"fractions": list(self.hparams.split_fractions), "salt": self.hparams.split_salt,
                          "train_sets": self.hparams.train_sets, "test_sets": self.hparams.test_sets,
                          "n": {k: int(len(v)) for k, v in self.idx.items()}}}

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        i = torch.as_tensor(self.idx[split])
        x = self.inputs
        ds = TensorDataset(x["seq"][i], x["mask"][i], x["static"][i], x["label"][i])
        return DataLoader(ds, batch_size=self.hparams.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def split_inputs(self, split: str) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(self.idx[split])
        x = self.inputs
        return x["seq"][i], x["mask"][i], x["static"][i], x["label"][i]


class ProbeModule(L.LightningModule):
    """Wraps a plain :class:`~riskprobe.probes.RiskModel`: loss, optimiser, validation AUROC.

    Args:
        probe: ``linear``, ``mlp`` or ``temporal``.
        hidden: hidden width (mlp, temporal).
        dropout: dropout rate (mlp, temporal).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (the regularisation).
    """

    def __init__(self, probe: str = "mlp", hidden: int = 64, dropout: float = 0.1, lr: float = 3e-3,
                 weight_decay: float = 1e-2):
        super().__init__()
        self.save_hyperparameters()
        self.risk_model: Optional[RiskModel] = None
        self.data_spec: dict[str, Any] = {}
        self.pos_weight = 1.0
        self._outs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def build(self, spec: dict[str, Any]) -> None:
        d = spec["dims"]
        hp = self.hparams
        probe = build_probe(hp.probe, d["n_steps"], d["n_feat"], d["n_static"], hidden=hp.hidden, dropout=hp.dropout)
        self.risk_model = RiskModel(probe, d["n_feat"], d["n_static"])
        self.data_spec = spec

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if dm is not None:
            dm.setup(stage)
            if self.risk_model is None:
                self.build(dm.spec())
                self.risk_model.set_standardizer(dm.standardizer)
            self.pos_weight = dm.pos_weight

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["riskprobe"] = json.loads(json.dumps(self.data_spec, default=str))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.risk_model is None:
            self.build(checkpoint["riskprobe"])

    def forward(self, seq, mask, static):
        return self.risk_model(seq, mask, static)

    def training_step(self, batch, _):
        seq, mask, static, y = batch
        logits = self.risk_model.logits(seq, mask, static)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=torch.tensor(self.pos_weight, device=logits.device))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch):
        seq, mask, static, y = batch
        self._outs.append((self.risk_model.logits(seq, mask, static).detach().cpu(), y.cpu()))

    def _eval_end(self, prefix: str):
        if not self._outs:
            return
        lg = torch.cat([o[0] for o in self._outs])
        y = torch.cat([o[1] for o in self._outs])
        self._outs.clear()
        if self.trainer.world_size > 1:
            lg = self.all_gather(lg).reshape(-1).cpu()
            y = self.all_gather(y).reshape(-1).cpu()
        a = M.auroc(y.numpy(), lg.numpy())
        self.log(f"{prefix}_auroc", float(a) if not np.isnan(a) else 0.5, prog_bar=True, sync_dist=False)

    def validation_step(self, batch, _):
        self._eval_step(batch)

    def on_validation_epoch_end(self):
        self._eval_end("val")

    def test_step(self, batch, _):
        self._eval_step(batch)

    def on_test_epoch_end(self):
        self._eval_end("test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


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


def calibrate_and_evaluate(module: ProbeModule, dm: HarvestDataModule, *, n_boot: int = 1000,
                           baselines: bool = True, cache: dict | None = None) -> dict[str, Any]:
    """Calibrate the probe on validation, pick its threshold there, and evaluate it and the baselines on
    the test split. Returns ``{"probe": {...}, "baselines": {name: {...}}, "margin": {...}, ...}``."""
    rm = module.risk_model
    vs, vm, vg, vy = dm.split_inputs("val")
    ts, tm, tg, ty = dm.split_inputs("test")
    rm.calibrate(_logits(rm, vs, vm, vg), vy)
    with torch.no_grad():
        val_risk, test_risk = rm(vs, vm, vg).numpy(), rm(ts, tm, tg).numpy()
    thr = M.best_threshold(vy.numpy(), val_risk)
    out: dict[str, Any] = {"probe": {"name": f"{module.hparams.probe}@k{dm.selection.k}",
                                     **M.evaluate(ty.numpy(), test_risk, threshold=thr, n_boot=n_boot)},
                           "baselines": {}}
    if baselines:
        idx = dm.idx
        yv, yt = vy.numpy(), ty.numpy()
        for name, s in training_free_scores(dm.harvests.tensors, dm.selection.k).items():
            r = baseline_metrics(s[idx["val"]], yv, s[idx["test"]], yt, n_boot=n_boot)
            out["baselines"][name] = {**r, "kind": "training-free"}
        for name, d in sklearn_baselines(dm.inputs, dm.harvests.tensors, idx, dm.harvests.schema, cache).items():
            # class-balanced training skews the probabilities: recalibrate on validation like the probe
            r = baseline_metrics(d["val"], yv, d["test"], yt, n_boot=n_boot)
            out["baselines"][name] = {**r, "kind": "sklearn", **d["info"]}
        best = max(out["baselines"].items(), key=lambda kv: kv[1]["auroc"])
        tf = [kv for kv in out["baselines"].items() if kv[1]["kind"] == "training-free"]
        best_tf = max(tf, key=lambda kv: kv[1]["auroc"])
        out["margin"] = {"best_baseline": best[0], "auroc_margin": out["probe"]["auroc"] - best[1]["auroc"],
                         "best_training_free": best_tf[0],
                         "auroc_margin_training_free": out["probe"]["auroc"] - best_tf[1]["auroc"]}
    out["calibration"] = {"a": float(rm.calib[0]), "b": float(rm.calib[1]), "threshold": thr}
    out["reliability"] = M.reliability(ty.numpy(), test_risk)
    te = dm.idx["test"]
    out["predictions"] = {"id": [dm.harvests.meta["id"][i] for i in te], "set": [dm.harvests.meta["set"][i] for i in te],
                          "category": [dm.harvests.meta["category"][i] for i in te],
                          "label": [int(v) for v in ty.tolist()], "risk": [round(float(v), 6) for v in test_risk]}
    out["importance"] = permutation_importance(rm, dm, ts, tm, tg, ty.numpy())
    return out


def feature_groups(dm: "HarvestDataModule") -> dict[str, dict[str, tuple[list[int], list[int]]]]:
    """Column groups of the probe input by feature family and by layer: ``{"family": {name: (seq cols,
    static cols)}, "layer": {...}}``."""
    names = step_feature_names(dm.harvests.schema, dm.selection.families)
    fam: dict[str, tuple[list[int], list[int]]] = {}
    lay: dict[str, tuple[list[int], list[int]]] = {}
    for j, n in enumerate(names):
        fam.setdefault(n.split(".")[0], ([], []))[0].append(j)
        if "@" in n:
            lay.setdefault(f"layer {int(n.split('@')[1]):02d}", ([], []))[0].append(j)
    n_static = dm.inputs["static"].shape[1]
    if n_static:
        sch = dm.harvests.schema
        layers = sch["raw_layers"] if dm.selection.raw_layers is None else [sch["raw_layers"][i] for i in dm.selection.raw_layers]
        H = sch["hidden_size"]
        fam["raw"] = ([], list(range(n_static)))
        for c in range(n_static):
            lay.setdefault(f"layer {layers[(c // H) % len(layers)]:02d}", ([], []))[1].append(c)
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


def format_table(res: dict[str, Any]) -> str:
    """The metrics of the probe and baselines as a text table."""
    rows = [(res["probe"]["name"], res["probe"])] + list(res.get("baselines", {}).items())
    lines = [f"{'score':<30}{'AUROC [95% CI]':>22}{'AUPRC':>8}{'PRR':>8}{'Brier':>8}{'ECE':>7}{'n':>6}{'wrong':>6}"]
    for name, r in rows:
        ci = r["auroc_ci"]
        lines.append(f"{name:<30}{r['auroc']:>8.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{r['auprc']:>8.3f}{r['prr']:>8.3f}"
                     f"{r['brier']:>8.3f}{r['ece']:>7.3f}{r['n']:>6}{r['n_incorrect']:>6}")
    if "margin" in res:
        m = res["margin"]
        lines.append(f"probe - best baseline ({m['best_baseline']}): {m['auroc_margin']:+.3f} AUROC; "
                     f"- best training-free ({m['best_training_free']}): {m['auroc_margin_training_free']:+.3f}")
    return "\n".join(lines)


def fit_probe(dm: HarvestDataModule, module_kwargs: dict[str, Any], *, max_epochs: int = 60, patience: int = 8,
              seed: int = 0, workdir: str | Path | None = None) -> ProbeModule:
    """Train one probe quietly (no loggers) with early stopping on validation AUROC; return the best."""
    import tempfile

    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-probe banners in sweeps
    L.seed_everything(seed, verbose=False)
    module = ProbeModule(**module_kwargs)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ck = ModelCheckpoint(dirpath=tmp, monitor="val_auroc", mode="max", filename="best")
        trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[ck, EarlyStopping(monitor="val_auroc", mode="max", patience=patience)],
                            accelerator="cpu", devices=1, default_root_dir=tmp, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=dm)
        if ck.best_model_path:
            state = torch.load(ck.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
    return module


def sweep_k(dm: HarvestDataModule, module_kwargs: dict[str, Any], ks: list[int], *, max_epochs: int = 60,
            patience: int = 8, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Probe and baselines for each k: how early the risk becomes visible."""
    K = dm.harvests.schema["K"]
    table = []
    cache: dict = {}
    for k in sorted({min(int(k), K) for k in ks}):
        dmk = copy.copy(dm)
        dmk.selection = FeatureSelection(dm.selection.families, k, dm.selection.raw_layers)
        dmk.inputs = build_inputs(dm.harvests, dmk.selection)
        tr = dm.idx["train"]
        dmk.standardizer = Standardizer.fit(dmk.inputs["seq"][tr], dmk.inputs["mask"][tr], dmk.inputs["static"][tr])
        mod = fit_probe(dmk, module_kwargs, max_epochs=max_epochs, patience=patience, seed=seed)
        res = calibrate_and_evaluate(mod, dmk, n_boot=n_boot, cache=cache)
        table.append({"k": k, "probe": res["probe"], "baselines": res["baselines"]})
        log.info("k=%d probe AUROC %.3f", k, res["probe"]["auroc"])
    return {"ks": [r["k"] for r in table], "rows": table}


def sweep_series(sweep: dict[str, Any]) -> dict[str, list[dict[str, Any] | None]]:
    """Per score (``probe`` and each baseline, named without its ``@k``), its metrics at each k of a sweep."""
    rows = sweep["rows"]
    series: dict[str, list] = {"probe": [r["probe"] for r in rows]}
    for name in rows[0]["baselines"]:
        base = name.split("@k")[0]
        series[base] = [next((v for kk, v in r["baselines"].items() if kk.split("@k")[0] == base), None) for r in rows]
    return series


def format_sweep(sweep: dict[str, Any]) -> str:
    """AUROC [95% CI] by k for the probe and every baseline."""
    lines = [f"{'score':<28}" + "".join(f"{'k=' + str(r['k']):>22}" for r in sweep["rows"])]
    for name, ms in sweep_series(sweep).items():
        cells = [f"{m['auroc']:.3f} [{m['auroc_ci'][0]:.2f},{m['auroc_ci'][1]:.2f}]" if m else "-" for m in ms]
        lines.append(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def plot_sweep(sweep: dict[str, Any], path: str | Path) -> None:
    """AUROC vs k with 95% intervals, probe and baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sweep["rows"]
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ms in sweep_series(sweep).items():
        a = np.array([m["auroc"] for m in ms])
        lo = np.array([m["auroc_ci"][0] for m in ms])
        hi = np.array([m["auroc_ci"][1] for m in ms])
        lw = 2.5 if name == "probe" else 1.2
        ax.plot(ks, a, marker="o", lw=lw, label=name)
        if name == "probe":
            ax.fill_between(ks, lo, hi, alpha=0.2)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("k (early steps seen)")
    ax.set_ylabel("test AUROC (wrong answer)")
    ax.set_title("How early is the risk visible?")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from .fsutil import atomic_savefig

    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def save_calibrated(module: ProbeModule, path: str | Path) -> None:
    """Save a Lightning-compatible checkpoint of a (calibrated) probe from one process."""
    torch.save({"state_dict": module.state_dict(), "riskprobe": json.loads(json.dumps(module.data_spec, default=str)),
                "hyper_parameters": {k: v for k, v in module.hparams.items() if not k.startswith("_")},
                "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0}, path)


# ------------------------------------------------------------------------------------------------- CLI
RUN_ENTRIES = {"config.yaml", "metrics.json", "sweep.json", "auroc_vs_k.png", "csv", "wandb", "lightning_logs", "ckpt"}
CKPT_ENTRIES = {"best.ckpt", "final.ckpt", "metrics.json", "config.yaml"}


def _is_main_process() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


class RunStage:
    """The run folder and checkpoint folder of a fit, written under staging names and renamed into place
    only when the fit succeeds, so that a failed fit leaves nothing behind.

    An existing run or checkpoint folder is replaced only if it holds nothing but what a riskprobe run
    writes (``RUN_ENTRIES``, ``CKPT_ENTRIES``); anything else is refused before training starts.
    """

    def __init__(self, root: Path, ckdir: Path, *, staged: bool = True):
        self.final_root, self.final_ckdir, self.staged = Path(root), Path(ckdir), staged
        inside = self.final_ckdir.resolve().is_relative_to(self.final_root.resolve())
        self.ck_inside = inside
        if staged:
            self.root = self.final_root.with_name(f".{self.final_root.name}.partial")
            self.ckdir = (self.root / self.final_ckdir.resolve().relative_to(self.final_root.resolve()) if inside
                          else self.final_ckdir.with_name(f".{self.final_ckdir.name}.partial"))
        else:
            self.root, self.ckdir = self.final_root, self.final_ckdir

    @staticmethod
    def _replaceable(path: Path, allowed: set[str]) -> bool:
        if not path.exists():
            return True
        if path.is_symlink() or not path.is_dir():
            return False
        return all(e.name in allowed or e.name.startswith(".") and e.name.endswith(".tmp") for e in os.scandir(path))

    def prepare(self) -> None:
        if not self.staged:
            return
        if not self._replaceable(self.final_root, RUN_ENTRIES):
            raise UserError("exists and holds files that are not a riskprobe run's; choose another "
                            "--trainer.default_root_dir", file=self.final_root, field="trainer.default_root_dir")
        if not self.ck_inside and not self._replaceable(self.final_ckdir, CKPT_ENTRIES):
            raise UserError("exists and holds files that are not a riskprobe run's checkpoints; choose another "
                            "--checkpoint_dir", file=self.final_ckdir, field="checkpoint_dir")
        if _is_main_process():  # leftovers of a crashed fit into the same folders
            self.discard()

    def final_path(self, p: str | Path) -> str:
        """Where a path inside the staging folders will be once published."""
        p = Path(p)
        for stage, final in ((self.ckdir, self.final_ckdir), (self.root, self.final_root)):
            try:
                return str(final / p.relative_to(stage))
            except ValueError:
                continue
        return str(p)

    def _swap(self, stage: Path, final: Path) -> None:
        import shutil
        import tempfile

        if not stage.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.rmdir(old)
            os.replace(final, old)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)

    def publish(self) -> None:
        if not self.staged:
            return
        if not self.ck_inside:
            self._swap(self.ckdir, self.final_ckdir)
        self._swap(self.root, self.final_root)

    def discard(self) -> None:
        import shutil
        import sys

        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=1)  # its writer threads would recreate the folder after removal
        if self.staged:
            for d in (self.root, self.ckdir):
                if d.name.endswith(".partial"):
                    shutil.rmtree(d, ignore_errors=True)


def _cli_class():
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger

    class RiskprobeCLI(LightningCLI):
        """``riskprobe fit|validate|test --config configs/fit/<name>.yaml`` (LightningCLI)."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--config_version", type=int, default=1, help="version of this config's layout")
            parser.add_argument("--run_name", type=str, default="default",
                                help="names the run (runs/<run_name> unless --trainer.default_root_dir is given)")
            parser.add_argument("--checkpoint_dir", type=Optional[str], default=None,
                                help="where checkpoints go (default <default_root_dir>/ckpt)")
            parser.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs, on val AUROC)")
            parser.add_argument("--sweep_ks", type=Optional[list[int]], default=None,
                                help="after fit, train and evaluate a probe for each k (AUROC vs k)")
            parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples for 95%% intervals")
            parser.add_argument("--wandb", type=str, default="offline",
                                help="offline (default, no key needed), online, or disabled; WANDB_MODE overrides")

        def _cfg(self):
            return self.config[self.subcommand] if self.subcommand else self.config

        def instantiate_trainer(self, **kwargs):
            cfg = self._cfg()
            if cfg.config_version != 1:
                raise UserError(f"unsupported config_version {cfg.config_version} (this riskprobe reads 1)",
                                field="config_version")
            root = Path(cfg.trainer.default_root_dir or os.path.join("runs", cfg.run_name))
            ckdir = Path(cfg.checkpoint_dir or root / "ckpt")
            # A fit writes into staging folders that become root and ckdir only when it succeeds.
            self.stage = RunStage(root, ckdir, staged=self.subcommand == "fit")
            self.stage.prepare()
            kwargs["default_root_dir"] = str(self.stage.root)
            self.checkpoint_dir = str(self.stage.ckdir)
            callbacks = [ModelCheckpoint(dirpath=self.checkpoint_dir, filename="best", monitor="val_auroc", mode="max",
                                         enable_version_counter=False),
                         EarlyStopping(monitor="val_auroc", mode="max", patience=cfg.patience)]
            loggers = [CSVLogger(str(self.stage.root), name="csv")]
            mode = os.environ.get("WANDB_MODE") or cfg.wandb
            if mode != "disabled" and self.subcommand == "fit":
                os.environ.setdefault("WANDB_SILENT", "true")
                try:
                    from lightning.pytorch.loggers import WandbLogger

                    wl = WandbLogger(project="riskprobe", name=cfg.run_name, save_dir=str(self.stage.root),
                                     offline=mode != "online")
                    # Lightning always passes anonymous=None, which wandb answers with a deprecation warning
                    getattr(wl, "_wandb_init", {}).pop("anonymous", None)
                    loggers.append(wl)
                except ModuleNotFoundError:
                    log.warning("wandb is not installed; logging to CSV only")
            if cfg.trainer.logger in (None, True):
                kwargs["logger"] = loggers if self.subcommand == "fit" else False
            trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
            return self._instantiate_trainer(trainer_config, extra + callbacks)

        def _resolved_config(self) -> str:
            return self._parser(self.subcommand).dump(self._cfg(), skip_none=False)

        def _finish(self, best: str | None) -> None:
            if not self.trainer.is_global_zero:
                return
            from .fsutil import atomic_write_text

            cfg = self._cfg()
            module, dm = self.model, self.datamodule
            dm.setup("test")
            if best:
                state = torch.load(best, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or "state_dict" not in state or "riskprobe" not in state:
                    raise UserError("not a riskprobe checkpoint (no state_dict or riskprobe section)", file=best,
                                    field="ckpt_path")
                if module.risk_model is None:
                    module.build(state["riskprobe"])
                module.load_state_dict(state["state_dict"])
            st = self.stage
            res = calibrate_and_evaluate(module, dm, n_boot=cfg.n_boot)
            res["data"] = {k: v for k, v in dm.spec().items() if k not in ("feature_schema",)}
            res["checkpoint"] = st.final_path(best) if best else None
            st.ckdir.mkdir(parents=True, exist_ok=True)
            final = st.ckdir / "final.ckpt"
            tmp = st.ckdir / ".final.ckpt.tmp"
            save_calibrated(module, tmp)  # no collective calls: other ranks may have finished
            os.replace(tmp, final)
            res["final_checkpoint"] = st.final_path(final)
            root = st.root
            root.mkdir(parents=True, exist_ok=True)
            print(format_table(res))
            if cfg.sweep_ks:
                mk = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
                sw = sweep_k(dm, mk, cfg.sweep_ks, max_epochs=self.trainer.max_epochs or 60, patience=cfg.patience,
                             n_boot=cfg.n_boot)
                atomic_write_json(root / "sweep.json", sw)
                plot_sweep(sw, root / "auroc_vs_k.png")
                res["sweep"] = {"file": st.final_path(root / "sweep.json"), "plot": st.final_path(root / "auroc_vs_k.png")}
                print("\nAUROC vs k (95% CI)\n" + format_sweep(sw))
            text = self._resolved_config()
            for d in {root, st.ckdir}:
                atomic_write_json(d / "metrics.json", res)
                # beside the checkpoint too, so that `riskprobe export` records metrics and config in the artifact
                atomic_write_text(d / "config.yaml", text)
            st.publish()
            print(f"\nmetrics: {st.final_root / 'metrics.json'}   checkpoint: {st.final_ckdir / 'final.ckpt'}")

        def after_fit(self):
            cb = self.trainer.checkpoint_callback
            self._finish(cb.best_model_path if cb is not None and cb.best_model_path else None)

        def after_test(self):
            self._finish(self.config_init[self.subcommand].get("ckpt_path"))

    return RiskprobeCLI


def cli_main(args: list[str]) -> int:
    """Run LightningCLI with ``args`` (``fit|validate|test ...``); user mistakes raise UserError."""
    os.environ.setdefault("WANDB_SILENT", "true")
    cls = _cli_class()
    import sys
    import warnings

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    cli = None

    class _Tracked(cls):  # remember the instance, so that a failure can discard its staging folders
        def instantiate_trainer(self, **kwargs):
            nonlocal cli
            cli = self
            return super().instantiate_trainer(**kwargs)

    try:
        _Tracked(ProbeModule, HarvestDataModule, args=None if args == sys.argv[1:] else args, seed_everything_default=0,
                 save_config_callback=None, parser_kwargs={"exit_on_error": False},
                 trainer_defaults={"max_epochs": 60, "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                                   "num_sanity_val_steps": 0, "log_every_n_steps": 5})
    except BaseException:
        if cli is not None and getattr(cli, "stage", None) is not None and _is_main_process():
            cli.stage.discard()
        raise
    return 0
