"""Given answers: the harvest of answers with provenance, length-matched evaluation, sampled answers teacher
forced, the eval-given readers."""

import json

import numpy as np
import pytest
import torch
from synth import K, make_artifact, make_harvest

from riskprobe.errors import UserError
from riskprobe.evaluation.given import evaluate_groups, length_matched
from riskprobe.harvest.forced import build_given_harvest
from riskprobe.harvest.store import load_harvests
from riskprobe.prompts.answers import GivenAnswer, from_items, gold_answers
from riskprobe.prompts.sets import Item, split_of
from riskprobe.serving.scorer import Scorer
from riskprobe.training.data import split_indices

FEATS = {"K": K, "lens_steps": 2, "raw_steps": 2, "raw_layers": "sparse2"}  # the spec of synth.make_artifact


def test_length_matched_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    n = np.array([1, 1, 2, 1, 2, 2, 3, 4])
    keep = length_matched(y, n)
    # length 1: two right, one wrong -> one of each; length 2: one right, two wrong -> one of each; 3, 4: none
    assert keep.sum() == 4 and keep[3] and keep[2] and not keep[6] and not keep[7]
    assert sum(keep[[0, 1]]) == 1 and sum(keep[[4, 5]]) == 1
    for length in (1, 2):  # equal classes at each kept length
        assert y[keep & (n == length)].sum() * 2 == (keep & (n == length)).sum()
    np.testing.assert_array_equal(length_matched(y, n, keys=list("abcdefgh")), length_matched(y, n, keys=list("abcdefgh")))


def test_planted_length_shortcut_is_caught():
    """Wrong answers are longer: a score that reads only the length looks good on all rows and sits at 0.5 on
    the length-matched subset; a score with a real signal keeps its AUROC there."""
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.random(n) < 0.5
    lengths = rng.integers(1, 6, n) + 3 * y  # wrong answers 3 tokens longer on average
    lengths = np.minimum(lengths, 7)
    length_score = lengths + rng.normal(0, 1e-6, n) * 0  # exactly the length
    real = y * 1.0 + rng.normal(0, 1.0, n)
    res = evaluate_groups(y, length_score, lengths, {"all": np.ones(n, bool)}, baselines={"real": real}, n_boot=50)
    r = res["all"]
    assert r["auroc"] > 0.85 and r["length_only_auroc"] == pytest.approx(r["auroc"])
    assert r["length_matched"]["auroc"] == pytest.approx(0.5) and r["length_matched"]["n"] > 400
    assert r["best_training_free"]["name"] == "real" and r["best_training_free"]["length_matched_auroc"] > 0.7


def _items():
    return [Item(id=f"q-{i}", set="toy", category="factual", prompt=f"What is thing {i}?", answers=(f"thing{i}",),
                 incorrect=(f"not thing {i} at all",)) for i in range(12)]


def test_given_harvest_records_provenance_and_keeps_questions_in_one_split(tmp_path, dir_lm):
    items = _items()
    rows = from_items(items) + gold_answers(items[:6])
    assert {(a.provenance, a.source) for a in rows} == {("other", "toy:right"), ("other", "toy:incorrect"),
                                                         ("reference", "gold")}
    out = build_given_harvest(dir_lm, rows, tmp_path / "given", features=FEATS,
                              batch_size=5, shard_size=7, progress=False)
    import datasets

    ds = datasets.load_from_disk(str(out))
    assert len(ds) == len(rows) and ds["provenance"].count("reference") == 6
    assert sorted(zip(ds["id"], ds["source"], ds["label"])) == sorted((a.id, a.source, a.label) for a in rows)
    assert all(s == split_of(i) for s, i in zip(ds["split"], ds["id"]))
    # the signature of a row is what the scorer computes for the same (question, answer)
    art, _ = make_artifact(dir_lm, tmp_path / "art", provenance=("other", "own"))
    sc = Scorer.load(art, model=dir_lm)
    j = ds["source"].index("toy:incorrect")
    got = sc.score(dir_lm, [ds["prompt"][j]], [ds["response"][j]])[0]["risk"]
    h = load_harvests([out])
    sig = {k: v[j:j + 1].numpy() for k, v in h.tensors.items()}
    assert sc.risk(sig)[0] == pytest.approx(got, abs=1e-5)
    # mixed with another harvest of the same questions: every answer is kept, each question in one split
    h2 = load_harvests([out, out])  # the same answers twice count once
    assert len(h2) == len(rows)
    idx = split_indices(h2)
    where = {}
    for split, ix in idx.items():
        for i in ix:
            where.setdefault(h2.meta["id"][i], set()).add(split)
    assert all(len(s) == 1 for s in where.values())
    # resuming a finished harvest does nothing; other rows in the same folder are refused
    assert build_given_harvest(dir_lm, rows, out, features=FEATS, progress=False) == out
    with pytest.raises(UserError, match="the prompt items changed"):
        build_given_harvest(dir_lm, rows[:-1], out, features=FEATS, progress=False)
    with pytest.raises(UserError, match="different configuration.*feature_schema"):
        build_given_harvest(dir_lm, rows, out, features={**FEATS, "normalisation": "unit"}, progress=False)


