"""The whole job on the bundled default, as one call (``riskprobe demo``).

Stages run in order and each reads the previous stage's files; a rerun resumes (finished harvest
shards are kept).
"""

from __future__ import annotations

from pathlib import Path

from .harvest import HarvestConfig, harvest, read_manifest

DEMO_PROMPTS = "builtin+triviaqa:300"


def demo(out: str | Path = "runs/demo", *, model: str = "smollm2-135m", prompts: str = DEMO_PROMPTS,
         progress: bool = True) -> dict:
    """Harvest the built-in set plus a TriviaQA slice on ``model`` and return a summary.

    Returns ``{"harvest": path, "summary": {set: {n, correct_rate, echo_rate}}}``.
    """
    out = Path(out)
    h = harvest(HarvestConfig(model=model, prompts=prompts, out=str(out / "harvest")), progress=progress)
    m = read_manifest(h)
    return {"harvest": str(h), "summary": m["summary"], "timing": m["timing"]}
