"""Capture signatures while a model generates, where the model runs.

:class:`Capture` is a context manager that puts forward hooks on stable capture sites (TransformerLens
style names, see :func:`capture_sites`) and removes them on exit. On every forward pass it takes the last
position's state at each layer, reduces it at once to the small per-step features of
:mod:`riskprobe.signatures.features` on the model's device, and drops the states. Only the monitored
layers' states of the two previous steps stay alive (for trajectory and curvature). :meth:`Capture.finish`
masks steps after each row's end and moves the batch's features to the CPU in one transfer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import features as F
from .spec import FeatureSpec


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _last(x: torch.Tensor) -> torch.Tensor:
    """The last position's row ``[B, ...]`` of a pass over ``[B, T, ...]``. Over several positions (a prefill)
    it is a copy: a view would keep the layer's whole output alive until the step is reduced, every layer's at
    once (for SmolLM2 at batch 16 and 200 prompt tokens, 220 MB that plain generation frees layer by layer)."""
    last = x[:, -1]
    return last.clone() if x.shape[1] > 1 else last


def _find(model, paths: list[str]):
    for p in paths:
        obj = model
        try:
            for part in p.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    return None


def capture_sites(model) -> dict[str, torch.nn.Module]:
    """Stable names for the modules riskprobe hooks, for any supported architecture.

    ``layer.{i}`` (i = 1..L) is decoder layer i (its output is state i; the input of ``layer.1`` is state 0),
    ``final_norm`` the final norm, ``lm_head`` the unembedding, ``embed`` the token embedding.
    """
    layers = _find(model, ["model.layers", "model.language_model.layers", "transformer.h", "model.decoder.layers",
                           "gpt_neox.layers", "transformer.layers"])
    norm = _find(model, ["model.norm", "model.language_model.norm", "transformer.ln_f", "model.decoder.final_layer_norm",
                         "gpt_neox.final_layer_norm", "transformer.norm_f"])
    if layers is None or norm is None:
        raise NotImplementedError(f"riskprobe does not know where the layers of {type(model).__name__} are")
    sites = {f"layer.{i + 1}": m for i, m in enumerate(layers)}
    sites.update(final_norm=norm, lm_head=model.get_output_embeddings(), embed=model.get_input_embeddings())
    return sites


class Capture:
    """Record a :class:`FeatureSpec`'s signature during ``model.generate`` (or one forward pass).

    Usage::

        cap = Capture(lm, spec)
        with cap:
            gens = generate(lm, prompts)
        sig = cap.finish([g.token_ids for g in gens])   # {column: np.ndarray [B, ...]}
    """

    def __init__(self, lm, spec: FeatureSpec):
        self.lm = lm
        self.spec = spec if spec.n_layers is not None else spec.resolve(lm)
        self.sites = capture_sites(lm.model)
        self.L = self.spec.n_layers
        cfg = getattr(lm.model.config, "text_config", None) or lm.model.config
        # With final logit soft-capping the model's output is not the plain lens of layer L.
        self._softcap = bool(getattr(cfg, "final_logit_softcapping", None))
        self._handles: list[Any] = []
        self.reset()

    # ------------------------------------------------------------------ hooks
    def reset(self) -> None:
        self.t = 0  # index of the next step
        self.buf: dict[str, torch.Tensor] = {}
        self._states: list[torch.Tensor | None] = [None] * (self.L + 1)
        self._prev: list[torch.Tensor] = []  # normalised monitored states of steps t-1, t-2
        # the last step's logits and their log normaliser, until its token is known (chosen_logprob)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._rows: torch.Tensor | None = None  # the batch's rows still generating (None: all)
        self._full: dict[str, torch.Tensor] = {}  # every row's buffers, once rows have left the batch

    def __enter__(self) -> "Capture":
        self.reset()
        self.lm.watchers.append(self)  # generate() tells it when ended rows leave the batch

        def pre0(_mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self._states[0] = _last(h)

        def post(i):
            def hook(_mod, _args, out):
                self._states[i] = _last(_first(out))
            return hook

        def embed_pre(_mod, args):
            ids = args[0]
            if self._pending is not None and ids.dim() == 2:
                self._record_chosen(ids[:, -1])

        def head(_mod, _args, out):
            self._step(_last(_first(out)))

        self._handles.append(self.sites["layer.1"].register_forward_pre_hook(pre0, with_kwargs=True))
        for i in range(1, self.L + 1):
            self._handles.append(self.sites[f"layer.{i}"].register_forward_hook(post(i)))
        self._handles.append(self.sites["embed"].register_forward_pre_hook(embed_pre))
        self._handles.append(self.sites["lm_head"].register_forward_hook(head))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self in self.lm.watchers:
            self.lm.watchers.remove(self)

    def select_rows(self, keep: torch.Tensor, last: torch.Tensor) -> None:
        """Only the current batch's rows at positions ``keep`` go on generating (the others ended and leave
        the batch). ``last``: every current row's last token, the one chosen at the last step (recorded now,
        before the ended rows leave). The ended rows' features are kept for :meth:`finish`."""
        if self._pending is not None:
            self._record_chosen(last)
        if not self.buf:
            return
        if self._rows is None:
            self._rows = torch.arange(last.shape[0], device=keep.device)
        self._merge_rows()
        keep = keep.to(self._rows.device)
        self.buf = {name: full[self._rows[keep]] for name, full in self._full.items()}
        self._prev = [p[keep] for p in self._prev]
        self._rows = self._rows[keep]

    def _merge_rows(self) -> None:
        """Put the rows still generating back into every row's buffers (the first time: the buffers are
        every row's)."""
        if not self._full:
            self._full = self.buf
            return
        for name, buf in self.buf.items():
            self._full[name][self._rows] = buf

    # ------------------------------------------------------------------ per step
    def _alloc(self, B: int, device) -> None:
        sp = self.spec
        self._lens_last = bool(sp.lens_layers) and sp.lens_layers[-1] == self.L and not self._softcap
        inner = sp.lens_layers[:-1] if self._lens_last else sp.lens_layers
        self._idx = {k: torch.tensor(v, dtype=torch.long, device=device)
                     for k, v in (("layers", sp.layers), ("lens_inner", inner), ("raw", sp.raw_layers))}
        for name, (shape, dtype, _) in self.spec.shapes().items():
            if name == "step_mask":
                continue
            self.buf[name] = torch.zeros((B, *shape), dtype=torch.float16 if dtype == "float16" else torch.float32,
                                         device=device)

    def _record_chosen(self, tokens: torch.Tensor) -> None:
        t = self.t - 1
        if "commitment" in self.buf and t <= self.spec.K:
            logits, lse = self._pending
            self.buf["commitment"][:, t, F.CI["chosen_logprob"]] = F.chosen_logprob(logits, lse, tokens.to(lse.device))
        self._pending = None

    @torch.no_grad()
    def _step(self, logits: torch.Tensor, states: torch.Tensor | None = None) -> None:
        """Reduce one step to features: ``logits [B, V]`` and the states of every layer at this step,
        ``states [B, L+1, H]`` (default: the ones the hooks just collected). The teacher-forced extractor
        (:mod:`riskprobe.signatures.extract`) calls this too, so both paths share every feature formula."""
        t, sp = self.t, self.spec
        self.t += 1
        if t > sp.K:
            return
        B = logits.shape[0]
        if not self.buf:
            self._alloc(B, logits.device)
        if states is None:
            states = torch.stack([s for s in self._states], dim=1)  # [B, L+1, H]
        norm = self.sites["final_norm"]
        if sp.has("commitment"):
            c = F.commitment(logits)
            row = self.buf["commitment"][:, t]
            for name in ("entropy", "top1_prob", "margin", "branching"):
                row[:, F.CI[name]] = c[name]
            self._pending = (logits, c["lse"])
            row[:, F.CI["commit_depth"]] = 1.0
        if sp.has("sync") or sp.has("trajectory"):
            hn = F.normalise(states, sp.normalisation, norm)
            h = hn[:, self._idx["layers"]]
            if sp.has("sync"):
                zero = torch.zeros_like(hn[:, :2])
                padded = torch.cat([hn, zero], dim=1)  # layers L+1, L+2 do not exist: zeros
                s = F.synchronisation(h, padded[:, self._idx["layers"] + 1], padded[:, self._idx["layers"] + 2])
                self.buf["sync"][:, t] = torch.stack([s[k] for k in F.SYNC], dim=-1)
            if sp.has("trajectory"):
                prev = self._prev[0] if self._prev else None
                tr = F.trajectory(prev, h)
                buf = self.buf["trajectory"]
                buf[:, t, :, 0], buf[:, t, :, 2] = tr["stability"], tr["displacement"]
                if len(self._prev) == 2:
                    buf[:, t - 1, :, 1] = F.curvature(self._prev[1], self._prev[0], h)
                self._prev = [h.float(), *self._prev[:1]]
        if sp.has("lens") and t <= sp.lens_steps:
            top1 = logits.argmax(-1)
            inner = self._idx["lens_inner"]
            ent, agree = self.buf["lens"][:, t, :, 0], self.buf["lens"][:, t, :, 1]
            if len(inner):
                lens = F.logit_lens(states[:, inner], norm, self.sites["lm_head"].weight, top1)
                ent[:, : len(inner)], agree[:, : len(inner)] = lens["lens_entropy"], lens["lens_agree"]
            if self._lens_last:  # the lens at layer L is the model's own output: no second unembedding
                ent[:, -1] = c["entropy"] if sp.has("commitment") else F.entropy_from_logits(logits)
                agree[:, -1] = 1.0
            if "commitment" in self.buf:
                self.buf["commitment"][:, t, F.CI["commit_depth"]] = F.commitment_depth(agree)
        if sp.has("raw") and t <= sp.raw_steps:
            self.buf["raw"][:, t] = states[:, self._idx["raw"]].to(torch.float16)
        self._states = [None] * (self.L + 1)

    # ------------------------------------------------------------------ end of batch
    @torch.inference_mode()
    def finish(self, token_ids: list[list[int]]) -> dict[str, np.ndarray]:
        """Mask steps after each row's end and return ``{column: array [B, ...]}`` on the CPU.

        ``token_ids[j]`` are row j's generated tokens up to and including the one that ended it; step t is
        valid while ``t < len(token_ids[j])`` (the state at step t produced token t+1).
        """
        B = len(token_ids)
        S = self.spec.steps
        if not self.buf:
            raise RuntimeError("Capture.finish() called before any forward pass")
        dev = next(iter(self.buf.values())).device
        last = self.t - 1
        if self._pending is not None and last <= self.spec.K:
            going = range(B) if self._rows is None else self._rows.tolist()
            tok = torch.tensor([token_ids[j][last] if last < len(token_ids[j]) else 0 for j in going], device=dev)
            self._record_chosen(tok)
        if self._rows is not None:  # rows left the batch: the rest of it back into every row's buffers
            self._merge_rows()
            self.buf = self._full
        n = torch.tensor([min(len(ids), S, self.t) for ids in token_ids], device=dev)
        mask = torch.arange(S, device=dev).view(1, S) < n.view(B, 1)  # [B, S]
        out = {"step_mask": mask}
        for name, buf in self.buf.items():
            steps = buf.shape[1]
            m = mask[:, :steps].view(B, steps, *([1] * (buf.dim() - 2)))
            out[name] = buf * m.to(buf.dtype)
        # curvature of the last valid step is undefined (no next step): zero it
        if "trajectory" in out:
            tr = out["trajectory"]
            lastv = (n - 1).clamp_min(0)
            tr[torch.arange(B, device=dev), lastv, :, 1] = 0.0
        cpu = {k: v.cpu().numpy() for k, v in out.items()}  # one transfer per column per batch
        self.reset()
        return cpu
