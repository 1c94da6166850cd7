"""Where riskprobe finds its shipped assets and the public sets: the one place that knows about paths.

Shipped assets travel inside the package (``riskprobe/assets``), so a plain ``pip install riskprobe``
has them wherever it runs: the built-in questions, the shipped configs and the shipped probe. A user's own
configs, runs and probes live wherever the user puts them (the repository's top-level ``configs/``,
``data/``, ``checkpoints/`` and ``runs/`` are such places).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CONFIG_KINDS = ("harvest", "fit")


def asset(*parts: str) -> Path:
    """A shipped file or folder, e.g. ``asset("probes", "default")``."""
    return Path(str(resources.files("riskprobe").joinpath("assets", *parts)))


def builtin_dir() -> Path:
    """The built-in question files (``RISKPROBE_DATA`` overrides, for a custom copy)."""
    env = os.environ.get("RISKPROBE_DATA")
    return Path(env) / "builtin" if env else asset("builtin")


def shipped_configs(kind: str) -> dict[str, Path]:
    """The shipped configs of one kind (``harvest`` or ``fit``) by name."""
    d = asset("configs", kind)
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve_config(kind: str, value: str | os.PathLike | None) -> Path | None:
    """A config given as a path, or as the name of a shipped one (``default``, ``raw_linear``...): an
    existing file wins; otherwise a shipped config of that name; otherwise the path as given (so that the
    reader reports it as not found)."""
    if value is None:
        return None
    p = Path(value)
    if p.is_file():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    shipped = shipped_configs(kind)
    if name in shipped and (p.parent == Path(".") or p.parts[-3:-1] == ("configs", kind)):
        return shipped[name]
    return p


def shipped_probe(name: str = "default") -> Path:
    """A shipped probe artifact's folder."""
    return asset("probes", name)


def checkout_root() -> Path | None:
    """The source checkout riskprobe runs from, when it does (an editable install), else ``None``."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def datasets_root(override: str | os.PathLike | None = None) -> Path | None:
    """The folder of the public labelled sets: ``override``, ``RISKPROBE_DATASETS``, else the first existing
    ``shared/datasets`` beside the working directory or beside the source checkout."""
    for cand in (override, os.environ.get("RISKPROBE_DATASETS")):
        if cand:
            return Path(cand)
    here = Path.cwd()
    cands = [here / "shared" / "datasets", here.parent / "shared" / "datasets"]
    root = checkout_root()
    if root is not None:
        cands.append(root.parent / "shared" / "datasets")
    for c in cands:
        if c.is_dir():
            return c
    return cands[-1]
