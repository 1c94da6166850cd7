"""One test per defect of the hostile-input audit: no command destroys a user's files, artifacts are whole,
resumes refuse changed inputs, failed runs leave nothing, metrics are consistent, HTTP isolates bad requests.
"""

import asyncio
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from synth import make_artifact, make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.models import load_model
from riskprobe.probes.artifact import export_checkpoint, read_artifact
from riskprobe.serving.jsonl import score_file
from riskprobe.serving.scorer import Scorer


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes (what a test compares before and after)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


# ---------------------------------------------------------------------------------------------- 1. export
def test_export_refuses_a_user_folder_and_a_file(tmp_path, art, capsys):
    ck = tmp_path / "made" / "final.ckpt"
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    (thesis / "photos").mkdir()
    (thesis / "photos" / "p.jpg").write_bytes(b"\xff\xd8jpeg")
    before = tree(tmp_path)
    rc = main(["export", "--ckpt", str(ck), "--out", str(thesis)])
    _one_line_error(capsys, rc, "thesis", "not a probe artifact", "--force")
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    before = tree(tmp_path)
    rc = main(["export", "--ckpt", str(ck), "--out", str(afile)])
    _one_line_error(capsys, rc, "notes.txt", "is a file")
    assert tree(tmp_path) == before  # nothing removed, nothing changed, nothing added


def test_export_replaces_only_an_earlier_artifact_and_force_keeps_the_old(tmp_path, art):
    ck = tmp_path / "made" / "final.ckpt"
    out = tmp_path / "probe"
    export_checkpoint(ck, out)
    export_checkpoint(ck, out)  # an earlier artifact (probe.* only) is ours to replace
    read_artifact(out)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2,3")
    export_checkpoint(ck, user, force=True)
    read_artifact(user)
    assert (tmp_path / "mine.bak-1" / "data.csv").read_text() == "1,2,3"  # moved aside, never deleted
    extra = tmp_path / "probe" / "README.md"
    extra.write_text("my notes beside the artifact")
    with pytest.raises(UserError, match="folder with other files"):
        export_checkpoint(ck, tmp_path / "probe")
    assert extra.read_text() == "my notes beside the artifact"


# ---------------------------------------------------------------------------------------------- 2. score --output
@pytest.mark.parametrize("content", [b"line one\nline two\nlast line without newline",
                                     bytes(range(256)) * 4,
                                     b'{"id": "r0", "risk": 0.1, "flagged": false, "model": {}}\n{"id": "zzz", "risk": 1'])
def test_score_never_cuts_a_file_it_did_not_write(tmp_path, dir_lm, art, content):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "r0", "prompt": "Q?"}) + "\n")
    out = tmp_path / "out.txt"
    out.write_bytes(content)
    sc = Scorer.load(art, model=dir_lm)
    with pytest.raises(UserError, match="refusing"):
        score_file(sc, dir_lm, inp, out, progress=False)
    assert out.read_bytes() == content


def test_score_refuses_output_equal_to_input_and_duplicate_ids(tmp_path, dir_lm, art, tiny_model_dir, capsys):
    inp = tmp_path / "in.jsonl"
    text = json.dumps({"id": "a", "prompt": "Q1?"}) + "\n" + json.dumps({"id": "b", "prompt": "Q2?"}) + "\n"
    inp.write_text(text)
    rc = main(["score", "--probe", str(art), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
               str(tmp_path / "." / "in.jsonl"), "--no-progress"])
    _one_line_error(capsys, rc, "is the input file")
    assert inp.read_text() == text
    inp.write_text(text + json.dumps({"id": "a", "prompt": "Q3?"}) + "\n")
    sc = Scorer.load(art, model=dir_lm)
    with pytest.raises(UserError, match=r"in.jsonl:3: field 'id': duplicate id 'a' \(first on line 1\)"):
        score_file(sc, dir_lm, inp, tmp_path / "o.jsonl", progress=False)
    assert not (tmp_path / "o.jsonl").exists()


