"""Training: a LightningDataModule over harvests, a LightningModule around a plain probe, and the
LightningCLI behind ``riskprobe fit|validate|test``.

After ``fit``, the best checkpoint is calibrated on the validation split, evaluated on the test split
against the baselines of :mod:`riskprobe.evaluation.baselines`, and ``metrics.json`` is written to the run directory
(``--trainer.default_root_dir``), with an optional sweep over k (``--sweep_ks``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from ..errors import UserError, check_version
from ..evaluation.results import FitMetrics
from ..evaluation.tables import format_controls, format_sweep, format_table
from ..fsutil import atomic_write_json, atomic_write_text, dump_yaml, load_yaml, owned_dir, swap_dir
from ..probes.artifact import check_checkpoint
from ..resources import asset, resolve_config
from .data import HarvestDataModule
from .evaluate import calibrate_and_evaluate, sweep_k
from .loggers import WANDB_MODES, RunConfigCallback, RunCSVLogger, WandbRunLogger
from .module import ProbeModule, quiet_lightning, save_calibrated
from .selection import SelectionGrid, format_selection, select_recipe

# ------------------------------------------------------------------------------------------------- CLI
FIT_CONFIG_VERSION = 1
RUN_ENTRIES = {"config.yaml", "metrics.json", "sweep.json", "auroc_vs_k.png", "risk_coverage.png",
                "csv", "wandb", "lightning_logs", "ckpt"}


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
        ours = owned_dir(lambda n: n in allowed or n.startswith(".") and n.endswith(".tmp")
                         or allowed is CKPT_ENTRIES and n.endswith(".ckpt"), folders=True)  # checkpoint.filename
        return not (path.exists() or path.is_symlink()) or ours(path)

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
        if stage.exists():
            swap_dir(stage, final)

    def publish(self) -> None:
        if not self.staged:
            return
        if not self.ck_inside:
            self._swap(self.ckdir, self.final_ckdir)
        self._swap(self.root, self.final_root)

    def discard(self) -> None:
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=1)  # its writer threads would recreate the folder after removal
        if self.staged:
            for d in (self.root, self.ckdir):
                if d.name.endswith(".partial"):
                    shutil.rmtree(d, ignore_errors=True)


def check_fits(have: dict, got: dict, path) -> None:
    """Refuse a checkpoint (riskprobe section ``got``) fitted on other inputs than the data module's (``have``: its
    :meth:`~riskprobe.training.data.HarvestDataModule.spec`): another model, or inputs of another shape."""
    want_model = (got.get("model_identity") or {}).get("name")
    data_model = (have.get("model_identity") or {}).get("name")
    if have and (have.get("dims") != got.get("dims") or (want_model and data_model and want_model != data_model)):
        raise UserError(f"this checkpoint was fitted on other inputs (model {want_model}, dims {got.get('dims')}) than "
                        f"the data given here (model {data_model}, dims {have.get('dims')}); give the harvests and "
                        "features it was fitted on (its config.yaml: riskprobe test --config RUN/config.yaml ...)",
                        file=path, field="ckpt_path")


def _load_into(module: ProbeModule, path: str | Path) -> None:
    """Load a fit checkpoint into ``module`` through the one checked loader (no pickled objects)."""
    state = check_checkpoint(path)
    if module.risk_model is None:
        module.build(state["riskprobe"])
    check_fits(module.data_spec or {}, state["riskprobe"], path)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise UserError(f"the checkpoint's weights do not fit the probe built from this config "
                        f"({str(e).splitlines()[0][:120]}); give the config it was fitted with", file=path,
                        field="ckpt_path") from None


TRAINER_DEFAULTS = {"max_epochs": 60, "accelerator": "cpu", "devices": 1, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 5,
                    # Lightning's epoch bar prints a line per epoch where stderr is not a terminal; riskprobe's own
                    # bars (selection, sweep) have totals. --trainer.enable_progress_bar true brings it back.
                    "enable_progress_bar": False}
#: the callbacks and loggers every fit gets unless its config overrides them (declared in YAML)
DEFAULTS_FILE = asset("configs", "trainer.yaml")
_OUR_LOGGERS = {f"{RunCSVLogger.__module__}.{RunCSVLogger.__name__}", f"{WandbRunLogger.__module__}.{WandbRunLogger.__name__}"}
_WANDB_LOGGER = f"{WandbRunLogger.__module__}.{WandbRunLogger.__name__}"


class RiskprobeCLI(LightningCLI):
    """``riskprobe fit|validate|test --config <name or file>`` (LightningCLI).

    On top of LightningCLI: a versioned config; the best checkpoint by validation AUROC and early stopping as
    config groups (``checkpoint``, ``early_stopping``) and the CSV and wandb loggers (``trainer.logger``), all
    declared in ``riskprobe/assets/configs/trainer.yaml``; an optional recipe selection by grouped CV before the
    fit; after it, calibration, evaluation against the baselines, an optional sweep over k, and a run folder that
    appears only when everything succeeded (:class:`RunStage`).

    ``tracker``, when given, receives the instance as soon as its config is parsed (so that a caller can discard
    the staging folders of a fit that fails).
    """

    def __init__(self, *args, tracker: Optional[list] = None, **kwargs):
        self.tracker = tracker
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--version", type=Optional[int], default=None, help="version of this config's layout (1)")
        parser.add_argument("--config_version", type=Optional[int], default=None,
                            help="the name older configs used for version")
        parser.add_argument("--run_name", type=str, default="default",
                            help="names the run (runs/<run_name> unless --trainer.default_root_dir is given)")
        parser.add_argument("--checkpoint_dir", type=Optional[str], default=None,
                            help="where checkpoints go (default <default_root_dir>/ckpt)")
        parser.add_argument("--patience", type=int, default=8, help="early stopping patience (epochs, on val AUROC)")
        parser.add_argument("--sweep_ks", type=Optional[list[int]], default=None,
                            help="after fit, train and evaluate a probe for each k (AUROC vs k)")
        parser.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples for 95%% intervals")
        parser.add_argument("--selection", type=Optional[SelectionGrid], default=None,
                            help="choose the probe kind, feature families, raw layers, pooling and C by grouped "
                                 "cross-validation on the training split before fitting (see riskprobe.training."
                                 "selection); null: fit model/data as given")
        parser.add_argument("--wandb", type=str, default="offline",
                            help="offline (default, no key needed), online, or disabled; WANDB_MODE overrides")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.link_arguments("patience", "early_stopping.patience")

    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Check the config's version, open the run's staging folders (a fit writes into folders that become the
        run and checkpoint folders only when it succeeds) and point the checkpoint and the loggers into them."""
        if self.tracker is not None:
            self.tracker.append(self)
        cfg = self._cfg()
        self.as_given = cfg.clone()  # what config.yaml records: the staging folders below are not the run's
        legacy = cfg.config_version is not None and cfg.version is None
        check_version(cfg.config_version if legacy else cfg.version, FIT_CONFIG_VERSION, kind="fit config",
                      field="config_version" if legacy else "version")
        if cfg.wandb not in WANDB_MODES:
            raise UserError(f"unknown wandb mode '{cfg.wandb}' (use {', '.join(WANDB_MODES)})", field="wandb")
        root = Path(cfg.trainer.default_root_dir or os.path.join("runs", cfg.run_name))
        ckdir = Path(cfg.checkpoint_dir or root / "ckpt")
        self.stage = RunStage(root, ckdir, staged=self.subcommand == "fit")
        self.stage.prepare()
        cfg.trainer.default_root_dir = str(self.stage.root)
        cfg.checkpoint.dirpath = str(self.stage.ckdir)
        cfg.trainer.logger = self._loggers(cfg) if self.subcommand == "fit" else False

    def _loggers(self, cfg):
        """The configured loggers, riskprobe's own pointed into the run folder; wandb only where it is wanted
        (not disabled, and one run: on rank 0, where Lightning logs)."""
        declared = cfg.trainer.logger
        if not isinstance(declared, list):
            return declared
        mode = os.environ.get("WANDB_MODE") or cfg.wandb
        out = []
        for entry in declared:
            name = getattr(entry, "class_path", None)
            if name == _WANDB_LOGGER and (mode == "disabled" or not _is_main_process()):
                continue
            if name in _OUR_LOGGERS:
                entry = entry.clone()
                entry.init_args.save_dir = entry.init_args.save_dir or str(self.stage.root)
                if name == _WANDB_LOGGER:
                    entry.init_args.mode, entry.init_args.name = mode, entry.init_args.name or cfg.run_name
            out.append(entry)
        return out or False

    def before_fit(self):
        cfg = self._cfg()
        self.selection_result = None
        if cfg.selection is None:
            return
        grid = cfg.selection
        if not isinstance(grid, SelectionGrid):
            grid = SelectionGrid(**(grid.as_dict() if hasattr(grid, "as_dict") else dict(grid)))
        dm, module = self.datamodule, self.model
        dm.setup("fit")
        mk = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
        res = select_recipe(dm, grid, module_kwargs=mk, seed=cfg.seed_everything or 0, progress=True)
        dm.use(res.best.selection(dm.selection.k))
        module.use_recipe(res.best.probe, res.best.C)
        self.selection_result = res.to_dict()
        print(format_selection(self.selection_result))

    def resolved_config(self) -> str:
        """The config as run, in the run's own folders. After a selection it names the chosen recipe (and no
        selection), so that `riskprobe test --config` and a refit with it rebuild the probe that was fitted; the CV
        table is in metrics.json."""
        cfg = self.as_given.clone()
        cfg.trainer.default_root_dir = str(self.stage.final_root)
        res = getattr(self, "selection_result", None)
        if res:
            b = res["best"]
            cfg.model.probe = b["probe"]
            if b["C"] is not None:
                cfg.model.C = b["C"]
            cfg.data.families, cfg.data.raw_layers, cfg.data.raw_pool = b["families"], b["raw_layers"], b["raw_pool"]
            cfg.selection = None
        full = self.config.clone()
        full[self.subcommand] = cfg
        text = self.parser.dump(full, skip_none=False)
        return dump_yaml((load_yaml(Path("config.yaml"), text) or {})[self.subcommand])

    def _finish(self, best: str | None) -> None:
        if not self.trainer.is_global_zero:
            return
        cfg = self._cfg()
        module, dm = self.model, self.datamodule
        dm.setup("test")
        if best:
            _load_into(module, best)
        st = self.stage
        res = calibrate_and_evaluate(module, dm, n_boot=cfg.n_boot)
        res["data"] = {k: v for k, v in dm.spec().items() if k not in ("feature_schema",)}
        if getattr(self, "selection_result", None):
            res["selection"] = self.selection_result
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
        print(format_controls(res))
        if cfg.sweep_ks:
            mk = {k: v for k, v in module.hparams.items() if not k.startswith("_")}
            sw = sweep_k(dm, mk, cfg.sweep_ks, max_epochs=self.trainer.max_epochs or 60, patience=cfg.patience,
                         progress=True, n_boot=cfg.n_boot)
            atomic_write_json(root / "sweep.json", sw)
            res["sweep"] = {"file": st.final_path(root / "sweep.json")}
            print("\nAUROC vs k (95% CI)\n" + format_sweep(sw))
        for lg in self.trainer.loggers:  # closed before the staging folder is renamed into place
            if isinstance(lg, WandbRunLogger):
                lg.finish()
        text = self.resolved_config()
        metrics = FitMetrics.from_dict(res)  # the file's layout is checked before anything is published
        for d in {root, st.ckdir}:
            metrics.write(d / "metrics.json")
            # beside the checkpoint too, so that `riskprobe export` records metrics and config in the artifact
            atomic_write_text(d / "config.yaml", text)
        st.publish()
        print(f"\nmetrics: {st.final_root / 'metrics.json'}   checkpoint: {st.final_ckdir / 'final.ckpt'}")

    def after_fit(self):
        cb = self.trainer.checkpoint_callback
        self._finish(cb.best_model_path if cb is not None and cb.best_model_path else None)

    def before_test(self):
        """A checkpoint fitted on other inputs is refused here, before Lightning loads it."""
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt and ckpt not in ("best", "last"):
            self.datamodule.setup("test")
            check_fits(self.datamodule.spec(), check_checkpoint(ckpt)["riskprobe"], ckpt)

    def after_test(self):
        """Evaluate a checkpoint as it is: no recalibration, no sweep, nothing written over; the metrics go
        to ``<default_root_dir>/test_metrics.json``."""
        if not self.trainer.is_global_zero:
            return
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        module, dm = self.model, self.datamodule
        dm.setup("test")
        if ckpt:
            _load_into(module, ckpt)
        res = calibrate_and_evaluate(module, dm, n_boot=self._cfg().n_boot, calibrate=False)
        res["checkpoint"] = str(ckpt) if ckpt else None
        print(format_table(res))
        out = Path(self.stage.final_root) / "test_metrics.json"
        atomic_write_json(out, res)
        print(f"\ntest metrics: {out}")


