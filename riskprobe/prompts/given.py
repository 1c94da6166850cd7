"""Given-answer sets: (question, answer, label) pairs written by others (HaluEval QA, TruthfulQA mc2)."""

from __future__ import annotations

import json

from ..errors import UserError


# ------------------------------------------------------------------------------- given answers (eval)
def given_answer_pairs(name: str, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, int, str]]:
    """``(question, answer, label, group)`` rows of a given-answers set (label 1 = the answer is wrong).

    ``halueval``: each question's right and hallucinated answer (HaluEval QA). ``truthfulqa_mc``: each
    question's true and false statements (TruthfulQA mc2 targets).
    """
    import hashlib

    from ..resources import datasets_root

    root = datasets_root()
    rows: list[tuple[str, str, int, str]] = []
    if name == "halueval":
        p = root / "halueval" / "qa_data.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"HaluEval not found at {p}; set RISKPROBE_DATASETS", field="set")
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    rows += [(o["question"], o["right_answer"], 0, o["question"]),
                             (o["question"], o["hallucinated_answer"], 1, o["question"])]
    elif name == "truthfulqa_mc":
        p = root / "truthfulqa" / "mc_task.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"TruthfulQA mc_task.json not found at {p}; set RISKPROBE_DATASETS", field="set")
        for o in json.loads(p.read_text(encoding="utf-8")):
            targets = o.get("mc2_targets") or o["mc1_targets"]
            rows += [(o["question"], ans, 1 - int(v), o["question"]) for ans, v in targets.items() if ans.strip()]
    else:
        raise UserError(f"unknown given-answers set '{name}' (halueval, truthfulqa_mc)", field="set")
    if limit is not None:  # subsample whole questions, deterministically
        groups = sorted({g for *_, g in rows}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        keep = set(groups[:limit])
        rows = [r for r in rows if r[3] in keep]
    return rows