def test_scorer_api_refuses_lists_of_other_lengths(dir_lm, art):
    sc = Scorer.load(art, model=dir_lm)
    with pytest.raises(UserError, match="field 'responses': 2 prompts but 1 responses"):
        sc.score(dir_lm, ["a?", "b?"], ["x"])
    with pytest.raises(UserError, match="field 'responses': 1 prompts but 2 responses"):
        sc.score(dir_lm, ["a?"], [None, "y"])
    with pytest.raises(UserError, match="field 'answer_kinds'"):
        sc.score(dir_lm, ["a?"], answer_kinds=["alias", "alias"])


def test_score_repairs_its_own_partial_line(tmp_path, dir_lm, art):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"Q{i}?"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    sc = Scorer.load(art, model=dir_lm)
    score_file(sc, dir_lm, inp, out, progress=False)
    full = out.read_text().splitlines()
    out.write_text(full[0] + "\n" + full[1][:25])  # a crash in the middle of the second row
    st = score_file(sc, dir_lm, inp, out, progress=False)
    assert st["skipped_done"] == 1 and st["scored"] == 2
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["r0", "r1", "r2"]


# ---------------------------------------------------------------------------------------------- 3. HTTP
class _FlakyScorer:
    """Wraps a Scorer; a batch holding the prompt 'poison' raises, as a model error would."""

    def __init__(self, sc):
        self.sc, self.calls = sc, []

    def __getattr__(self, name):
        return getattr(self.sc, name)

    def score(self, lm, prompts, responses=None, **kw):
        self.calls.append(len(prompts))
        if "poison" in prompts:
            raise RuntimeError("model failed on this row")
        return self.sc.score(lm, prompts, responses, **kw)


def _asgi(app, body: bytes, chunks: int = 1, path: str = "/score"):
    """Send one request straight to the ASGI app (chunked when chunks > 1); return (status, json)."""
    sent, parts = [], [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
    reads = {"n": 0}

    async def receive():
        if queue:
            reads["n"] += 1
            return queue.pop(0)
        await asyncio.sleep(3600)

    async def send(msg):
        sent.append(msg)

    headers = [(b"content-type", b"application/json")]
    if chunks == 1:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b"",
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
             "root_path": "", "raw_path": path.encode()}
    return scope, receive, send, sent, reads


def test_http_one_bad_request_fails_alone_and_body_limit_counts_bytes(dir_lm, art):
    from fastapi.testclient import TestClient

    from riskprobe.serving.http import create_app

    flaky = _FlakyScorer(Scorer.load(art, model=dir_lm))
    app = create_app(flaky, dir_lm, max_batch=8, max_wait_ms=200)
    with TestClient(app) as client:
        from concurrent.futures import ThreadPoolExecutor

        bodies = [{"prompt": f"Question {i}?"} for i in range(5)] + [{"prompt": "poison"}]
        with ThreadPoolExecutor(6) as ex:
            res = list(ex.map(lambda b: client.post("/score", json=b), bodies))
        assert [r.status_code for r in res] == [200] * 5 + [500]
        blank = client.post("/score", json={"prompt": "Q?", "response": "   "})
        assert blank.status_code == 422 and "response" in blank.json()["error"]
        tagged = client.post("/score", json={"prompt": "Q?", "id": "row-7"})  # the caller's id comes back
        assert tagged.status_code == 200 and tagged.json()["id"] == "row-7" and "risk" in tagged.json()
        typo = client.post("/score", json={"prompt": "Q?", "respnse": "A"})  # not scored as a generated row
        assert typo.status_code == 400 and typo.json()["details"][0]["field"] == "respnse"
        setting = client.post("/score", json={"prompt": "Q?", "max_new_tokens": -1})
        assert setting.status_code == 400 and setting.json()["details"][0]["field"] == "max_new_tokens"
    # a chunked body with no Content-Length: refused after the limit, not read to the end
    inner = create_app(Scorer.load(art, model=dir_lm), dir_lm, max_body_bytes=1000)
    big = b'{"prompt": "' + b"x" * 100_000 + b'"}'
    scope, receive, send, sent, reads = _asgi(inner, big, chunks=100)
    asyncio.run(inner(scope, receive, send))
    assert sent[0]["status"] == 413 and reads["n"] < 100