def _option_values(argv: list[str], *names: str) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a in names and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif any(a.startswith(n + "=") for n in names):
            out.append(a.split("=", 1)[1])
    return out


def check_args(args: list[str]) -> list[str]:
    """What every entry point (the command, the demo, the Python API) checks before LightningCLI parses:
    a shipped config may be named (``--config default``); config files are read safely (no aliases, UTF-8,
    at most 1 MiB, a mapping); a checkpoint is loaded without unpickling anything."""
    args = list(args)
    for i, a in enumerate(args[:-1]):
        if a in ("--config", "-c"):
            args[i + 1] = str(resolve_config("fit", args[i + 1]))
        elif a.startswith("--config="):
            args[i] = "--config=" + str(resolve_config("fit", a.split("=", 1)[1]))
    for path in _option_values(args, "--config", "-c"):
        if not isinstance(load_yaml(path), dict):
            raise UserError("expected a mapping at the top level", file=path)
    for path in _option_values(args, "--ckpt_path"):  # never let a checkpoint's pickle run code
        if path not in ("best", "last", "null", "None"):
            check_checkpoint(path)
    return args


def cli_main(args: list[str]) -> int:
    """Run LightningCLI with ``args`` (``fit|validate|test ...``); user mistakes raise UserError."""
    run_cli(args)
    return 0


