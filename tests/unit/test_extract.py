"""Teacher-forced extraction equals capture during generation (tiny models of five architectures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from riskprobe.models import render
from riskprobe.models.generation import generate
from riskprobe.signatures import Capture, FeatureSpec
from riskprobe.signatures.extract import Extractor

# The stated tolerance: float32 on CPU, a cached one-token-at-a-time pass against one full pass. Angles
# (curvature) and entropies amplify rounding most; raw states are stored as float16.
ATOL = {"commitment": 2e-4, "sync": 2e-4, "trajectory": 2e-3, "lens": 2e-4, "raw": 2e-2}

QUESTIONS = ("What is two?", "Name a much longer thing, please, with several words in it?", "x?",
             "Which river flows through the middle of a large city?")


def _spec(lm, **kw):
    base = dict(K=7, lens_steps=3, raw_steps=4, raw_layers="all", lens_layers="all")
    base.update(kw)
    return FeatureSpec(**base).resolve(lm)


def _captured(lm, spec, rps, **gen_kw):
    cap = Capture(lm, spec)
    with cap:
        gens = generate(lm, rps, **gen_kw)
    return gens, cap.finish([g.token_ids for g in gens])


def assert_same(a: dict, b: dict, atol=ATOL) -> None:
    assert set(a) == set(b)
    np.testing.assert_array_equal(a["step_mask"], b["step_mask"])
    for k in a:
        if k == "step_mask":
            continue
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=atol[k], rtol=1e-3,
                                   err_msg=k)


def test_extraction_equals_capture_on_each_architecture(tiny_lm):
    """Left padding (prompts of different lengths), rows that end early at EOS, and rows cut by the length
    budget: every column equal within the stated tolerance, masks exactly equal."""
    spec = _spec(tiny_lm)
    rps = [render(tiny_lm.tokenizer, q) for q in QUESTIONS]
    gens, want = _captured(tiny_lm, spec, rps, max_new_tokens=10)
    tiny_lm.prefix_cache.clear()
    ex = Extractor(tiny_lm, spec)
    got = ex.extract(rps, [g.token_ids for g in gens])
    assert_same(got, want)
    assert want["step_mask"].any()
    # the shared prompt prefix (system message / few-shot examples) ran once, as a cache; the tiny Gemma's
    # 16-token sliding window is shorter than these rows, so there nothing is shared
    assert bool(tiny_lm.prefix_cache) == (tiny_lm.identity.architecture != "gemma3_text")
    plain = Extractor(tiny_lm, spec, share_prefix=False).extract(rps, [g.token_ids for g in gens])
    assert_same(plain, want)


def test_prefix_sharing_with_a_wide_sliding_window():
    """Gemma 3 with a window longer than the rows: the prefix is shared and the features still equal capture."""
    from tests.conftest import tiny_gemma_wide

    lm = tiny_gemma_wide()
    spec = _spec(lm)
    rps = [render(lm.tokenizer, q) for q in QUESTIONS]
    gens, want = _captured(lm, spec, rps, max_new_tokens=10)
    lm.prefix_cache.clear()
    ex = Extractor(lm, spec)
    assert_same(ex.extract(rps, [g.token_ids for g in gens]), want)
    assert lm.prefix_cache


def test_extraction_with_forced_endings(llama_lm):
    """Rows forced to end at different steps (an EOS after 1, 3 and 9 tokens): generation through the forcing
    processor and extraction agree, including the masks and the zeroed curvature of the last step."""
    spec = _spec(llama_lm)
    rps = [render(llama_lm.tokenizer, q) for q in QUESTIONS[:3]]
    forced = [[65], [66, 67, 68], [70, 71, 72, 73, 74, 75, 76, 77, 78]]
    gens, want = _captured(llama_lm, spec, rps, forced=forced)
    assert [len(g.token_ids) for g in gens] == [2, 4, 10]
    got = Extractor(llama_lm, spec).extract(rps, [g.token_ids for g in gens])
    assert_same(got, want)
    assert got["step_mask"].sum(1).tolist() == [2, 4, 8]
    assert np.all(got["trajectory"][0, 1, :, 1] == 0) and np.all(got["commitment"][0, 2:] == 0)


def test_extraction_with_stop_strings_and_fewshot():
    """A few-shot (base model) prompt whose rows end at a newline stop string."""
    from riskprobe.models import wrap_model
    from tests.conftest import byte_tokenizer, tiny_model

    lm = wrap_model(tiny_model("gpt2", seed=3), byte_tokenizer(chat=False), name="tiny-gpt2")
    spec = _spec(lm, K=12)
    rps = [render(lm.tokenizer, q) for q in QUESTIONS]
    assert rps[0].stop_strings == ("\n",)
    gens, want = _captured(lm, spec, rps, max_new_tokens=14)
    got = Extractor(lm, spec).extract(rps, [g.token_ids for g in gens])
    assert_same(got, want)


def test_extraction_needs_no_generation_and_leaves_no_hooks(llama_lm):
    spec = _spec(llama_lm)
    ex = Extractor(llama_lm, spec)
    rps = [render(llama_lm.tokenizer, q) for q in QUESTIONS[:2]]
    sig = ex.extract(rps, [[65, 66, 67], [68]])
    assert sig["step_mask"].sum(1).tolist() == [3, 1]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ex.sites.values())
    # the chosen token's log-prob is the forced token's, not the model's top-1
    with torch.no_grad():
        enc = llama_lm.tokenizer([rps[1].text], return_tensors="pt", add_special_tokens=False)
        lp = torch.log_softmax(llama_lm.model(**enc).logits[0, -1].float(), -1)
    assert sig["commitment"][1, 0, 3] == pytest.approx(lp[68].item(), abs=1e-4)
    with pytest.raises(ValueError, match="no tokens"):
        ex.extract(rps, [[1], []])
