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
from typing import Any, Sequence

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
        """Refuse a model the probe was not trained for. ``allow_model_mismatch`` accepts other weights of
        the same shape (layer count and hidden size), never another shape: the features would not fit."""
        ident = model.identity if isinstance(model, LoadedModel) else model
        want = self.model_identity
        if (ident.n_layers, ident.hidden_size) != (want["n_layers"], want["hidden_size"]):
            raise UserError(f"this probe reads {want['n_layers']} layers of width {want['hidden_size']} "
                            f"({want['name']}); '{ident.name}' has {ident.n_layers} layers of width "
                            f"{ident.hidden_size}, so its signatures cannot be scored by it", field="model")
        keys = ("fingerprint", "architecture")
        if any(getattr(ident, k) != want[k] for k in keys) and not allow_model_mismatch:
            raise UserError(f"this probe was trained for model '{want['name']}' ({want['architecture']}, "
                            f"{want['n_layers']} layers, sha {str(want['fingerprint'])[:12]}), not '{ident.name}' "
                            f"({ident.architecture}, {ident.n_layers} layers, sha {ident.fingerprint[:12]}); "
                            "pass --allow-model-mismatch to score anyway", field="model")

    def feature_spec(self) -> FeatureSpec:
        """The signature the probe reads: its families only (the logit lens too where the commitment depth,
        a commitment feature, needs it), captured only up to step k."""
        sch = dict(self.meta["feature_spec"]["feature_schema"])
        fields = {k: sch[k] for k in FeatureSpec.__dataclass_fields__ if k in sch}
        spec = FeatureSpec(**fields)
        read = set(self.selection.families)
        if "commitment" in read:
            read.add("lens")
        families = [f for f in spec.families if f in read]
        return replace(spec, K=self.k, families=families, lens_steps=min(spec.lens_steps, self.k),
                       raw_steps=min(spec.raw_steps, self.k))

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

    from .export import read_artifact

    read_artifact(artifact)  # checks probe.onnx against the sha256 that probe.json records
    sess = ort.InferenceSession(str(resolve_artifact(artifact) / "probe.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"seq": np.asarray(seq, np.float32), "mask": np.asarray(mask, bool),
                           "static": np.asarray(static, np.float32)})[0]


# ------------------------------------------------------------------------------------- requests
ANSWER_KINDS = ("alias", "number", "yesno")


def request_problem(obj: Any) -> str | None:
    """Why a scoring request (a JSONL line or an HTTP body) cannot be scored, or ``None`` if it can.

    A request is ``{"prompt" (or "question"): str, "response"?: str | null, "answer_kind"?: str, "id"?}``;
    texts are judged after stripping whitespace."""
    if not isinstance(obj, dict):
        return "expected a JSON object"
    prompt = obj.get("prompt", obj.get("question"))
    if not isinstance(prompt, str) or not prompt.strip():
        return "field 'prompt': missing or empty"
    resp = obj.get("response")
    if resp is not None and (not isinstance(resp, str) or not resp.strip()):
        return "field 'response': must be a non-empty string (or null to generate)"
    if len(prompt) > MAX_CHARS or len(resp or "") > MAX_CHARS:
        return f"field '{'prompt' if len(prompt) > MAX_CHARS else 'response'}': longer than {MAX_CHARS} characters"
    kind = obj.get("answer_kind", "alias")
    if kind not in ANSWER_KINDS:
        return f"field 'answer_kind': must be one of {', '.join(ANSWER_KINDS)}"
    if obj.get("id") is not None and (not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool)):
        return "field 'id': must be a string or an integer"
    return None


def token_problem(lm: LoadedModel, prompt: str, response: str | None, max_new_tokens: int,
                  prompt_style: str = "auto") -> str | None:
    """Why a request does not fit the model's context (prompt + response or answer budget), or ``None``."""
    from .models import context_length, render

    ctx = context_length(lm)
    if ctx is None:
        return None
    rp = render(lm.tokenizer, prompt, "alias", prompt_style)
    n = len(lm.tokenizer(rp.text, add_special_tokens=rp.add_special_tokens)["input_ids"])
    extra = len(lm.tokenizer(response.strip(), add_special_tokens=False)["input_ids"]) + 1 if response else max_new_tokens
    if n + extra > ctx:
        return f"prompt ({n} tokens) + {'response' if response else 'answer budget'} ({extra}) exceeds the model's context ({ctx})"
    return None


# ------------------------------------------------------------------------------------- offline JSONL
OUTPUT_KEYS = ("id", "risk", "flagged", "model")
ROW_START = b'{"id": '  # every output row starts so (json.dumps of a dict with "id" first)


