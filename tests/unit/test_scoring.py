"""Export, Scorer, offline scoring, teacher forcing, live monitoring and the HTTP service, on tiny models."""

import json

import numpy as np
import pytest
import torch
from synth import K, make_artifact

from riskprobe.cli import main
from riskprobe.errors import UserError
from riskprobe.models import render
from riskprobe.models.generation import forced_ids, generate
from riskprobe.serving.jsonl import score_file
from riskprobe.serving.scorer import Scorer, onnx_risk
from riskprobe.signatures import Capture
from riskprobe.signatures.extract import Extractor


def _capture(lm, scorer, prompts, n=8):
    cap = Capture(lm, scorer.feature_spec())
    with cap:
        gens = generate(lm, [render(lm.tokenizer, p) for p in prompts], max_new_tokens=n)
    return cap.finish([g.token_ids for g in gens]), gens


@pytest.mark.parametrize("probe", ["mlp", "temporal", "linear"])
def test_export_load_round_trip_torch_and_onnx(tmp_path, dir_lm, probe):
    art, mod = make_artifact(dir_lm, tmp_path, probe=probe)
    assert sorted(p.name for p in art.iterdir()) == ["probe.json", "probe.onnx", "probe.safetensors"]
    meta = json.loads((art / "probe.json").read_text())
    for key in ("version", "riskprobe_version", "model_identity", "feature_spec", "calibration", "threshold",
                "data_fingerprint", "weights_sha256"):
        assert key in meta
    sc = Scorer.load(art, model=dir_lm)
    sig, _ = _capture(dir_lm, sc, ["What is one?", "Name a longer thing please?", "Why?"])
    x = sc._inputs(sig)
    with torch.no_grad():
        want = mod.risk_model.eval()(x["seq"], x["mask"], x["static"]).numpy()
    np.testing.assert_allclose(sc.risk(sig), want, atol=1e-6)
    np.testing.assert_allclose(onnx_risk(art, x["seq"], x["mask"], x["static"]), want, atol=1e-5)
    assert sc.threshold == 0.4 and 0 <= sc.risk(sig).min() and sc.risk(sig).max() <= 1
    by_step = sc.risk_by_step(sig)
    assert by_step.shape == (3, K + 1)
    np.testing.assert_allclose(by_step[:, -1], sc.risk(sig), atol=1e-6)
    for t in range(K + 1):  # column t: the risk with the steps after t hidden, one prefix at a time
        m = x["mask"].clone()
        m[:, t + 1:] = False
        with torch.no_grad():
            want_t = mod.risk_model(x["seq"], m, x["static"]).numpy()
        np.testing.assert_allclose(by_step[:, t], want_t, atol=1e-6)
    if probe != "temporal":  # (the temporal probe's calibration is flat on these few rows)
        assert np.ptp(by_step, axis=1).max() > 1e-4  # the prefixes differ, so the comparison above can fail


def test_tampered_hash_and_wrong_model_are_refused(tmp_path, dir_lm, artifact, tiny_lm):
    w = artifact / "probe.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(UserError, match="probe.safetensors hash mismatch"):
        Scorer.load(artifact)
    art2, _ = make_artifact(dir_lm, tmp_path / "second")
    with pytest.raises(UserError, match="trained for model"):
        Scorer.load(art2, model=tiny_lm)
    assert Scorer.load(art2, model=tiny_lm, allow_model_mismatch=True).k == K


def test_teacher_forced_features_equal_generated(dir_lm, artifact):
    sc = Scorer.load(artifact, model=dir_lm)
    prompts = ["What is one?", "Name a longer thing please?"]
    sig, gens = _capture(dir_lm, sc, prompts, n=8)
    forced_ids = [g.token_ids[:-1] if g.finish == "eos" else g.token_ids for g in gens]
    cap = Capture(dir_lm, sc.feature_spec())
    with cap:
        fg = generate(dir_lm, [render(dir_lm.tokenizer, p) for p in prompts], forced=forced_ids)
    fsig = cap.finish([g.token_ids for g in fg])
    assert [g.token_ids[: len(f)] for g, f in zip(fg, forced_ids)] == forced_ids
    for name in sig:
        np.testing.assert_allclose(fsig[name], sig[name], atol=1e-5, err_msg=name)
    # the one-pass extraction that scoring uses gives the same features
    from riskprobe.signatures.extract import Extractor

    xsig = Extractor(dir_lm, sc.feature_spec()).extract([render(dir_lm.tokenizer, p) for p in prompts],
                                                        [g.token_ids for g in fg])
    for name in sig:
        np.testing.assert_allclose(xsig[name], sig[name], atol=2e-3, rtol=1e-3, err_msg=name)
    # and through the text API: the given response is the generated text
    res = sc.score(dir_lm, prompts, [g.text or "a" for g in gens])
    assert all(r["teacher_forced"] for r in res)


