"""The runnable examples in docstrings run and give what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["riskprobe.evaluation.given", "riskprobe.training.selection", "riskprobe.models.loader",
                                    "riskprobe.models.generation", "riskprobe.serving.scorer", "riskprobe.fsutil",
                                    "riskprobe.evaluation.versus", "riskprobe.prompts.public",
                                    "riskprobe.training.loso", "riskprobe.harvest.given"])
def test_docstring_examples(module):
    res = doctest.testmod(importlib.import_module(module))
    assert res.attempted > 0 and res.failed == 0
