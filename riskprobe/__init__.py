"""riskprobe: predict early, from a language model's dynamic signatures, whether its answer is wrong.

The stages, each importable on its own:

* :mod:`riskprobe.models` - load a model (bundled, GGUF, directory, hub) with its identity.
* :mod:`riskprobe.prompts` and :mod:`riskprobe.grading` - labelled prompt sets and strict grading.
* :mod:`riskprobe.signatures` - per-step, per-layer features, captured while the model generates.
* :mod:`riskprobe.harvest` - generation + grading + capture, stored as resumable ``datasets`` shards.
"""

__version__ = "0.1.0"

from .errors import UserError

__all__ = ["UserError", "__version__"]