def _done_ids(output: Path, input_ids: set[str]) -> set[str]:
    """Ids already scored in ``output``, for a resume.

    The file is only ever touched when every complete line is a riskprobe output row (an object with
    ``id``, ``risk``, ``flagged`` and ``model``) for an id of this input; then a trailing partial line (a
    crash mid-write) is cut off. Any other file is refused, unchanged.
    """
    if not output.exists():
        return set()
    if output.is_dir():
        raise UserError("is a folder; --output must be a JSONL file", file=output, field="output")
    if not output.is_file():
        raise UserError("is not a regular file; --output must be a JSONL file", file=output, field="output")
    try:
        data = output.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror})", file=output, field="output") from None
    cut = data.rfind(b"\n") + 1
    n_complete = data[:cut].count(b"\n")
    done = set()
    for n, line in enumerate(data[:cut].splitlines(), 1):
        problem = None
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict) or any(k not in obj for k in OUTPUT_KEYS):
                problem = "is not a riskprobe output row"
            elif str(obj["id"]) not in input_ids:
                problem = f"scores id {str(obj['id'])[:40]!r}, which is not in this input"
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "is not a riskprobe output row"
        if problem:
            raise UserError(f"{problem}; refusing to append to (or repair) a file riskprobe did not write for this "
                            "input. Choose another --output", file=output, line=n, field="output")
        done.add(str(obj["id"]))
    if cut < len(data):  # a partial last line, from a crash mid-write: the rest is verified above
        tail = data[cut:]
        ours = tail.startswith(ROW_START)
        if ours:  # the id, when the crash left it whole, must be one of this input's
            try:
                tid, _ = json.JSONDecoder().raw_decode(tail[len(ROW_START):].decode("utf-8", "replace"))
                ours = str(tid) in input_ids
            except ValueError:
                pass
        if not ours:
            raise UserError("ends with a line that is not the start of a riskprobe output row for this input; "
                            "refusing to change it. Choose another --output", file=output, line=n_complete + 1,
                            field="output")
        with open(output, "r+b") as f:
            f.truncate(cut)
    return done


def read_requests(path: Path, on_error: str, errors: list[str]) -> list[dict[str, Any]]:
    """The requests of a scoring input file, each with a string ``id`` (``line-N`` where none is given).

    A malformed line is skipped and recorded in ``errors`` (``on_error="skip"``) or fails the command
    (``"fail"``). Two lines with the same id are always an error naming both lines.
    """
    from .fsutil import iter_jsonl

    out: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for n, obj, problem in iter_jsonl(path):
        problem = problem or request_problem(obj)
        if problem:
            if on_error == "fail":
                raise UserError(problem, file=path, line=n)
            errors.append(f"{path}:{n}: {problem}")
            print(f"riskprobe: skipped {path}:{n}: {problem}", file=sys.stderr)
            continue
        obj["id"] = f"line-{n}" if obj.get("id") is None else str(obj["id"])
        if obj["id"] in first_line:
            raise UserError(f"duplicate id {obj['id'][:40]!r} (first on line {first_line[obj['id']]}); ids must be "
                            "unique so that a resumed run knows what is done", file=path, line=n, field="id")
        first_line[obj["id"]] = n
        out.append(obj)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def score_file(scorer: Scorer, lm: LoadedModel, input_path: str | Path, output_path: str | Path, *,
               batch_size: int = 16, on_error: str = "skip", max_new_tokens: int = 33, progress: bool = True,
               allow_model_mismatch: bool = False) -> dict[str, Any]:
    """Score a JSONL file into another, resumable (ids already in the output are skipped).

    Each batch is appended with one write and fsynced; a line cut by a crash is dropped on resume. The
    output must be a new file or one this function wrote for the same input; anything else is refused.
    Returns counts: ``{"scored", "skipped_done", "failed", "errors", "seconds", "tokens"}``.
    """
    from tqdm.auto import tqdm

    inp, outp = Path(input_path), Path(output_path)
    if not inp.is_file():
        raise UserError("input file not found" if not inp.exists() else "is not a file", file=inp, field="input")
    if _same_file(inp, outp) or inp.resolve() == outp.resolve():
        raise UserError("--output is the input file; scoring writes a new file", file=outp, field="output")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError("must be a positive integer", field="batch_size")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 4096:
        raise UserError("must be an integer from 1 to 4096", field="max_new_tokens")
    if on_error not in ("skip", "fail"):
        raise UserError("must be skip or fail", field="on_error")
    scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)
    errors: list[str] = []
    requests = read_requests(inp, on_error, errors)
    good = []
    for obj in requests:  # prompts that do not fit the model's context: the same rule as a malformed line
        problem = token_problem(lm, obj.get("prompt", obj.get("question")), obj.get("response"), max_new_tokens)
        if problem:
            if on_error == "fail":
                raise UserError(problem, file=inp, field="prompt")
            errors.append(f"{inp}: id {obj['id']}: {problem}")
            print(f"riskprobe: skipped {inp}: id {obj['id']}: {problem}", file=sys.stderr)
            continue
        good.append(obj)
    done = _done_ids(outp, {o["id"] for o in requests})
    if not outp.parent.exists():
        outp.parent.mkdir(parents=True, exist_ok=True)
    stats = {"scored": 0, "skipped_done": 0, "failed": 0, "tokens": 0}
    ident = {"name": lm.identity.name, "fingerprint": lm.identity.fingerprint}
    t0 = time.perf_counter()
    todo = [o for o in good if o["id"] not in done]
    stats["skipped_done"] = len(good) - len(todo)
    bar = tqdm(total=len(todo), desc="score", unit="row", disable=not progress, file=sys.stderr)
    for b in range(0, len(todo), batch_size):
        batch = todo[b:b + batch_size]
        res = scorer.score(lm, [o.get("prompt", o.get("question")) for o in batch], [o.get("response") for o in batch],
                           answer_kinds=[o.get("answer_kind", "alias") for o in batch], max_new_tokens=max_new_tokens,
                           allow_model_mismatch=allow_model_mismatch)
        lines = []
        for o, r in zip(batch, res):
            stats["tokens"] += r.pop("n_tokens")
            lines.append(json.dumps({"id": o["id"], **o, **r, "model": ident}, ensure_ascii=False) + "\n")
        fd = os.open(outp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        stats["scored"] += len(batch)
        bar.update(len(batch))
        bar.set_postfix(rows_s=f"{stats['scored'] / max(time.perf_counter() - t0, 1e-9):.2f}")
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
