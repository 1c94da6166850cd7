"""Whole jobs as one call: the demo (harvest -> fit -> export -> score -> report) and the architecture
comparison. Each stage reads the previous stage's files; a rerun resumes finished harvest shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .fsutil import owned_dir
from .harvest.config import HarvestConfig
from .harvest.run import harvest
from .harvest.store import read_manifest
from .resources import shipped_configs

DEMO_PROMPTS = "builtin+triviaqa:300"
DEMO_ENTRIES = {"harvest", "fit", "checkpoints", "probe", "sample.jsonl", "scored.jsonl", "report"}
COMPARE_PROMPTS = "builtin-factual:200+triviaqa:200"


def _sample_file(harvest_dir: Path, path: Path, n: int = 12) -> Path:
    """A small scoring input: held-out questions to generate, and given (right and wrong) answers."""
    import datasets

    ds = datasets.load_from_disk(str(harvest_dir))
    test = ds.filter(lambda r: r["split"] == "test" and r["set"] == "builtin" and r["category"] == "factual")
    test = test.select(range(min(n, len(test))))
    lines = []
    for i, r in enumerate(test):
        lines.append({"id": f"gen-{r['id']}", "prompt": r["prompt"]})
        if i % 2 == 0:
            lines.append({"id": f"right-{r['id']}", "prompt": r["prompt"], "response": r["answers"][0]})
        else:
            other = test[(i + 1) % len(test)]["answers"][0]
            lines.append({"id": f"wrong-{r['id']}", "prompt": r["prompt"], "response": other})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def demo(out: str | Path = "runs/demo", *, model: str = "smollm2-135m", prompts: str = DEMO_PROMPTS,
         sweep_ks: str = "[0,1,2,4,8]", progress: bool = True) -> dict[str, Any]:
    """Harvest the built-in set plus a TriviaQA slice, fit a probe (with an AUROC-vs-k sweep), export it,
    score a sample file and write the report. Returns the paths and the headline numbers."""
    import sys

    from .models import load_model
    from .probes.artifact import export_checkpoint
    from .prompts.sets import load_items
    from .report.build import write_report
    from .serving.jsonl import score_file
    from .serving.scorer import Scorer
    from .training.cli import cli_main

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not owned_dir(lambda n: n in DEMO_ENTRIES, folders=True)(out):
        raise UserError("exists and holds files that are not a riskprobe demo's; choose another --out", file=out,
                        field="out")
    if prompts == DEMO_PROMPTS:
        try:
            load_items("triviaqa", limit=1)
        except UserError as e:  # no public sets on this machine: the built-in set alone still runs
            print(f"riskprobe: note: {e}; the demo uses the built-in set only", file=sys.stderr)
            prompts = "builtin"
    h = harvest(HarvestConfig(model=model, prompts=prompts, out=str(out / "harvest")), progress=progress)
    fit_dir, ck = out / "fit", out / "checkpoints"
    cli_main(["fit", "--config", str(shipped_configs("fit")["default"]), "--data.paths", f"[{h}]",
              "--trainer.default_root_dir", str(fit_dir), "--checkpoint_dir", str(ck), "--run_name", "demo",
              "--sweep_ks", sweep_ks, "--n_boot", "300", "--trainer.enable_progress_bar", str(progress).lower()])
    metrics = json.loads((fit_dir / "metrics.json").read_text())
    art = export_checkpoint(ck / "final.ckpt", out / "probe", metrics=metrics)
    lm = load_model(model)
    scorer = Scorer.load(art, model=lm)
    sample = _sample_file(h, out / "sample.jsonl")
    scored = out / "scored.jsonl"
    scored.unlink(missing_ok=True)
    st = score_file(scorer, lm, sample, scored, progress=progress)
    report = write_report([fit_dir, h], out / "report")
    m = read_manifest(h)
    return {"harvest": str(h), "summary": m["summary"], "metrics": metrics, "artifact": str(art), "scored": str(scored),
            "score_stats": st, "report": str(report)}


def compare(models: list[str], out: str | Path = "runs/compare", *, prompts: str = COMPARE_PROMPTS,
            progress: bool = True) -> dict[str, Any]:
    """Harvest the same prompts on several models and put them in one report (same axes, H3).

    Optional bundled models that are not installed are skipped with a note.
    """
    from .report.build import write_report

    out = Path(out)
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
