"""A small HTTP scorer: ``POST /score`` and ``GET /health`` (FastAPI + uvicorn, loopback by default).

Concurrent requests are gathered into batches by one worker task (up to ``max_batch`` requests, waiting
at most ``max_wait_ms`` for more), so the model runs one batched generation for many callers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from .scorer import MAX_CHARS, Scorer, request_problem, token_problem

MAX_BODY_BYTES = 4 * MAX_CHARS + 1024
BODY_TIMEOUT_S = 10.0  # a request's whole body must arrive within this many seconds of its headers
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ScoreRequest(BaseModel):
    """Body of ``POST /score``: a prompt, optionally the response to score (teacher forced) and the caller's
    ``id`` (returned with the risk); any other field (a typo such as ``respnse``, a per-run setting such as
    ``max_new_tokens``) is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_CHARS)
    response: Optional[str] = Field(default=None, min_length=1, max_length=MAX_CHARS)
    answer_kind: str = Field(default="alias", pattern="^(alias|number|yesno)$")
    id: Optional[Union[str, int]] = Field(default=None, description="the caller's own id, returned with the risk")


class _BodyLimit:
    """ASGI middleware: a request body larger than ``limit`` bytes is answered 413, counting the bytes
    actually received (a chunked body has no Content-Length to trust), without reading the rest."""

    def __init__(self, app, limit: int, body_timeout: float = BODY_TIMEOUT_S):
        self.app, self.limit, self.body_timeout = app, limit, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length" and (not v.isdigit() or int(v) > self.limit):
                return await _json(send, 413, {"error": f"request body larger than {self.limit} bytes"})
        body, more = bytearray(), True
        t_end = time.monotonic() + self.body_timeout
        while more:
            try:  # a client that sends its headers and then stalls is answered 408, not waited for forever
                msg = await asyncio.wait_for(receive(), timeout=max(0.0, t_end - time.monotonic()))
            except asyncio.TimeoutError:
                return await _json(send, 408, {"error": f"request body not received within {self.body_timeout:g} s"},
                                   close=True)
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await _json(send, 413, {"error": f"request body larger than {self.limit} bytes"})
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _json(send, status: int, obj, *, close: bool = False) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": data})


def create_app(scorer: Scorer, lm, *, max_batch: int = 16, max_wait_ms: float = 20.0, max_new_tokens: int = 33,
               max_queue: int = 256, max_body_bytes: int = MAX_BODY_BYTES, allow_model_mismatch: bool = False):
    """The FastAPI application (see module doc).

    Each request is validated alone (stripped texts, fits the model's context) before it joins a batch,
    and a batch that fails is retried row by row, so one bad request fails only itself. At most
    ``max_queue`` requests wait; beyond that the answer is 503.
    """
    from fastapi import FastAPI, Request  # the HTTP stack loads only for `riskprobe serve`
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException


    scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)

    state: dict[str, Any] = {"queue": None, "served": 0, "failed": 0, "batches": 0, "rejected": 0,
                             "started": time.time()}

    def run(reqs):
        return scorer.score(lm, [r.prompt for r in reqs], [r.response for r in reqs],
                            answer_kinds=[r.answer_kind for r in reqs], max_new_tokens=max_new_tokens,
                            allow_model_mismatch=allow_model_mismatch)

    async def worker():
        q: asyncio.Queue = state["queue"]
        loop = asyncio.get_running_loop()
        while True:
            first = await q.get()
            items = [first]
            deadline = loop.time() + max_wait_ms / 1000
            while len(items) < max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(q.get(), left))
                except asyncio.TimeoutError:
                    break
            reqs = [r for r, _ in items]
            try:
                res = await loop.run_in_executor(None, run, reqs)
                outcomes = [(fut, r, None) for (_, fut), r in zip(items, res)]
            except Exception:  # noqa: BLE001 - find the row at fault: each alone
                outcomes = []
                for req, fut in items:
                    try:
                        outcomes.append((fut, (await loop.run_in_executor(None, run, [req]))[0], None))
                    except Exception as e:  # noqa: BLE001
                        outcomes.append((fut, None, e))
            for fut, r, err in outcomes:
                if fut.done():  # the client went away
                    continue
                if err is not None:
                    fut.set_exception(err)
                    state["failed"] += 1
                else:
                    r.pop("n_tokens", None)
                    fut.set_result(r)
                    state["served"] += 1
            state["batches"] += 1

    app = FastAPI(title="riskprobe", version="1")

    @app.on_event("startup")
    async def _start():
        state["queue"] = asyncio.Queue(maxsize=max_queue)
        state["task"] = asyncio.create_task(worker())

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req: Request, exc: RequestValidationError):
        errs = [{"field": ".".join(str(x) for x in e.get("loc", [])[1:]), "error": e.get("msg")} for e in exc.errors()]
        return JSONResponse(status_code=400, content={"error": "invalid request", "details": errs})

    @app.exception_handler(HTTPException)
    async def _http(_req: Request, exc: HTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": lm.identity.name, "probe_k": scorer.k, "threshold": scorer.threshold,
                "served": state["served"], "failed": state["failed"], "batches": state["batches"],
                "rejected": state["rejected"], "queued": state["queue"].qsize() if state["queue"] else 0}

    @app.post("/score")
    async def score(req: "ScoreRequest"):
        problem = request_problem(req.model_dump()) or token_problem(lm, req.prompt, req.response, max_new_tokens)
        if problem:
            return JSONResponse(status_code=422, content={"error": problem})
        fut = asyncio.get_running_loop().create_future()
        try:
            state["queue"].put_nowait((req, fut))
        except asyncio.QueueFull:
            state["rejected"] += 1
            return JSONResponse(status_code=503, content={"error": f"busy: {max_queue} requests are waiting; retry"},
                                headers={"Retry-After": "1"})
        try:
            res = await fut
        except UserError as e:
            return JSONResponse(status_code=422, content={"error": str(e)})
        except Exception as e:  # noqa: BLE001
            return JSONResponse(status_code=500, content={"error": f"{type(e).__name__}: {str(e)[:200]}"})
        return {**({"id": req.id} if req.id is not None else {}), **res, "model": lm.identity.name}

    return _BodyLimit(app, max_body_bytes)


def serve(scorer: Scorer, lm, *, host: str = "127.0.0.1", port: int = 8321, **kw) -> None:
    """Run the service until interrupted. It has no authentication: on an address other than loopback, anyone who
    can reach it can run the model, and a warning says so. Idle connections close after 5 s, bodies that do not
    arrive within :data:`BODY_TIMEOUT_S` get 408, and beyond ``max_queue`` + 64 open connections new ones get 503."""
    import uvicorn  # as above: only for `riskprobe serve`

    if host not in LOOPBACK:
        print(f"riskprobe: warning: serving on {host}, not loopback: there is no authentication, so anyone who can "
              "reach this address can use the model; put it behind a proxy that authenticates", file=sys.stderr)
    uvicorn.run(create_app(scorer, lm, **kw), host=host, port=port, log_level="info", timeout_keep_alive=5,
                limit_concurrency=int(kw.get("max_queue", 256)) + 64)
