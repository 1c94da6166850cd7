"""Small file-system helpers: atomic writes and content hashes.

Everything riskprobe writes goes through a temporary name in the same directory and is renamed into
place, so a crash never leaves a half-written file or folder behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .errors import UserError, short

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


RESULT_KEY = "riskprobe_result"  # what a result file riskprobe writes says it is (`eval-given --json` ...)


def write_result_json(path: str | Path, obj: dict, kind: str, *, option: str = "json") -> Path:
    """Write a command's result file (``--json FILE``) atomically, marked with ``kind``. An existing file is
    replaced only when it is such a result file of the same kind; a user's file is refused untouched."""
    path = check_result_path(path, kind, option=option)
    atomic_write_json(path, {RESULT_KEY: kind, **obj})
    return path


def check_result_path(path: str | Path, kind: str, *, option: str = "json") -> Path:
    """Refuse (before any work) a result path that holds anything but a riskprobe result file of ``kind``."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        ours = False
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= 64 << 20:
            try:
                ours = json.loads(path.read_text(encoding="utf-8")).get(RESULT_KEY) == kind
            except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
                ours = False
        if not ours:
            raise UserError(f"exists and is not a riskprobe {kind} result; choose another --{option} (riskprobe "
                            "replaces only a file it wrote)", file=path, field=option)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replace: bool | Callable[[Path], bool] = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced only when ``replace`` allows it: ``True`` (for folders riskprobe alone
    owns, such as a harvest's shards or the model cache) or a predicate that says the existing folder is
    one riskprobe wrote (see :func:`owned_dir`). Anything else, a file included, is refused with
    ``FileExistsError`` and left untouched. The old folder is swapped out by renames, then removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_dead_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            ok = replace(path) if callable(replace) else bool(replace)
            if not ok or path.is_symlink() or not path.is_dir():
                raise FileExistsError(path)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def clear_dead_temporaries(path: Path) -> None:
    """Remove the temporary folders that :func:`atomic_dir` made for ``path`` in a process that no longer runs (a
    killed export or report): they are named ``.NAME.pid<PID>.*.tmp``, so a live run's are never touched."""
    pat = re.compile(rf"^\.{re.escape(path.name)}\.pid(\d+)\..*\.tmp$")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        m = pat.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def swap_dir(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path`` by renames: an existing folder there (which the caller has checked
    is riskprobe's own) is renamed aside first and removed only after the new one is in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def owned_dir(allowed: Callable[[str], bool], *, folders: bool = False) -> Callable[[Path], bool]:
    """A ``replace`` predicate for :func:`atomic_dir`: the path is a real folder (no link) whose entries all
    have names that ``allowed`` accepts, and are plain files (or, with ``folders``, files and folders; never
    links), so that nothing of a user's can be lost with it."""

    def check(path: Path) -> bool:
        if path.is_symlink() or not path.is_dir():
            return False
        for e in os.scandir(path):
            kind_ok = e.is_file(follow_symlinks=False) or (folders and e.is_dir(follow_symlinks=False))
            if e.is_symlink() or not kind_ok or not allowed(e.name):
                return False
        return True

    return check


def move_aside(path: str | Path) -> Path:
    """Rename ``path`` to a free ``<name>.bak-<n>`` beside it (never deletes) and return the new name."""
    path = Path(path)
    n = 1
    while True:
        dest = path.with_name(f"{path.name}.bak-{n}")
        if not dest.exists() and not dest.is_symlink():
            os.replace(path, dest)
            return dest
        n += 1


def atomic_savefig(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` (PNG) through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def sha256_files(paths: list[str | Path], chunk: int = 1 << 22) -> str:
    """SHA-256 of the concatenation of ``paths`` (in the given order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def hash_order(items, key, seed=None) -> list:
    """``items`` in the order of the SHA-256 of ``f"{seed}:{key(item)}"`` (of ``key(item)`` without a seed): an order
    that depends on no file's order, so the first ``n`` are the same subsample on every machine and every run.

    >>> hash_order(["q1", "q2", "q3"], str) == hash_order(["q3", "q1", "q2"], str)
    True
    >>> hash_order(["q1", "q2", "q3"], str, seed=0) != hash_order(["q1", "q2", "q3"], str, seed=1)
    True
    """
    tag = key if seed is None else (lambda x: f"{seed}:{key(x)}")
    return sorted(items, key=lambda x: hashlib.sha256(tag(x).encode("utf-8")).hexdigest())


def stable_hash(text: str) -> str:
    """A short, stable hex digest of ``text`` (for ids and fingerprints)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class _NoAliasLoader(__import__("yaml").SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases (a few hundred bytes of aliases expand to GBs)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            ev = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in riskprobe files",
                                              ev.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges a mapping; PyYAML handles it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key, 40)} (first on "
                                                            f"line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
        return super().construct_mapping(node, deep)


def key_lines(text: str) -> dict[str, int]:
    r"""The 1-based line of every mapping key in a YAML document, by dotted path (``features.K``), so that a
    value checked after parsing can be reported where it stands.

    >>> key_lines("version: 1\nfeatures:\n  K: 4\n")
    {'version': 1, 'features': 2, 'features.K': 3}
    """
    return _node_lines(yaml.compose(text, Loader=_NoAliasLoader))


def _node_lines(root) -> dict[str, int]:
    """:func:`key_lines` of an already composed YAML node."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    path = prefix + k.value
                    lines.setdefault(path, k.start_mark.line + 1)
                    walk(v, path + ".")

    walk(root, "")
    return lines


MAX_CONFIG_BYTES = 1 << 20


def load_yaml(path: str | Path, text: str | None = None, *, with_lines: bool = False):
    """Parse a small YAML file safely: at most 1 MiB, no aliases, no duplicate keys; a bad file is a one-line
    UserError naming its line. With ``with_lines``, return ``(data, key_lines(text))``."""
    p = Path(path)
    if text is None:
        if not p.is_file():
            raise UserError("config file not found", file=p)
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config file is larger than {MAX_CONFIG_BYTES >> 20} MiB", file=p)
        text = read_text(p)
    loader = None
    try:  # composed once: the data and, when asked, the keys' lines
        loader = _NoAliasLoader(text)  # (the reader checks the characters here)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        return (data, _node_lines(node)) if with_lines else data
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        raise UserError(f"invalid YAML: {getattr(e, 'problem', None) or e}", file=p,
                        line=mark.line + 1 if mark else None) from None
    except RecursionError:
        raise UserError("invalid YAML: nested too deeply", file=p) from None
    finally:
        if loader is not None:
            loader.dispose()


def dump_yaml(data) -> str:
    """``data`` as block-style YAML that :func:`load_yaml` reads back (keys in the order given)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; a file that is not UTF-8 (or unreadable) is a one-line UserError."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"not a UTF-8 text file (byte {e.start}: {e.reason})", file=p) from None
    except IsADirectoryError:
        raise UserError("is a folder, expected a file", file=p) from None
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror})", file=p) from None


MAX_JSONL_LINE_BYTES = 1 << 20


def iter_jsonl(path: str | Path, *, max_line_bytes: int = MAX_JSONL_LINE_BYTES) -> Iterator[tuple[int, Any, str | None]]:
    """The lines of a JSONL file as ``(line number, object, problem)``; ``problem`` is ``None`` for a good line
    (a JSON object) and a short reason otherwise (not UTF-8, malformed, nested too deeply, too long, not an
    object), so that each caller decides whether a bad line fails or is skipped. Blank lines are skipped.
    A missing or unreadable file is a one-line UserError."""
    p = Path(path)
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise UserError("file not found", file=p) from None
    except IsADirectoryError:
        raise UserError("is a folder, expected a JSONL file", file=p) from None
    except OSError as e:
        raise UserError(f"cannot read ({e.strerror})", file=p) from None
    with f:
        n = 0
        while True:
            try:
                raw = f.readline(max_line_bytes + 1)
            except OSError as e:
                raise UserError(f"cannot read ({e.strerror})", file=p) from None
            if not raw:
                return
            n += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                    raw = f.readline(max_line_bytes + 1)
                yield n, None, f"line longer than {max_line_bytes >> 20} MiB"
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield n, None, f"not UTF-8 text (byte {e.start}: {e.reason})"
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield n, None, f"malformed JSON ({e.msg}, column {e.colno})"
                continue
            except RecursionError:
                yield n, None, "JSON nested too deeply"
                continue
            if not isinstance(obj, dict):
                yield n, None, "expected a JSON object"
                continue
            yield n, obj, None
