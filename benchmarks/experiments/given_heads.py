"""A given-answer head read per writer of a given-answer harvest (answers of other models, of real QA systems judged
by people, references...), beside the best training-free score on the same rows: how an artifact does on answers
others wrote, writer by writer.

    python benchmarks/experiments/given_heads.py --probe given --harvest runs/sources/given-smollm2-135m
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from riskprobe.evaluation.baselines import training_free_scores
from riskprobe.evaluation.versus import format_versus, versus_training_free
from riskprobe.harvest.store import load_harvests
from riskprobe.prompts.answers import writer_of
from riskprobe.serving.scorer import Scorer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", required=True)
    ap.add_argument("--harvest", required=True)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json")
    a = ap.parse_args()
    sc = Scorer.load(a.probe)
    head = sc.head_for_given()
    h = load_harvests([a.harvest])
    head.check_schema(h.schema, file=a.harvest)
    risk = head.risk(h.tensors)
    tf = training_free_scores(h.tensors, head.k)
    y = np.asarray(h.meta["label"])
    writer = np.asarray([writer_of(s, p) for s, p in zip(h.meta["source"], h.meta["provenance"])])
    rows = {}
    for w in sorted(set(writer.tolist())):
        m = writer == w
        if 0 < y[m].sum() < m.sum():
            rows[w] = versus_training_free(y[m], risk[m], {k: v[m] for k, v in tf.items()}, n_boot=a.n_boot)
    print(f"{a.probe} (head {head.path}) on {a.harvest}, per writer:")
    print(format_versus(rows, k=head.k))
    if a.json:
        json.dump({"probe": str(head.path), "rows": rows}, open(a.json, "w"), indent=1, default=float)


if __name__ == "__main__":
    main()
