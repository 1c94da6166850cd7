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


def test_every_reference_to_a_riskprobe_name_resolves():
    """``:mod:``, ``:class:``, ``:func:`` and ``:meth:`` references in docstrings name modules and objects that
    exist (a renamed module leaves none behind)."""
    import re
    from pathlib import Path

    root = Path(riskprobe.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        for ref in re.findall(r":(?:mod|class|func|meth|data):`~?(riskprobe(?:\.\w+)+)`", path.read_text()):
            parts = ref.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                try:
                    for a in parts[i:]:
                        obj = getattr(obj, a)
                except AttributeError:
                    bad.append(f"{path.name}: {ref}")
                break
    assert not bad, bad
