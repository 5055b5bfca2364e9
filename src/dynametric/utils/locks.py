"""One lock file per folder, held by one process at a time: the run folder's ``train.lock`` (``pipeline/run_folder.py``:
:func:`~dynametric.pipeline.run_folder.claim_run_folder`) and the output folders' ``dynametric.lock``
(``utils/output_locks.py``: :func:`~dynametric.utils.output_locks.output_lock`, also ``export``'s lock beside its
file) are all taken with :func:`acquire_lock`.

A lock file is JSON naming its process (``pid``) and that process's ``host``, created whole at once: a complete
temporary file of the atomic writer's name pattern (``.<lock name>.<8 random characters>.tmp``, so a kill's leftover
is known as this tool's) hard-linked to the lock's name, which fails where that name exists; where the file system
has no hard links, ``O_CREAT | O_EXCL`` and a write. A lock whose process ended (killed) is stale: it is renamed
aside under a name of the same pattern (of two processes finding it stale at once, one gets it), and removed, unless
what was moved is no longer that lock (another process took it over meanwhile: it is put back). The caller chooses
what a lock it cannot check counts as (``unaskable``: a process of another host, or where processes cannot be asked)
and what a file of that name that is not a lock of its kind counts as (``foreign``). A lock is released only while
the file still holds what this process wrote."""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from dynametric.utils.io import TEMP_SUFFIX, temp_prefix
from dynametric.utils.processes import process_alive, started_after

Policy = Literal["live", "stale"]
"""What a lock whose holder cannot be asked counts as: ``live`` (held: the acquirer is refused) or ``stale`` (taken
over)."""
Foreign = Literal["refuse", "stale", "empty_stale"]
"""What a file of the lock's name that is no lock of the caller's kind counts as: ``refuse`` (the acquirer is refused,
the file left as it is), ``stale`` (taken over) or ``empty_stale`` (refused, but an empty file last written
:data:`WRITING_S` or more ago is taken over: :func:`stale_empty`)."""
WRITING_S = 10.0
"""How long (seconds since it was last written) a file of the lock's name that is no lock of its kind may be one that
another process is writing this moment (created with ``O_EXCL``, not yet written): :attr:`LockForeign.being_written`."""
_READ_LIMIT = 1 << 20  # a lock file is a line of JSON: what lies beyond is not compared
# the locks this process holds or is taking, (path, the bytes it writes) -> how many times (the same bytes twice: two
# threads taking one lock with one record)
_HELD: Counter[tuple[str, bytes]] = Counter()


@dataclass(frozen=True)
class Holder:
    """The process a lock file names."""

    pid: int
    host: str
    copied: bool = False
    """The lock was taken for another folder (it was copied here with its folder, ``cp -r``, while that folder's
    process held it): its process holds that folder, not this one, so here it is stale."""


def same_folder(recorded: Any, here: Path) -> bool:
    """Whether the folder a lock records (``recorded``, as its process resolved it) is the folder ``here`` (resolved):
    the same path, the same path once resolved (a spelling through a symbolic link), or the same folder reached by
    another path (a bind mount: :func:`os.path.samefile`). A record that is not a text, or a folder that cannot be
    resolved or does not exist here, is not ``here``."""
    if not isinstance(recorded, str):
        return False
    if recorded == str(here):
        return True
    try:
        return Path(recorded).resolve() == here or os.path.samefile(recorded, here)
    except (OSError, RuntimeError, ValueError):  # missing here, a link loop, a NUL in the text
        return False


@dataclass(frozen=True)
class LockFile:
    """A lock file as read: its bytes, what its JSON says (``fields``; empty where it is not JSON of an object), the
    process it names (``holder``: ``None`` where the caller's ``recognise`` does not know it as a lock of its kind)
    and when it was last written."""

    path: Path
    raw: bytes
    fields: dict[str, Any]
    holder: Holder | None
    written: float


class LockRefused(Exception):
    """The lock file ``path`` was not acquired (the subclasses say why)."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


class LockBusy(LockRefused):
    """Another process holds the lock (it runs, or it cannot be asked and counts as live: ``unaskable="live"``):
    ``lock`` is the file found, ``holder`` the process it names."""

    def __init__(self, lock: LockFile, holder: Holder) -> None:
        super().__init__(lock.path)
        self.lock = lock
        self.holder = holder


class LockForeign(LockRefused):
    """A file of the lock's name is no lock of the caller's kind (``foreign="refuse"``; ``lock``, as read): it was
    left as it is. ``being_written``: it was last written less than :data:`WRITING_S` seconds ago (perhaps a lock
    another process created with ``O_EXCL`` and writes this moment)."""

    def __init__(self, lock: LockFile) -> None:
        super().__init__(lock.path)
        self.lock = lock
        self.being_written = time.time() - lock.written < WRITING_S


def stale_empty(lock: LockFile) -> bool:
    """Whether ``lock`` is an empty file last written :data:`WRITING_S` or more ago: what a process killed between
    creating its lock with ``O_EXCL`` (a file system without hard links) and writing it leaves; removing it loses
    nothing. (A younger empty file may be a lock being written this moment: :attr:`LockForeign.being_written`.)"""
    return not lock.raw and time.time() - lock.written >= WRITING_S


class LockContended(LockRefused):
    """Other processes kept taking the lock over in every try."""


class LockUnreadable(LockRefused):
    """A file of the lock's name is there but cannot be read (``error``: the ``OSError``, e.g. a folder of that
    name, or no permission): left as it is."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(path)
        self.error = error


