"""Shared fixtures: tiny random models of several architectures and a byte-level tokenizer, all offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

def pytest_collection_modifyitems(config, items):
    """Tests are marked by cost from their folder: unit (seconds), integration (processes, servers),
    acceptance (real models and public sets)."""
    for item in items:
        parts = item.path.parts
        for kind in ("unit", "integration", "acceptance"):
            if kind in parts:
                item.add_marker(getattr(pytest.mark, kind))
                if kind != "unit":
                    item.add_marker(pytest.mark.slow)


ARCHS = ("llama", "qwen2", "gemma3_text", "gpt2", "opt")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def byte_tokenizer(chat: bool = True):
    """A byte-level BPE tokenizer with no merges (vocab 256 + 3 specials), built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bytes_to_unicode = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(bytes_to_unicode))}
    for s in ("<pad>", "<eos>", "<bos>"):
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_config(arch: str, vocab: int = 259):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab, pad_token_id=256, eos_token_id=257, bos_token_id=258)
    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=3, n_head=4, n_positions=512, **common)
    if arch == "opt":
        return AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=64,
                                    word_embed_proj_dim=32, max_position_embeddings=512, **common)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, **common)
    if arch == "gemma3_text":
        kw.update(head_dim=8, sliding_window=16, query_pre_attn_scalar=8)
    return AutoConfig.for_model(arch, **kw)


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch))
    # Random models rarely emit EOS; make the outputs peaky enough to differ across prompts.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.eval()


def tiny_gemma_wide():
    """A tiny Gemma 3 whose sliding window (512) holds a whole row, so that it may share a prompt prefix."""
    from transformers import AutoModelForCausalLM

    from riskprobe.models import wrap_model

    torch.manual_seed(0)
    cfg = tiny_config("gemma3_text")
    cfg.sliding_window = 512
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return wrap_model(model, byte_tokenizer(), name="tiny-gemma3-wide")


@pytest.fixture(params=ARCHS)
def tiny_lm(request):
    from riskprobe.models import wrap_model

    return wrap_model(tiny_model(request.param), byte_tokenizer(chat=request.param != "gpt2"),
                      name=f"tiny-{request.param}")


@pytest.fixture
def llama_lm():
    from riskprobe.models import wrap_model

    return wrap_model(tiny_model("llama"), byte_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny llama saved as a model directory (loadable by path, e.g. by the CLI in a subprocess)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


@pytest.fixture
def mini_prompts(tmp_path):
    """A small user JSONL prompt file."""
    import json

    rows = [{"id": f"q{i}", "question": f"What is item number {i}?", "answers": [str(i)]} for i in range(24)]
    p = tmp_path / "mini.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def dir_lm(tiny_model_dir):
    """The tiny llama loaded from its directory, as a user's model would be."""
    from riskprobe.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture
def artifact(tmp_path, dir_lm):
    """A probe artifact (random, fixed weights) for ``dir_lm``."""
    from synth import make_artifact

    return make_artifact(dir_lm, tmp_path / "made")[0]


@pytest.fixture
def art(artifact):
    return artifact
