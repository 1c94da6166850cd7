"""Harvests stay what they were: a tiny model's harvest (generation, grading, signatures), its re-extraction with
another normalisation and a given-answer harvest equal a recorded copy (``data/tiny_llama_harvests.npz``, recorded on
2026-12-06 with commit 2da4cfe, before the House II restructuring). A change that moves them changes behaviour and
must say so: re-record with ``RISKPROBE_RECORD_GOLDEN=1 pytest tests/unit/test_golden.py``."""

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest

from riskprobe.harvest import HarvestConfig, harvest
from riskprobe.harvest.extract import extract_corpus
from riskprobe.harvest.forced import build_given_harvest
from riskprobe.prompts.answers import GivenAnswer

GOLDEN = Path(__file__).parent / "data" / "tiny_llama_harvests.npz"
TEXTS = GOLDEN.with_suffix(".json")
FEATS = {"K": 4, "raw_layers": "sparse2", "raw_steps": 2, "lens_steps": 2}
NUMERIC = ("commitment", "sync", "trajectory", "lens", "raw", "step_mask", "label", "n_tokens")


def _harvests(lm, prompts, tmp: Path) -> dict[str, datasets.Dataset]:
    h = harvest(HarvestConfig(model="tiny", prompts=str(prompts), out=str(tmp / "h"), features=FEATS, shard_size=8,
                              max_new_tokens=6), lm=lm, progress=False)
    x = extract_corpus(h / "generations", tmp / "x", features={**FEATS, "normalisation": "unit"}, lm=lm,
                       progress=False, shard_size=5)
    rows = [GivenAnswer(f"g{i}", "toy", "factual", f"What is item number {i}?", a, int(a != str(i)), "other", "toy")
            for i in range(10) for a in (str(i), str(i + 1))]
    g = build_given_harvest(lm, rows, tmp / "g", features=FEATS, shard_size=6, progress=False)
    return {k: datasets.load_from_disk(str(p)) for k, p in (("h", h), ("x", x), ("g", g))}


def test_harvests_equal_the_recorded_ones(llama_lm, mini_prompts, tmp_path):
    got = _harvests(llama_lm, mini_prompts, tmp_path)
    arrays = {f"{k}/{c}": np.asarray(ds[c], dtype=np.float64) for k, ds in got.items() for c in NUMERIC}
    texts = {k: list(ds["response"]) + list(ds["id"]) for k, ds in got.items()}
    if os.environ.get("RISKPROBE_RECORD_GOLDEN"):
        np.savez_compressed(GOLDEN, **{k.replace("/", "__"): v for k, v in arrays.items()})
        TEXTS.write_text(json.dumps(texts, indent=0))
        pytest.skip("recorded")
    want = np.load(GOLDEN, allow_pickle=False)
    assert texts == json.loads(TEXTS.read_text())
    for k, v in arrays.items():
        np.testing.assert_allclose(v, want[k.replace("/", "__")], rtol=0, atol=1e-5, err_msg=k)
