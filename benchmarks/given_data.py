"""The given-answer training and evaluation data of issue 13, as one command (a harvest of answers that the model
did not write, each with its provenance), in the feature spec of the corpus harvests so that it mixes with them:

    python benchmarks/given_data.py --model smollm2-135m --corpus data/corpora/smollm2-135m \\
        --other data/corpora/gemma3-270m --out runs/given/smollm2-135m

Rows: HaluEval QA (right and hallucinated answers of ``--halueval`` questions), TruthfulQA (true and false answers:
the CSV lists, at most ``--per-question`` of each for training and validation questions, every mc2 statement for
test questions), gold answers of ``--gold`` corpus questions (reference), and another model's graded corpus
answers on the corpus's questions (``--other``, other). Questions keep their split (hash of the question id).
"""

from __future__ import annotations

import argparse
import json


def answers(args):
    from riskprobe.harvest.extract import corpus_items
    from riskprobe.harvest.generations import read_corpus
    from riskprobe.harvest.given import GivenAnswer, _pick, corpus_answers, from_items, gold_answers
    from riskprobe.prompts.given import given_answer_pairs
    from riskprobe.prompts.sets import _qid, load_items, split_of

    rows = []
    if args.halueval:
        rows += from_items(_pick(load_items("halueval_qa"), args.halueval))
    if args.truthfulqa:
        tq = load_items("truthfulqa")
        rows += from_items([it for it in tq if split_of(it.id) != "test"], max_per_question=args.per_question)
        by_id = {it.id: it for it in tq}
        for q, a, label, _ in given_answer_pairs("truthfulqa_mc"):
            qid = _qid("truthfulqa", q)
            if qid in by_id and split_of(qid) == "test":
                it = by_id[qid]
                rows.append(GivenAnswer(qid, "truthfulqa", "factual", it.prompt, a.strip(), label, "other",
                                        f"truthfulqa_mc2:{'false' if label else 'true'}", it.answer_kind,
                                        tuple(it.answers)))
    ids = None
    if args.corpus:
        m, crow = read_corpus(args.corpus)
        items = corpus_items(m, __import__("pathlib").Path(args.corpus))
        ids = {it.id for it in items}
        if args.gold:
            rows += gold_answers(_pick(items, args.gold, seed=1))
    for other in args.other:
        rows += corpus_answers(other, ids=ids, limit=args.other_rows, seed=2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", required=True)
    ap.add_argument("--features", default="corpus", help="a harvest config name whose features: to use")
    ap.add_argument("--halueval", type=int, default=1500)
    ap.add_argument("--truthfulqa", type=int, default=1, help="0 to leave TruthfulQA out")
    ap.add_argument("--per-question", type=int, default=3)
    ap.add_argument("--corpus", help="the model's own corpus (its questions get gold answers)")
    ap.add_argument("--gold", type=int, default=1500)
    ap.add_argument("--other", nargs="*", default=[], help="other models' corpora (their answers, graded)")
    ap.add_argument("--other-rows", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dry-run", action="store_true", help="print the counts only")
    args = ap.parse_args()

    from riskprobe.harvest.given import build_given_harvest, describe

    rows = answers(args)
    print(json.dumps(describe(rows), indent=1))
    if args.dry_run:
        return
    from riskprobe.harvest.config import load_config
    from riskprobe.models import load_model
    from riskprobe.resources import resolve_config

    features = load_config(resolve_config("harvest", args.features)).features
    lm = load_model(args.model)
    build_given_harvest(lm, rows, args.out, features=features, batch_size=args.batch_size,
                        description=f"given answers ({args.out})")


if __name__ == "__main__":
    main()
