"""The traps a new user met in the first hour, and what a hostile-input audit left (issue 27): each is a test of
what happens now."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synth import make_harvest

from riskprobe.cli import main
from riskprobe.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- scoring output
def test_a_write_the_disk_cuts_short_leaves_no_partial_row(tmp_path, monkeypatch):
    from riskprobe.serving import jsonl

    out = tmp_path / "scored.jsonl"
    out.write_text('{"id": "a"}\n')
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    real = os.write
    calls = []

    def short_then_full(f, data):  # the first call takes 5 bytes, the next finds the disk full
        calls.append(len(data))
        if len(calls) == 1:
            return real(f, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonl.os, "write", short_then_full)
    with pytest.raises(UserError, match="could not write the scored rows .*disk full.* the 1 rows written before"):
        jsonl.append_all(fd, b'{"id": "b"}\n{"id": "c"}\n', out, done=1)
    monkeypatch.setattr(jsonl.os, "write", real)
    os.close(fd)
    assert out.read_text() == '{"id": "a"}\n'  # cut back to where it was: no half row
    assert calls == [24, 19]  # the rest after the short write was retried before giving up


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits")
def test_score_under_a_file_size_limit_keeps_whole_rows_and_fails(tmp_path, tiny_model_dir, artifact):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"What is {i}?"}) + "\n" for i in range(12)))
    out = tmp_path / "out.jsonl"
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3500, 3500)); "
            f"from riskprobe.cli import main; sys.exit(main(['score', '--probe', {str(artifact)!r}, '--model', "
            f"{str(tiny_model_dir)!r}, '--input', {str(inp)!r}, '--output', {str(out)!r}, '--batch-size', '4', "
            f"'--max-new-tokens', '4', '--no-progress']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2, p.stderr
    assert "could not write the scored rows" in p.stderr and "Traceback" not in p.stderr
    data = out.read_text()
    assert data.endswith("\n") and all(json.loads(x)["id"].startswith("r") for x in data.splitlines())
    n = len(data.splitlines())
    assert 0 < n < 12 and n % 4 == 0  # whole batches only
    # with the limit gone, a rerun resumes after them and finishes
    assert main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
                 str(out), "--batch-size", "4", "--max-new-tokens", "4", "--no-progress"]) == 0
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(12))


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tmp_path, tiny_model_dir, artifact,
                                                                               capsys):
    import fcntl

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "Q?"}) + "\n")
    out = tmp_path / "out.jsonl"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running `riskprobe score` holds
    try:
        rc = main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
                   str(out), "--no-progress"])
    finally:
        os.close(fd)
    assert rc == 2 and "another riskprobe run is scoring into this file" in capsys.readouterr().err
    assert out.read_text() == ""
    assert main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
                 str(out), "--no-progress", "--max-new-tokens", "3"]) == 0
    assert len(out.read_text().splitlines()) == 1


def test_a_scoring_run_that_fails_before_any_row_leaves_no_output_file(tmp_path, tiny_model_dir, artifact, monkeypatch):
    from riskprobe.serving.scorer import Scorer

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "prompt": "Q?"}) + "\n")

    def boom(*a, **k):
        raise UserError("stop here")

    monkeypatch.setattr(Scorer, "score", boom)
    assert main(["score", "--probe", str(artifact), "--model", str(tiny_model_dir), "--input", str(inp), "--output",
                 str(tmp_path / "out.jsonl"), "--no-progress"]) == 2
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------------------------------------------- export
def test_export_on_a_full_disk_is_a_user_error_and_leaves_nothing(tmp_path, artifact, monkeypatch):
    from riskprobe.probes import artifact as A
    from riskprobe.probes.artifact import export_checkpoint

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(A, "save_file", full)  # the weights' write is the first to hit the full disk
    with pytest.raises(UserError, match="could not write the artifact .*is the disk full"):
        export_checkpoint(Path(artifact).parent / "final.ckpt", tmp_path / "art")
    assert [p.name for p in tmp_path.iterdir()] == ["made"]  # the fixture's; nothing of the export


def test_a_killed_export_leaves_temporaries_that_the_next_one_removes(tmp_path, artifact):
    from riskprobe.probes.artifact import export_checkpoint

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".art.pid{pid}.abc123.tmp"
    stale.mkdir()
    (stale / "probe.safetensors").write_bytes(b"half")
    live = tmp_path / f".art.pid{os.getpid()}.zzz.tmp"  # this process: alive, never touched
    live.mkdir()
    mine = tmp_path / ".art.notes.tmp"  # not of that pattern: never touched
    mine.mkdir()
    export_checkpoint(Path(artifact).parent / "final.ckpt", tmp_path / "art")
    assert not stale.exists() and live.exists() and mine.exists() and (tmp_path / "art" / "probe.json").is_file()


# ----------------------------------------------------------------------------------------------- messages
def test_a_fit_with_too_few_answers_says_the_counts_and_the_fix():
    from riskprobe.probes.logistic import cv_logreg, group_folds

    folds = group_folds([f"q{i}" for i in range(10)], 5)
    with pytest.raises(UserError, match=r"10 right and 0 wrong answers in 5 folds.*harvest more questions"):
        cv_logreg(np.random.default_rng(0).normal(size=(10, 3)), np.zeros(10, int), folds)
    with pytest.raises(UserError, match="at least 5 questions .* lower selection.folds"):
        group_folds(["a", "b"], 5)


def test_an_empty_split_names_every_split_size(tmp_path):
    from riskprobe.harvest.store import load_harvests
    from riskprobe.training.data import split_indices

    h = load_harvests([make_harvest(tmp_path / "h", n=3)])
    with pytest.raises(UserError, match=r"split is empty \(3 rows: train \d+, val \d+, test \d+.*larger --limit"):
        split_indices(h)


# -------------------------------------------------------------------------------------------- output hygiene
def test_a_bar_with_nothing_to_do_is_not_shown(capsys):
    from riskprobe.progress import bar

    b = bar(0, "extract", "answer")
    b.close()
    b = bar(3, "extract", "answer")
    b.update(3)
    b.close()
    err = capsys.readouterr().err
    assert "0/0" not in err and "0it" not in err and "3/3" in err


def test_a_fit_prints_no_lightning_epoch_lines(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=200)
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", f"[{h}]", "--model.probe", "mlp",
                 "--selection", "null", "--trainer.max_epochs", "3", "--n_boot", "10", "--sweep_ks", "null",
                 "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    assert "Epoch" not in out + err and "val_auroc:" not in out + err and "test split:" in out


def test_make_clean_keeps_user_work():
    p = subprocess.run(["make", "-n", "clean"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0
    assert "rm -rf .venv" in p.stdout and " runs" not in p.stdout.replace("kept: runs/", "")


# ------------------------------------------------------------------------------------------ plots and report
def _sweep(n_baselines: int) -> dict:
    def m(a):
        return {"auroc": a, "auroc_ci": [a - 0.05, a + 0.05], "kind": None}

    rows = []
    for k in (0, 1, 4):
        base = {f"tf{i}@k{k}": {**m(0.55 + 0.01 * i), "kind": "training-free"} for i in range(n_baselines)}
        base.update({"answer_length": {**m(0.52), "kind": "control"},
                     "sklearn_logreg@features": {**m(0.7), "kind": "sklearn"},
                     "sklearn_logreg@confidence": {**m(0.6), "kind": "sklearn"},
                     "sklearn_logreg@prompt_hidden": {**m(0.65), "kind": "sklearn"}})
        rows.append({"k": k, "probe": m(0.8), "baselines": base,
                     "controls": {"within confidence strata (x, quintiles)": m(0.75), "within set": m(0.7)}})
    return {"ks": [0, 1, 4], "rows": rows}


def test_auroc_vs_k_draws_at_most_eight_series_with_the_probe_on_top(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from riskprobe.report import plots

    lines = plots.sweep_lines(_sweep(7))
    assert len(lines) <= 8 and list(lines)[0] == "probe"
    assert {"tf6", "tf5", "tf4", "sklearn_logreg@features", "answer_length"} <= set(lines)
    assert "tf0" not in lines  # the weakest training-free scores give way
    seen = {}

    def keep(fig, path, dpi=110):
        ax = fig.axes[0]
        seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        seen["z"] = {ln.get_label(): ln.get_zorder() for ln in ax.get_lines()}
        seen["colors"] = [ln.get_color() for ln in ax.get_lines() if ln.get_label() not in ("probe", "chance (0.5)")]

    orig = plots.atomic_savefig
    plots.atomic_savefig = keep
    try:
        plots.plot_sweep(_sweep(7), tmp_path / "a.png")
    finally:
        plots.atomic_savefig = orig
    assert seen["labels"][:2] == ["probe", "probe, 95% interval"] and "chance (0.5)" in seen["labels"]
    assert seen["z"]["probe"] == max(seen["z"].values())
    assert len(set(seen["colors"])) == len(seen["colors"])  # no two baselines share a colour


def test_the_report_opens_with_a_headline(tmp_path, monkeypatch):
    from riskprobe.report.build import write_report

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    h = make_harvest(tmp_path / "h", n=300, signal=2.0)
    assert main(["fit", "--config", "configs/fit/default.yaml", "--data.paths", f"[{h}]", "--selection", "null",
                 "--n_boot", "20", "--sweep_ks", "null", "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    md = write_report([tmp_path / "run", h], tmp_path / "rep").read_text().splitlines()
    assert md[0] == "# riskprobe report" and md[2].startswith("**Headline.** The probe `logreg@k4` ranks wrong answers")
    assert "best training-free score" in md[2] and "In distribution only" in md[2]
    assert any(x.startswith(f"- harvest `{h}`: 300 answers") for x in md[3:6])


# ------------------------------------------------------------------------------------------------------ HTTP
def test_a_body_that_stalls_is_answered_408():
    from riskprobe.serving.http import _BodyLimit

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app must not see a stalled request")

    sent = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(msg):
        sent.append(msg)

    mw = _BodyLimit(app, 1000, body_timeout=0.2)
    asyncio.run(asyncio.wait_for(mw({"type": "http", "headers": [(b"content-length", b"10")]}, receive, send), 5))
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]


def test_serving_beyond_loopback_warns(monkeypatch, capsys):
    import uvicorn

    from riskprobe.serving import http

    got = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: got.update(kw))
    monkeypatch.setattr(http, "create_app", lambda *a, **k: object())
    http.serve(None, None, host="0.0.0.0", port=1)
    assert "no authentication" in capsys.readouterr().err and got["timeout_keep_alive"] == 5
    http.serve(None, None, host="127.0.0.1", port=1)
    assert capsys.readouterr().err == ""


def test_every_subcommand_has_its_handler():
    """The parser's subcommands and the handlers the CLI dispatches to are the same set (LightningCLI's three
    go to training)."""
    import re

    from riskprobe.cli import COMMANDS, LIGHTNING_COMMANDS, build_parser

    choices = re.search(r"\{([^}]*)\}", build_parser().format_usage()).group(1).split(",")
    assert set(choices) == set(COMMANDS) | set(LIGHTNING_COMMANDS) and len(choices) == 20
