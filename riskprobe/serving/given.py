"""AUROC of the risk on given right and wrong answers (teacher forced), on HaluEval or TruthfulQA mc."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ..models.loader import LoadedModel
from ..prompts.given import given_answer_pairs
from .scorer import Scorer


def evaluate_given(scorer: Scorer, lm: LoadedModel, name: str, *, limit: int | None = 200, batch_size: int = 16,
                   progress: bool = True) -> dict[str, Any]:
    """AUROC of the risk of teacher-forced given answers (right vs wrong) on ``halueval`` or ``truthfulqa_mc``."""
    from tqdm.auto import tqdm

    from ..evaluation import metrics as M

    rows = given_answer_pairs(name, limit)
    risks, labels = [], []
    t0 = time.perf_counter()
    bar = tqdm(total=len(rows), desc=f"eval {name}", unit="answer", disable=not progress, file=sys.stderr)
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        res = scorer.score(lm, [r[0] for r in chunk], [r[1] for r in chunk])
        risks += [r["risk"] for r in res]
        labels += [r[2] for r in chunk]
        bar.update(len(chunk))
    bar.close()
    out = M.evaluate(np.array(labels), np.array(risks), n_boot=500)
    out.update(set=name, questions=len({r[3] for r in rows}), seconds=round(time.perf_counter() - t0, 2))
    return out
