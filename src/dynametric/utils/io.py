"""Atomic file writes: a reader never sees a half-written checkpoint or output file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 minus the process umask (mkstemp uses 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _file_target(path: str | Path, key: str | None = None) -> Path:
    """``path`` as the target of a file write: its folder is created; a folder at ``path`` is an InputError
    (naming ``key``, the option that named the path, when given)."""
    from dynametric.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; expected the path of a file to write", file=path, key=key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(exc, path, key) from None
    return path


def _write_error(exc: OSError, path: Path, key: str | None) -> BaseException:
    """An error of the file system while writing ``path``, naming ``path`` (never the temporary file beside it):
    with ``key`` an InputError ``<path> key '<key>': cannot write (<reason>)``, else the OSError with
    ``filename = path`` (the command line prints ``<path>: <reason>``)."""
    import errno

    from dynametric.errors import InputError

    reason = exc.strerror or str(exc)
    if key is None:
        return type(exc)(exc.errno, reason, str(path)) if exc.errno is not None else exc
    if exc.errno == errno.ENOSPC:
        reason += "; nothing was left half-written: outputs are written to a temporary file and renamed"
    return InputError(f"cannot write ({reason})", file=path, key=key)


TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = 8  # the length of tempfile.mkstemp's random part
_TEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # and its characters


def temp_target(name: str) -> str | None:
    """The file name whose atomic write a temporary file named ``name`` belongs to, or ``None`` when ``name`` is not
    such a temporary file: the one pattern :func:`_replacing` gets from ``tempfile.mkstemp``,
    ``.<target>.<8 random characters>.tmp`` (lower-case letters, digits, ``_``)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    stem = name[1:-len(TEMP_SUFFIX)]
    target, dot, middle = stem[:-_TEMP_RANDOM - 1], stem[-_TEMP_RANDOM - 1:-_TEMP_RANDOM], stem[-_TEMP_RANDOM:]
    if not target or dot != "." or len(middle) != _TEMP_RANDOM or not all(c in _TEMP_CHARS for c in middle):
        return None
    return target


def is_temp_of(name: str, target: str) -> bool:
    """Whether the file name ``name`` is a temporary file of an atomic write of ``target`` (a file name)."""
    return temp_target(name) == target


def is_stale_temp(entry: Path, targets: Callable[[str], bool]) -> bool:
    """Whether ``entry`` is what a killed atomic write of this tool leaves for a file name satisfying ``targets``: a
    regular file, not a link, named ``.<target>.<8 random characters>.tmp`` (:func:`temp_target`). The one test of
    every command that removes such files (or recognises a folder by them)."""
    target = temp_target(entry.name)
    return target is not None and targets(target) and entry.is_file() and not entry.is_symlink()


def remove_stale_temps(folder: Path, targets: Callable[[str], bool]) -> list[Path]:
    """Remove what a killed atomic write of this tool left in ``folder`` (a folder the tool owns): the files
    :func:`is_stale_temp` names for ``targets``. Nothing else is touched; returns the removed paths, sorted."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if is_stale_temp(entry, targets):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def holds_only_own_files(folder: Path, names: Collection[str], targets: Callable[[str], bool]) -> bool:
    """Whether ``folder`` holds files and every one of them is this tool's: a regular file (not a link) named in
    ``names``, or what a killed atomic write of a file satisfying ``targets`` leaves, exactly what
    :func:`remove_stale_temps` removes (:func:`is_stale_temp`). With no ``names``: a folder a first run of the
    command that owns those names was killed in before it wrote anything else, which that command may start again."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = list(folder.iterdir())
    return bool(entries) and all((entry.name in names and entry.is_file() and not entry.is_symlink())
                                 or is_stale_temp(entry, targets) for entry in entries)


def _is_own_failure(exc: OSError, path: Path, tmp: str | None) -> bool:
    """Whether ``exc`` is about writing ``path`` (its temporary file, the folder, the rename), not another file."""
    names = {exc.filename, exc.filename2} - {None}
    if not names:
        return True
    for name in names:
        base = os.path.basename(os.fspath(name))
        if os.fspath(name) in (tmp, str(path)) or is_temp_of(base, path.name) or Path(name) == path.parent:
            return True
    return False


@contextmanager
def _replacing(path: Path, key: str | None = None) -> Iterator[tuple[int, str]]:
    """A temporary file beside ``path`` (open descriptor, name): when the block ends it gets the mode a plain
    ``open`` would give and atomically replaces ``path``; when the block raises it is removed and ``path`` is
    left untouched. An error of the file system about the write names ``path`` (see :func:`_write_error`)."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        yield fd, tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if _is_own_failure(exc, path, tmp):
            raise _write_error(exc, path, key) from None
        raise
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, key: str | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and any existing ``path`` is left untouched. ``key``: the
    option that named ``path``, named in a write error (an InputError then).
    """
    with _replacing(_file_target(path, key), key) as (fd, _tmp), os.fdopen(fd, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_with(path: str | Path, writer: Callable[[str], None], *, key: str | None = None) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then atomically move it to ``path``.

    For libraries that insist on writing to a path themselves (``torch.save``, ``np.save``, faiss).
    """
    with _replacing(_file_target(path, key), key) as (fd, tmp):
        os.close(fd)
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str, *, key: str | None = None) -> None:
    with atomic_open(path, "w", encoding="utf-8", key=key) as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any, *, key: str | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", key=key)


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
