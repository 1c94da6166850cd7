"""Signature features against hand computations, and capture on tiny models of five architectures."""

import math

import numpy as np
import pytest
import torch

from riskprobe.models import render
from riskprobe.models.generation import generate
from riskprobe.signatures import Capture, FeatureSpec, resolve_layers
from riskprobe.signatures import features as F
from riskprobe.signatures.capture import capture_sites


def test_commitment_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    c = F.commitment(logits)
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 1.5 ln 2
    assert c["entropy"].item() == pytest.approx(h, abs=1e-6)
    assert c["top1_prob"].item() == pytest.approx(0.5, abs=1e-6)
    assert c["margin"].item() == pytest.approx(0.25, abs=1e-6)
    assert c["branching"].item() == pytest.approx(math.exp(h), abs=1e-5)
    assert c["lse"].item() == pytest.approx(0.0, abs=1e-6)  # the probabilities sum to one already
    assert F.chosen_logprob(logits, c["lse"], torch.tensor([2])).item() == pytest.approx(math.log(0.25), abs=1e-6)
    shifted = F.commitment(logits + 3.0)  # softmax is shift-invariant; the normaliser moves with the shift
    assert shifted["lse"].item() == pytest.approx(3.0, abs=1e-6)
    assert F.chosen_logprob(logits + 3.0, shifted["lse"], torch.tensor([0])).item() == pytest.approx(math.log(0.5), abs=1e-6)


