"""Score generations with an exported probe: :class:`Scorer`, offline JSONL scoring, given answers.

A :class:`Scorer` holds a probe artifact (see :mod:`riskprobe.probes.artifact`) and knows which signature it
needs. It scores new prompts (generate + capture), or given (prompt, response) pairs by teacher forcing
the response, which runs exactly the computation of a generated answer.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError, short
from ..models import context_length, render
from ..models.generation import forced_ids, generate
from ..models.loader import LoadedModel, ModelIdentity, same_model, same_shape
from ..probes.artifact import read_artifact, resolve_artifact
from ..probes.inputs import FeatureSelection, inputs_from_signatures
from ..probes.modules import ood_distance
from ..prompts.sets import ANSWER_KINDS
from ..signatures import Capture, FeatureSpec
from ..signatures.extract import Extractor

MAX_CHARS = 8000


class Scorer:
    """A loaded probe artifact. Use :meth:`load`.

    Attributes:
        risk_model: the ``nn.Module`` (standardise -> probe -> calibrate).
        meta: the artifact's ``probe.json``.
        threshold: risk at or above which an answer is flagged.
    """

    def __init__(self, risk_model, meta: dict[str, Any], path: Path | None = None, given: "Scorer | None" = None):
        self.risk_model = risk_model
        self.meta = meta
        self.path = path
        self.threshold = float(meta.get("threshold", 0.5))
        sel = meta["feature_spec"]["selection"]
        self.selection = FeatureSelection.from_dict(sel)
        self.given = given

    @classmethod
    def load(cls, path: str | Path, *, model: ModelIdentity | LoadedModel | None = None,
             allow_model_mismatch: bool = False, given: str | Path | None = None, allow_old: bool = False) -> "Scorer":
        """Load an artifact (checks its version and weights hash); with ``model``, refuse a probe trained
        for another model unless ``allow_model_mismatch``.

        ``given`` is the given-answer head (an artifact trained on answers the model did not write), used
        for rows that come with a response; by default the one the artifact names in ``given_probe``. ``allow_old``
        loads an artifact of an older version (see :func:`~riskprobe.probes.artifact.read_artifact`)."""
        p = resolve_artifact(path)
        rm, meta = read_artifact(p, allow_old=allow_old)
        head = None
        ref = given if given is not None else meta.get("given_probe")
        if ref is not None:
            cand = p.parent / str(ref)
            head = cls.load(cand if given is None and (cand / "probe.json").is_file() else ref, model=model,
                            allow_model_mismatch=allow_model_mismatch, allow_old=allow_old)
            if not head.given_capable:
                raise UserError("this probe was trained on its model's own answers only, so it cannot be the "
                                "given-answer head", file=head.path, field="given_probe")
        sc = cls(rm, meta, p, given=head)
        if model is not None:
            sc.check_model(model, allow_model_mismatch=allow_model_mismatch)
        return sc

    @property
    def given_capable(self) -> bool:
        """Whether the probe was trained on answers the model did not write (other or reference answers)."""
        return bool(set(self.meta.get("answer_provenance", ["own"])) - {"own"})

    def head_for_given(self) -> "Scorer":
        """The head that scores a row with a response: the given-answer head, or this probe where it was
        trained on given answers itself. A probe trained on its model's own answers only is never used: its risk
        on foreign text inverts (it reads "unlike what I would say" as "wrong")."""
        if self.given is not None:
            return self.given
        if self.given_capable:
            return self
        raise UserError("this probe was trained on its model's own answers only and has no given-answer head; "
                        "rows with a response need one (--given-probe, or the shipped probe 'given')",
                        file=self.path, field="response")

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
        if not same_shape(ident, want):
            raise UserError(f"this probe reads {want['n_layers']} layers of width {want['hidden_size']} "
                            f"({want['name']}); '{ident.name}' has {ident.n_layers} layers of width "
                            f"{ident.hidden_size}, so its signatures cannot be scored by it", field="model")
        if not same_model(ident, want) and not allow_model_mismatch:
            raise UserError(f"this probe was trained for model '{want['name']}' ({want['architecture']}, "
                            f"{want['n_layers']} layers, sha {str(want['fingerprint'])[:12]}), not '{ident.name}' "
                            f"({ident.architecture}, {ident.n_layers} layers, sha {ident.fingerprint[:12]}); "
                            "pass --allow-model-mismatch to score anyway", field="model")

    def check_schema(self, schema: dict[str, Any], *, file=None, field: str = "harvest") -> None:
        """Refuse signatures (a harvest's ``feature_schema``) that do not fit this probe's inputs: a family it
        reads missing, other layers, another normalisation, too few steps. A UserError names what differs."""
        want = self.meta["feature_spec"]["feature_schema"]
        fams = set(self.selection.families)
        cols = schema.get("columns") or {}
        problems = [f"no '{f}' signatures" for f in sorted(fams) if f not in cols]
        keys = ["normalisation", "n_layers"]
        keys += ["layers"] if fams & {"sync", "trajectory"} else []
        keys += ["lens_layers"] if "lens" in fams else []
        keys += ["raw_layers", "hidden_size"] if "raw" in fams else []
        problems += [f"{k} {short(schema.get(k), 40)} (the probe reads {short(want.get(k), 40)})" for k in keys
                     if schema.get(k) != want.get(k)]
        if int(schema.get("K", -1)) < self.k:
            problems.append(f"K = {schema.get('K')} steps (the probe reads k = {self.k})")
        if problems:
            raise UserError("these signatures do not fit the probe: " + "; ".join(problems[:3]) + ". Extract them "
                            "with the probe's features (riskprobe extract --features ...)", file=file, field=field)

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
        return self._risk(self._inputs(sig))

    @torch.no_grad()
    def risk_by_step(self, sig: dict[str, Any]) -> np.ndarray:
        """``[N, k+1]``: the risk seen after steps 0..t (later steps hidden as if the answer had ended)."""
        return self._risk_by_step(self._inputs(sig))

    def ood(self, sig: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(distance, flagged)`` per row: how far the row's probe input lies from the training rows, and
        whether that passes the threshold fitted on validation (``None`` when the artifact has none)."""
        return self._ood(self._inputs(sig))

    def readings(self, sig: dict[str, Any], *, by_step: bool = False) -> dict[str, Any]:
        """Every reading of the probe from one build of its inputs: ``risk`` ``[N]``, ``risk_by_step`` ``[N, k+1]``
        (with ``by_step``), and ``ood_distance`` / ``ood`` as :meth:`ood` gives them."""
        x = self._inputs(sig)
        dist, far = self._ood(x)
        out = {"risk": self._risk(x), "ood_distance": dist, "ood": far, "probe_weight": self._weight(x)}
        if by_step:
            out["risk_by_step"] = self._risk_by_step(x)
        return out

    def _weight(self, x: dict[str, torch.Tensor]) -> np.ndarray | None:
        """How much of the learned probe a blend keeps for each row (``None`` for a probe that does not blend)."""
        rm = self.risk_model
        if not hasattr(rm.probe, "weight"):
            return None
        with torch.no_grad():
            return rm.probe.weight(*rm.standardise(x["seq"], x["mask"], x["static"])).numpy().astype(np.float64)

    def _risk(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.no_grad():
            return self.risk_model(x["seq"], x["mask"], x["static"]).numpy().astype(np.float64)

    def _risk_by_step(self, x: dict[str, torch.Tensor]) -> np.ndarray:
        seq, mask, static = x["seq"], x["mask"], x["static"]
        N, S = mask.shape
        # every prefix in one call of the probe: S copies of the batch, copy t with steps after t hidden
        keep = torch.arange(S).view(S, 1, 1) >= torch.arange(S).view(1, 1, S)  # [S(t), 1, S(step)]
        m = (mask.unsqueeze(0) & keep).reshape(S * N, S)
        rep = [v.unsqueeze(0).expand(S, *v.shape).reshape(S * N, *v.shape[1:]) if v is not None else None
               for v in (seq, static)]
        with torch.no_grad():
            risk = self.risk_model(rep[0], m, rep[1]).reshape(S, N)
        return risk.T.numpy().astype(np.float64)

    def _ood(self, x: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        d = ood_distance(self.risk_model, x["seq"], x["mask"], x["static"]).numpy().astype(np.float64)
        thr = (self.meta.get("ood") or {}).get("threshold")
        return d, (d > thr) if thr is not None else None

    # ------------------------------------------------------------------ with a model
    def forced_signatures(self, lm: LoadedModel, rendered: Sequence[Any], responses: Sequence[str], *,
                          confidence: bool = False) -> tuple[dict[str, Any], list[list[int]]]:
        """Signatures of given answers in one teacher-forced pass (each answer followed by EOS): the features this
        probe reads, and the output confidence too where ``confidence`` (what the training-free scores read).
        Returns the signatures and the forced token ids."""
        spec = self.feature_spec()
        if confidence and "commitment" not in spec.families:
            spec = replace(spec, families=["commitment", *spec.families])
        return Extractor(lm, spec).extract_answers(list(rendered), responses)

    def score(self, lm: LoadedModel, prompts: Sequence[str], responses: Sequence[str | None] | None = None,
              *, answer_kinds: Sequence[str] | None = None, max_new_tokens: int = 33, prompt_style: str = "auto",
              allow_model_mismatch: bool = False) -> list[dict[str, Any]]:
        """Score one batch. Rows with a response are teacher forced; rows without are generated.

        Returns per row ``{"response", "risk", "risk_by_step", "flagged", "n_tokens", "teacher_forced", "head",
        "path", "ood", "ood_distance"}``: ``head`` says which probe scored it (``generation`` for a generated row,
        ``given`` for a row with a response, see :meth:`head_for_given`), ``path`` whether the learned probe or the
        model's own confidence carried the risk (:func:`path_of`), ``ood`` whether its signature is farther from the
        training rows than the artifact's threshold (``None`` where the artifact has none).
        """
        self.check_model(lm, allow_model_mismatch=allow_model_mismatch)
        responses = list(responses) if responses is not None else [None] * len(prompts)
        kinds = list(answer_kinds) if answer_kinds is not None else ["alias"] * len(prompts)
        for name, seq in (("responses", responses), ("answer_kinds", kinds)):
            if len(seq) != len(prompts):
                hint = " (None to generate)" if name == "responses" else ""
                raise UserError(f"{len(prompts)} prompts but {len(seq)} {name}: give one per prompt{hint}", field=name)
        out: list[dict[str, Any] | None] = [None] * len(prompts)
        spec = self.feature_spec()
        for forced_mode in (False, True):
            rows = [i for i, r in enumerate(responses) if (r is not None) == forced_mode]
            if not rows:
                continue
            head = self.head_for_given() if forced_mode else self
            if head is not self:
                head.check_model(lm, allow_model_mismatch=allow_model_mismatch)
            rps = [render(lm.tokenizer, prompts[i], kinds[i], prompt_style) for i in rows]
            if forced_mode:
                texts = [responses[i] for i in rows]
                if any(len(t) == 1 for t in forced_ids(lm, texts)):
                    raise UserError("a given response is empty", field="response")
                sig, token_ids = head.forced_signatures(lm, rps, texts)
            else:
                cap = Capture(lm, spec)
                with cap:
                    gens = generate(lm, rps, max_new_tokens=max_new_tokens)
                token_ids = [g.token_ids for g in gens]
                sig = cap.finish(token_ids)
                texts = [g.text for g in gens]
            r = head.readings(sig, by_step=True)
            risk, by_step, dist, far, wt = r["risk"], r["risk_by_step"], r["ood_distance"], r["ood"], r["probe_weight"]
            for j, i in enumerate(rows):
                out[i] = {"response": texts[j], "risk": float(risk[j]),
                          "risk_by_step": [round(float(v), 6) for v in by_step[j]],
                          "flagged": bool(risk[j] >= head.threshold), "n_tokens": len(token_ids[j]),
                          "teacher_forced": forced_mode, "head": head_name(forced_mode, None if wt is None else float(wt[j])),
                          "path": path_of(None if wt is None else float(wt[j])),
                          "ood": None if far is None else bool(far[j]), "ood_distance": round(float(dist[j]), 4)}
        return out  # type: ignore[return-value]


def path_of(weight: float | None) -> str:
    """Which path scored a row: ``probe`` (a probe that does not blend, or a blend keeping at least half its probe),
    ``confidence`` (a blend that backed off: the row is far from the training rows, so the model's own confidence
    carries the risk).

    >>> path_of(None), path_of(0.9), path_of(0.2)
    ('probe', 'probe', 'confidence')
    """
    return "probe" if weight is None or weight >= 0.5 else "confidence"


def head_name(forced: bool, weight: float | None) -> str:
    """The ``head`` field of a scored row: ``generation`` (the model's own answer), ``given`` (an answer given with the
    request, scored by the given-answer head) or ``confidence`` (a given answer that the given-answer head leaves to the
    model's confidence alone, where its learned probe does not hold).

    >>> head_name(False, None), head_name(True, 0.9), head_name(True, 0.0)
    ('generation', 'given', 'confidence')
    """
    if not forced:
        return "generation"
    return "confidence" if path_of(weight) == "confidence" else "given"


def onnx_risk(artifact: str | Path, seq, mask, static) -> np.ndarray:
    """Risk from the artifact's ONNX graph (onnxruntime), for runtimes without torch."""
    import onnxruntime as ort  # only here: the ONNX path is for runtimes without torch


    read_artifact(artifact)  # checks probe.onnx against the sha256 that probe.json records
    sess = ort.InferenceSession(str(resolve_artifact(artifact) / "probe.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"seq": np.asarray(seq, np.float32), "mask": np.asarray(mask, bool),
                           "static": np.asarray(static, np.float32)})[0]


# ------------------------------------------------------------------------------------- requests


REQUEST_FIELDS = ("id", "prompt", "question", "response", "answer_kind")
# Settings of a whole run, not of one request: a request that carries one would be silently ignored.
# (A scored output row, which carries "model", "risk" and the like, stays valid input for scoring again.)
RUN_SETTINGS = {"max_new_tokens": "set for the whole run (--max-new-tokens)",
                "threshold": "the probe's own (its artifact, or --threshold where a command offers it)",
                "batch_size": "set for the whole run (--batch-size)",
                "temperature": "scoring always decodes greedily"}


def _misspelt(key: str) -> str | None:
    """The request field that ``key`` looks like a slip of (``respnse``, ``promt``, ``responses``), or ``None``.
    A caller's own field that merely names one (``question_id``, ``response_text``) or is short (``qid``) is not
    a slip."""
    k = key.lower()
    for f in REQUEST_FIELDS:
        if k == f + "s":
            return f
    if len(k) < 4 or any(f in k for f in REQUEST_FIELDS if len(f) > 2):
        return None
    near = difflib.get_close_matches(k, REQUEST_FIELDS, n=1, cutoff=0.8)
    return near[0] if near else None


def request_problem(obj: Any) -> str | None:
    """Why a scoring request (a JSONL line or an HTTP body) cannot be scored, or ``None`` if it can.

    A request is ``{"prompt" (or "question"): str, "response"?: str | null, "answer_kind"?: str, "id"?}``;
    texts are judged after stripping whitespace. Other fields are carried through to the output as the
    caller's own (``answers``, ``category``), except a near-miss of a request field (``respnse``) and a
    setting of the whole run (``max_new_tokens``), which would be ignored without a word.

    >>> request_problem({"prompt": "Q?", "respnse": "A"})
    "field 'respnse': unknown; did you mean 'response'?"
    >>> request_problem({"prompt": "Q?", "answers": ["A"], "question_id": "tc_1", "qid": 7}) is None
    True
    >>> request_problem({"prompt": "Q?", "answer": "A"})[:40]
    "field 'answer': ambiguous here; a given "
    """
    if not isinstance(obj, dict):
        return "expected a JSON object"
    for key in obj:
        if key in REQUEST_FIELDS:
            continue
        if key == "answer":  # eval-given's name for a given answer; in a prompt file it is a gold answer
            return ("field 'answer': ambiguous here; a given answer to score goes in 'response' (gold answers in "
                    "'answers', carried through as yours)")
        if key in RUN_SETTINGS:
            return f"field '{key}': not per request: {RUN_SETTINGS[key]}"
        near = _misspelt(str(key))
        if near:
            return f"field '{short(key, 40)[1:-1]}': unknown; did you mean '{near}'?"
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
    ctx = context_length(lm)
    if ctx is None:
        return None
    rp = render(lm.tokenizer, prompt, "alias", prompt_style)
    n = len(lm.tokenizer(rp.text, add_special_tokens=rp.add_special_tokens)["input_ids"])
    extra = len(lm.tokenizer(response.strip(), add_special_tokens=False)["input_ids"]) + 1 if response else max_new_tokens
    if n + extra > ctx:
        what = "response" if response else "answer budget"
        return f"prompt ({n} tokens) + {what} ({extra}) exceeds the model's context ({ctx})"
    return None
