"""The output folders of ``embed``, ``merge-embeddings`` and ``index build``, and the index folder's layout.

Every such command makes its ``--out`` folder (:func:`make_output_folder`) and holds its lock file
:data:`LOCK_NAME` (:func:`folder_lock`, taken with :func:`~dynametric.utils.locks.acquire_lock`) while it writes
there. An index folder holds :data:`INDEX_FILES` (``index.json`` last: :data:`INDEX_FORMAT`, :data:`INDEX_VERSION`)
and, while a build runs (and after one was killed), the build's marker :data:`BUILD_MARKER`;
:func:`check_build_folder` says whether a build may write into an existing folder. The index itself:
:mod:`dynametric.retrieval.index`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dynametric.errors import InputError
from dynametric.utils.io import (
    NAME_MAX,
    holds_only_own_files,
    is_stale_temp,
    name_bytes,
    replacement_mode,
    require_new_folder,
)
from dynametric.utils.locks import (
    Holder,
    LockBusy,
    LockContended,
    LockForeign,
    LockUnreadable,
    acquire_lock,
    holder_running,
    read_lock,
)
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


LOCK_NAME = "dynametric.lock"
"""The lock file an ``embed``, ``merge-embeddings`` or ``index build`` holds in its output folder while it writes there
(:func:`folder_lock`; created whole at once: ``format: dynametric-lock``, the command, its process id and host, the
folder it was taken for, a token); removed when the command ends."""
LOCK_FORMAT = "dynametric-lock"


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


def _dynametric_lock_of(out: Path) -> Callable[[Any], Holder | None]:
    """What reads ``out``'s :data:`LOCK_NAME` (:func:`~dynametric.utils.locks.read_lock`): the process it names,
    where its JSON is a lock of dynametric (:data:`LOCK_FORMAT`, an integer ``pid``). A lock records the folder it
    was taken for (``folder``, resolved; a lock without one counts as this folder's): one taken for another folder
    (this folder was copied with ``cp -r`` while a command wrote the original) is
    :attr:`~dynametric.utils.locks.Holder.copied`, stale here, as a run folder's ``train.lock``."""
    here = out.resolve()

    def recognise(data: Any) -> Holder | None:
        if not (isinstance(data, dict) and data.get("format") == LOCK_FORMAT and isinstance(data.get("pid"), int)
                and not isinstance(data.get("pid"), bool)):
            return None
        folder = data.get("folder", str(here))
        try:
            same = isinstance(folder, str) and (folder == str(here) or Path(folder).resolve() == here)
        except (OSError, RuntimeError, ValueError):  # a folder that cannot be resolved (a link loop) is not this one
            same = False
        return Holder(data["pid"], str(data.get("host")), copied=not same)

    return recognise


def folder_writer(out: Path) -> tuple[str, int] | None:
    """The command and process that hold ``out``'s :data:`LOCK_NAME` where that is another process still running on
    this host (:func:`~dynametric.utils.locks.holder_running`): a reader of the folder says it is being written
    rather than damaged or unfinished. ``None`` without one, for a stale or copied lock, one of another host (it
    cannot be asked) and one that cannot be read."""
    try:
        found = read_lock(out / LOCK_NAME, _dynametric_lock_of(out))
    except OSError:
        return None
    if found is None or found.holder is None or found.holder.host != socket.gethostname():
        return None
    if not holder_running(found, unaskable="stale"):
        return None
    return str(found.fields.get("command", "another command")), found.holder.pid


@contextmanager
def folder_lock(out: Path, command: str, key: str = "--out") -> Iterator[None]:
    """Hold the lock file of the folder ``out`` (it exists) while ``command`` (``embed``, ``index build``) writes
    there (:func:`~dynametric.utils.locks.acquire_lock`). Another command holding it (a process still running on this
    host, or one on another host, which cannot be asked) is one line keyed ``key``: ``<out> key '--out': the folder is
    being written by another embed (process N); ...``. A lock left by a process that ended (killed) is taken over; a
    file of that name that is no lock of dynametric is refused, never removed."""
    with output_lock(out / LOCK_NAME, out, command, key=key, what="the folder"):
        yield


def target_lock_path(target: Path) -> Path:
    """The lock file of the output file ``target`` (:func:`output_lock`), beside it: ``.<name>.lock`` (a name too long
    for that: ``.<digest of the name>.lock``)."""
    name = f".{target.name}.lock"
    if name_bytes(name) + 20 > NAME_MAX:  # room for the temporary files of taking it (.<name>.<8>.tmp)
        name = f".{hashlib.sha256(os.fsencode(target.name)).hexdigest()[:16]}.lock"
    return target.with_name(name)


@contextmanager
def output_lock(lock: Path, place: Path, command: str, *, key: str | None = "--out", what: str = "the folder",
                cannot_create: Callable[[OSError], BaseException] | None = None) -> Iterator[None]:
    """Hold the lock file ``lock`` (its folder exists) while ``command`` writes ``place`` (a folder, or one output
    file: ``export --out``, a ``save_pretrained`` folder). The lock records ``place`` (resolved): one naming another
    place was copied there and is stale (:func:`_dynametric_lock_of`). Another command holding it is one line keyed
    ``key`` (none: the line names no option): ``<place> key '--out': <what> is being written by another export
    (process N); wait for it to finish or use another --out``. A lock left by a process that ended is taken over; a
    file of that name that is no lock of dynametric is refused, never removed. Removed when the block ends. A lock
    that cannot be created (a folder that cannot be written): ``cannot_create`` of the ``OSError`` where given (the
    error the write itself would give), else ``cannot create the lock file``."""
    record = json.dumps({"format": LOCK_FORMAT, "command": command, "pid": os.getpid(),
                         "host": socket.gethostname(), "folder": str(place.resolve()),
                         "token": uuid.uuid4().hex}).encode()
    other = f"use another {key}" if key else "write to another place"
    try:
        held = acquire_lock(lock, record, recognise=_dynametric_lock_of(place), unaskable="live", foreign="refuse",
                            attempts=5)
    except LockBusy as exc:
        host = exc.holder.host
        where = "" if host == socket.gethostname() else f" on host {host}"
        raise InputError(f"{what} is being written by another {exc.lock.fields.get('command', 'command')} "
                         f"(process {exc.holder.pid}{where}); wait for it to finish or {other}"
                         + (f" (if that process is gone, remove {lock})" if where else ""), file=place,
                         key=key) from None
    except LockForeign as exc:
        if exc.being_written:  # perhaps an O_EXCL file whose process is writing it this moment
            raise InputError(f"{what} is being written by another command (its {lock.name} was just created); "
                             f"wait for it to finish or {other}", file=place, key=key) from None
        raise InputError(f"is not a lock file of dynametric ({LOCK_FORMAT}); it is not removed: move it away or "
                         f"{other}", file=lock, key=key) from None
    except LockContended:
        raise InputError(f"cannot take {what}'s lock {lock.name}: other commands keep taking it; wait for them to "
                         f"finish or {other}", file=place, key=key) from None
    except LockUnreadable as exc:
        raise InputError(f"cannot read the lock file ({exc.error.strerror or exc.error})", file=lock,
                         key=key) from None
    except OSError as exc:
        if cannot_create is not None:
            raise cannot_create(exc) from None
        raise InputError(f"cannot create the lock file {lock.name} ({exc.strerror or exc})", file=place,
                         key=key) from None
    with held:
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

