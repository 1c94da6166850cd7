"""A small HTTP scorer: ``POST /score`` and ``GET /health`` (FastAPI + uvicorn, loopback by default).

Concurrent requests are gathered into batches by one worker task (up to ``max_batch`` requests, waiting
at most ``max_wait_ms`` for more), so the model runs one batched generation for many callers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from pydantic import BaseModel, Field

from .scoring import MAX_CHARS, Scorer


class ScoreRequest(BaseModel):
    """Body of ``POST /score``: a prompt, and optionally the response to score (teacher forced)."""

    prompt: str = Field(min_length=1, max_length=MAX_CHARS)
    response: Optional[str] = Field(default=None, min_length=1, max_length=MAX_CHARS)
    answer_kind: str = Field(default="alias", pattern="^(alias|number|yesno)$")


def create_app(scorer: Scorer, lm, *, max_batch: int = 16, max_wait_ms: float = 20.0, max_new_tokens: int = 33,
               allow_model_mismatch: bool = False):
    """The FastAPI application (see module doc)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)

    state: dict[str, Any] = {"queue": None, "served": 0, "batches": 0, "started": time.time()}

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
                res = await loop.run_in_executor(None, lambda: scorer.score(
                    lm, [r.prompt for r in reqs], [r.response for r in reqs], answer_kinds=[r.answer_kind for r in reqs],
                    max_new_tokens=max_new_tokens, allow_model_mismatch=allow_model_mismatch))
                for (_, fut), r in zip(items, res):
                    r.pop("n_tokens", None)
                    fut.set_result(r)
            except Exception as e:  # noqa: BLE001
                for _, fut in items:
                    fut.set_exception(e)
            state["served"] += len(items)
            state["batches"] += 1

    app = FastAPI(title="riskprobe", version="1")

    @app.on_event("startup")
    async def _start():
        state["queue"] = asyncio.Queue()
        state["task"] = asyncio.create_task(worker())

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_req: Request, exc: RequestValidationError):
        errs = [{"field": ".".join(str(x) for x in e.get("loc", [])[1:]), "error": e.get("msg")} for e in exc.errors()]
        return JSONResponse(status_code=400, content={"error": "invalid request", "details": errs})

    @app.exception_handler(HTTPException)
    async def _http(_req: Request, exc: HTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)})

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and int(size) > 4 * MAX_CHARS + 1024:
            return JSONResponse(status_code=413, content={"error": "request body too large"})
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": lm.identity.name, "probe_k": scorer.k, "threshold": scorer.threshold,
                "served": state["served"], "batches": state["batches"]}

    @app.post("/score")
    async def score(req: "ScoreRequest"):
        fut = asyncio.get_running_loop().create_future()
        await state["queue"].put((req, fut))
        try:
            res = await fut
        except Exception as e:  # noqa: BLE001
            return JSONResponse(status_code=422, content={"error": str(e)})
        return {**res, "model": lm.identity.name}

    return app


def serve(scorer: Scorer, lm, *, host: str = "127.0.0.1", port: int = 8321, **kw) -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(scorer, lm, **kw), host=host, port=port, log_level="info")
