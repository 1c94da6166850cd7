"""Whole jobs as one call: the demo (harvest -> fit -> export -> score -> report, then the early risk against
what the model already says about itself, on the test split and on a source never trained on) and the
architecture comparison. Each stage reads the previous stage's files; a rerun resumes finished harvest shards.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from .errors import UserError
from .evaluation.baselines import training_free_scores
from .evaluation.results import FitMetrics
from .evaluation.versus import format_versus, versus_training_free
from .fsutil import atomic_write_json, atomic_write_text, dump_yaml, load_yaml, owned_dir
from .harvest.config import HarvestConfig
from .harvest.run import harvest
from .harvest.store import load_harvests, read_manifest
from .models import load_model
from .models.loader import same_model
from .probes.artifact import export_checkpoint, prepare_out, write_artifact
from .probes.modules import BlendProbe
from .prompts.sets import split_of
from .report.build import write_report
from .report.plots import draw_run
from .resources import datasets_root, shipped_probe
from .serving.jsonl import score_file
from .serving.scorer import Scorer
from .training import fit
from .training.adapt import HeadInputs, adapt_risk_model

COMPARE_PROMPTS = "builtin-factual:200+triviaqa:200"
DEMO_ENTRIES = {"harvest", "unseen", "fit", "checkpoints", "probe", "sample.jsonl", "scored.jsonl", "report",
                "recipe.yaml", "summary.json", "fit.log"}


@dataclass(frozen=True)
class DemoPlan:
    """What a demo of one size harvests: the sources the probe trains on, a source it never sees, and how many
    bootstrap resamples its intervals take."""

    train: str
    unseen: str
    unseen_name: str
    n_boot: int
    sweep_ks: tuple[int, ...]


# Sizes of `riskprobe demo --size`: `full` is the README's main command (about 7 minutes on two CPU cores);
# `small` runs the same code on a few hundred questions (the test suite runs it).
DEMO_PLANS = {
    ("full", True): DemoPlan("builtin+geo:600+triviaqa:300", "qa_wikidata:400", "qa_wikidata", 1000, (0, 2, 4, 8)),
    ("full", False): DemoPlan("builtin+geo:600", "geo_towns:400", "geo_towns", 1000, (0, 2, 4, 8)),
    ("small", True): DemoPlan("builtin-factual:100+geo:100", "qa_wikidata:60", "qa_wikidata", 200, (0, 4)),
    ("small", False): DemoPlan("builtin-factual:100+geo:100", "geo_towns:60", "geo_towns", 200, (0, 4)),
}
SIZES = ("full", "small")
PUBLIC_SETS_HINT = ("export RISKPROBE_DATASETS=/path/to/datasets (the folder that holds triviaqa/, qa_wikidata/ ...; "
                    "see docs/install.md), or RISKPROBE_HUB=1 to read TriviaQA from the Hugging Face hub")


def public_sets_available() -> bool:
    """Whether the public labelled sets are on this machine (``RISKPROBE_DATASETS`` or ``../shared/datasets``)."""
    root = datasets_root()
    return root is not None and (root / "triviaqa" / "triviaqa_sm_sub.jsonl").is_file() and \
        (root / "bigbench_qa_wikidata" / "bigbench_qa_wikidata.jsonl").is_file()


def shipped_recipe(name: str = "default") -> dict[str, Any]:
    """The recipe a shipped probe was fitted with (its ``probe.json``: probe kind, ``C``, feature families, k,
    raw layers and pooling) and the harvest features it reads, so that a new fit can repeat it exactly."""
    meta = json.loads((shipped_probe(name) / "probe.json").read_text())
    cfg = load_yaml(Path("probe.json"), meta["training"]["config"]) or {}
    sch = meta["feature_spec"]["feature_schema"]
    features = {k: sch[k] for k in ("layers", "normalisation", "lens_layers", "lens_steps", "raw_layers") if k in sch}
    features.update(K=32, families=list(sch["families"]), raw_steps=max(4, int(meta["feature_spec"]["selection"]["k"])))
    return {"model": cfg.get("model", {}), "data": {k: v for k, v in cfg.get("data", {}).items()
                                                    if k in ("families", "k", "raw_layers", "raw_pool", "layer_bins")},
            "features": features, "model_identity": meta["model_identity"]["name"]}


@dataclass
class DemoResult:
    """What :func:`demo` made and measured (also written as ``OUT/summary.json``)."""

    out: str
    seconds: float
    public_sets: bool
    train_prompts: str
    unseen_prompts: str
    k: int
    harvest_summary: dict[str, Any]
    unseen_summary: dict[str, Any]
    versus: dict[str, dict[str, Any]]
    verdict: str
    artifact: str
    scored: str
    score_stats: dict[str, Any]
    report: str
    fit: dict[str, Any] = field(default_factory=dict)


def _verdict(rows: dict[str, dict[str, Any]], k: int) -> str:
    """One line: whether the early probe beats the best training-free score on each row group (by the interval of
    the paired margin)."""
    parts = []
    for name, r in rows.items():
        m, ci = r["margin"], r["margin_ci"]
        if np.isnan(m):
            parts.append(f"{name}: not measurable (one class only)")
        elif not np.isnan(ci[0]) and ci[0] > 0:
            parts.append(f"{name}: wins ({m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}])")
        elif not np.isnan(ci[1]) and ci[1] < 0:
            parts.append(f"{name}: loses ({m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}])")
        else:
            parts.append(f"{name}: no clear difference ({m:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}])")
    return f"early risk (k = {k}) against the best training-free score: " + "; ".join(parts)


def _sample_file(harvest_dir: Path, path: Path, *, given: bool, n: int = 12) -> Path:
    """A small scoring input: held-out questions to generate and, with ``given``, right and wrong given answers."""
    ds = datasets.load_from_disk(str(harvest_dir))
    test = ds.select([i for i, s in enumerate(ds["split"]) if s == "test"][:n])
    lines = []
    for j, r in enumerate(test):
        lines.append({"id": f"gen-{r['id']}", "prompt": r["prompt"]})
        if given:
            other = test[(j + 1) % len(test)]["answers"][0]
            resp, tag = (r["answers"][0], "right") if j % 2 == 0 else (other, "wrong")
            lines.append({"id": f"{tag}-{r['id']}", "prompt": r["prompt"], "response": resp})
    atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in lines))
    return path


def _versus_rows(art: Path, parts: dict[str, tuple[Path, np.ndarray | None]], *, n_boot: int) -> dict[str, dict]:
    """The exported probe's risk on harvested rows (no model run: the signatures are on disk) beside the training-
    free scores of the same rows, per named group: ``{name: (harvest folder, row indices or None for all)}``."""
    sc = Scorer.load(art)
    out = {}
    for name, (path, rows) in parts.items():
        h = load_harvests([path])
        idx = np.arange(len(h)) if rows is None else rows
        tensors = {k: v[idx] for k, v in h.tensors.items()}
        risk = sc.risk(tensors)
        tf = training_free_scores(tensors, sc.k)
        y = np.asarray(h.meta["label"])[idx]
        out[name] = versus_training_free(y, risk, tf, n_boot=n_boot)
    return out


def demo(out: str | Path = "runs/demo", *, model: str = "smollm2-135m", size: str = "full", progress: bool = True,
         log: Callable[[str], None] | None = None) -> DemoResult:
    """The whole job on the bundled default: harvest (generate, grade, capture signatures) a mix of question
    sources and one source kept aside, fit a probe with the shipped recipe (no selection on a small harvest),
    export it, score a sample file, write the report, and measure the early risk (k = the recipe's) against the
    best training-free score on the test split and on the unseen source.

    Args:
        out: the demo folder (new, or an earlier demo's: replaced piece by piece, harvests resumed).
        model: the model to harvest (the shipped recipe's features must fit it).
        size: ``full`` (the README's demo) or ``small`` (the same code on a few hundred questions).
        progress: progress bars on stderr.
        log: where the demo's own lines go (default: stdout).
    """
    say = log or (lambda s: print(s, flush=True))
    if size not in SIZES:
        raise UserError(f"must be one of {', '.join(SIZES)}, got {size!r}", field="size")
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not owned_dir(lambda n: n in DEMO_ENTRIES, folders=True)(out):
        raise UserError("exists and holds files that are not a riskprobe demo's; choose another --out", file=out,
                        field="out")
    public = public_sets_available()
    plan = DEMO_PLANS[(size, public)]
    recipe = shipped_recipe()
    if model != recipe["model_identity"]:
        raise UserError(f"the demo fits the shipped recipe, whose features are {recipe['model_identity']}'s; "
                        f"run it with --model {recipe['model_identity']}", field="model")
    t0 = time.perf_counter()
    if not public:
        say(f"note: the public question sets are not on this machine ({datasets_root()}); the demo trains on "
            f"riskprobe's own sets ({plan.train}) and keeps {plan.unseen_name} aside. For TriviaQA and the other "
            f"public sets: {PUBLIC_SETS_HINT}")
    say(f"demo ({size}): harvest {model} on {plan.train} (train/val/test by question) and on {plan.unseen} "
        f"(never trained on), fit the shipped recipe at k = {recipe['data'].get('k', 4)}, export, score, report")
    lm = load_model(model)
    hcfg = dict(model=model, features=recipe["features"], max_new_tokens=33)
    h = harvest(HarvestConfig(prompts=plan.train, out=str(out / "harvest"), **hcfg), lm=lm, progress=progress)
    u = harvest(HarvestConfig(prompts=plan.unseen, out=str(out / "unseen"), **hcfg), lm=lm, progress=progress)
    k = int(recipe["data"].get("k", 4))
    cfg = {"version": 1, "run_name": "demo", "seed_everything": 0, "model": recipe["model"],
           "data": {**recipe["data"], "paths": [str(h)]}, "selection": None,
           "trainer": {"max_epochs": 60, "default_root_dir": str(out / "fit"), "enable_progress_bar": False},
           "checkpoint_dir": str(out / "checkpoints"), "sweep_ks": list(plan.sweep_ks), "n_boot": plan.n_boot,
           "wandb": "disabled"}

    # the recipe is kept beside the run, so that `riskprobe fit --config OUT/recipe.yaml` repeats the fit
    atomic_write_text(out / "recipe.yaml", "# the shipped probe's recipe, fitted on the demo's harvest\n" + dump_yaml(cfg))
    say(f"fit: the shipped recipe on the demo's training split (calibrated on validation, tested once); the fit's "
        f"tables: {out / 'fit.log'}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run = fit(cfg)
    draw_run(run)
    atomic_write_text(out / "fit.log", buf.getvalue())
    metrics = FitMetrics.read(run / "metrics.json")
    given = model == "smollm2-135m"  # the shipped given-answer head is SmolLM2's
    art = export_checkpoint(out / "checkpoints" / "final.ckpt", out / "probe", metrics=metrics,
                            extra={"given_probe": "given"} if given else None)
    scorer = Scorer.load(art, model=lm)
    sample = _sample_file(h, out / "sample.jsonl", given=given)
    scored = out / "scored.jsonl"
    if scored.exists():
        scored.unlink()
    st = score_file(scorer, lm, sample, scored, progress=progress)
    hm = load_harvests([h])
    test = np.flatnonzero(np.asarray([s == "test" for s in _splits(hm)]))
    rows = _versus_rows(art, {"test split": (h, test), f"{plan.unseen_name} (unseen)": (u, None)},
                        n_boot=plan.n_boot)

    extra = ["## The early risk against the model's own confidence", "",
             f"The probe at k = {k} beside the best training-free score on the same rows, on the test split and on "
             f"`{plan.unseen}`, a source it never trained on (95% intervals; margins from a paired bootstrap).", "",
             "```text", format_versus(rows, k=k), "```", "", _verdict(rows, k), ""]
    report = write_report([out / "fit", h, u], out / "report", extra=extra)
    res = DemoResult(out=str(out), seconds=round(time.perf_counter() - t0, 1), public_sets=public,
                     train_prompts=plan.train, unseen_prompts=plan.unseen, k=k,
                     harvest_summary=read_manifest(h)["summary"], unseen_summary=read_manifest(u)["summary"],
                     versus=rows, verdict=_verdict(rows, k), artifact=str(art), scored=str(scored),
                     score_stats={k_: v for k_, v in st.items() if k_ != "errors"}, report=str(report),
                     fit={"probe": metrics.probe["name"], "recipe": recipe["data"], "C": recipe["model"].get("C")})
    atomic_write_json(out / "summary.json", asdict(res))
    return res


def _splits(h) -> list[str]:
    return [split_of(q) for q in h.meta["id"]]


def probe_features(scorer) -> dict[str, Any]:
    """The harvest features a probe reads (its families, steps 0..k, its layers and normalisation), as a harvest
    config's ``features:`` mapping."""
    spec = scorer.feature_spec()
    return {k: getattr(spec, k) for k in ("K", "families", "layers", "normalisation", "lens_layers", "lens_steps",
                                         "raw_layers", "raw_steps")}


def adapt(probe: str | Path, out: str | Path, *, prompts: str | None = None, harvest_dir: str | Path | None = None,
          work: str | Path | None = None, limit: int | None = None, model: str | None = None, progress: bool = True,
          allow_old: bool = False) -> dict[str, Any]:
    """Adapt a blend probe to labelled questions of one's own: answer, grade and extract them (``prompts``: a set
    spec or a JSONL of ``{id, question, answers}``; or give a ready ``harvest_dir`` of the probe's model and
    features), refit the probe's head with the probe as the prior (:mod:`riskprobe.training.adapt`), and export the
    adapted probe to ``out``. Returns what was chosen and where things went."""
    if (prompts is None) == (harvest_dir is None):
        raise UserError("give the labelled questions (--prompts) or a harvest of them (--harvest), one of the two",
                        field="prompts")
    sc = Scorer.load(probe, allow_old=allow_old)

    if not isinstance(sc.risk_model.probe, BlendProbe):
        raise UserError(f"adapt refits the head of a blend probe; this one is a '{sc.meta['probe']['kind']}'. Fit a "
                        "blend (riskprobe fit --model.probe blend) or adapt the shipped default", file=sc.path,
                        field="probe")
    prepare_out(out)  # refuse a user's folder before any work
    if harvest_dir is None:
        work = Path(work) if work is not None else Path(str(out).rstrip("/") + "-harvest")
        lm = load_model(model or sc.model_identity["name"])
        sc.check_model(lm)
        harvest_dir = harvest(HarvestConfig(model=model or sc.model_identity["name"], prompts=prompts, limit=limit,
                                            features=probe_features(sc), out=str(work)), lm=lm, progress=progress)
    h = load_harvests([harvest_dir])

    if not same_model(h.model, sc.model_identity):
        raise UserError(f"this harvest is of '{h.model.get('name')}', the probe reads '{sc.model_identity['name']}'",
                        file=harvest_dir, field="harvest")
    sc.check_schema(h.schema, file=harvest_dir)
    x = sc._inputs(h.tensors)
    rm = copy.deepcopy(sc.risk_model)
    info = adapt_risk_model(rm, HeadInputs.of(rm, x["seq"], x["mask"], x["static"]), np.asarray(h.meta["label"]),
                            h.meta["id"])
    meta = {k: v for k, v in copy.deepcopy(sc.meta).items()
            if k not in ("json_sha256", "weights_sha256", "onnx_sha256", "transfer", "test_metrics")}
    meta["calibration"] = {"a": 1.0, "b": 0.0}
    meta["adapted"] = {**info, "from": {"probe": str(sc.path), "json_sha256": sc.meta.get("json_sha256")},
                       "harvest": str(harvest_dir), "prompts": prompts}
    write_artifact(rm, meta, out)
    return {"artifact": str(out), "harvest": str(harvest_dir), **info}


def compare(models: list[str], out: str | Path = "runs/compare", *, prompts: str = COMPARE_PROMPTS,
            progress: bool = True) -> dict[str, Any]:
    """Harvest the same prompts on several models and put them in one report (same axes, H3).

    Optional bundled models that are not installed are skipped with a note. ``out`` must be new or an earlier
    comparison's folder (one harvest per model and ``report``)."""
    out = Path(out)
    mine = owned_dir(lambda n: n in set(models) | {"report"}, folders=True)
    if (out.exists() or out.is_symlink()) and not mine(out):
        raise UserError("exists and holds files that are not a riskprobe comparison's; choose another --out",
                        file=out, field="out")
    done, skipped = [], []
    for m in models:
        try:
            done.append(harvest(HarvestConfig(model=m, prompts=prompts, out=str(out / m)), progress=progress))
        except UserError as e:
            if "not installed" in str(e):
                skipped.append(f"{m}: {e}")
                continue
            raise
    if not done:
        raise UserError("no model could be harvested: " + "; ".join(skipped), field="models")
    report = write_report(done, out / "report")
    return {"harvests": [str(d) for d in done], "skipped": skipped, "report": str(report)}
