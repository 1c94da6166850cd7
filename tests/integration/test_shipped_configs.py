"""Every shipped config loads and runs: each fit config for one epoch on tiny synthetic harvests, each
harvest config on four prompts with the tiny model (the model and prompts overridden, nothing else)."""

import json

import pytest
from synth import make_harvest

from riskprobe.cli import main
from riskprobe.resources import shipped_configs


@pytest.fixture(scope="module")
def harvests(tmp_path_factory):
    d = tmp_path_factory.mktemp("h")
    # K = 32: the given-answer config reads the whole answer (k = 32)
    return {"tqa": make_harvest(d / "tqa", n=120, K=32, set_name="triviaqa"),
            "nq": make_harvest(d / "nq", n=120, K=32, set_name="nq_open")}


@pytest.mark.parametrize("name", sorted(shipped_configs("fit")))
def test_shipped_fit_config_runs(name, harvests, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    paths = f"[{harvests['tqa']},{harvests['nq']}]"
    rc = main(["fit", "--config", name, "--data.paths", paths, "--trainer.max_epochs", "1", "--sweep_ks", "null",
               "--n_boot", "20", "--trainer.default_root_dir", str(tmp_path / "run"), "--checkpoint_dir",
               str(tmp_path / "ck")])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= m["probe"]["auroc"] <= 1.0 and (tmp_path / "ck" / "final.ckpt").is_file()


@pytest.mark.parametrize("name", sorted(shipped_configs("harvest")))
def test_shipped_harvest_config_runs(name, tiny_model_dir, mini_prompts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["harvest", "--config", name, "--model", str(tiny_model_dir), "--prompts", str(mini_prompts),
               "--limit", "4", "--max-new-tokens", "6", "--out", str(tmp_path / "h"), "--device", "cpu",
               "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "h" / "riskprobe.json").read_text())["n_rows"] == 4
