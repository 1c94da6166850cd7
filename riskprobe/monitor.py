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

from .generation import eos_ids
from .signatures import Capture


class RiskMonitor:
    """Watch a generation and report (and optionally act on) its risk after step ``k``.

    Args:
        scorer: a :class:`~riskprobe.scoring.Scorer`.
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
        self.cap = Capture(lm, scorer.feature_spec())
        self.spec = self.cap.spec
        self.risk: np.ndarray | None = None
        self.risk_by_step: np.ndarray | None = None
        self.flagged: np.ndarray | None = None

    def __enter__(self) -> "RiskMonitor":
        self.risk = self.risk_by_step = self.flagged = None
        self._prompt_len = None
        self._active = True
        self.cap.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        if self._active:
            self.cap.__exit__(None, None, None)
            self._active = False

    def _rows(self, gen: torch.Tensor) -> list[list[int]]:
        out = []
        for row in gen.tolist():
            ids = []
            for t in row:
                ids.append(t)
                if t in self._eos:
                    break
            out.append(ids)
        return out

    def _compute(self, gen: torch.Tensor) -> None:
        sig = self.cap.finish(self._rows(gen))
        self.risk = self.scorer.risk(sig)
        self.risk_by_step = self.scorer.risk_by_step(sig)
        self.flagged = self.risk >= self.threshold
        self._release()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        B = input_ids.shape[0]
        no = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1] - 1
        if self.risk is not None or not self._active:
            return no
        gen = input_ids[:, self._prompt_len:]
        all_done = all(any(t in self._eos for t in row) for row in gen.tolist())
        if self.cap.t >= self.spec.K + 1 or all_done:
            self._compute(gen)
            if self.stop:
                return torch.as_tensor(self.flagged, device=input_ids.device)
        return no

    def finalize(self, sequences: torch.Tensor) -> None:
        """Compute the risk from a finished generation that ended before step k (rarely needed)."""
        if self.risk is None and self._prompt_len is not None:
            self._compute(sequences[:, self._prompt_len:])
