"""benchmarks/results is indexed: every result file belongs to an entry of index.yaml, every entry holds a file, and
INDEX.md lists every entry."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_index", ROOT / "benchmarks" / "index.py")
index = importlib.util.module_from_spec(spec)
spec.loader.exec_module(index)


def test_every_result_file_is_indexed_and_every_entry_holds_files():
    results = ROOT / "benchmarks" / "results"
    covered = set()
    for e in index.entries():
        fs = index.files_of(e)
        assert fs, f"index entry {e['folder']} {e['files']} matches no file"
        covered |= set(fs)
    on_disk = {p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()}
    on_disk -= {"index.yaml", "INDEX.md"}
    assert not on_disk - covered, f"result files without an index entry: {sorted(on_disk - covered)[:10]}"


def test_the_written_index_lists_every_entry():
    text = (ROOT / "benchmarks" / "results" / "INDEX.md").read_text()
    for e in index.entries():
        assert e["question"] in text