def test_http_full_queue_answers_503(dir_lm, art):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from riskprobe.serving.http import create_app

    gate = threading.Event()

    class Slow(_FlakyScorer):
        def score(self, lm, prompts, responses=None, **kw):
            self.calls.append(len(prompts))
            gate.wait(60)
            return self.sc.score(lm, prompts, responses, **kw)

    slow = Slow(Scorer.load(art, model=dir_lm))
    app = create_app(slow, dir_lm, max_batch=1, max_wait_ms=0, max_queue=1)

    def wait_until(cond):
        for _ in range(600):
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError("condition never held")

    with TestClient(app) as client, ThreadPoolExecutor(2) as ex:
        first = ex.submit(client.post, "/score", json={"prompt": "A?"})
        wait_until(lambda: slow.calls)  # the worker holds the first request
        second = ex.submit(client.post, "/score", json={"prompt": "B?"})
        wait_until(lambda: client.get("/health").json()["queued"] == 1)  # the second waits in the queue
        third = client.post("/score", json={"prompt": "C?"})
        gate.set()
        assert third.status_code == 503 and third.headers["retry-after"] == "1"
        assert first.result().status_code == 200 and second.result().status_code == 200


# ---------------------------------------------------------------------------------------------- 4. resume
def test_resume_refuses_a_changed_prompt_file(tmp_path, llama_lm, mini_prompts):
    from riskprobe.harvest.config import HarvestConfig
    from riskprobe.harvest.run import harvest

    out = tmp_path / "h"
    cfg = HarvestConfig(prompts=str(mini_prompts), out=str(out), max_new_tokens=3, batch_size=4, shard_size=8,
                        features={"K": 2, "lens_steps": 1, "raw_steps": 1})
    harvest(cfg, lm=llama_lm, progress=False)
    lines = mini_prompts.read_text().splitlines()
    mini_prompts.write_text("\n".join(lines[2:] + [json.dumps({"id": "new", "question": "New?", "answers": ["x"]})]) + "\n")
    before = tree(out)
    with pytest.raises(UserError, match="prompt items changed"):
        harvest(cfg, lm=llama_lm, progress=False)
    assert tree(out) == before


# ---------------------------------------------------------------------------------------------- 5. artifact
def _edit(art: Path, fn):
    p = art / "probe.json"
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, want", [
    (lambda m: m.update(threshold=2.0), "modified after export"),
    (lambda m: m["model_identity"].update(name="gemma3-270m"), "modified after export"),
    (lambda m: m.pop("calibration"), "modified after export"),
])
def test_edited_probe_json_is_refused(art, edit, want):
    _edit(art, edit)
    with pytest.raises(UserError, match=want):
        read_artifact(art)


def test_edited_v1_probe_json_is_checked_field_by_field(art):
    def to_v1(m, **changes):
        m.pop("version")
        m.update(artifact_version=1, **changes)
        m.pop("json_sha256")

    _edit(art, lambda m: to_v1(m, threshold=2.0))
    with pytest.raises(UserError, match=r"field 'threshold': must be a risk in \[0, 1\]"):
        read_artifact(art, allow_old=True)
    _edit(art, lambda m: m.update(threshold=0.3) or m["model_identity"].pop("n_layers"))
    with pytest.raises(UserError, match="field 'model_identity.n_layers': missing"):
        read_artifact(art, allow_old=True)
    (art / "probe.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        read_artifact(art, allow_old=True)


def test_missing_or_swapped_onnx_is_refused(tmp_path, dir_lm, art):
    other = make_artifact(dir_lm, tmp_path / "other", seed=1)[0]
    (art / "probe.onnx").write_bytes((other / "probe.onnx").read_bytes())
    with pytest.raises(UserError, match="probe.onnx hash mismatch"):
        read_artifact(art)
    (art / "probe.onnx").unlink()
    with pytest.raises(UserError, match="probe.onnx is missing"):
        read_artifact(art)


def test_shape_is_checked_even_when_mismatch_is_allowed(art):
    from riskprobe.models import ModelIdentity

    sc = Scorer.load(art)
    wrong = ModelIdentity(name="big", source="hub", fingerprint="x", architecture="llama", n_layers=30, hidden_size=576,
                          vocab_size=10, has_chat_template=True)
    with pytest.raises(UserError, match="cannot be scored"):
        sc.check_model(wrong, allow_model_mismatch=True)


# ---------------------------------------------------------------------------------------------- 7. long prompts
def test_prompt_longer_than_context_is_refused_with_its_line_or_truncated(tmp_path, tiny_model_dir):
    from riskprobe.harvest.config import HarvestConfig
    from riskprobe.harvest.run import harvest
    from riskprobe.harvest.store import read_manifest

    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"id": "ok", "question": "Short?", "answers": ["a"]}) + "\n"
                 + json.dumps({"id": "long", "question": "word " * 200, "answers": ["a"]}) + "\n")
    lm = load_model(str(tiny_model_dir), device="cpu")  # context 512 tokens, one token per byte
    cfg = HarvestConfig(prompts=str(p), out=str(tmp_path / "h"), max_new_tokens=3, batch_size=2,
                        features={"K": 2, "lens_steps": 1, "raw_steps": 1})
    with pytest.raises(UserError, match=r"long.jsonl:2: field 'question': prompt of item 'long'"):
        harvest(cfg, lm=lm, progress=False)
    assert not (tmp_path / "h").exists()  # refused before anything was written
    cfg.truncate_prompts = True
    out = harvest(cfg, lm=lm, progress=False)
    assert read_manifest(out)["truncated_prompts"] == ["long"]


