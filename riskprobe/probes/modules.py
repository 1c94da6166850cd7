"""Probes: plain ``nn.Module`` s that map a signature to a risk logit. No Lightning, no files.

Every probe takes ``(seq [N, S, F], mask [N, S], static [N, G])`` (see :mod:`riskprobe.probes.inputs`) and
returns logits ``[N]``. :class:`RiskModel` wraps a probe with the standardisation fitted on training
data and the calibration fitted on validation data, so that one module maps raw features to a
calibrated risk: this is the module that is exported and served.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError


def flat_design(seq, mask, static):
    """The flat input of the linear and MLP probes: every step's features and a valid-step indicator, then
    the static features (``[N, S * (F + 1) + G]``)."""
    x = torch.cat([seq, mask.unsqueeze(-1).to(seq.dtype)], -1).flatten(1)
    return torch.cat([x, static.to(seq.dtype)], -1)


class LinearProbe(nn.Module):
    """Logistic regression on the flattened steps (plus a valid-step indicator) and static features. Trained
    by gradient descent (``linear``) or fitted exactly by scikit-learn (``logreg`` and ``stacked``, see
    :mod:`riskprobe.probes.logistic`)."""

    def __init__(self, n_steps: int, n_feat: int, n_static: int = 0, **_):
        super().__init__()
        self.fc = nn.Linear(n_steps * (n_feat + 1) + n_static, 1)

    def forward(self, seq, mask, static):
        return self.fc(flat_design(seq, mask, static)).squeeze(-1)


class MLPProbe(nn.Module):
    """A two-layer perceptron on the same flat input as :class:`LinearProbe`."""

    def __init__(self, n_steps: int, n_feat: int, n_static: int = 0, hidden: int = 64, dropout: float = 0.1, **_):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_steps * (n_feat + 1) + n_static, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, seq, mask, static):
        return self.net(flat_design(seq, mask, static)).squeeze(-1)


class TemporalProbe(nn.Module):
    """A GRU over the steps; the state at each row's last valid step, with the static features, is read
    out by a small head. Steps after the row's end never reach the state that is read out."""

    def __init__(self, n_steps: int, n_feat: int, n_static: int = 0, hidden: int = 64, dropout: float = 0.1, **_):
        super().__init__()
        self.gru = nn.GRU(n_feat + 1, hidden, batch_first=True)
        self.static = nn.Linear(n_static, hidden) if n_static else None
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * (2 if n_static else 1), hidden), nn.GELU(),
                                  nn.Linear(hidden, 1))

    def forward(self, seq, mask, static):
        x = torch.cat([seq, mask.unsqueeze(-1).to(seq.dtype)], -1)
        h0 = x.new_zeros(1, x.shape[0], self.gru.hidden_size)  # explicit: ONNX then works for any batch size
        out, _ = self.gru(x, h0)  # [N, S, H]
        last = (mask.long().sum(1) - 1).clamp_min(0)
        h = out.gather(1, last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)
        if self.static is not None:
            h = torch.cat([h, torch.tanh(self.static(static))], -1)
        return self.head(h).squeeze(-1)


# where the commitment family's scores sit in a step's features (it comes first whenever it is read)
ENTROPY, TOP1, CHOSEN_LOGPROB = 0, 1, 3


class BlendProbe(nn.Module):
    """A logistic probe blended with the model's own confidence, backing off toward it far from the training rows:

    ``logit = sigmoid(s * (d0 - d)) * a * probe + b . (confidence - mean) / std + c``

    where ``probe`` is a logistic regression on the per-column standardised flat design, ``d`` the root mean square of
    that standardised design (about 1 for a training row), and ``confidence`` the four training-free scores at the
    probe's k (first-token entropy; mean entropy, mean top-1 probability and mean chosen-token log-probability over the
    valid steps, the last two negated), read from the commitment features (which must be the first family). Fitted by
    scikit-learn and a small likelihood fit (:mod:`riskprobe.training.loso`); it carries its own standardisation, so
    the :class:`RiskModel` around it keeps the identity one."""

    def __init__(self, n_steps: int, n_feat: int, n_static: int = 0, **_):
        super().__init__()
        dim = n_steps * (n_feat + 1) + n_static
        self.fc = nn.Linear(dim, 1)
        self.register_buffer("x_mean", torch.zeros(dim))
        self.register_buffer("x_std", torch.ones(dim))
        self.register_buffer("head", torch.tensor([1.0, 0.0, 1e9, 0.0]))  # a, c, d0, s
        self.register_buffer("conf_b", torch.zeros(4))
        self.register_buffer("conf_mean", torch.zeros(4))
        self.register_buffer("conf_std", torch.ones(4))
        self.has_confidence = n_feat > CHOSEN_LOGPROB  # a probe without the commitment family has no confidence term

    def _z(self, seq, mask, static):
        return (flat_design(seq * mask.unsqueeze(-1).to(seq.dtype), mask, static) - self.x_mean) / self.x_std

    def distance(self, seq, mask, static):
        """``[N]``: the root mean square of the standardised design (the back-off's ``d``)."""
        return self._z(seq, mask, static).square().mean(1).sqrt()

    def confidence(self, seq, mask):
        """``[N, 4]``: the training-free scores at the probe's k, higher = riskier."""
        m = mask.to(seq.dtype)
        n = m.sum(1).clamp_min(1.0)
        ent = seq[..., ENTROPY]
        return torch.stack([ent[:, 0], (ent * m).sum(1) / n, -(seq[..., TOP1] * m).sum(1) / n,
                            -(seq[..., CHOSEN_LOGPROB] * m).sum(1) / n], 1)

    def weight(self, seq, mask, static):
        """``[N]``: how much of the probe is kept (1 near the training rows, toward 0 far from them; 0 everywhere
        when the fit gave the probe no weight at all, ``a`` under 1e-3: the model's confidence alone carries the risk)."""
        kept = torch.sigmoid(self.head[3] * (self.head[2] - self.distance(seq, mask, static)))
        return kept * (self.head[0] >= 1e-3).to(kept.dtype)

    def forward(self, seq, mask, static):
        z = self._z(seq, mask, static)
        probe = self.fc(z).squeeze(-1)
        w = torch.sigmoid(self.head[3] * (self.head[2] - z.square().mean(1).sqrt()))
        if not self.has_confidence:
            return w * self.head[0] * probe + self.head[1]
        conf = (self.confidence(seq, mask) - self.conf_mean) / self.conf_std
        return w * self.head[0] * probe + conf @ self.conf_b + self.head[1]


