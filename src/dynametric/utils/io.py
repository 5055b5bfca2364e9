"""Atomic file writes: a reader never sees a half-written checkpoint or output file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 minus the process umask (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _file_target(path: str | Path) -> Path:
    """``path`` as the target of a file write: its folder is created; a folder at ``path`` is an InputError."""
    from dynametric.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; expected the path of a file to write", file=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, str]]:
    """A temporary file beside ``path`` (open descriptor, name): when the block ends it gets the mode a plain
    ``open`` would give and atomically replaces ``path``; when the block raises it is removed and ``path`` is
    left untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        yield fd, tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and any existing ``path`` is left untouched.
    """
    with _replacing(_file_target(path)) as (fd, _tmp), os.fdopen(fd, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_with(path: str | Path, writer: Callable[[str], None]) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then atomically move it to ``path``.

    For libraries that insist on writing to a path themselves (``torch.save``, ``np.save``, faiss).
    """
    with _replacing(_file_target(path)) as (fd, tmp):
        os.close(fd)
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def require_new_folder(path: str | Path, key: str, hint: str) -> Path:
    """Refuse an output folder that would mix this tool's files with others': ``path`` must not exist, or be an
    empty folder. Nothing is created here. (A folder holding this tool's own earlier output is the caller's case.)
    """
    from dynametric.errors import InputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"exists and is not a folder ({key} names a folder)", file=path, key=key)
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"output folder is not empty and holds no {hint}; its files are not overwritten: "
                         f"use another {key} or an empty folder", file=path, key=key)
    return path