# ---------------------------------------------------------------------------------------------- 8. failed runs
def test_failed_fit_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    h = make_harvest(tmp_path / "h", n=60)
    before = tree(tmp_path)
    cfg = Path(__file__).resolve().parent.parent / "configs" / "fit" / "default.yaml"
    rc = main(["fit", "--config", str(cfg), "--data.paths", f"[{h}]", "--trainer.default_root_dir",
               str(tmp_path / "run"), "--data.k", "99", "--n_boot", "10"])
    _one_line_error(capsys, rc, "k = 99")
    assert tree(tmp_path) == before and not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_fit_into_a_user_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=60)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "paper.docx").write_bytes(b"mine")
    cfg = Path(__file__).resolve().parent.parent / "configs" / "fit" / "default.yaml"
    rc = main(["fit", "--config", str(cfg), "--data.paths", f"[{h}]", "--trainer.default_root_dir", str(tmp_path / "run")])
    _one_line_error(capsys, rc, "not a riskprobe run")
    assert (tmp_path / "run" / "paper.docx").read_bytes() == b"mine"


def test_harvest_failing_after_model_load_leaves_nothing(tmp_path, llama_lm, mini_prompts, monkeypatch):
    import riskprobe.harvest.extract as X
    import riskprobe.harvest.generations as G
    import riskprobe.harvest.run as H

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(G, "generate", boom)  # fails while generating: nothing was finished
    cfg = H.HarvestConfig(prompts=str(mini_prompts), out=str(tmp_path / "h"), max_new_tokens=3, batch_size=4,
                          shard_size=8, features={"K": 2, "lens_steps": 1, "raw_steps": 1})
    with pytest.raises(RuntimeError):
        H.harvest(cfg, lm=llama_lm, progress=False)
    assert not (tmp_path / "h").exists()
    # failing after a shard is finished: the finished answers and rows are kept for a resume, and the manifest
    # says failed, not "running"
    monkeypatch.undo()
    calls = {"n": 0}
    real = X.write_rows

    def second_fails(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(X, "write_rows", second_fails)
    with pytest.raises(RuntimeError):
        H.harvest(cfg, lm=llama_lm, progress=False)
    m = json.loads((tmp_path / "h" / H.MANIFEST).read_text())
    assert m["status"] == "failed" and "disk on fire" in m["error"]
    corpus = (tmp_path / "h" / "generations" / "shard-00000.jsonl.gz").read_bytes()
    monkeypatch.undo()
    H.harvest(cfg, lm=llama_lm, progress=False)  # and it resumes, without generating again
    assert json.loads((tmp_path / "h" / H.MANIFEST).read_text())["status"] == "complete"
    assert (tmp_path / "h" / "generations" / "shard-00000.jsonl.gz").read_bytes() == corpus


# ---------------------------------------------------------------------------------------------- 9. pickles
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoints_are_never_unpickled(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "riskprobe": {}, "payload": _Evil()}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    rc = main(["export", "--ckpt", str(evil), "--out", str(tmp_path / "p")])
    _one_line_error(capsys, rc, "not a riskprobe checkpoint")
    h = make_harvest(tmp_path / "h", n=60)
    cfg = Path(__file__).resolve().parent.parent / "configs" / "fit" / "default.yaml"
    rc = main(["test", "--config", str(cfg), "--data.paths", f"[{h}]", "--trainer.default_root_dir",
               str(tmp_path / "run"), "--ckpt_path", str(evil)])
    assert rc == 2
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------------------------------------- 10. baselines
def test_baseline_auroc_and_interval_come_from_one_score():
    from riskprobe.evaluation import metrics as M
    from riskprobe.training.evaluate import baseline_metrics

    rng = np.random.default_rng(0)
    yv, yt = rng.random(400) < 0.5, rng.random(400) < 0.5
    sv = -yv.astype(float) + rng.normal(0, 1.0, 400)  # on validation the score points the other way ...
    st = yt.astype(float) + rng.normal(0, 1.0, 400)  # ... than on test: Platt flips it, and the AUROC must say so
    r = baseline_metrics(sv, yv.astype(float), st, yt.astype(float), n_boot=300)
    assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
    assert r["auroc"] == pytest.approx(1 - M.auroc(yt.astype(float), st), abs=1e-9)


# ---------------------------------------------------------------------------------------------- versions
def test_files_from_a_newer_riskprobe_are_refused_and_older_names_read(tmp_path):
    from riskprobe.harvest.store import MANIFEST, read_manifest

    h = make_harvest(tmp_path / "h", n=20)
    m = json.loads((h / MANIFEST).read_text())
    (h / MANIFEST).write_text(json.dumps(dict(m, version=7)))
    with pytest.raises(UserError, match=r"field 'version': written by a newer riskprobe \(harvest version 7"):
        read_manifest(h)
    m.pop("version", None)
    m["feature_schema"] = dict(m["feature_schema"], schema_version=1)
    m["feature_schema"].pop("version", None)
    (h / MANIFEST).write_text(json.dumps(dict(m, harvest_version=1)))  # the names older harvests used
    got = read_manifest(h)
    assert got["version"] == 1 and got["feature_schema"]["version"] == 1 and "schema_version" not in got["feature_schema"]
    m["feature_schema"]["schema_version"] = 5
    (h / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(UserError, match="feature schema version 5"):
        read_manifest(h)


def test_probe_json_schema_round_trips_and_names_the_bad_field():
    """probe.json is read through a typed schema: the shipped one comes back unchanged (its digest still holds), and
    a mistyped, missing or out-of-range field is refused with its dotted path."""
    import copy

    from riskprobe.probes.schema import ProbeMeta
    from riskprobe.resources import shipped_probe

    meta = json.loads((shipped_probe("default") / "probe.json").read_text())
    typed = ProbeMeta.from_dict(meta)
    assert typed.to_dict() == meta
    assert typed.feature_spec.dims.n_steps == typed.feature_spec.selection.k + 1 == 5
    assert typed.model_identity.name == "smollm2-135m" and typed.transfer is not None and len(typed.transfer.rows) == 15
    for path, value, want in [("feature_spec.dims.n_feat", "12", "expected int, got str"),
                              ("feature_spec.dims.n_static", True, "expected int, got bool"),
                              ("calibration.a", None, "missing"),
                              ("feature_spec.dims.n_steps", 3, "does not match k = 4"),
                              ("threshold", 1.5, "must be a risk in [0, 1]"),
                              ("probe.kind", "forest", "unknown probe kind"),
                              ("model_identity", [], "expected an object")]:
        bad = copy.deepcopy(meta)
        *parents, last = path.split(".")
        cur = bad
        for p in parents:
            cur = cur[p]
        cur[last] = value
        with pytest.raises(UserError) as e:
            ProbeMeta.from_dict(bad, file="probe.json")
        assert want in str(e.value), str(e.value)
        assert f"field '{path}'" in str(e.value)