def test_score_file_resume_and_malformed_lines(tmp_path, dir_lm, artifact, tiny_model_dir, capsys):
    inp = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"r{i}", "prompt": f"Question {i}?"}) for i in range(5)]
    lines.insert(2, '{"id": "bad", "prompt": ')
    lines.insert(4, json.dumps({"id": "nop", "response": "x"}))
    lines.append(json.dumps({"id": "given", "prompt": "Q?", "response": "Some answer"}))
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    sc = Scorer.load(artifact, model=dir_lm)
    st = score_file(sc, dir_lm, inp, out, batch_size=2, progress=False)
    assert st["scored"] == 6 and st["failed"] == 2
    assert any(":3: malformed JSON" in e for e in st["errors"]) and any(":5: field 'prompt'" in e for e in st["errors"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4", "given"]
    for r in rows:
        assert 0 <= r["risk"] <= 1 and len(r["risk_by_step"]) == K + 1 and isinstance(r["flagged"], bool)
        assert r["model"]["fingerprint"] == dir_lm.identity.fingerprint and "response" in r
    assert rows[-1]["response"] == "Some answer" and rows[-1]["teacher_forced"]
    # a crash mid-write leaves a partial last line: it is dropped and redone, done ids are skipped
    out.write_text("\n".join(out.read_text().splitlines()[:3]) + "\n" + '{"id": "r3", "ri')
    st2 = score_file(sc, dir_lm, inp, out, batch_size=2, progress=False)
    assert st2["skipped_done"] == 3 and st2["scored"] == 3
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["r0", "r1", "r2", "r3", "r4", "given"]
    # the CLI: exit 1 when lines failed, 2 when --on-error fail
    rc = main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
               str(tmp_path / "o2.jsonl"), "--no-progress"])
    assert rc == 1
    rc = main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
               str(tmp_path / "o3.jsonl"), "--no-progress", "--on-error", "fail"])
    err = capsys.readouterr().err
    assert rc == 2 and "in.jsonl:3: malformed JSON" in err


def test_monitor_matches_scorer_and_can_stop(dir_lm, artifact):
    from transformers import StoppingCriteriaList

    from riskprobe.models.generation import tokenize
    from riskprobe.serving.monitor import RiskMonitor

    sc = Scorer.load(artifact, model=dir_lm)
    prompts = ["What is one?", "Name a longer thing please?"]
    sig, gens = _capture(dir_lm, sc, prompts, n=10)
    enc = tokenize(dir_lm, [render(dir_lm.tokenizer, p) for p in prompts])
    with RiskMonitor(sc, dir_lm) as mon:
        out = dir_lm.model.generate(**enc, max_new_tokens=10, do_sample=False, stopping_criteria=StoppingCriteriaList([mon]),
                                    pad_token_id=dir_lm.tokenizer.pad_token_id)
    np.testing.assert_allclose(mon.risk, sc.risk(sig), atol=1e-5)
    assert mon.flagged.dtype == bool and mon.risk_by_step.shape == (2, K + 1)
    assert out.shape[1] - enc["input_ids"].shape[1] == 10  # flag only: generation continues
    assert all(not m._forward_hooks for m in mon.cap.sites.values())  # hooks gone after step k
    with RiskMonitor(sc, dir_lm, stop=True, threshold=0.0) as mon:
        out = dir_lm.model.generate(**enc, max_new_tokens=10, do_sample=False, stopping_criteria=StoppingCriteriaList([mon]),
                                    pad_token_id=dir_lm.tokenizer.pad_token_id)
    assert mon.flagged.all() and out.shape[1] - enc["input_ids"].shape[1] == K + 1  # stopped at step k


