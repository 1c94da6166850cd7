"""The runnable examples in docstrings run and give what they say: every module of the package is searched, so a new
example is tested without being listed here."""

import doctest
import importlib
import pkgutil

import pytest

import riskprobe

MODULES = sorted(m.name for m in pkgutil.walk_packages(riskprobe.__path__, "riskprobe.")
                 if m.name != "riskprobe.__main__")  # importing it runs the CLI


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    res = doctest.testmod(importlib.import_module(module))
    assert res.failed == 0


def test_the_examples_are_found():
    finder = doctest.DocTestFinder()
    found = [m for m in MODULES if any(t.examples for t in finder.find(importlib.import_module(m)))]
    assert {"riskprobe.training.grouped", "riskprobe.training.evaluate", "riskprobe.serving.scorer",
            "riskprobe.evaluation.versus"} <= set(found)
