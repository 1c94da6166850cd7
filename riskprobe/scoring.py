"""Score generations with an exported probe: :class:`Scorer`, offline JSONL scoring, given answers.

A :class:`Scorer` holds a probe artifact (see :mod:`riskprobe.export`) and knows which signature it
needs. It scores new prompts (generate + capture), or given (prompt, response) pairs by teacher forcing
the response, which runs exactly the computation of a generated answer.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .data import FeatureSelection, inputs_from_signatures
from .errors import UserError
from .export import read_artifact
from .models.loader import LoadedModel, ModelIdentity
from .signatures import Capture, FeatureSpec

MAX_CHARS = 8000


class Scorer:
    """A loaded probe artifact. Use :meth:`load`.

    Attributes:
        risk_model: the ``nn.Module`` (standardise -> probe -> calibrate).
        meta: the artifact's ``probe.json``.
        threshold: risk at or above which an answer is flagged.
    """

    def __init__(self, risk_model, meta: dict[str, Any], path: Path | None = None):
        self.risk_model = risk_model
        self.meta = meta
        self.path = path
        self.threshold = float(meta.get("threshold", 0.5))
        sel = meta["feature_spec"]["selection"]
        self.selection = FeatureSelection(sel["families"], sel["k"], sel.get("raw_layers"))

    @classmethod
    def load(cls, path: str | Path, *, model: ModelIdentity | LoadedModel | None = None,
             allow_model_mismatch: bool = False) -> "Scorer":
        """Load an artifact (checks its version and weights hash); with ``model``, refuse a probe trained
        for another model unless ``allow_model_mismatch``."""
        from .export import resolve_artifact

        p = resolve_artifact(path)
        rm, meta = read_artifact(p)
        sc = cls(rm, meta, p)
        if model is not None:
            sc.check_model(model, allow_model_mismatch=allow_model_mismatch)
        return sc

    @property
    def k(self) -> int:
        return self.selection.k

    @property
    def model_identity(self) -> dict[str, Any]:
        return self.meta["model_identity"]

    def check_model(self, model: ModelIdentity | LoadedModel, *, allow_model_mismatch: bool = False) -> None:
        ident = model.identity if isinstance(model, LoadedModel) else model
        want = self.model_identity
        keys = ("fingerprint", "architecture", "n_layers", "hidden_size")
        if any(getattr(ident, k) != want[k] for k in keys) and not allow_model_mismatch:
            raise UserError(f"this probe was trained for model '{want['name']}' ({want['architecture']}, "
                            f"{want['n_layers']} layers, sha {str(want['fingerprint'])[:12]}), not '{ident.name}' "
                            f"({ident.architecture}, {ident.n_layers} layers, sha {ident.fingerprint[:12]}); "
                            "pass --allow-model-mismatch to score anyway", field="model")

    def feature_spec(self) -> FeatureSpec:
        """The signature the probe reads, captured only up to step k."""
        sch = dict(self.meta["feature_spec"]["feature_schema"])
        fields = {k: sch[k] for k in FeatureSpec.__dataclass_fields__ if k in sch}
        spec = FeatureSpec(**fields)
        return replace(spec, K=self.k, lens_steps=min(spec.lens_steps, self.k), raw_steps=min(spec.raw_steps, self.k))

    # ------------------------------------------------------------------ from signatures
    def _inputs(self, sig: dict[str, Any]) -> dict[str, torch.Tensor]:
        t = {k: torch.as_tensor(np.asarray(v)) for k, v in sig.items()}
        return inputs_from_signatures(t, self.selection)

    @torch.no_grad()
    def risk(self, sig: dict[str, Any]) -> np.ndarray:
        """Calibrated risk ``[N]`` from signature arrays (harvested or captured)."""
        x = self._inputs(sig)
        return self.risk_model(x["seq"], x["mask"], x["static"]).numpy().astype(np.float64)

    @torch.no_grad()
    def risk_by_step(self, sig: dict[str, Any]) -> np.ndarray:
        """``[N, k+1]``: the risk seen after steps 0..t (later steps hidden as if the answer had ended)."""
        x = self._inputs(sig)
        cols = []
        for t in range(x["seq"].shape[1]):
            m = x["mask"].clone()
            m[:, t + 1:] = False
            cols.append(self.risk_model(x["seq"], m, x["static"]))
        return torch.stack(cols, 1).numpy().astype(np.float64)

    # ------------------------------------------------------------------ with a model
    def score(self, lm: LoadedModel, prompts: Sequence[str], responses: Sequence[str | None] | None = None,
              *, answer_kinds: Sequence[str] | None = None, max_new_tokens: int = 33, prompt_style: str = "auto",
              allow_model_mismatch: bool = False) -> list[dict[str, Any]]:
        """Score one batch. Rows with a response are teacher forced; rows without are generated.

        Returns per row ``{"response", "risk", "risk_by_step", "flagged", "n_tokens"}``.
        """
        from .generation import generate, response_ids
        from .models import render

        self.check_model(lm, allow_model_mismatch=allow_model_mismatch)
        responses = list(responses) if responses is not None else [None] * len(prompts)
        kinds = list(answer_kinds) if answer_kinds is not None else ["alias"] * len(prompts)
        out: list[dict[str, Any] | None] = [None] * len(prompts)
        spec = self.feature_spec()
        for forced_mode in (False, True):
            rows = [i for i, r in enumerate(responses) if (r is not None) == forced_mode]
            if not rows:
                continue
            rps = [render(lm.tokenizer, prompts[i], kinds[i], prompt_style) for i in rows]
            forced = response_ids(lm, [responses[i] for i in rows]) if forced_mode else None
            if forced_mode and any(len(f) == 0 for f in forced):
                raise UserError("a given response is empty", field="response")
            cap = Capture(lm, spec)
            with cap:
                gens = generate(lm, rps, max_new_tokens=max_new_tokens, forced=forced)
            sig = cap.finish([g.token_ids for g in gens])
            risk, by_step = self.risk(sig), self.risk_by_step(sig)
            for j, i in enumerate(rows):
                out[i] = {"response": responses[i] if forced_mode else gens[j].text, "risk": float(risk[j]),
                          "risk_by_step": [round(float(v), 6) for v in by_step[j]],
                          "flagged": bool(risk[j] >= self.threshold), "n_tokens": gens[j].n_tokens,
                          "teacher_forced": forced_mode}
        return out  # type: ignore[return-value]


def onnx_risk(artifact: str | Path, seq, mask, static) -> np.ndarray:
    """Risk from the artifact's ONNX graph (onnxruntime), for runtimes without torch."""
    import onnxruntime as ort

    from .export import resolve_artifact

    sess = ort.InferenceSession(str(resolve_artifact(artifact) / "probe.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"seq": np.asarray(seq, np.float32), "mask": np.asarray(mask, bool),
                           "static": np.asarray(static, np.float32)})[0]