def run_cli(args: list[str]) -> Path | None:
    """:func:`cli_main`, returning the run folder a fit published (``metrics.json`` and the rest), else None."""
    quiet_lightning()
    args = check_args(args)
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    tracker: list[RiskprobeCLI] = []
    sub = {"default_config_files": [str(DEFAULTS_FILE)]}
    try:
        RiskprobeCLI(ProbeModule, HarvestDataModule, args=args, tracker=tracker, seed_everything_default=0,
                     save_config_callback=RunConfigCallback,
                     parser_kwargs={"exit_on_error": False, "fit": sub, "validate": sub, "test": sub},
                     trainer_defaults=TRAINER_DEFAULTS)
    except BaseException as e:
        cli = tracker[0] if tracker else None
        if cli is None and isinstance(e, (argparse.ArgumentError, KeyError)):
            # raised while the config and the command line were parsed: the user's to fix
            raise UserError(" ".join(str(e).split())[:500]) from None
        if cli is not None and getattr(cli, "stage", None) is not None and _is_main_process():
            cli.stage.discard()
        raise
    cli = tracker[0] if tracker else None
    stage = getattr(cli, "stage", None)
    if stage is None or not (stage.final_root / "metrics.json").is_file() or args[:1] != ["fit"]:
        return None
    return stage.final_root


