"""Subcommands of the ``dynametric`` CLI; each module has ``register(subparsers)``.

The ``type=`` checkers below make argparse refuse a count or size that cannot be meant (``--kmeans-restarts 0``,
``--memory-budget-mb -5``) with its one-line usage error instead of passing it on.
"""

from __future__ import annotations

import argparse
import math
import os
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