# ------------------------------------------------------------------------------------- offline JSONL
def _done_ids(output: Path) -> set[str]:
    """Ids already in ``output``; a trailing partial line (a crash mid-write) is cut off first."""
    if not output.is_file():
        return set()
    data = output.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(output, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done = set()
    for line in data.decode("utf-8").splitlines():
        try:
            done.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def _read_requests(path: Path, on_error: str, errors: list[str]) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            problem = None
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    problem = "expected a JSON object"
                elif not isinstance(obj.get("prompt", obj.get("question")), str) or not obj.get("prompt", obj.get("question")).strip():
                    problem = "field 'prompt': missing or empty"
                elif "response" in obj and obj["response"] is not None and (not isinstance(obj["response"], str) or not obj["response"].strip()):
                    problem = "field 'response': must be a non-empty string"
                elif len(obj.get("prompt", obj.get("question"))) > MAX_CHARS or len(obj.get("response") or "") > MAX_CHARS:
                    problem = f"prompt or response longer than {MAX_CHARS} characters"
            except json.JSONDecodeError as e:
                problem = f"malformed JSON ({e.msg}, column {e.colno})"
            if problem:
                msg = f"{path}:{n}: {problem}"
                if on_error == "fail":
                    raise UserError(problem, file=path, line=n)
                errors.append(msg)
                print(f"riskprobe: skipped {msg}", file=sys.stderr)
                continue
            obj.setdefault("id", f"line-{n}")
            obj["id"] = str(obj["id"])
            yield obj


def score_file(scorer: Scorer, lm: LoadedModel, input_path: str | Path, output_path: str | Path, *,
               batch_size: int = 16, on_error: str = "skip", max_new_tokens: int = 33, progress: bool = True,
               allow_model_mismatch: bool = False) -> dict[str, Any]:
    """Score a JSONL file into another, resumable (ids already in the output are skipped).

    Each batch is appended with one write and fsynced; a line cut by a crash is dropped on resume.
    Returns counts: ``{"scored", "skipped_done", "failed", "errors", "seconds", "tokens"}``.
    """
    from tqdm.auto import tqdm

    inp, outp = Path(input_path), Path(output_path)
    if not inp.is_file():
        raise UserError("input file not found", file=inp, field="input")
    scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)
    done = _done_ids(outp)
    outp.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    stats = {"scored": 0, "skipped_done": 0, "failed": 0, "tokens": 0}
    ident = {"name": lm.identity.name, "fingerprint": lm.identity.fingerprint}
    t0 = time.perf_counter()
    bar = tqdm(desc="score", unit="row", disable=not progress, file=sys.stderr)
    batch: list[dict[str, Any]] = []

    def flush():
        if not batch:
            return
        res = scorer.score(lm, [b.get("prompt", b.get("question")) for b in batch], [b.get("response") for b in batch],
                           answer_kinds=[b.get("answer_kind", "alias") for b in batch], max_new_tokens=max_new_tokens,
                           allow_model_mismatch=allow_model_mismatch)
        lines = []
        for b, r in zip(batch, res):
            stats["tokens"] += r.pop("n_tokens")
            lines.append(json.dumps({**b, **r, "model": ident}, ensure_ascii=False) + "\n")
        fd = os.open(outp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        stats["scored"] += len(batch)
        bar.update(len(batch))
        bar.set_postfix(rows_s=f"{stats['scored'] / max(time.perf_counter() - t0, 1e-9):.2f}")
        batch.clear()

    seen: set[str] = set()
    for obj in _read_requests(inp, on_error, errors):
        if obj["id"] in done or obj["id"] in seen:
            stats["skipped_done"] += 1
            continue
        seen.add(obj["id"])
        batch.append(obj)
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    stats.update(failed=len(errors), errors=errors, seconds=round(time.perf_counter() - t0, 3))
    return stats


# ------------------------------------------------------------------------------- given answers (eval)
def given_answer_pairs(name: str, limit: int | None = None, seed: int = 0) -> list[tuple[str, str, int, str]]:
    """``(question, answer, label, group)`` rows of a given-answers set (label 1 = the answer is wrong).

    ``halueval``: each question's right and hallucinated answer (HaluEval QA). ``truthfulqa_mc``: each
    question's true and false statements (TruthfulQA mc2 targets).
    """
    import hashlib

    from .prompts import datasets_root

    root = datasets_root()
    rows: list[tuple[str, str, int, str]] = []
    if name == "halueval":
        p = root / "halueval" / "qa_data.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"HaluEval not found at {p}; set RISKPROBE_DATASETS", field="set")
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    rows += [(o["question"], o["right_answer"], 0, o["question"]),
                             (o["question"], o["hallucinated_answer"], 1, o["question"])]
    elif name == "truthfulqa_mc":
        p = root / "truthfulqa" / "mc_task.json" if root else None
        if p is None or not p.is_file():
            raise UserError(f"TruthfulQA mc_task.json not found at {p}; set RISKPROBE_DATASETS", field="set")
        for o in json.loads(p.read_text(encoding="utf-8")):
            targets = o.get("mc2_targets") or o["mc1_targets"]
            rows += [(o["question"], ans, 1 - int(v), o["question"]) for ans, v in targets.items() if ans.strip()]
    else:
        raise UserError(f"unknown given-answers set '{name}' (halueval, truthfulqa_mc)", field="set")
    if limit is not None:  # subsample whole questions, deterministically
        groups = sorted({g for *_, g in rows}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
        keep = set(groups[:limit])
        rows = [r for r in rows if r[3] in keep]
    return rows


def evaluate_given(scorer: Scorer, lm: LoadedModel, name: str, *, limit: int | None = 200, batch_size: int = 16,
                   progress: bool = True) -> dict[str, Any]:
    """AUROC of the risk of teacher-forced given answers (right vs wrong) on ``halueval`` or ``truthfulqa_mc``."""
    from tqdm.auto import tqdm

    from . import metrics as M

    rows = given_answer_pairs(name, limit)
    risks, labels = [], []
    t0 = time.perf_counter()
    for b in tqdm(range(0, len(rows), batch_size), desc=f"eval {name}", disable=not progress, file=sys.stderr):
        chunk = rows[b:b + batch_size]
        res = scorer.score(lm, [r[0] for r in chunk], [r[1] for r in chunk])
        risks += [r["risk"] for r in res]
        labels += [r[2] for r in chunk]
    out = M.evaluate(np.array(labels), np.array(risks), n_boot=500)
    out.update(set=name, questions=len({r[3] for r in rows}), seconds=round(time.perf_counter() - t0, 2))
    return out