def read_lock(path: Path, recognise: Callable[[Any], Holder | None]) -> LockFile | None:
    """The lock file ``path`` as read (:class:`LockFile`); ``None`` where there is none. ``recognise`` takes the
    file's JSON and returns the process it names, or ``None`` where it is no lock of the caller's kind (a
    ``KeyError``, ``TypeError`` or ``ValueError`` it raises counts as ``None``). A file that cannot be read is the
    ``OSError``."""
    try:
        with open(path, "rb") as fh:
            raw, written = fh.read(_READ_LIMIT), os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return LockFile(path, raw, {}, None, written)
    try:
        holder = recognise(data)
    except (KeyError, TypeError, ValueError):
        holder = None
    return LockFile(path, raw, data if isinstance(data, dict) else {}, holder, written)


def other_process_running(pid: int, host: str, written: float | None, *, unaskable: Policy) -> bool:
    """Whether process ``pid`` of ``host``, named in a file last written at ``written``, is another process still
    running: never this process; on this host while it lives, unless it started after the file was written (its
    number was reused: a reboot, a new container); a process that cannot be asked (of another host, or where the
    system cannot be asked) is running where ``unaskable`` is ``live``."""
    if host != socket.gethostname():
        return unaskable == "live"
    if pid == os.getpid():
        return False
    alive = process_alive(pid)
    if alive is None:
        return unaskable == "live"
    return alive and not started_after(pid, written)


def holder_running(lock: LockFile, *, unaskable: Policy) -> bool:
    """Whether the process ``lock`` names holds it (``lock.holder`` is not ``None``): another process still running
    (:func:`other_process_running`), or this process while it holds that very lock (:func:`acquire_lock`, not
    released); a lock of this process that it no longer holds is stale. ``False`` where it names no process."""
    holder = lock.holder
    if holder is None or holder.copied:
        return False
    if holder.host == socket.gethostname() and holder.pid == os.getpid():
        return _HELD[os.path.abspath(lock.path), lock.raw] > 0
    return other_process_running(holder.pid, holder.host, lock.written, unaskable=unaskable)


def _unhold(key: tuple[str, bytes]) -> None:
    _HELD[key] -= 1
    if _HELD[key] <= 0:
        del _HELD[key]


def _temp_name(path: Path) -> str:
    return f"{temp_prefix(path.name)}{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _create_excl(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return True


def _create(path: Path, data: bytes) -> bool:
    """Creates ``path`` holding ``data`` whole where no file of that name exists (see the module's docstring); False
    where one exists. The ``OSError`` of a folder that cannot be written."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            return _create_excl(path, data)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _set_aside(lock: LockFile) -> None:
    """Removes the stale ``lock``: renamed aside first, so that of two processes finding it stale at once one removes
    it; what was moved is put back where it is no longer that lock (another process took it over in between)."""
    aside = lock.path.with_name(_temp_name(lock.path))
    try:
        os.rename(lock.path, aside)
    except FileNotFoundError:
        return
    try:
        try:
            with open(aside, "rb") as fh:
                moved: bytes | None = fh.read(_READ_LIMIT)
        except OSError:
            moved = None
        if moved != lock.raw:
            try:
                os.link(aside, lock.path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here
                if moved is not None:
                    _create_excl(lock.path, moved)
    finally:
        aside.unlink(missing_ok=True)


@dataclass
class HeldLock:
    """A lock this process holds (:func:`acquire_lock`): the file and the bytes it wrote there. Released by
    :meth:`release`, or at the end of a ``with`` block."""

    path: Path
    raw: bytes
    released: bool = False

    def release(self) -> None:
        """Removes the lock file where it still holds what this process wrote (never another process's lock); once."""
        if self.released:
            return
        self.released = True
        _unhold((os.path.abspath(self.path), self.raw))
        try:
            with open(self.path, "rb") as fh:
                now = fh.read(_READ_LIMIT)
        except OSError:
            return
        if now == self.raw:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def acquire_lock(path: Path, record: bytes, *, recognise: Callable[[Any], Holder | None], unaskable: Policy,
                 foreign: Foreign, attempts: int = 8) -> HeldLock:
    """Takes the lock file ``path`` (its folder exists), writing ``record`` (JSON naming this process) there: created
    whole where none exists (see the module's docstring); a lock found there whose holder runs
    (:func:`holder_running`, ``unaskable`` for a holder that cannot be asked) raises :class:`LockBusy`, one whose
    holder is gone (or that was copied from another folder: :attr:`Holder.copied`) is taken over. A file that
    ``recognise`` (:func:`read_lock`) does not know as a lock is taken over where ``foreign`` is ``stale``, or is
    ``empty_stale`` and the file :func:`stale_empty`; else :class:`LockForeign`, the file untouched. After
    ``attempts`` tries that other processes won, :class:`LockContended`. A lock file found there that cannot be read:
    :class:`LockUnreadable`. A folder that cannot be written: the ``OSError``."""
    mine = (os.path.abspath(path), record)
    _HELD[mine] += 1  # before the lock exists: another thread of this process that finds it sees it held
    try:
        for _ in range(attempts):
            if _create(path, record):
                return HeldLock(path, record)
            try:
                found = read_lock(path, recognise)
            except OSError as exc:
                raise LockUnreadable(path, exc) from None
            if found is None:
                continue  # removed meanwhile: try again
            if found.holder is None:
                if foreign == "refuse" or (foreign == "empty_stale" and not stale_empty(found)):
                    raise LockForeign(found)
            elif holder_running(found, unaskable=unaskable):
                raise LockBusy(found, found.holder)
            _set_aside(found)
        raise LockContended(path)
    except BaseException:
        _unhold(mine)
        raise
