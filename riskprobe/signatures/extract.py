"""Extract signatures by teacher forcing: one forward pass per batch over prompt + response, all steps at once.

Generation computes a row's step ``t`` state at the position whose input is response token ``t - 1`` (step
0 is the last prompt position). Given the response's tokens, one causal forward pass over
``prompt + response[:K]`` computes every one of those states together, and the logits only at those
``K + 1`` positions. :class:`Extractor` lays a batch out so that the steps sit in the same columns for
every row (prompts left padded as in generation, responses right padded), reads each layer's states at
those columns through the same capture sites as :class:`~riskprobe.signatures.capture.Capture`, and hands
them, step by step, to the very same per-step reduction (``Capture._step``), masking and hand-over
(``Capture.finish``). The features therefore equal the ones captured while generating up to floating-point
differences between a cached one-token-at-a-time computation and a full forward pass (see
``tests/unit/test_extract.py`` for the stated tolerance).

Usage::

    ex = Extractor(lm, spec)
    sig = ex.extract(rendered_prompts, [g.token_ids for g in generations])   # {column: np.ndarray [B, ...]}
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..models.generation import forced_ids, prefix_cache, shared_prefix, tokenize
from .capture import Capture, _first, capture_sites
from .spec import FeatureSpec


class Extractor:
    """Teacher-forced extraction of a :class:`FeatureSpec`'s signature (see the module doc)."""

    def __init__(self, lm, spec: FeatureSpec, *, share_prefix: bool = True, arms: Sequence[FeatureSpec] = ()):
        self.lm = lm
        self.cap = Capture(lm, spec)  # used for its per-step reduction only; its hooks are never put on
        self.spec = self.cap.spec
        # more specs reduced from the same forward pass (another normalisation, layer set or family list)
        self.arm_caps = [Capture(lm, a) for a in arms]
        self.sites = capture_sites(lm.model)
        self.L = self.spec.n_layers
        self.share_prefix = share_prefix

    def _forward(self, prompts, token_ids: Sequence[Sequence[int]], steps: int):
        """States ``[B, steps, L+1, H]`` and logits ``[B, steps, V]`` at the step positions.

        Layout: ``[shared prefix][left padding][rest of the prompt][response, right padded]``. The prompt tokens
        that every row of the batch starts with are run once and reused as a KV cache (positions count attended
        tokens, as in generation, so where padding sits does not change any attended state)."""
        enc = tokenize(self.lm, prompts)
        ids, att = enc["input_ids"], enc["attention_mask"]
        B, P = ids.shape
        dev = ids.device
        rows = [ids[i, att[i].bool()].tolist() for i in range(B)]
        R = steps - 1  # response tokens fed: token t-1 is the input at step t
        n_pre = shared_prefix(self.lm, rows, R) if self.share_prefix else 0
        T = max(len(r) for r in rows) - n_pre  # the rest of the prompt, left padded to T
        pad = self.lm.tokenizer.pad_token_id if self.lm.tokenizer.pad_token_id is not None else 0
        rest = torch.full((B, T + R), pad, dtype=ids.dtype, device=dev)
        ratt = torch.zeros((B, T + R), dtype=att.dtype, device=dev)
        for i, (r, toks) in enumerate(zip(rows, token_ids)):
            tail = r[n_pre:]
            rest[i, T - len(tail):T] = torch.as_tensor(tail, dtype=ids.dtype, device=dev)
            ratt[i, T - len(tail):T] = 1
            n = min(len(toks) - 1, R)  # the token that ended the row is never an input
            if n > 0:
                rest[i, T:T + n] = torch.as_tensor(list(toks[:n]), dtype=ids.dtype, device=dev)
                ratt[i, T:T + n] = 1
        full_att = torch.cat([torch.ones((B, n_pre), dtype=att.dtype, device=dev), ratt], 1)
        # positions as generation computes them: count of attended tokens before, padding at 1
        pos = full_att.long().cumsum(-1) - 1
        pos.masked_fill_(full_att == 0, 1)
        pos = pos[:, n_pre:]
        kwargs = {**prefix_cache(self.lm, rows[0][:n_pre], B), "use_cache": True} if n_pre else {"use_cache": False}
        cols = torch.arange(T - 1, T - 1 + steps, device=dev)
        states: list[torch.Tensor | None] = [None] * (self.L + 1)

        def pre0(_mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            states[0] = h[:, cols]

        def post(i):
            def hook(_mod, _args, out):
                states[i] = _first(out)[:, cols]
            return hook

        handles = [self.sites["layer.1"].register_forward_pre_hook(pre0, with_kwargs=True)]
        handles += [self.sites[f"layer.{i}"].register_forward_hook(post(i)) for i in range(1, self.L + 1)]
        try:
            out = self.lm.model(input_ids=rest, attention_mask=full_att, position_ids=pos, logits_to_keep=cols, **kwargs)
        finally:
            for h in handles:
                h.remove()
        logits = out.logits if hasattr(out, "logits") else out[0]
        return torch.stack(states, dim=2), logits  # [B, S, L+1, H], [B, S, V]

    @torch.inference_mode()
    def extract(self, prompts, token_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """Signature arrays ``{column: [B, ...]}`` for rendered prompts and their responses' token ids (each up to
        and including the token that ended it, as :class:`~riskprobe.models.generation.Generation` holds them)."""
        return self.extract_arms(prompts, token_ids)[0]

    def extract_answers(self, prompts, answers: Sequence[str]) -> tuple[dict[str, np.ndarray], list[list[int]]]:
        """:meth:`extract` for given answers as text, each forced as :func:`~riskprobe.models.generation.forced_ids`
        makes it (its tokens, then EOS). Returns the signatures and the forced token ids."""
        ids = forced_ids(self.lm, list(answers))
        return self.extract(prompts, ids), ids

    @torch.inference_mode()
    def extract_arms(self, prompts, token_ids: Sequence[Sequence[int]]) -> list[dict[str, np.ndarray]]:
        """:meth:`extract` for the main spec and then every arm, all from one forward pass."""
        if len(prompts) != len(token_ids):
            raise ValueError("one response per prompt")
        if any(len(t) == 0 for t in token_ids):
            raise ValueError("a response has no tokens")
        caps = [self.cap, *self.arm_caps]
        steps = min(max(c.spec.steps for c in caps), max(len(t) for t in token_ids))
        states, logits = self._forward(prompts, token_ids, steps)
        B = len(token_ids)
        chosen = torch.zeros((B, steps), dtype=torch.long, device=logits.device)
        for i, toks in enumerate(token_ids):
            n = min(len(toks), steps)
            chosen[i, :n] = torch.as_tensor(list(toks[:n]), dtype=torch.long, device=logits.device)
        out = []
        for cap in caps:
            cap.reset()
            for t in range(min(steps, cap.spec.steps)):
                if t > 0:
                    cap._record_chosen(chosen[:, t - 1])
                cap._step(logits[:, t], states[:, t])
            out.append(cap.finish([list(t) for t in token_ids]))
        return out


def extract(lm, spec: FeatureSpec, prompts, token_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """One batch through a fresh :class:`Extractor` (a convenience for one-off calls)."""
    return Extractor(lm, spec).extract(prompts, token_ids)
