"""riskprobe: predict early, from a language model's dynamic signatures, whether its answer is wrong.

The stages, each importable on its own, in the order the data flows (docs/architecture.md):

* :mod:`riskprobe.models` - load a model (bundled, GGUF, directory, hub) with its identity; generate.
* :mod:`riskprobe.prompts` - labelled prompt sets, strict grading (:mod:`riskprobe.prompts.grading`), given answers.
* :mod:`riskprobe.signatures` - per-step, per-layer features, captured while the model generates.
* :mod:`riskprobe.harvest` - generation, grading and extraction, stored as resumable ``datasets`` shards.
* :mod:`riskprobe.probes` - plain probes, their inputs and the exported artifact.
* :mod:`riskprobe.training` - fit a probe from a config (:func:`riskprobe.training.fit`), transfer across sources.
* :mod:`riskprobe.evaluation` - metrics with intervals, training-free baselines, the risk against them.
* :mod:`riskprobe.serving` - score prompts or prompt/response pairs, monitor a generation, serve over HTTP.
* :mod:`riskprobe.report` - plots and the report.
"""

__version__ = "0.1.0"

from .errors import UserError

__all__ = ["UserError", "__version__"]