def test_monitor_captures_only_what_the_probe_reads(tmp_path, dir_lm):
    from transformers import StoppingCriteriaList

    from riskprobe.models.generation import tokenize
    from riskprobe.serving.monitor import RiskMonitor

    art, _ = make_artifact(dir_lm, tmp_path, families=("raw",))
    sc = Scorer.load(art, model=dir_lm)
    assert sc.feature_spec().families == ["raw"]
    art2, _ = make_artifact(dir_lm, tmp_path / "c", families=("commitment", "raw"))
    assert Scorer.load(art2).feature_spec().families == ["commitment", "lens", "raw"]  # lens: commitment depth
    prompts = ["What is one?", "Name a longer thing please?"]
    full = Scorer.load(art2, model=dir_lm)
    sig, _ = _capture(dir_lm, full, prompts, n=10)  # the harvest's full signature
    enc = tokenize(dir_lm, [render(dir_lm.tokenizer, p) for p in prompts])
    with RiskMonitor(sc, dir_lm) as mon:
        dir_lm.model.generate(**enc, max_new_tokens=10, do_sample=False, stopping_criteria=StoppingCriteriaList([mon]),
                              pad_token_id=dir_lm.tokenizer.pad_token_id)
    np.testing.assert_allclose(mon.risk, sc.risk(sig), atol=1e-5)  # the raw-only capture gives the same risk
    # every row ends before step k: leaving the monitor computes the risk from what was generated
    with RiskMonitor(sc, dir_lm) as mon:
        dir_lm.model.generate(**enc, max_new_tokens=2, do_sample=False, stopping_criteria=StoppingCriteriaList([mon]),
                              pad_token_id=dir_lm.tokenizer.pad_token_id)
    assert mon.risk is not None and mon.risk.shape == (2,)




def test_given_rows_never_use_a_generation_only_head(tmp_path, dir_lm):
    """A probe trained on its model's own answers only refuses rows with a response; with a given-answer head
    those rows are scored by that head (and say so), generated rows still by the generation probe."""
    from synth import make_artifact

    own, _ = make_artifact(dir_lm, tmp_path / "own", provenance=("own",), seed=1)
    given, _ = make_artifact(dir_lm, tmp_path / "given", provenance=("other", "own", "reference"), seed=2, ood=1.5)
    prompts, answers = ["What is one?", "Name a thing?"], ["One", "A long and winding answer"]
    sc = Scorer.load(own, model=dir_lm)
    assert not sc.given_capable and sc.given is None
    with pytest.raises(UserError, match="own answers only"):
        sc.score(dir_lm, prompts, answers)
    with pytest.raises(UserError, match="cannot be the given-answer head"):
        Scorer.load(own, given=own)
    both = Scorer.load(own, model=dir_lm, given=given)
    res = both.score(dir_lm, prompts + ["Why?"], answers + [None], max_new_tokens=4)
    assert [r["head"] for r in res] == ["given", "given", "generation"]
    head = both.given
    sig = Extractor(dir_lm, head.feature_spec()).extract(
        [render(dir_lm.tokenizer, p) for p in prompts],
        forced_ids(dir_lm, answers))
    np.testing.assert_allclose([r["risk"] for r in res[:2]], head.risk(sig), atol=1e-6)
    own_risk = sc.risk(Extractor(dir_lm, sc.feature_spec()).extract(
        [render(dir_lm.tokenizer, p) for p in prompts],
        forced_ids(dir_lm, answers)))
    assert np.abs(own_risk - head.risk(sig)).max() > 1e-3  # the two heads differ, so the check above can fail
    dist, far = head.ood(sig)
    assert [r["ood"] for r in res[:2]] == (dist > 1.5).tolist() and res[2]["ood"] is None  # the own probe has no threshold
    # readings: every reading from one build of the inputs, equal to each one read on its own
    r = head.readings(sig, by_step=True)
    np.testing.assert_allclose(r["risk"], head.risk(sig), atol=1e-12)
    np.testing.assert_allclose(r["risk_by_step"], head.risk_by_step(sig), atol=1e-12)
    np.testing.assert_allclose(r["ood_distance"], dist, atol=1e-12)
    assert r["ood"].tolist() == far.tolist() and "risk_by_step" not in head.readings(sig)
    # an artifact that names its given head in probe.json brings it along
    from riskprobe.probes.artifact import read_artifact, write_artifact

    rm, meta = read_artifact(own)
    import shutil

    shutil.copytree(given, tmp_path / "given_head")
    write_artifact(rm, dict(meta, given_probe="given_head"), tmp_path / "paired")
    paired = Scorer.load(tmp_path / "paired", model=dir_lm)
    assert paired.given is not None and paired.given.path == (tmp_path / "given_head")


@pytest.mark.parametrize("key, want", [
    ("respnse", "did you mean 'response'"), ("promt", "did you mean 'prompt'"), ("responses", "did you mean 'response'"),
    ("answer_knd", "did you mean 'answer_kind'"), ("max_new_tokens", "not per request"),
    ("question_id", None), ("prompt_id", None), ("response_text", None), ("qid", None), ("uid", None), ("_id", None),
    ("answers", None), ("category", None), ("risk", None), ("model", None), ("flagged", None),
])
def test_request_fields_a_slip_is_refused_the_callers_own_kept(key, want):
    from riskprobe.serving.scorer import request_problem

    got = request_problem({"prompt": "Q?", key: "x"})
    assert (got is None) if want is None else (want in got and key in got), got
