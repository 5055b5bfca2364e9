"""Is the process a lock or a run header names still running? Used by the folder lock (``utils/locks.py``: the run
folder's ``train.lock`` and the output folders' ``dynametric.lock``) and by the check of a run's ``config.yaml``
header (``pipeline/run.py``)."""

from __future__ import annotations

import os
from pathlib import Path


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