PROBES = {"logreg": LinearProbe, "stacked": LinearProbe, "linear": LinearProbe, "mlp": MLPProbe,
          "temporal": TemporalProbe, "blend": BlendProbe}


def build_probe(kind: str, n_steps: int, n_feat: int, n_static: int = 0, **hparams) -> nn.Module:
    """A probe by name (``logreg``, ``stacked``, ``linear``, ``mlp``, ``temporal``)."""
    if kind not in PROBES:

        raise UserError(f"unknown probe '{kind}' (known: {', '.join(PROBES)})", field="model.probe")
    return PROBES[kind](n_steps, n_feat, n_static, **hparams)


class RiskModel(nn.Module):
    """Standardise -> probe -> calibrate. ``forward`` returns calibrated risk in [0, 1].

    Buffers: ``seq_mean``, ``seq_std``, ``static_mean``, ``static_std`` (fitted on the training split)
    and ``calib`` = (a, b) with risk = sigmoid(a * logit + b) (fitted on the validation split).
    """

    def __init__(self, probe: nn.Module, n_feat: int, n_static: int):
        super().__init__()
        self.probe = probe
        self.register_buffer("seq_mean", torch.zeros(n_feat))
        self.register_buffer("seq_std", torch.ones(n_feat))
        self.register_buffer("static_mean", torch.zeros(n_static))
        self.register_buffer("static_std", torch.ones(n_static))
        self.register_buffer("calib", torch.tensor([1.0, 0.0]))

    def set_standardizer(self, st) -> None:
        for name in ("seq_mean", "seq_std", "static_mean", "static_std"):
            getattr(self, name).copy_(getattr(st, name))

    def standardise(self, seq, mask, static):
        """The probe's own inputs: features standardised by the training split's moments, invalid steps 0."""
        m = mask.to(seq.dtype).unsqueeze(-1)
        return (seq - self.seq_mean) / self.seq_std * m, mask, (static - self.static_mean) / self.static_std

    def logits(self, seq, mask, static):
        """Uncalibrated logits (what training optimises)."""
        return self.probe(*self.standardise(seq, mask, static))

    def forward(self, seq, mask, static):
        return torch.sigmoid(self.calib[0] * self.logits(seq, mask, static) + self.calib[1])

    @torch.no_grad()
    def calibrate(self, logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> None:
        """Fit Platt scaling (a, b) on held-out logits so that a risk of 0.3 means about 30% wrong."""
        a, b = fit_platt(logits, labels, steps=steps)
        self.calib.copy_(torch.tensor([a, b]))


@torch.no_grad()
def ood_distance(rm: RiskModel, seq, mask, static) -> torch.Tensor:
    """``[N]``: how far each row's probe input lies from the training rows, the root mean square of its
    standardised features (valid steps and static features; about 1 for a typical training row). A probe that
    carries its own standardisation (:class:`BlendProbe`) measures it itself."""
    if hasattr(rm.probe, "distance"):
        return rm.probe.distance(*rm.standardise(seq, mask, static))
    s, m, g = rm.standardise(seq, mask, static)
    total = (s.float() ** 2).sum((1, 2)) + (g.float() ** 2).sum(1)
    count = m.float().sum(1) * s.shape[-1] + g.shape[1]
    return (total / count.clamp_min(1)).sqrt()


@torch.no_grad()
def fit_platt(scores, labels, steps: int = 200) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` with ``P(wrong) = sigmoid(a * score + b)``, fitted by maximum likelihood on
    held-out ``(score, label)`` pairs (the one calibration riskprobe uses, for probes and baselines alike).
    Scores are standardised for the fit and ``(a, b)`` mapped back; a degenerate fit gives ``(1, 0)``."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    mu, sd = s.mean(), s.std(unbiased=False)
    sd = sd if sd > 0 else torch.tensor(1.0, dtype=torch.float64)
    z = (s - mu) / sd
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a, b = ab.detach()
    if not bool(torch.isfinite(ab).all()):
        return 1.0, 0.0
    return float(a / sd), float(b - a * mu / sd)
