"""Integration: several processes (SIGKILL and resume, torchrun ranks, DDP) and a real HTTP server on loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import datasets
import pytest
from synth import assert_same_dataset, fit_args, make_harvest

from riskprobe.serving.scorer import Scorer


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


def test_ddp_two_cpu_processes(tmp_path):
    h = make_harvest(tmp_path / "h", n=300, signal=2.0)
    repo = os.path.dirname(os.path.dirname(__file__))
    cmd = [sys.executable, "-m", "riskprobe", *fit_args(tmp_path, h, "--trainer.strategy", "ddp", "--trainer.devices",
                                                         "2", "--sweep_ks", "null")]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", PYTHONPATH=os.path.join(repo, "tests"))
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["probe"]["auroc"] > 0.75


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_service_concurrent_and_bad_bodies(dir_lm, artifact):
    import httpx
    import uvicorn

    from riskprobe.serving.http import create_app

    sc = Scorer.load(artifact, model=dir_lm)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(sc, dir_lm, max_batch=8, max_wait_ms=50), host="127.0.0.1",
                                           port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        prompts = [f"Question number {i}?" for i in range(8)]
        alone = {p: sc.score(dir_lm, [p])[0]["risk"] for p in prompts}
        with ThreadPoolExecutor(8) as ex:
            res = list(ex.map(lambda p: httpx.post(f"{base}/score", json={"prompt": p}, timeout=60), prompts))
        assert all(r.status_code == 200 for r in res), [(r.status_code, r.text[:200]) for r in res]
        for p, r in zip(prompts, res):
            assert r.json()["risk"] == pytest.approx(alone[p], abs=1e-4)
        health = httpx.get(f"{base}/health").json()
        assert health["served"] == 8 and health["batches"] < 8  # concurrent requests were batched
        given = httpx.post(f"{base}/score", json={"prompt": "Q?", "response": "An answer"}, timeout=60).json()
        assert given["teacher_forced"] and given["response"] == "An answer"
        bad = [httpx.post(f"{base}/score", json={"response": "x"}),
               httpx.post(f"{base}/score", content=b"{not json", headers={"content-type": "application/json"}),
               httpx.post(f"{base}/score", json={"prompt": "x" * 9000}),
               httpx.post(f"{base}/score", json={"prompt": ""})]
        assert [b.status_code for b in bad] == [400, 400, 400, 400]
        assert all("error" in b.json() for b in bad)
        big = httpx.post(f"{base}/score", content=b"x" * 100_000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "larger than" in big.json()["error"]
    finally:
        server.should_exit = True
        th.join(timeout=10)