def test_entropy_of_wide_logits_against_float64():
    """Logits spread over hundreds of nats (a middle layer's logit lens): the entropy, the normaliser and the
    chosen log-probability match a float64 reference, and fully committed rows give zero entropy, not nan."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 500, generator=g) * torch.tensor([1.0, 4.0, 25.0, 60.0, 200.0, 1000.0]).view(-1, 1)
    p = torch.softmax(logits.double(), -1)
    ref = -(p * torch.log_softmax(logits.double(), -1)).sum(-1)
    torch.testing.assert_close(F.entropy_from_logits(logits).double(), ref, atol=1e-5, rtol=1e-5)
    c = F.commitment(logits)
    torch.testing.assert_close(c["entropy"].double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c["lse"].double(), torch.logsumexp(logits.double(), -1), atol=1e-4, rtol=1e-6)
    chosen = torch.tensor([0, 1, 2, 3, 4, 5])
    lp = torch.log_softmax(logits.double(), -1).gather(-1, chosen.view(-1, 1)).squeeze(-1)
    torch.testing.assert_close(F.chosen_logprob(logits, c["lse"], chosen).double(), lp, atol=1e-3, rtol=1e-6)
    assert c["entropy"][-1].item() == pytest.approx(0.0, abs=1e-6) and not c["entropy"].isnan().any()


def test_synchronisation_by_hand():
    h = torch.tensor([[[1.0, 0.0]]])
    h1 = torch.tensor([[[1.0, 1.0]]])
    h2 = torch.tensor([[[0.0, 1.0]]])
    s = F.synchronisation(h, h1, h2)
    assert s["layer_cos"].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert s["update_norm"].item() == pytest.approx(1.0, abs=1e-6)  # |(0,1)| / |(1,0)|
    assert s["update_cos"].item() == pytest.approx(0.0, abs=1e-6)  # cos((0,1), (-1,0))
    h2b = torch.tensor([[[1.0, 3.0]]])  # second update (0,2) is parallel to the first (0,1)
    assert F.synchronisation(h, h1, h2b)["update_cos"].item() == pytest.approx(1.0, abs=1e-6)
    assert F.synchronisation(h, h1, torch.zeros_like(h))["update_cos"].item() == 0.0  # no layer l+2


def test_trajectory_and_curvature_by_hand():
    p0, p1, p2 = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 1.0]]])
    t = F.trajectory(p1, p2)
    assert t["stability"].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert t["displacement"].item() == pytest.approx(1.0, abs=1e-6)
    assert F.curvature(p0, p1, p2).item() == pytest.approx(math.pi / 2, abs=1e-6)
    straight = torch.tensor([[[2.0, 0.0]]])
    assert F.curvature(p0, p1, straight).item() == pytest.approx(0.0, abs=1e-3)
    first = F.trajectory(None, p1)
    assert first["stability"].item() == 0.0 and first["displacement"].item() == 0.0


def test_commitment_depth_and_lens_by_hand():
    agree = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert F.commitment_depth(agree).tolist() == [0.75, 0.0, 1.0, 0.5]
    # lens with identity norm and unembedding: layer states are their own logits
    h = torch.tensor([[[0.0, 5.0], [5.0, 0.0]]])
    lens = F.logit_lens(h, torch.nn.Identity(), torch.eye(2), torch.tensor([0]))
    assert lens["lens_agree"].tolist() == [[0.0, 1.0]]
    assert F.commitment_depth(lens["lens_agree"]).tolist() == [0.5]
    p = torch.softmax(torch.tensor([0.0, 5.0]), 0)
    assert lens["lens_entropy"][0, 0].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)


def test_normalise():
    h = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(F.normalise(h, "unit"), torch.tensor([[0.6, 0.8]]))
    assert F.normalise(h, "raw") is h
    with pytest.raises(ValueError):
        F.normalise(h, "zscore")


def test_layer_sets():
    assert resolve_layers("all", 30, "x") == list(range(1, 31))
    assert resolve_layers("early", 30, "x") == list(range(1, 11))
    assert resolve_layers("late", 30, "x") == list(range(21, 31))
    assert resolve_layers("sparse4", 30, "x") == [8, 15, 22, 30]
    assert resolve_layers([-1, 0, 3], 30, "x") == [0, 3, 30]
    from riskprobe.errors import UserError
    with pytest.raises(UserError, match="out of range"):
        resolve_layers([31], 30, "features.layers")
    with pytest.raises(UserError, match="unknown layer set"):
        resolve_layers("deep", 30, "features.layers")


def _spec(lm, **kw):
    base = dict(K=6, lens_steps=6, raw_steps=6, raw_layers="all", lens_layers="all")
    base.update(kw)
    return FeatureSpec(**base).resolve(lm)


def test_capture_on_each_architecture(tiny_lm):
    """Shapes, masks, and invariants that hold for any model: greedy chosen token = top-1."""
    spec = _spec(tiny_lm)
    rps = [render(tiny_lm.tokenizer, q) for q in ("What is two?", "Name a much longer thing, please?")]
    cap = Capture(tiny_lm, spec)
    with cap:
        gens = generate(tiny_lm, rps, max_new_tokens=8)
    sig = cap.finish([g.token_ids for g in gens])
    L, H = tiny_lm.identity.n_layers, tiny_lm.identity.hidden_size
    assert sig["commitment"].shape == (2, 7, 6) and sig["sync"].shape == (2, 7, L, 3)
    assert sig["raw"].shape == (2, 7, L, H) and sig["raw"].dtype == np.float16
    valid = sig["step_mask"]
    c = sig["commitment"]
    # greedy: the chosen token is the top-1, so its log-prob is log(top1_prob)
    np.testing.assert_allclose(c[..., 3][valid], np.log(c[..., 1][valid]), atol=1e-4)
    assert np.all(c[..., 0][valid] >= 0) and np.all((c[..., 1][valid] > 0) & (c[..., 1][valid] <= 1))
    # lens at the last layer is the model's own distribution: it agrees with the final top-1
    assert np.all(sig["lens"][:, :, -1, 1][valid] == 1.0)
    # leaving the context removes every hook
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cap.sites.values())


def test_states_match_hidden_states_and_final_norm_is_explicit(tiny_lm):
    """State l (l < L) equals transformers' hidden_states[l]; state L is *before* the final norm, and the
    final norm of it equals hidden_states[-1]."""
    spec = _spec(tiny_lm, raw_layers=[0] + list(range(1, tiny_lm.identity.n_layers + 1)))
    enc = tiny_lm.tokenizer(["Hello there"], return_tensors="pt")
    cap = Capture(tiny_lm, spec)
    with torch.no_grad(), cap:
        out = tiny_lm.model(**enc, output_hidden_states=True)
    sig = cap.finish([[1, 2]])
    raw = torch.tensor(sig["raw"][0, 0]).float()  # step 0: [L+1, H]
    hs = [h[0, -1] for h in out.hidden_states]
    L = tiny_lm.identity.n_layers
    for i in range(L):
        torch.testing.assert_close(raw[i], hs[i].half().float(), atol=2e-2, rtol=2e-2)
    norm = Capture(tiny_lm, spec).sites["final_norm"]
    torch.testing.assert_close(norm(raw[L]), hs[L].half().float(), atol=5e-2, rtol=5e-2)
    assert not torch.allclose(raw[L], hs[L].float(), atol=1e-3)  # the last hidden_states entry is post-norm
    probs = torch.softmax(out.logits[0, -1].float(), -1)
    assert sig["commitment"][0, 0, 1] == pytest.approx(probs.max().item(), abs=1e-5)


def test_masking_after_eos(llama_lm):
    spec = _spec(llama_lm)
    cap = Capture(llama_lm, spec)
    rps = [render(llama_lm.tokenizer, q) for q in ("a?", "b?", "c?")]
    with cap:
        generate(llama_lm, rps, max_new_tokens=8)
    sig = cap.finish([[5, 257], [5, 6, 7, 8, 9], [5] * 8])  # row 0 ended at EOS after 2 tokens
    assert sig["step_mask"].sum(1).tolist() == [2, 5, 7]
    for name in ("commitment", "sync", "trajectory", "lens"):
        assert np.all(sig[name][0, 2:] == 0) and np.all(sig[name][1, 5:] == 0), name
        assert np.any(sig[name][0, :2] != 0), name
    # curvature needs a next step: zero at the last valid step
    assert np.all(sig["trajectory"][0, 1, :, 1] == 0)


def test_spec_validation():
    from riskprobe.errors import UserError
    with pytest.raises(UserError, match="unknown feature family 'vibes'"):
        FeatureSpec.from_dict({"families": ["commitment", "vibes"]})
    with pytest.raises(UserError, match="features.normalisation"):
        FeatureSpec.from_dict({"normalisation": "zscore"})
    with pytest.raises(UserError, match="unknown feature setting"):
        FeatureSpec.from_dict({"k": 3})


def test_normalisation_changes_update_norm_not_cosines(llama_lm):
    rps = [render(llama_lm.tokenizer, "What is two?")]
    sigs = {}
    for how in ("raw", "unit"):
        cap = Capture(llama_lm, _spec(llama_lm, normalisation=how))
        with cap:
            g = generate(llama_lm, rps, max_new_tokens=4)
        sigs[how] = cap.finish([x.token_ids for x in g])
    np.testing.assert_allclose(sigs["raw"]["sync"][..., 0], sigs["unit"]["sync"][..., 0], atol=1e-4)
    assert not np.allclose(sigs["raw"]["sync"][..., 1], sigs["unit"]["sync"][..., 1])


def test_a_prefill_keeps_only_the_last_position_of_each_layer(llama_lm):
    """Over a prompt of many positions the capture holds each layer's last row, not the layer's whole output
    (a view would keep every layer's ``[B, T, H]`` alive until the step is reduced)."""
    lm = llama_lm
    cap = Capture(lm, FeatureSpec(K=2).resolve(lm))
    held = []
    sites = capture_sites(lm.model)

    def before_head(_mod, _args, _out):  # the last layer has run; the step is not reduced yet
        held.append([s.untyped_storage().nbytes() for s in cap._states if s is not None])

    h = sites["final_norm"].register_forward_hook(before_head)
    try:
        with cap:
            prompts = [render(lm.tokenizer, q) for q in ("What is the largest planet in our solar system?", "Why?")]
            generate(lm, prompts, max_new_tokens=2)
    finally:
        h.remove()
    B, H = 2, lm.identity.hidden_size
    assert all(len(p) == lm.identity.n_layers + 1 for p in held)
    # every pass (the shared prefix's, the prefill's, each step's) holds one float32 row per layer and batch row
    assert max(max(p) for p in held) == B * H * 4
