"""The HTTP scorer under load: N concurrent requests on 127.0.0.1, a share of them malformed.

    python benchmarks/perf/bench_serve.py --n 200 --bad 0.1

Starts ``riskprobe serve``'s application in this process (uvicorn, loopback), fires all requests at once
from a thread pool, and checks that every valid request got 200 and every malformed one 400, 413 or 422.
Prints the status counts and p50/p99 latency of the valid requests (seconds, from send to answer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def malformed(i: int):
    """The i-th kind of bad request: (description, body bytes, headers)."""
    kinds = [
        ("no prompt", json.dumps({"response": "x"}).encode(), {}),
        ("blank response", json.dumps({"prompt": "Who?", "response": "   "}).encode(), {}),
        ("prompt not a string", json.dumps({"prompt": 42}).encode(), {}),
        ("invalid JSON", b'{"prompt": ', {}),
        ("too long", json.dumps({"prompt": "x" * 9000}).encode(), {}),
        ("body over the limit, chunked", b"x" * 200_000, {"transfer-encoding": "chunked"}),
        ("unknown answer kind", json.dumps({"prompt": "Who?", "answer_kind": "essay"}).encode(), {}),
        ("a JSON array", b"[1, 2, 3]", {}),
    ]
    return kinds[i % len(kinds)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", default="default")
    ap.add_argument("--model")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--bad", type=float, default=0.1, help="share of malformed requests")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import httpx
    import numpy as np
    import uvicorn

    from riskprobe.models import load_model
    from riskprobe.prompts.sets import load_items
    from riskprobe.serving.http import create_app
    from riskprobe.serving.scorer import Scorer

    scorer = Scorer.load(args.probe)
    lm = load_model(args.model or scorer.model_identity["name"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(scorer, lm, max_batch=args.max_batch, max_wait_ms=50),
                                           host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)

    rng = random.Random(args.seed)
    items = load_items("builtin-factual", limit=args.n)
    n_bad = round(args.n * args.bad)
    bad_at = set(rng.sample(range(args.n), n_bad))
    reqs = []
    for i in range(args.n):
        if i in bad_at:
            desc, body, headers = malformed(len([j for j in bad_at if j < i]))
            reqs.append((False, desc, body, headers))
        else:
            it = items[i % len(items)]
            body = {"prompt": it.prompt} if i % 2 else {"prompt": it.prompt, "response": it.answers[0]}
            reqs.append((True, "valid", json.dumps(body).encode(), {}))

    def send(r):
        ok, desc, body, headers = r
        h = {"content-type": "application/json", **headers}
        t0 = time.perf_counter()
        with httpx.Client(timeout=600) as c:
            if headers.get("transfer-encoding") == "chunked":
                resp = c.post(f"{base}/score", content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                              headers={"content-type": "application/json"})
            else:
                resp = c.post(f"{base}/score", content=body, headers=h)
        return ok, desc, resp.status_code, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.n) as ex:
        res = list(ex.map(send, reqs))
    wall = time.perf_counter() - t0
    health = httpx.get(f"{base}/health").json()
    server.should_exit = True
    th.join(timeout=10)

    valid = [r for r in res if r[0]]
    bad = [r for r in res if not r[0]]
    lat = np.array([r[3] for r in valid])
    print(f"model {lm.identity.name}, {args.n} concurrent requests ({len(bad)} malformed), max_batch {args.max_batch}, "
          f"{wall:.1f} s wall, {health['batches']} batches")
    print("valid:     " + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r[2] for r in valid).items())))
    print("malformed: " + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r[2] for r in bad).items())))
    for desc, code in sorted({(r[1], r[2]) for r in bad}):
        print(f"  {desc:<32}{code}")
    print(f"latency of valid requests: p50 {np.percentile(lat, 50):.2f} s, p99 {np.percentile(lat, 99):.2f} s, "
          f"max {lat.max():.2f} s")
    ok = all(r[2] == 200 for r in valid) and all(r[2] in (400, 413, 422) for r in bad)
    print("every valid request 200, every malformed one 400/413/422:", "yes" if ok else "NO")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
