"""Generate once, extract many: corpora (records, samples, resume, splits) and re-extraction."""

import gzip
import json

import datasets
import numpy as np
import pytest
from synth import assert_same_dataset

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.harvest.config import HarvestConfig
from riskprobe.harvest.extract import extract_corpus
from riskprobe.harvest.generations import read_corpus, read_corpus_manifest
from riskprobe.harvest.run import generate, harvest
from riskprobe.harvest.store import read_manifest, signature_tensors
from riskprobe.prompts import split_of

SMALL = {"K": 4, "lens_steps": 2, "raw_steps": 2}


def _cfg(out, prompts, **kw):
    base = dict(prompts=str(prompts), out=str(out), max_new_tokens=5, batch_size=4, shard_size=8, features=SMALL)
    base.update(kw)
    return HarvestConfig(**base)


def test_corpus_records_are_small_and_carry_no_question_text(tmp_path, llama_lm, mini_prompts):
    out = generate(_cfg(tmp_path / "c", mini_prompts), lm=llama_lm, progress=False)
    m, rows = read_corpus(out)
    assert m["status"] == "complete" and m["n_rows"] == 24 and len(rows) == 24 and m["n_shards"] == 3
    assert m["model"]["fingerprint"] == llama_lm.identity.fingerprint and m["generation"]["max_new_tokens"] == 5
    assert set(rows[0]) == {"i", "id", "set", "category", "sample", "prompt_sha", "tokens", "text", "finish", "correct",
                            "echo"}
    raw = b"".join(gzip.decompress(p.read_bytes()) for p in sorted(out.glob("shard-*.jsonl.gz")))
    assert b"What is item number" not in raw  # questions are re-rendered from the set, never stored
    card = (out / "CARD.md").read_text()
    assert "| mini | 24 |" in card and "## Splits" in card


def test_samples_are_reproducible_whatever_the_batch_and_share_a_split(tmp_path, llama_lm, mini_prompts):
    kw = dict(do_sample=True, samples=3, temperature=1.5, limit=6)
    a = read_corpus(generate(_cfg(tmp_path / "a", mini_prompts, batch_size=4, **kw), lm=llama_lm, progress=False))[1]
    b = read_corpus(generate(_cfg(tmp_path / "b", mini_prompts, batch_size=5, **kw), lm=llama_lm, progress=False))[1]
    assert len(a) == 18 and [r["sample"] for r in a[:3]] == [0, 1, 2]
    assert [(r["id"], r["sample"], r["tokens"]) for r in a] == [(r["id"], r["sample"], r["tokens"]) for r in b]
    # different samples of one question differ (temperature 1.5 on a peaky random model: not all equal)
    by_q: dict = {}
    for r in a:
        by_q.setdefault(r["id"], []).append(tuple(r["tokens"]))
    assert any(len(set(v)) > 1 for v in by_q.values())
    c = read_corpus(generate(_cfg(tmp_path / "c", mini_prompts, seed=1, **kw), lm=llama_lm, progress=False))[1]
    assert [r["tokens"] for r in c] != [r["tokens"] for r in a]  # another seed, other samples
    # every sample of a question lands in that question's split
    h = harvest(_cfg(tmp_path / "h", mini_prompts, **kw), lm=llama_lm, progress=False)
    ds = datasets.load_from_disk(str(h))
    assert len(ds) == 18
    for q, s in zip(ds["id"], ds["split"]):
        assert s == split_of(q)
    with pytest.raises(UserError, match="needs do_sample"):
        _cfg(tmp_path / "x", mini_prompts, samples=2).validate()


