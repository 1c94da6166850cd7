"""Offline scoring of a JSONL file into another, resumable and safe for the files it is given."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsutil import iter_jsonl
from ..models.loader import LoadedModel
from ..progress import bar as progress_bar
from .scorer import Scorer, request_problem, token_problem

# ------------------------------------------------------------------------------------- offline JSONL
OUTPUT_KEYS = ("id", "risk", "flagged", "model")


ROW_START = b'{"id": '  # every output row starts so (json.dumps of a dict with "id" first)


def _same_request(row: dict[str, Any], req: dict[str, Any]) -> bool:
    """Whether an output row scored this request: the same prompt, and the same given response (or none)."""
    prompt = req.get("prompt", req.get("question"))
    if row.get("prompt", row.get("question")) != prompt:
        return False
    if req.get("response") is not None:
        return row.get("teacher_forced") is True and row.get("response") == req["response"]
    return row.get("teacher_forced") is False


def _done_ids(output: Path, requests: dict[str, dict[str, Any]]) -> set[str]:
    """Ids already scored in ``output``, for a resume (``requests``: this input's requests by id).

    The file is only ever touched when every complete line is a riskprobe output row (an object with
    ``id``, ``risk``, ``flagged`` and ``model``) for a request of this input, the same prompt and response
    under the same id; then a trailing partial line (a crash mid-write) is cut off. Any other file is refused,
    unchanged.
    """
    input_ids = set(requests)
    if not output.exists():
        return set()
    if output.is_dir():
        raise UserError("is a folder; --output must be a JSONL file", file=output, field="output")
    if not output.is_file():
        raise UserError("is not a regular file; --output must be a JSONL file", file=output, field="output")
    try:
        data = output.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror})", file=output, field="output") from None
    cut = data.rfind(b"\n") + 1
    n_complete = data[:cut].count(b"\n")
    done = set()
    for n, line in enumerate(data[:cut].splitlines(), 1):
        problem = None
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict) or any(k not in obj for k in OUTPUT_KEYS):
                problem = "is not a riskprobe output row"
            elif str(obj["id"]) not in input_ids:
                problem = f"scores id {str(obj['id'])[:40]!r}, which is not in this input"
            elif not _same_request(obj, requests[str(obj["id"])]):
                problem = (f"scores id {str(obj['id'])[:40]!r} for another prompt or response than this input gives "
                           "under that id")
        except (UnicodeDecodeError, ValueError, RecursionError):
            problem = "is not a riskprobe output row"
        if problem:
            raise UserError(f"{problem}; refusing to append to (or repair) a file riskprobe did not write for this "
                            "input. Choose another --output", file=output, line=n, field="output")
        done.add(str(obj["id"]))
    if cut < len(data):  # a partial last line, from a crash mid-write: the rest is verified above
        tail = data[cut:]
        ours = tail.startswith(ROW_START)
        if ours:  # the id, when the crash left it whole, must be one of this input's
            try:
                tid, _ = json.JSONDecoder().raw_decode(tail[len(ROW_START):].decode("utf-8", "replace"))
                ours = str(tid) in input_ids
            except ValueError:
                pass
        if not ours:
            raise UserError("ends with a line that is not the start of a riskprobe output row for this input; "
                            "refusing to change it. Choose another --output", file=output, line=n_complete + 1,
                            field="output")
        with open(output, "r+b") as f:
            f.truncate(cut)
    return done


def read_requests(path: Path, on_error: str, errors: list[str], *, quiet: bool = False) -> list[dict[str, Any]]:
    """The requests of a scoring input file, each with a string ``id`` (``line-N`` where none is given).

    A malformed line is skipped and recorded in ``errors`` (``on_error="skip"``) or fails the command
    (``"fail"``). Two lines with the same id are always an error naming both lines.
    """
    out: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for n, obj, problem in iter_jsonl(path):
        problem = problem or request_problem(obj)
        if problem:
            if on_error == "fail":
                raise UserError(problem, file=path, line=n)
            errors.append(f"{path}:{n}: {problem}")
            if not quiet:
                print(f"riskprobe: skipped {path}:{n}: {problem}", file=sys.stderr)
            continue
        obj["id"] = f"line-{n}" if obj.get("id") is None else str(obj["id"])
        if obj["id"] in first_line:
            raise UserError(f"duplicate id {obj['id'][:40]!r} (first on line {first_line[obj['id']]}); ids must be "
                            "unique so that a resumed run knows what is done", file=path, line=n, field="id")
        first_line[obj["id"]] = n
        out.append(obj)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_paths(input_path: str | Path, output_path: str | Path) -> tuple[Path, Path]:
    """The input must be a file; the output must not be the input, nor anything but a file (cheap checks,
    made before a model loads)."""
    inp, outp = Path(input_path), Path(output_path)
    if not inp.is_file():
        raise UserError("input file not found" if not inp.exists() else "is not a file", file=inp, field="input")
    if _same_file(inp, outp) or inp.resolve() == outp.resolve():
        raise UserError("--output is the input file; scoring writes a new file", file=outp, field="output")
    if outp.exists() and not outp.is_file():
        raise UserError("is not a file; --output must be a JSONL file", file=outp, field="output")
    return inp, outp


def _lock(fd: int, path: Path) -> None:
    """Hold an exclusive lock on the output while scoring into it: a second run on the same file is refused
    (two runs would score and append every row twice)."""
    try:
        import fcntl  # POSIX only, hence here
    except ImportError:  # pragma: no cover - not on POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError("another riskprobe run is scoring into this file; wait for it to finish (rerunning then "
                        "resumes) or choose another --output", file=path, field="output") from None


def append_all(fd: int, data: bytes, path: Path, *, done: int = 0) -> None:
    """Append ``data`` to the open file ``fd`` whole, and fsync it; if the disk (or a file size limit) takes only
    part of it, cut the file back to where it was and raise a UserError: no row is ever left half-written."""
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise OSError(28, "no space left on device")
            view = view[n:]
        os.fsync(fd)
    except OSError as e:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise UserError(f"could not write the scored rows ({e.strerror or e}: is the disk full, or a file size limit "
                        f"set?); the {done} rows written before are kept, and a rerun resumes after them",
                        file=path, field="output") from None


def score_file(scorer: Scorer, lm: LoadedModel, input_path: str | Path, output_path: str | Path, *,
               batch_size: int = 16, on_error: str = "skip", max_new_tokens: int = 33, progress: bool = True,
               allow_model_mismatch: bool = False) -> dict[str, Any]:
    """Score a JSONL file into another, resumable (ids already in the output are skipped).

    Each batch is appended with one write and fsynced; a line cut by a crash is dropped on resume. The
    output must be a new file or one this function wrote for the same input; anything else is refused.
    Returns counts: ``{"scored", "skipped_done", "failed", "errors", "seconds", "tokens"}``.
    """
    inp, outp = check_paths(input_path, output_path)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError("must be a positive integer", field="batch_size")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 4096:
        raise UserError("must be an integer from 1 to 4096", field="max_new_tokens")
    if on_error not in ("skip", "fail"):
        raise UserError("must be skip or fail", field="on_error")
    scorer.check_model(lm, allow_model_mismatch=allow_model_mismatch)
    errors: list[str] = []
    requests = read_requests(inp, on_error, errors)
    good = []
    for obj in requests:  # prompts that do not fit the model's context: the same rule as a malformed line
        problem = token_problem(lm, obj.get("prompt", obj.get("question")), obj.get("response"), max_new_tokens)
        if problem:
            if on_error == "fail":
                raise UserError(problem, file=inp, field="prompt")
            errors.append(f"{inp}: id {obj['id']}: {problem}")
            print(f"riskprobe: skipped {inp}: id {obj['id']}: {problem}", file=sys.stderr)
            continue
        good.append(obj)
    if not outp.parent.exists():
        outp.parent.mkdir(parents=True, exist_ok=True)
    created = not outp.exists()
    fd = os.open(outp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _lock(fd, outp)
        done = _done_ids(outp, {o["id"]: o for o in requests})
        stats = {"scored": 0, "skipped_done": 0, "failed": 0, "tokens": 0}
        ident = {"name": lm.identity.name, "fingerprint": lm.identity.fingerprint}
        t0 = time.perf_counter()
        todo = [o for o in good if o["id"] not in done]
        stats["skipped_done"] = len(good) - len(todo)
        bar = progress_bar(len(todo), "score", "row", enabled=progress)
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            res = scorer.score(lm, [o.get("prompt", o.get("question")) for o in batch],
                               [o.get("response") for o in batch], answer_kinds=[o.get("answer_kind", "alias") for o in batch],
                               max_new_tokens=max_new_tokens, allow_model_mismatch=allow_model_mismatch)
            lines = []
            for o, r in zip(batch, res):
                stats["tokens"] += r.pop("n_tokens")
                lines.append(json.dumps({"id": o["id"], **o, **r, "model": ident}, ensure_ascii=False) + "\n")
            append_all(fd, "".join(lines).encode("utf-8"), outp, done=stats["scored"])
            stats["scored"] += len(batch)
            bar.update(len(batch))
            bar.set_postfix(rows_s=f"{stats['scored'] / max(time.perf_counter() - t0, 1e-9):.2f}")
        bar.close()
    finally:
        os.close(fd)
        if created and outp.is_file() and outp.stat().st_size == 0:
            outp.unlink()  # nothing was scored into the file this run made: leave nothing behind
    stats.update(failed=len(errors), errors=errors, seconds=round(time.perf_counter() - t0, 3))
    return stats
