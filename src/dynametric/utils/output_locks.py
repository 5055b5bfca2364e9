"""The lock file a command holds while it writes an output folder or file, so that two commands never write one
place at once: ``embed``, ``merge-embeddings``, ``index build`` and ``save_pretrained`` hold the folder's
:data:`LOCK_NAME`, ``export`` a ``.<file>.lock`` beside its file (:func:`target_lock_path`); all through
:func:`output_lock` (taken with :func:`~dynametric.utils.locks.acquire_lock`). A reader of a folder asks
:func:`folder_writer` whether a command writes it right now (:func:`being_written`: the line it says then).
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
from dynametric.utils.io import NAME_MAX, name_bytes
from dynametric.utils.locks import (
    Holder,
    LockBusy,
    LockContended,
    LockForeign,
    LockUnreadable,
    acquire_lock,
    holder_running,
    read_lock,
    same_folder,
)

LOCK_NAME = "dynametric.lock"
"""The lock file an ``embed``, ``merge-embeddings``, ``index build`` or ``save_pretrained`` holds in its output folder
while it writes there (:func:`output_lock`; created whole at once: ``format: dynametric-lock``, the command, its
process id and host, the folder it was taken for, a token); removed when the command ends."""
LOCK_FORMAT = "dynametric-lock"


def _dynametric_lock_of(out: Path) -> Callable[[Any], Holder | None]:
    """What reads ``out``'s :data:`LOCK_NAME` (:func:`~dynametric.utils.locks.read_lock`): the process it names,
    where its JSON is a lock of dynametric (:data:`LOCK_FORMAT`, an integer ``pid``). A lock records the folder it
    was taken for (``folder``, resolved; a lock without one counts as this folder's): one that a process of this
    host took for another folder (this folder was copied with ``cp -r`` while a command wrote the original) is
    :attr:`~dynametric.utils.locks.Holder.copied`, stale here, as a run folder's ``train.lock``. A lock of another
    host is never taken for a copy: its folder is a path of that host, which may reach this folder through another
    mount point (shared storage), so it counts as held as before."""
    here = out.resolve()
    this_host = socket.gethostname()

    def recognise(data: Any) -> Holder | None:
        if not (isinstance(data, dict) and data.get("format") == LOCK_FORMAT and isinstance(data.get("pid"), int)
                and not isinstance(data.get("pid"), bool)):
            return None
        host = str(data.get("host"))
        copied = host == this_host and "folder" in data and not same_folder(data["folder"], here)
        return Holder(data["pid"], host, copied=copied)

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


def being_written(out: Path) -> str | None:
    """What a reader of the folder ``out`` says where a command writes it right now (:func:`folder_writer`): ``is
    being written by <command> (process N) right now; wait for it to finish``; else ``None``."""
    writer = folder_writer(out)
    if writer is None:
        return None
    return f"is being written by {writer[0]} (process {writer[1]}) right now; wait for it to finish"


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
