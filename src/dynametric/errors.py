"""Exception types. Every user-facing error names the file, line or key and what was expected."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path


class DynametricError(Exception):
    """Base class of all errors raised on purpose by dynametric (the CLI prints them without a traceback)."""


class InputError(DynametricError, ValueError):
    """Bad user input: a file, a row, a key or a tensor that does not have the expected form.

    ``InputError("expected 4 fields", file="a.csv", line=3)`` renders as ``a.csv:3: expected 4 fields``.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.key = key
        where = []
        if self.file is not None:
            where.append(self.file if line is None else f"{self.file}:{line}")
        elif line is not None:
            where.append(f"line {line}")
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


class ConfigError(InputError):
    """An invalid configuration key or value (names the dotted key and, where possible, the closest valid one)."""


class UnknownArgumentError(ConfigError):
    """A keyword argument that a class does not take: ``argument`` is the keyword, ``arguments`` the ones it takes
    (a config builder words it for the config key that gave it)."""

    def __init__(self, message: str, *, argument: str, arguments: Sequence[str]) -> None:
        super().__init__(message, key=argument)
        self.argument = argument
        self.arguments = tuple(arguments)


def first_sentence(exc: BaseException | str, limit: int = 300) -> str:
    """The first sentence of an exception's message, whole: its first line up to the first ``.``, ``!`` or ``?``
    followed by a space (a message of one long sentence is cut at a word boundary before ``limit`` characters and
    ends with ``...``). For quoting a library's message inside one of ours without cutting it mid-word."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    line = text.splitlines()[0].strip()
    for i, ch in enumerate(line[:-1]):
        if ch in ".!?" and line[i + 1].isspace():
            line = line[:i + 1]
            break
    if len(line) > limit:
        cut = line.rfind(" ", 0, limit)
        line = line[:cut if cut > 0 else limit].rstrip(" ,;:") + " ..."
    return line


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: ``sigterm``), stopped cleanly, with what the user can do next (``next_step``, e.g. how to
    resume); the CLI prints ``dynametric <command>: interrupted[ by SIGTERM] (<next_step>)`` and exits with status
    130 (143 for SIGTERM)."""

    def __init__(self, next_step: str | None = None, *, sigterm: bool = False) -> None:
        super().__init__(next_step or "")
        self.next_step = next_step
        self.sigterm = sigterm


def os_error_line(exc: OSError) -> str:
    """``<file>: <reason>`` for an error of the file system, naming the user's path (not a temporary one). An error
    that names no file (writing a stream: ``search > /dev/full``) is its reason alone: the note that nothing was left
    half-written holds for the files dynametric writes atomically, which the error names."""
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    reason = exc.strerror or str(exc)
    if name is None:
        return reason
    if exc.errno == errno.ENOSPC:
        reason += " (nothing was left half-written: outputs are written to a temporary file and renamed)"
    return f"{name}: {reason}"