def test_generation_harvests_read_as_own_answers_and_a_repeat_counts_once(tmp_path):
    a = make_harvest(tmp_path / "a", n=40)
    b = make_harvest(tmp_path / "b", n=40, seed=1)  # the same question ids, other rows: the first harvest's kept
    h = load_harvests([a, b])
    assert len(h) == 40 and set(h.meta["provenance"]) == {"own"} and set(h.meta["source"]) == {"own"}


def test_sampled_answers_teacher_forced_score_as_live(dir_lm, tmp_path):
    """The model's own sampled answers, forced through it again, get the risk they got while generated."""
    from riskprobe.models import render
    from riskprobe.models.generation import generate
    from riskprobe.signatures import Capture
    from riskprobe.signatures.extract import Extractor

    art, _ = make_artifact(dir_lm, tmp_path / "art")
    sc = Scorer.load(art, model=dir_lm)
    prompts = [render(dir_lm.tokenizer, p) for p in ("What is one?", "Name a longer thing please?", "Why?")]
    cap = Capture(dir_lm, sc.feature_spec())
    with cap:
        gens = generate(dir_lm, prompts, max_new_tokens=8, do_sample=True, temperature=1.0, row_seeds=[1, 2, 3])
    live = sc.risk(cap.finish([g.token_ids for g in gens]))
    forced = sc.risk(Extractor(dir_lm, sc.feature_spec()).extract(prompts, [g.token_ids for g in gens]))
    assert len({tuple(g.token_ids) for g in gens}) == 3
    np.testing.assert_allclose(forced, live, atol=1e-4)


def test_eval_given_jsonl_rows_and_errors(tmp_path, dir_lm):
    from riskprobe.evaluation.given import evaluate_given
    from riskprobe.prompts.answers import given_rows

    p = tmp_path / "mine.jsonl"
    rows = [{"question": f"What is {i}?", "answer": "yes" if i % 2 else "a much longer wrong answer", "label": i % 2 == 0}
            for i in range(8)]
    p.write_text("\n".join(json.dumps(dict(r, label=int(r["label"]))) for r in rows) + "\n")
    got = given_rows(str(p), None)
    assert [g.label for g in got] == [1, 0] * 4 and all(isinstance(g, GivenAnswer) for g in got)
    art, _ = make_artifact(dir_lm, tmp_path / "art", ood=2.0)
    r = evaluate_given(Scorer.load(art, model=dir_lm), dir_lm, str(p), limit=None, progress=False, n_boot=20)
    assert r["n"] == 8 and r["n_incorrect"] == 4 and 0 <= r["auroc"] <= 1
    assert r["groups"]["all"]["length_matched"]["n"] == 0  # no right and wrong answer share a length
    assert r["groups"]["all"]["ood_flagged"] is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "A"}) + "\n")
    with pytest.raises(UserError, match="label") as e:
        given_rows(str(bad), None)
    assert ":1" in str(e.value) and "bad.jsonl" in str(e.value)
    bad.write_text(json.dumps({"question": "Q?", "answer": " ", "label": 1}) + "\n")
    with pytest.raises(UserError, match="answer"):
        given_rows(str(bad), None)


def test_ood_distance_is_one_for_standard_rows_and_grows_far_away():
    from riskprobe.probes.modules import RiskModel, build_probe, ood_distance

    rm = RiskModel(build_probe("linear", 2, 3, 4), 3, 4)
    seq = torch.ones(5, 2, 3)
    mask = torch.ones(5, 2, dtype=torch.bool)
    static = torch.ones(5, 4)
    np.testing.assert_allclose(ood_distance(rm, seq, mask, static).numpy(), 1.0, atol=1e-6)
    mask[:, 1] = False  # invalid steps do not count
    np.testing.assert_allclose(ood_distance(rm, seq * 3, mask, static * 3).numpy(), 3.0, atol=1e-6)


