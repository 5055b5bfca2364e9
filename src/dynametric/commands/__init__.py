"""Subcommands of the ``dynametric`` CLI; each module has ``register(subparsers)``.

The ``type=`` checkers below make argparse refuse a count or size that cannot be meant (``--kmeans-restarts 0``,
``--memory-budget-mb -5``) with its one-line usage error instead of passing it on.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def path_arg(text: str) -> Path:
    """A file or folder argument, ``~`` / ``~user`` at its start expanded to the home folder. A shell expands it in a
    word of its own (``--out ~/emb``) but not after ``=`` (``--out=~/emb``) or inside quotes, where the command would
    otherwise write a folder named ``~`` in the working directory."""
    return Path(os.path.expanduser(text))


def path_text(text: str) -> str:
    """:func:`path_arg` as text, for the options read as strings (``-`` for stdout stays ``-``)."""
    return os.path.expanduser(text)


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


INT31_MAX = 2**31 - 1
"""The largest value an option that reaches faiss (a C ``int``) or a batch loop may take."""


def positive_int31(text: str) -> int:
    """:func:`positive_int` up to :data:`INT31_MAX`: for the options whose value goes to faiss (``index build
    --m``, ``--ef-search`` ...) or sizes a batch (``--batch-size``), where a larger one ended in a traceback."""
    return _int_from(text, 1, INT31_MAX)


def seed_int(text: str) -> int:
    """A k-means seed: an integer from 0 to :data:`~dynametric.metrics.clustering.KMEANS_SEED_MAX` (2**31 - 1)."""
    return _int_from(text, 0, INT31_MAX)


def _int_from(text: str, low: int, high: int) -> int:
    """``text`` as an integer from ``low`` to ``high``, else argparse's error saying that range."""
    value = _number(text, int, f"an integer from {low} to {high}")
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
    return int(value)


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _number(text: str, kind: type, what: str) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal: progress bars are drawn on stderr only then unless asked for (a log file or
    a pipe would get every redraw), as tqdm's ``disable=None`` and pip decide."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def refuse_closed_stdout(what: str) -> None:
    """Before any work, for a command whose results are printed on stdout: one error line where stdout is closed
    (``dynametric search ... >&-``; Python then has ``sys.stdout = None`` and ``print`` writes nowhere), naming what
    would be lost (``what``: ``"search prints its results there"``), instead of finishing with status 0 having
    said nothing."""
    from dynametric.errors import DynametricError

    if sys.stdout is None:
        raise DynametricError(f"standard output is closed; {what}")


def write_stdout(text: str) -> None:
    """``text`` on stdout, flushed: an error of the stream (``> /dev/full``: no space left on device) is one line
    that says it was standard output (the error names no file), a reader that left (a broken pipe) stays a
    ``BrokenPipeError`` (:func:`dynametric.cli.main` ends quietly). Nothing where stdout is closed (the commands
    whose results go there refuse that first: :func:`refuse_closed_stdout`)."""
    stream = sys.stdout
    if stream is None:
        return
    with _stdout_errors():
        # in pieces: one large write to a pipe its reader closed wrote what the pipe held and dropped the rest without
        # an error (BufferedWriter's partial write; `search --json | head` then exited 0, not 141)
        for start in range(0, len(text), _PIECE):
            stream.write(text[start:start + _PIECE])
        stream.flush()


_PIECE = 8192
"""The characters :func:`write_stdout` writes at a time."""


def flush_stdout() -> None:
    """Flush stdout (what the command printed and is still buffered), an error said as :func:`write_stdout` says
    it."""
    stream = sys.stdout
    if stream is None:
        return
    with _stdout_errors():
        stream.flush()


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    from dynametric.errors import DynametricError

    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise DynametricError(f"writing to standard output: {exc.strerror or exc}") from None
