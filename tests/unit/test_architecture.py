"""The stage rules of docs/architecture.md, held by reading every module's imports (those inside functions too):
no import cycle between riskprobe's modules, and no import against the direction the data flows."""

import ast
from pathlib import Path

import pytest

import riskprobe

ROOT = Path(riskprobe.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """``(riskprobe modules, third-party top-level packages)`` that module ``name`` imports anywhere in its body."""
    path = MODULES[name]
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    ours, theirs = set(), set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}  # annotations only, never run
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] != "riskprobe":
                theirs.add(t.split(".")[0])
                continue
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t != name:
                ours.add(t)
    return ours, theirs


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle among riskprobe's modules (a package's ``__init__`` importing its own modules excepted), or
    None."""
    edges = {m: {t for t in GRAPH[m][0] if not m.startswith(t + ".")} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    assert _cycle() is None, " -> ".join(_cycle() or [])


def _stage(m: str) -> str:
    return m.split(".")[1] if "." in m else ""


# (importing stage, what it may not import: riskprobe stages or modules, or third-party packages)
FORBIDDEN = [
    ("serving", {"riskprobe.training", "riskprobe.harvest"}),
    ("report", {"riskprobe.training", "riskprobe.serving"}),
    ("training", {"riskprobe.report", "riskprobe.serving"}),
    ("evaluation", {"riskprobe.training", "riskprobe.harvest.run", "riskprobe.harvest.extract",
                    "riskprobe.harvest.generations", "riskprobe.harvest.forced", "riskprobe.serving", "lightning"}),
    ("probes", {"riskprobe.training", "riskprobe.harvest", "riskprobe.serving", "lightning"}),
    ("models", {"riskprobe.probes", "riskprobe.training", "riskprobe.harvest", "riskprobe.serving"}),
    ("prompts", {"riskprobe.models", "riskprobe.harvest", "riskprobe.signatures", "torch"}),
    ("signatures", {"riskprobe.harvest", "riskprobe.training", "riskprobe.probes", "datasets"}),
    ("harvest", {"riskprobe.probes", "riskprobe.training", "riskprobe.serving", "riskprobe.report"}),
]


@pytest.mark.parametrize("stage, forbidden", FORBIDDEN, ids=[s for s, _ in FORBIDDEN])
def test_no_import_against_the_flow(stage, forbidden):
    bad = []
    for m, (ours, theirs) in GRAPH.items():
        if _stage(m) != stage:
            continue
        bad += [f"{m} imports {t}" for t in sorted(ours) if any(t == f or t.startswith(f + ".") for f in forbidden)]
        bad += [f"{m} imports {t}" for t in sorted(theirs) if t in forbidden]
    assert not bad, "; ".join(bad)


def test_training_reads_harvests_through_the_store_only():
    bad = [f"{m} imports {t}" for m, (ours, _) in GRAPH.items() if _stage(m) == "training"
           for t in ours if t.startswith("riskprobe.harvest") and t not in ("riskprobe.harvest.store",)]
    assert not bad, "; ".join(bad)


def test_the_rules_catch_a_planted_cycle_and_a_wrong_import(monkeypatch):
    """The checks above can fail: a planted edge is found."""
    monkeypatch.setitem(GRAPH, "riskprobe.fsutil", ({"riskprobe.errors", "riskprobe.harvest.store"}, set()))
    monkeypatch.setitem(GRAPH, "riskprobe.errors", ({"riskprobe.fsutil"}, set()))
    assert _cycle() is not None
    monkeypatch.setitem(GRAPH, "riskprobe.serving.scorer", ({"riskprobe.training.module"}, set()))
    with pytest.raises(AssertionError, match="serving.scorer imports riskprobe.training.module"):
        test_no_import_against_the_flow("serving", FORBIDDEN[0][1])


def test_no_module_over_450_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, long


# Private attributes of other libraries riskprobe still reads, each with its reason.
PRIVATE_ALLOWED = {("harvest/store.py", "_indices"): "datasets has no public test for a view with an indices mapping"}


def test_no_private_attribute_of_another_library():
    """An attribute that starts with one underscore and that riskprobe never defines belongs to a library (Lightning's
    ``_get``, ``_parser``, wandb logger's ``_wandb_init`` were such); each left is listed with its reason above."""
    defined, uses = set(), []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(n.name)
            elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
                defined.add(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                defined.add(n.id)
            elif isinstance(n, ast.arg):
                defined.add(n.arg)
        rel = path.relative_to(ROOT).as_posix()
        uses += [(rel, n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                 and n.attr.startswith("_") and not n.attr.startswith("__")]
    bad = sorted({u for u in uses if u[1] not in defined and u not in PRIVATE_ALLOWED})
    assert not bad, bad
