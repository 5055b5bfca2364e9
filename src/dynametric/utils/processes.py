"""Processes: is the process a lock or a run header names still running? Used by the folder lock
(``utils/locks.py``: the run folder's ``train.lock`` and the output folders' ``dynametric.lock``) and by the check of
a run's ``config.yaml`` header (``pipeline/run_folder.py``). And :func:`callers_start_method`: the caller's unset
``multiprocessing`` start method left unset by training and embedding."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dynametric.utils.shared import SharedSetting


def process_alive(pid: int) -> bool | None:
    """Whether process ``pid`` of this machine exists: ``True`` also for another user's process; ``None`` where it
    cannot be asked without harm (not POSIX: ``os.kill(pid, 0)`` would end the process on Windows)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError, ValueError):  # OverflowError: a number no process can have (a damaged lock)
        return False
    return True


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where the system says (Linux ``/proc``), else
    ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime (after the command in parentheses)
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def started_after(pid: int, written: float | None) -> bool:
    """Whether process ``pid`` started after a file was last written at ``written`` (so it is not the process that
    wrote it: its number was reused, after a reboot or in a new container); ``False`` when either time is
    unknown. 2 s of slack for the clock ticks' rounding."""
    started = process_start(pid)
    return written is not None and started is not None and started > written + 2.0


_START_METHOD = SharedSetting()
"""The caller's unset start method, shared by the calls inside :func:`callers_start_method` (from several threads:
the first one in looks, the last one out unsets)."""


def _unset_again_later() -> Callable[[], None] | None:
    """How to unset the start method again if it is unset now (``None``: the caller set one, which stays)."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) is not None:
        return None
    return lambda: multiprocessing.set_start_method(None, force=True)


def callers_start_method() -> contextlib.AbstractContextManager[None]:
    """A start method of ``multiprocessing`` left unset by the caller is unset again on the way out (a return or an
    exception). Starting loader workers (torch's DataLoader) or asking for the start method
    (``multiprocessing.get_start_method()``, which Lightning's trainer does) fixes the default one for the rest of
    the process, and a later ``multiprocessing.set_start_method("spawn")`` of the caller's raised ``context has
    already been set``. ``set_start_method(None, force=True)`` is the standard library's way to unset it; workers
    already started keep their own context. A method the caller set stays as it is. Overlapping calls from several
    threads share one save and restore (:class:`~dynametric.utils.shared.SharedSetting`: the first in looks, the
    last out unsets)."""
    return _START_METHOD.held(_unset_again_later)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs, then delivered to the handlers that were in place (in the
    main thread only; elsewhere, and for a handler that is not Python's, nothing changes). For a write that an
    exception must not cut in two: a Ctrl-C or SIGTERM in the middle of ``torch.save`` raised inside its zip
    writer, whose clean-up then failed (``RuntimeError: ... unexpected pos``), so the run ended with status 1 and
    that line instead of the interrupt's status and resume hint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[signal.Signals, Any] = {}

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # a Python handler: it raises or acts; held until the block ends
            previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(received):  # each signal once, in the order it came
            signal.raise_signal(signum)
