"""Signature features as pure functions: tensors in, named feature tensors out.

Every function works on a batch (leading dimension ``B``), computes in float32 whatever the input
dtype, and has no state: the capture loop (:mod:`riskprobe.signatures.capture`) calls them once per step.
Notation: ``h`` is a stack of hidden states ``[B, M, H]`` at ``M`` monitored layers of one position.
"""

from __future__ import annotations

import torch

EPS = 1e-8

COMMITMENT = ("entropy", "top1_prob", "margin", "chosen_logprob", "branching", "commit_depth")
SYNC = ("layer_cos", "update_norm", "update_cos")
TRAJECTORY = ("stability", "curvature", "displacement")
LENS = ("lens_entropy", "lens_agree")
# Column index of each named feature in its family's last axis: the one place that knows the order.
CI = {n: i for i, n in enumerate(COMMITMENT)}
SI = {n: i for i, n in enumerate(SYNC)}
TI = {n: i for i, n in enumerate(TRAJECTORY)}
LI = {n: i for i, n in enumerate(LENS)}


def _entropy(z: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Entropy from logits ``z`` (float32) and their ``log_softmax``. The probabilities come from ``softmax``,
    not ``logp.exp()``: on the CPU an elementwise exp of inputs below about -87 (where it underflows) runs a
    slow path, several times slower. Logits that wide were measured only on a random model's logit lens; the
    three bundled models' lens log-probabilities stay above -80, where both ways cost the same."""
    return -(torch.softmax(z, dim=-1) * logp).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of ``softmax(logits)`` over the last dimension."""
    z = logits.float()
    return _entropy(z, torch.log_softmax(z, dim=-1))


def commitment(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """How sharply the next-token distribution commits, from ``logits [B, V]``.

    Returns ``entropy``, ``top1_prob``, ``margin`` (top-1 minus top-2 probability), ``branching``
    (exp(entropy)) and ``lse`` ``[B]``, the log normaliser: with the logits it gives the chosen token's
    log-probability once that token is known (:func:`chosen_logprob`), without keeping ``[B, V]`` log-probs.
    """
    z = logits.float()
    logp = torch.log_softmax(z, dim=-1)
    ent = _entropy(z, logp)
    top = logp.topk(2, dim=-1)
    top2 = top.values.exp()
    lse = z.gather(-1, top.indices[:, :1]).squeeze(-1) - top.values[:, 0]
    return {"entropy": ent, "top1_prob": top2[:, 0], "margin": top2[:, 0] - top2[:, 1], "branching": ent.exp(),
            "lse": lse}


def chosen_logprob(logits: torch.Tensor, lse: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Log-probability ``[B]`` of the tokens ``chosen [B]`` under ``softmax(logits [B, V])``, whose log
    normaliser is ``lse [B]`` (from :func:`commitment`)."""
    return logits.gather(-1, chosen.long().view(-1, 1)).squeeze(-1).float() - lse


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension (0 where either vector is zero)."""
    a, b = a.float(), b.float()
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > EPS, num / den.clamp_min(EPS), torch.zeros_like(num))


def synchronisation(h: torch.Tensor, h_next: torch.Tensor, h_next2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inter-layer synchronisation at each monitored layer ``l``.

    Args:
        h: states at the monitored layers ``[B, M, H]``.
        h_next: states one layer above each (``l+1``), ``[B, M, H]``.
        h_next2: states two layers above each (``l+2``), ``[B, M, H]``; zeros where there is none.

    Returns ``layer_cos`` = cos(h_l, h_l+1), ``update_norm`` = |h_l+1 - h_l| / |h_l|, and ``update_cos`` =
    cos(h_l+1 - h_l, h_l+2 - h_l+1) (0 where layer ``l+2`` does not exist), each ``[B, M]``.
    """
    h, h_next, h_next2 = h.float(), h_next.float(), h_next2.float()
    d1 = h_next - h
    d2 = h_next2 - h_next
    has2 = h_next2.abs().sum(-1) > 0
    return {
        "layer_cos": cosine(h, h_next),
        "update_norm": d1.norm(dim=-1) / h.norm(dim=-1).clamp_min(EPS),
        "update_cos": torch.where(has2, cosine(d1, d2), torch.zeros_like(d1[..., 0])),
    }


def trajectory(h_prev: torch.Tensor | None, h: torch.Tensor) -> dict[str, torch.Tensor]:
    """Movement of each monitored layer's state from the previous step to this one, ``[B, M]`` each.

    ``stability`` = cos(h_t, h_t-1) and ``displacement`` = |h_t - h_t-1| (both 0 at step 0, where there is
    no previous step). Curvature needs the next step too: see :func:`curvature`.
    """
    if h_prev is None:
        z = torch.zeros(h.shape[:-1], dtype=torch.float32, device=h.device)
        return {"stability": z, "displacement": z.clone()}
    d = h.float() - h_prev.float()
    return {"stability": cosine(h, h_prev), "displacement": d.norm(dim=-1)}


def curvature(h_prev: torch.Tensor, h: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
    """Turning angle (radians, in [0, pi]) at step t between (h_t - h_t-1) and (h_t+1 - h_t), ``[B, M]``."""
    c = cosine(h.float() - h_prev.float(), h_next.float() - h.float())
    return torch.arccos(c.clamp(-1.0, 1.0))


def logit_lens(h: torch.Tensor, norm, unembed: torch.Tensor, final_top1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Read each monitored layer's state through the final norm and unembedding.

    Args:
        h: raw (pre-norm) states ``[B, M, H]``.
        norm: the model's final norm module (or identity).
        unembed: the unembedding matrix ``[V, H]``.
        final_top1: the model's own top-1 token ``[B]``.

    Returns ``lens_entropy`` ``[B, M]`` and ``lens_agree`` ``[B, M]`` (1.0 where the layer's top-1 equals
    the final top-1); :func:`commitment_depth` turns the agreement into the commitment depth.
    """
    logits = norm(h.to(unembed.dtype)) @ unembed.T  # [B, M, V]
    ent = entropy_from_logits(logits)
    agree = (logits.argmax(-1) == final_top1.view(-1, 1)).float()
    return {"lens_entropy": ent, "lens_agree": agree}


def commitment_depth(agree: torch.Tensor) -> torch.Tensor:
    """From ``agree [B, M]`` (0/1), the fraction ``m / M`` of the first layer from which all later agree."""
    m = agree.shape[-1]
    # suffix product: 1 where this layer and every later one agree
    suffix = torch.flip(torch.cumprod(torch.flip(agree, [-1]), -1), [-1])
    first = m - suffix.sum(-1)
    return first / float(m)


def masked_step_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [N, S]`` over the steps where ``mask [N, S]`` is true (0 for a row with none)."""
    m = mask.float()
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def normalise(h: torch.Tensor, how: str, norm=None) -> torch.Tensor:
    """Hidden-state normalisation before features: ``raw``, ``final_norm`` (the model's own) or ``unit``."""
    if how == "raw":
        return h
    if how == "unit":
        return h / h.float().norm(dim=-1, keepdim=True).clamp_min(EPS).to(h.dtype)
    if how == "final_norm":
        return norm(h)
    raise ValueError(f"unknown normalisation {how!r}")