def test_given_harvest_cli(tmp_path, tiny_model_dir, capsys):
    from riskprobe.cli import main

    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}", "label": i % 2}) + "\n" for i in range(6)))
    base = ["given-harvest", "--model", str(tiny_model_dir), "--halueval", "0", "--no-truthfulqa", "--input", str(p),
            "--features", str(_feats_yaml(tmp_path)), "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "g")]) == 0
    h = load_harvests([tmp_path / "g"])
    assert len(h) == 6 and h.meta["label"] == [0, 1] * 3 and set(h.meta["source"]) == {"mine"}
    assert main(base + ["--out", str(tmp_path / "g2"), "--gold", "-1"]) == 2
    assert "gold" in capsys.readouterr().err and not (tmp_path / "g2").exists()


def _feats_yaml(tmp_path):
    f = tmp_path / "feats.yaml"
    f.write_text("features: {K: 4, lens_steps: 2, raw_steps: 2, raw_layers: sparse2}\n")
    return f


def test_efficientqa_rated_system_answers_become_given_answers(tmp_path, monkeypatch):
    import json

    from riskprobe.prompts.answers import efficientqa_answers, writer_of
    from riskprobe.prompts.sets import question_id

    (tmp_path / "nq_open").mkdir()
    (tmp_path / "nq_open/NQ-open.efficientqa.test.1.1.jsonl").write_text(json.dumps(
        {"question": "who played grand moff tarkin in rogue one", "answer": ["Guy Henry"],
         "def_correct_predictions": ["Guy Henry", "Guy Henry"], "poss_correct_predictions": ["an actor"],
         "def_incorrect_predictions": ["peter cushing", '\\"Sesenne\\"']}) + "\n")
    monkeypatch.setenv("RISKPROBE_DATASETS", str(tmp_path))
    rows = efficientqa_answers()
    assert [(r.answer, r.label) for r in rows] == [("Guy Henry", 0), ("peter cushing", 1), ('"Sesenne"', 1)]
    r = rows[0]
    assert r.id == question_id("nq_open", "who played grand moff tarkin in rogue one") and r.set == "nq_open"
    assert r.question == "Who played grand moff tarkin in rogue one?" and r.provenance == "other"
    assert writer_of(r.source, r.provenance) == "efficientqa" and writer_of("corpus:smollm2-135m", "own") == "own"


@pytest.mark.parametrize("field", ["halueval", "per_question", "gold", "other_rows", "own", "efficientqa"])
def test_given_answer_counts_are_checked_by_the_stage(field):
    """The Python API refuses a negative count as the command does (the check is the stage's, not the CLI's)."""
    from riskprobe.harvest.forced import standard_answers

    with pytest.raises(UserError, match=f"field '{field.replace('_', '-')}': must be 0 or more, got -1"):
        standard_answers(**{field: -1})


def test_forced_batches_come_back_in_the_rows_order_and_equal_one_row_at_a_time(dir_lm):
    """Rows are forced in batches sorted by length; every row's signature and token count are its own."""
    from riskprobe.evaluation.given import forced_in_batches
    from riskprobe.models import render
    from riskprobe.models.generation import forced_ids
    from riskprobe.signatures import FeatureSpec
    from riskprobe.signatures.extract import Extractor

    forced = Extractor(dir_lm, FeatureSpec(K=6, families=["commitment"]).resolve(dir_lm)).extract_answers

    answers = ["a much longer answer than the rest", "b", "cc", "a middling answer", "dd d"]
    rows = [GivenAnswer(id=f"q{i}", set="mine", category="factual", question=f"Question {'x' * (5 - i)}?", answer=a,
                        label=i % 2, provenance="other", source="mine") for i, a in enumerate(answers)]
    sig, n_tok = forced_in_batches(dir_lm, rows, forced, batch_size=2, progress=False)
    for i, r in enumerate(rows):
        one, ids = forced([render(dir_lm.tokenizer, r.question, r.answer_kind)], [r.answer])
        assert n_tok[i] == len(ids[0])
        np.testing.assert_allclose(sig["commitment"][i], one["commitment"][0], rtol=1e-5, atol=1e-5)
    assert n_tok.tolist() == [len(t) for t in forced_ids(dir_lm, answers)]
