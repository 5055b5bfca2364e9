"""The output folders of ``embed``, ``merge-embeddings`` and ``index build``, and the index folder's layout.

Every such command makes its ``--out`` folder (:func:`make_output_folder`) and holds its lock file
:data:`LOCK_NAME` (:func:`folder_lock`, taken with :func:`~dynametric.utils.locks.acquire_lock`) while it writes
there. An index folder holds :data:`INDEX_FILES` (``index.json`` last: :data:`INDEX_FORMAT`, :data:`INDEX_VERSION`)
and, while a build runs (and after one was killed), the build's marker :data:`BUILD_MARKER`;
:func:`check_build_folder` says whether a build may write into an existing folder. The index itself:
:mod:`dynametric.retrieval.index`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dynametric.errors import InputError
from dynametric.utils.io import (
    holds_only_own_files,
    is_stale_temp,
    replacement_mode,
    require_new_folder,
)
from dynametric.utils.output_locks import LOCK_NAME, output_lock
from dynametric.utils.readers import read_regular_bytes

INDEX_FORMAT = "dynametric-index"
INDEX_VERSION = 2
"""2: ``index.json`` records the input transform (``transform``, :class:`InputTransform`); an index of version 1
(none) is searched as it was built."""
INDEX_FILES = ("index.faiss", "items.csv", "labels.npy", "index.json")
BUILD_MARKER = "index.build.json"
"""Written first by every build (``format: dynametric-index-build``, the files it writes) and removed once
``index.json`` is written: a folder a build was killed in is recognised by it, and built into again."""
BUILD_FORMAT = "dynametric-index-build"


def make_output_folder(out: Path, key: str) -> Path:
    """Create the output folder ``out`` (and the folders above it); a folder that cannot be made is one line naming
    it and ``key``: ``ro/emb key '--out': cannot create the folder (Permission denied)``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        folder = Path(exc.filename) if exc.filename is not None else out
        raise InputError(f"cannot create the folder ({exc.strerror or exc})", file=folder, key=key) from None
    return out


def other_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` but the lock file (:data:`LOCK_NAME`) and what a kill while it was taken may leave
    beside it (the temporary file it is made from, ``.dynametric.lock.<8 characters>.tmp``)."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME and not is_stale_temp(p, LOCK_NAME.__eq__)]


@contextmanager
def folder_lock(out: Path, command: str, key: str = "--out") -> Iterator[None]:
    """Hold the lock file of the folder ``out`` (it exists) while ``command`` (``embed``, ``index build``) writes
    there (:func:`~dynametric.utils.locks.acquire_lock`). Another command holding it (a process still running on this
    host, or one on another host, which cannot be asked) is one line keyed ``key``: ``<out> key '--out': the folder is
    being written by another embed (process N); ...``. A lock left by a process that ended (killed) is taken over; a
    file of that name that is no lock of dynametric is refused, never removed."""
    with output_lock(out / LOCK_NAME, out, command, key=key, what="the folder"):
        yield


def _is_build_file(name: str) -> bool:
    """A file a build writes atomically: the index's own files and its marker."""
    return name in INDEX_FILES or name == BUILD_MARKER


def _is_build_or_lock_file(name: str) -> bool:
    """A build's file (:func:`_is_build_file`) or the folder's lock file: a folder is the build's also while it
    holds the temporary file another build's lock attempt makes (``.dynametric.lock.<8 characters>.tmp``, there
    between its creation and its removal, or left by a kill at that moment). Only recognised, never removed by a
    build: it may be another process's lock being taken."""
    return _is_build_file(name) or name == LOCK_NAME


def _build_files(out: Path) -> set[str]:
    """The files of an interrupted build in ``out`` by its marker (:data:`BUILD_MARKER`, a regular file saying
    ``format: dynametric-index-build``): the marker and the index files it lists; empty without one."""
    marker = out / BUILD_MARKER
    if marker.is_symlink() or not marker.is_file():
        return set()
    try:
        meta = json.loads(read_regular_bytes(marker).decode("utf-8"))
    except (OSError, ValueError, RecursionError, InputError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != BUILD_FORMAT or not isinstance(meta.get("files"), list):
        return set()
    return {BUILD_MARKER, *(name for name in meta["files"] if name in INDEX_FILES)}


def check_build_folder(out: Path, key: str = "--out") -> None:
    """Whether a build may write into the existing folder ``out``, asked before anything is written there (by
    ``index build`` before the embeddings are read, and again under the folder's lock): an earlier index is replaced,
    and a folder holding only what a first build killed before ``index.json`` left (its marker and the files it
    names, the temporary files of its atomic writes); any other non-empty folder is refused (the lock file and the
    temporary files of lock attempts aside: :func:`_is_build_or_lock_file`), so is a :data:`BUILD_MARKER` that is
    not a build's. Every file the build replaces or removes (:data:`INDEX_FILES`, the marker) must be one it may
    replace: a read-only one (``chmod 444``) is one line keyed ``key`` (:func:`~dynametric.utils.io.replacement_mode`),
    the folder left as it was."""
    if not out.is_dir():
        return
    if not _is_index_folder(out) and not holds_only_own_files(out, {*_build_files(out), LOCK_NAME},
                                                              _is_build_or_lock_file):
        require_new_folder(out, key, "dynametric index (index.json)")
    marker = out / BUILD_MARKER
    if (marker.exists() or marker.is_symlink()) and not _build_files(out):  # beside an earlier index
        raise InputError(f"is not the marker of a dynametric index build (format {BUILD_FORMAT!r}), and it is not "
                         f"overwritten: move it away or use another {key}", file=marker, key=key)
    for name in (BUILD_MARKER, *INDEX_FILES):  # the marker and index.faiss are written first, labels.npy may go
        replacement_mode(out / name, key)


def _is_index_folder(out: Path) -> bool:
    try:  # an index.json that is a FIFO or a device (/dev/zero) is no index's, and is not read
        return json.loads(read_regular_bytes(out / "index.json").decode("utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError, InputError):
        return False

