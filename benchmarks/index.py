"""Write benchmarks/results/INDEX.md from benchmarks/results/index.yaml: every group of result files with the question
it answers, the command that made it, the commit that added it, the machine it ran on and the docs that cite it.

    python benchmarks/index.py            # rewrite INDEX.md (run after adding results and their index.yaml entry)
"""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MACHINES = {"cpu_": "2-core CPU", "h100_": "H100", "h200_": "H200"}


def entries() -> list[dict]:
    return yaml.safe_load((RESULTS / "index.yaml").read_text(encoding="utf-8"))


def files_of(entry: dict) -> list[str]:
    """The result files (relative to ``benchmarks/results``) an entry covers."""
    base = RESULTS / entry["folder"]
    out = []
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base).as_posix()
        if p.is_file() and any(fnmatch.fnmatch(rel, pat) for pat in entry["files"]):
            out.append(f"{entry['folder']}/{rel}")
    return out


def machine(files: list[str]) -> str:
    kinds = sorted({next((m for pre, m in MACHINES.items() if Path(f).name.startswith(pre)), "2-core CPU") for f in files
                    if not f.endswith(".md")})
    return ", ".join(kinds)


def commit(files: list[str]) -> str:
    """The commit that added the entry's first file (short hash)."""
    if not files:
        return ""
    r = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "--", f"benchmarks/results/{files[0]}"],
                       cwd=ROOT, capture_output=True, text=True)
    hashes = r.stdout.split()
    return hashes[-1] if hashes else "(uncommitted)"


def cited_by(entry: dict) -> list[str]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    keys = [pat.split("*")[0].rstrip("/") for pat in entry["files"]]
    keys = [k for k in keys if len(k) > 4]
    return [d.relative_to(ROOT).as_posix() for d in docs
            if any(k in d.read_text(encoding="utf-8") for k in keys) and entry["folder"] in d.read_text(encoding="utf-8")]


def render() -> str:
    lines = ["# Index of benchmarks/results", "",
             "Written by `python benchmarks/index.py` from `index.yaml`; each row is one group of result files. Fit runs'",
             "`metrics.json` files over 150 kB are gzipped (`zcat`).", "",
             "| folder | files | question | command | commit | machine | cited by |", "|---|---|---|---|---|---|---|"]
    for e in entries():
        fs = files_of(e)
        files = ", ".join(f"`{p}`" for p in e["files"])
        cites = ", ".join(f"[{c}](../../{c})" for c in cited_by(e)) or "-"
        question = e["question"] + (f" (**superseded**: {e['superseded_by']})" if e.get("superseded_by") else "")
        lines.append(f"| `{e['folder']}/` | {files} | {question} | {e['command']} | {commit(fs)} | {machine(fs)} | "
                     f"{cites} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (RESULTS / "INDEX.md").write_text(render(), encoding="utf-8")
    print(f"wrote {RESULTS / 'INDEX.md'}")
