"""utils.processes: whether the process a lock names still runs, and when it started."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dynametric.utils.processes import process_alive, process_start, started_after


def test_a_running_and_an_ended_process() -> None:
    assert process_alive(os.getpid()) is True
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive(child.pid) is False  # reaped: its number is free


def test_a_process_started_after_a_file_was_written_is_not_its_writer() -> None:
    started = process_start(os.getpid())
    assert started is not None and abs(started - time.time()) < 3600 * 24 * 30
    assert started_after(os.getpid(), started - 10.0) is True  # the file is older than this process
    assert started_after(os.getpid(), time.time()) is False
    assert started_after(os.getpid(), None) is False  # unknown: taken as the writer