def fit(config: dict[str, Any] | str | Path, *overrides: str) -> Path:
    """Train, calibrate and evaluate a probe from a fit config (a mapping, a YAML file, or a shipped config's name
    such as ``"default"``), as ``riskprobe fit --config`` does; ``overrides`` are more command-line options
    (``"--data.k", "8"``). Returns the run folder (``metrics.json``, ``config.yaml``; the checkpoints under the
    config's ``checkpoint_dir``). The plots of a run are drawn from its files by
    :func:`riskprobe.report.plots.draw_run`."""
    if isinstance(config, dict):
        with tempfile.TemporaryDirectory(prefix="riskprobe-fit-") as d:
            path = Path(d) / "config.yaml"
            path.write_text(dump_yaml(config), encoding="utf-8")
            root = run_cli(["fit", "--config", str(path), *overrides])
    else:
        root = run_cli(["fit", "--config", str(config), *overrides])
    if root is None:  # pragma: no cover - a fit that returns has published its run
        raise RuntimeError("the fit published no run folder")
    return root


def evaluate_run(run: str | Path, *overrides: str) -> dict[str, Any]:
    """Evaluate a published run's final (calibrated) checkpoint on its test split, as ``riskprobe test --config
    RUN/config.yaml --ckpt_path ...`` does: nothing in the run is changed but ``test_metrics.json``, whose content
    is returned. ``overrides`` are more command-line options (another harvest: ``"--data.paths", "[h2]"``)."""
    run = Path(run)
    metrics = FitMetrics.read(run / "metrics.json")
    ckpt = run / "ckpt" / "final.ckpt"
    if not ckpt.is_file():  # a checkpoint folder outside the run (--checkpoint_dir)
        ckpt = Path(metrics.final_checkpoint or ckpt)
    run_cli(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
             "--trainer.default_root_dir", str(run), *overrides])
    return json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))
