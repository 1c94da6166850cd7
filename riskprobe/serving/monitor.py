"""Live monitoring: risk computed while ``model.generate`` runs.

``RiskMonitor`` is both a context manager (it installs the capture hooks and removes them on exit) and a
stopping criterion (pass it in ``stopping_criteria``). After step k it computes each row's risk, flags the
rows at or above the threshold, optionally stops them, and removes its hooks so that the rest of the
generation runs at full speed::

    with RiskMonitor(scorer, lm, stop=True) as mon:
        out = lm.model.generate(**enc, max_new_tokens=64, stopping_criteria=StoppingCriteriaList([mon]))
    mon.risk, mon.flagged   # per row
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.generation import eos_ids
from ..signatures import Capture


class RiskMonitor:
    """Watch a generation and report (and optionally act on) its risk after step ``k``.

    Args:
        scorer: a :class:`~riskprobe.serving.scorer.Scorer`.
        lm: the :class:`~riskprobe.models.LoadedModel` that generates.
        stop: stop the rows whose risk passes the threshold (they end at step k + 1).
        threshold: overrides the artifact's threshold.
    """

    def __init__(self, scorer, lm, *, stop: bool = False, threshold: float | None = None,
                 allow_model_mismatch: bool = False):
        scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)
        self.scorer, self.lm, self.stop = scorer, lm, stop
        self.threshold = scorer.threshold if threshold is None else float(threshold)
        self._eos = eos_ids(lm)
        self._eos_t = torch.tensor(sorted(self._eos), dtype=torch.long)
        self._no: torch.Tensor | None = None
        self.cap = Capture(lm, scorer.feature_spec())
        self.spec = self.cap.spec
        self.risk: np.ndarray | None = None
        self.flagged: np.ndarray | None = None
        self._sig = None
        self._by_step = None

    def __enter__(self) -> "RiskMonitor":
        self.risk = self.flagged = self._sig = self._by_step = None
        self._prompt_len = None
        self._last = None
        self._active = True
        self.cap.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and self.risk is None and self._last is not None and self._active:
            self.finalize(self._last)
        self._release()

    def _release(self) -> None:
        if self._active:
            self.cap.__exit__(None, None, None)
            self._active = False

    @property
    def risk_by_step(self) -> np.ndarray | None:
        """``[B, k+1]``: each row's risk as seen after steps 0..t (computed on first read, off the
        generation's path)."""
        if self._by_step is None and self._sig is not None:
            self._by_step = self.scorer.risk_by_step(self._sig)
        return self._by_step

    def _rows(self, gen: torch.Tensor) -> list[list[int]]:
        """Each row's tokens up to and including its first EOS (one transfer, once, at step k)."""
        ended = torch.isin(gen, self._eos_t.to(gen.device))
        first = torch.where(ended.any(-1), ended.float().argmax(-1) + 1, torch.full_like(ended[:, 0], gen.shape[1],
                                                                                       dtype=torch.long))
        return [row[:n] for row, n in zip(gen.tolist(), first.tolist())]

    def _compute(self, gen: torch.Tensor) -> None:
        sig = self.cap.finish(self._rows(gen))
        self.risk = self.scorer.risk(sig)
        self._sig, self._by_step = sig, None  # the risk after each step is computed when first read
        self.flagged = self.risk >= self.threshold
        self._release()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        B = input_ids.shape[0]
        if self._no is None or self._no.shape[0] != B:
            self._no = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1] - 1
        if self.risk is not None or not self._active:
            return self._no
        self._last = input_ids
        gen = input_ids[:, self._prompt_len:]
        # Steps 0..k: nothing is read back from the device until step k (a host sync per step costs more
        # than the capture itself on a GPU). When every row ends before step k, leaving the context computes
        # the risk from what was generated.
        if self.cap.t >= self.spec.K + 1:
            self._compute(gen)
            if self.stop:
                return torch.as_tensor(self.flagged, device=input_ids.device)
        return self._no

    def finalize(self, sequences: torch.Tensor) -> None:
        """Compute the risk from a finished generation that ended before step k (the context manager's exit
        does this already; call it when using the monitor without ``with``)."""
        if self.risk is None and self._prompt_len is not None and self.cap.t > 0:
            self._compute(sequences[:, self._prompt_len:])
