"""The typed results of a fit: ``metrics.json``, written by the training stage and read by the export, the report and
the demo through :class:`FitMetrics` (never by string keys of a loose dict at the top level).

The sections are the evaluation's tables (:mod:`riskprobe.evaluation.metrics`, ``baselines``, ``controls``...), kept as
plain mappings inside; the file's layout (which sections, of which type, which are required) is this class's. A file
carries ``version``; one without (written before 2026-12-06) has the same layout and is read as version 1. Sections a
later riskprobe adds are kept in ``extra`` and written back unchanged.

    >>> m = FitMetrics.from_dict({"probe": {"name": "blend@k4", "auroc": 0.8}, "baselines": {},
    ...                           "calibration": {"a": 1.0, "b": 0.0, "threshold": 0.5}, "ood": {"threshold": 1.2},
    ...                           "answer_provenance": ["own"], "new_section": {"x": 1}})
    >>> m.probe["name"], m.version, m.extra, m.to_dict()["new_section"]
    ('blend@k4', 1, {'new_section': {'x': 1}}, {'x': 1})
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, check_version
from ..fsutil import atomic_write_json

METRICS_VERSION = 1


@dataclass
class FitMetrics:
    """``metrics.json`` of a fit run: the probe's test metrics and everything measured beside it."""

    probe: dict[str, Any]              # the probe's test metrics: name, auroc, auroc_ci, auprc, n, n_incorrect, ...
    baselines: dict[str, Any]          # name -> the same metrics, with the baseline's kind
    calibration: dict[str, Any]        # Platt a, b and the flag threshold
    ood: dict[str, Any]                # the out-of-distribution rule: threshold, quantile, test_flagged
    answer_provenance: list[str]       # who wrote the training answers (own, other, reference)
    margin: dict[str, Any] | None = None        # the probe against the best baseline and the best training-free score
    controls: dict[str, Any] | None = None      # AUROC within strata of confidence, length and set
    selective: dict[str, Any] | None = None     # error rate among the answers kept, by coverage
    early_stop: dict[str, Any] | None = None    # the monitor's trade at the validation threshold
    reliability: list[dict[str, Any]] | None = None  # the reliability diagram's bins
    importance: dict[str, Any] | None = None
    predictions: dict[str, Any] | None = None   # the test rows' ids, sets, labels and risks
    given: dict[str, Any] | None = None         # given-answer rows by provenance and source
    blend: dict[str, Any] | None = None         # a blend probe's fit (C, CV, the blend's parts)
    data: dict[str, Any] | None = None          # the data module's spec (families, k, paths)
    selection: dict[str, Any] | None = None     # the recipe selection's table
    sweep: dict[str, Any] | None = None         # where sweep.json is
    checkpoint: str | None = None
    final_checkpoint: str | None = None
    version: int = METRICS_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    REQUIRED = ("probe", "baselines", "calibration", "ood", "answer_provenance")

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, file: str | Path | None = None) -> "FitMetrics":
        """Check and type a metrics mapping; a missing or mistyped section is a :class:`UserError` naming it."""
        if not isinstance(d, dict):
            raise UserError("expected a JSON object", file=file)
        d = {**d, "version": check_version(d.get("version"), METRICS_VERSION, kind="metrics file", file=file)}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key in cls.REQUIRED:
            if key not in d:
                raise UserError("missing; a fit run's metrics.json always has it (rerun the fit)", file=file,
                                field=key)
        for f in dataclasses.fields(cls):
            v = d.get(f.name)
            if f.name in ("extra", "version") or v is None:
                continue
            want = list if f.name in ("answer_provenance", "reliability") else str if "checkpoint" in f.name else dict
            if not isinstance(v, want):
                raise UserError(f"expected a {want.__name__}, got {type(v).__name__}", file=file, field=f.name)
        if not {"name", "auroc"} <= set(d["probe"]):
            raise UserError("needs the probe's name and auroc", file=file, field="probe")
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def write(self, path: str | Path) -> None:
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> "FitMetrics":
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError("is not valid JSON; rerun the fit", file=p) from None
        return cls.from_dict(d, file=p)