def test_corpus_resume_equals_uninterrupted(tmp_path, llama_lm, mini_prompts):
    full = generate(_cfg(tmp_path / "full", mini_prompts), lm=llama_lm, progress=False)
    part = tmp_path / "part"
    generate(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    (part / "shard-00001.jsonl.gz").unlink()  # as if killed before this shard was written
    m = read_corpus_manifest(part)
    m["status"] = "running"
    (part / "corpus.json").write_text(json.dumps(m))
    (part / ".shard-00001.jsonl.gz.x1y2.tmp").write_bytes(b"half")  # a killed run's temporary file
    generate(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    assert not list(part.glob("*.tmp"))
    for s in range(3):
        name = f"shard-{s:05d}.jsonl.gz"
        assert (part / name).read_bytes() == (full / name).read_bytes()
    with pytest.raises(UserError, match="refusing to mix.*max_new_tokens"):
        generate(_cfg(part, mini_prompts, max_new_tokens=6), lm=llama_lm, progress=False)


def test_a_corpus_grows_into_a_larger_limit_by_reusing_its_answers(tmp_path, llama_lm, mini_prompts):
    kw = dict(do_sample=True, samples=2, temperature=1.5)
    small = generate(_cfg(tmp_path / "small", mini_prompts, limit=10, **kw), lm=llama_lm, progress=False)
    fresh = read_corpus(generate(_cfg(tmp_path / "fresh", mini_prompts, limit=20, **kw), lm=llama_lm,
                                 progress=False))[1]
    grown = generate(_cfg(tmp_path / "grown", mini_prompts, limit=20, **kw), lm=llama_lm, progress=False, reuse=small)
    m, rows = read_corpus(grown)
    assert m["timing"]["reused"] == 20 and m["n_rows"] == 40  # 10 questions x 2 samples taken over
    key = lambda r: (r["i"], r["id"], r["sample"], r["tokens"], r["correct"])  # noqa: E731
    assert [key(r) for r in rows] == [key(r) for r in fresh]
    with pytest.raises(UserError, match="cannot reuse.*max_new_tokens"):
        generate(_cfg(tmp_path / "other", mini_prompts, limit=20, max_new_tokens=6, **kw), lm=llama_lm,
                 progress=False, reuse=small)


def test_reextraction_with_another_normalisation_changes_exactly_the_affected_columns(tmp_path, llama_lm, mini_prompts):
    h = harvest(_cfg(tmp_path / "h", mini_prompts), lm=llama_lm, progress=False)
    r = extract_corpus(h / "generations", tmp_path / "raw", features=SMALL, lm=llama_lm, batch_size=5, progress=False)
    x = extract_corpus(h / "generations", tmp_path / "unit", features={**SMALL, "normalisation": "unit"}, lm=llama_lm,
                       batch_size=5, progress=False)
    a, b = datasets.load_from_disk(str(r)), datasets.load_from_disk(str(x))
    meta = [c for c in a.column_names if c not in ("commitment", "sync", "trajectory", "lens", "raw", "step_mask")]
    assert a.select_columns(meta).to_list() == b.select_columns(meta).to_list()
    ta, tb = signature_tensors(a), signature_tensors(b)
    for same in ("step_mask", "commitment", "lens", "raw"):
        np.testing.assert_allclose(ta[same].float().numpy(), tb[same].float().numpy(), atol=1e-5, err_msg=same)
    # cosines do not see the scale of a state; norms and displacements do
    np.testing.assert_allclose(ta["sync"][..., 0].numpy(), tb["sync"][..., 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(ta["trajectory"][..., 0].numpy(), tb["trajectory"][..., 0].numpy(), atol=1e-4)
    assert not np.allclose(ta["sync"][..., 1].numpy(), tb["sync"][..., 1].numpy())
    assert not np.allclose(ta["trajectory"][..., 2].numpy(), tb["trajectory"][..., 2].numpy())
    assert read_manifest(x)["feature_schema"]["normalisation"] == "unit"
    assert read_manifest(x)["generations"]["n_rows"] == 24
    # the same spec extracted again (another batch size) gives the harvest's own rows (captured while generating)
    y = extract_corpus(h / "generations", tmp_path / "again", features=SMALL, lm=llama_lm, batch_size=3, progress=False)
    assert_same_dataset(datasets.load_from_disk(str(y)), datasets.load_from_disk(str(h)), atol=1e-3)
    # arms: both normalisations (and final_norm) from one set of forward passes = each extracted on its own
    arms = {tmp_path / "arm-unit": {**SMALL, "normalisation": "unit"},
            tmp_path / "arm-fn": {**SMALL, "normalisation": "final_norm"}}
    z = extract_corpus(h / "generations", tmp_path / "arm-raw", features=SMALL, lm=llama_lm, batch_size=5,
                       progress=False, arms=arms)
    assert_same_dataset(datasets.load_from_disk(str(z)), a, atol=0)
    assert_same_dataset(datasets.load_from_disk(str(tmp_path / "arm-unit")), b, atol=0)
    fn = extract_corpus(h / "generations", tmp_path / "fn", features={**SMALL, "normalisation": "final_norm"},
                        lm=llama_lm, batch_size=5, progress=False)
    assert_same_dataset(datasets.load_from_disk(str(tmp_path / "arm-fn")), datasets.load_from_disk(str(fn)), atol=0)
    assert read_manifest(tmp_path / "arm-fn")["feature_schema"]["normalisation"] == "final_norm"
    with pytest.raises(UserError, match="written twice"):
        extract_corpus(h / "generations", tmp_path / "dup", features=SMALL, lm=llama_lm, progress=False,
                       arms={tmp_path / "dup": SMALL})


def test_extract_refusals(tmp_path, llama_lm, mini_prompts):
    from conftest import byte_tokenizer, tiny_model

    from riskprobe.models import wrap_model

    h = harvest(_cfg(tmp_path / "h", mini_prompts), lm=llama_lm, progress=False)
    other = wrap_model(tiny_model("qwen2"), byte_tokenizer(), name="tiny-qwen2")
    with pytest.raises(UserError, match="generated by 'tiny-llama'"):
        extract_corpus(h / "generations", tmp_path / "o", lm=other, progress=False)
    with pytest.raises(UserError, match="not a riskprobe corpus"):
        extract_corpus(tmp_path, tmp_path / "o2", lm=llama_lm, progress=False)
    # the sets changed since the corpus was made: refused, never silently misaligned
    text = mini_prompts.read_text()
    mini_prompts.write_text(text.replace("number 3?", "number three?"))
    with pytest.raises(UserError, match="'q3' renders differently"):
        extract_corpus(h / "generations", tmp_path / "o3", lm=llama_lm, progress=False)
    mini_prompts.write_text("".join(line + "\n" for line in text.splitlines()[1:]))
    with pytest.raises(UserError, match="no longer give the questions"):
        extract_corpus(h / "generations", tmp_path / "o4", lm=llama_lm, progress=False)
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


def test_extract_cli(tmp_path, tiny_model_dir, mini_prompts, capsys):
    gen = tmp_path / "c"
    assert main(["generate", "--model", str(tiny_model_dir), "--prompts", str(mini_prompts), "--out", str(gen),
                 "--max-new-tokens", "5", "--limit", "8", "--no-progress"]) == 0
    assert "corpus:" in capsys.readouterr().out
    assert main(["extract", "--generations", str(gen), "--out", str(tmp_path / "x"), "--K", "3", "--layers", "late",
                 "--normalisation", "final_norm", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "extract:" in out and "rows/s" in out
    m = read_manifest(tmp_path / "x")
    assert m["n_rows"] == 8 and m["feature_schema"]["K"] == 3 and m["feature_schema"]["normalisation"] == "final_norm"
    assert main(["extract", "--generations", str(gen), "--out", str(tmp_path / "y"), "--normalisation", "zscore",
                 "--no-progress"]) == 2
    assert "features.normalisation" in capsys.readouterr().err
    assert main(["extract", "--generations", str(gen), "--out", str(tmp_path / "r"), "--K", "3",
                 "--arm", f"unit={tmp_path / 'u'}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "normalisation raw" in out and "normalisation unit" in out
    assert read_manifest(tmp_path / "u")["feature_schema"]["normalisation"] == "unit"
    assert main(["extract", "--generations", str(gen), "--out", str(tmp_path / "r2"), "--arm", "zscore=x",
                 "--no-progress"]) == 2
    assert "arm" in capsys.readouterr().err
