"""User-facing errors.

A :class:`UserError` is a mistake in what the user gave us (a path, a config value, a line of a
file). The CLI prints it as one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input, reported as ``file:line: field 'x': message``.

    Args:
        message: what is wrong and, where possible, what to do about it.
        file: the file the mistake is in, if any.
        line: 1-based line number inside ``file``, if any.
        field: the name of the offending field or option, if any.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        fld = f"field '{self.field}': " if self.field else ""
        return f"{where}{fld}{self.message}"


def short(value, n: int = 60) -> str:
    """``repr(value)`` cut to ``n`` characters, for error messages that quote what the user gave."""
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


def check_version(found, supported: int, *, kind: str, file=None, field: str = "version") -> int:
    """The version of a file riskprobe wrote (a harvest manifest, a feature schema, a config, an artifact),
    checked on read: missing means 1 (files written before versions were recorded); a newer one than this
    riskprobe reads is refused with a clear message."""
    if found is None:
        return 1
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise UserError(f"{kind} version must be a positive integer, got {str(found)[:20]!r}", file=file, field=field)
    if found > supported:
        raise UserError(f"written by a newer riskprobe ({kind} version {found}; this riskprobe reads up to "
                        f"{supported}): upgrade riskprobe (pip install -U riskprobe)", file=file, field=field)
    return found
