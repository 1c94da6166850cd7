"""riskprobe adapt: a blend probe's head refitted on a few labels of a user's own questions, with the shipped head
as the prior; the adapted artifact loads, scores, and is refused when tampered with."""

import json
import os

import numpy as np
from synth import make_harvest

from riskprobe.cli import main
from riskprobe.evaluation.metrics import auroc
from riskprobe.harvest.store import load_harvests
from riskprobe.serving.scorer import Scorer


def _blend(tmp_path):
    paths = [str(make_harvest(tmp_path / f"s{i}", n=200, signal=1.5, seed=i, set_name=f"s{i}")) for i in range(3)]
    ck = tmp_path / "ck"
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", "[" + ",".join(paths) + "]",
                 "--data.families", "[commitment,raw]", "--data.k", "2", "--model.probe", "blend", "--selection",
                 "null", "--n_boot", "10", "--sweep_ks", "null", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--checkpoint_dir", str(ck)]) == 0
    assert main(["export", "--ckpt", str(ck / "final.ckpt"), "--out", str(tmp_path / "art")]) == 0
    return tmp_path / "art"


def test_adapt_follows_a_users_questions_where_the_probe_points_the_wrong_way(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    art = _blend(tmp_path)
    # the user's questions: wrong answers are *less* uncertain there (the signal reversed)
    ids_a = [f"mine-a{i}" for i in range(200)]
    ids_b = [f"mine-b{i}" for i in range(400)]
    labelled = make_harvest(tmp_path / "mine", n=200, signal=-1.5, seed=10, set_name="mine", ids=ids_a)
    rest = make_harvest(tmp_path / "rest", n=400, signal=-1.5, seed=11, set_name="mine", ids=ids_b)
    h = load_harvests([rest])
    before = auroc(np.asarray(h.meta["label"]), Scorer.load(art).risk(h.tensors))
    assert before < 0.4
    assert main(["adapt", "--probe", str(art), "--harvest", str(labelled), "--out", str(tmp_path / "adapted"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "adapted on 200 labelled answers" in out and "head (probe weight" in out
    sc = Scorer.load(tmp_path / "adapted")
    after = auroc(np.asarray(h.meta["label"]), sc.risk(h.tensors))
    assert after > 0.7 > before + 0.3
    meta = sc.meta
    assert meta["adapted"]["n"] == 200 and "transfer" not in meta and meta["probe"]["kind"] == "blend"
    # the adapted artifact is checked like any other: an edited threshold is refused
    pj = tmp_path / "adapted" / "probe.json"
    m = json.loads(pj.read_text())
    m["threshold"] = 0.01
    pj.write_text(json.dumps(m))
    assert main(["score", "--probe", str(tmp_path / "adapted"), "--input", str(pj), "--output",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "modified after export" in capsys.readouterr().err


def test_adapt_refuses_a_probe_that_does_not_blend_before_any_work(tmp_path, artifact, capsys):
    assert main(["adapt", "--probe", str(artifact), "--prompts", "builtin", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "adapt refits the head of a blend probe" in err and not (tmp_path / "a").exists()
    assert not (tmp_path / "a-harvest").exists()
    assert main(["adapt", "--probe", str(artifact), "--out", str(tmp_path / "a")]) == 2
    assert "give the labelled questions" in capsys.readouterr().err
