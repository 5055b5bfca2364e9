"""A disk that fills up, for the tests of the atomic writers (``dynametric.utils.io``): the files they open with
``os.fdopen`` take ``budget`` bytes in all, then each write fails as a full disk's does."""

from __future__ import annotations

import errno
import io
import os
from typing import Any

import pytest


class _FillingRaw(io.RawIOBase):
    """A raw file on ``fd`` that writes what is left of the shared ``budget``, a short write at the edge, then raises
    ``OSError(ENOSPC)`` (what ``write(2)`` does on a full disk)."""

    def __init__(self, fd: int, budget: list[int]) -> None:
        self._fd, self._budget = fd, budget

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        if self._budget[0] <= 0 and len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(self._fd, data[:self._budget[0]])
        self._budget[0] -= n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def fill_up_after(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """From now on the files ``os.fdopen`` opens for writing (those of ``atomic_open``) take ``budget`` bytes in all;
    then the disk is full."""
    left = [budget]
    real = os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" not in mode:
            return real(fd, mode, *args, **kwargs)
        raw = io.BufferedWriter(_FillingRaw(fd, left))
        if "b" in mode:
            return raw
        return io.TextIOWrapper(raw, encoding=kwargs.get("encoding"), newline=kwargs.get("newline"))

    monkeypatch.setattr(os, "fdopen", fdopen)


def fail_writes_of(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """From now on the temporary file of every atomic write of a file named ``name`` (``.<name>.XXXXXXXX.tmp``, made
    by ``tempfile.mkstemp``) is on a full disk: its first write fails with ``OSError(ENOSPC)``; every other file is
    written as usual. Returns the temporary files that failed (their paths), as they fail."""
    import tempfile

    names: dict[int, str] = {}
    failed: list[str] = []
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, path = real_mkstemp(*args, **kwargs)
        names[fd] = path
        return fd, path

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = names.pop(fd, "")
        if "w" not in mode or not os.path.basename(path).startswith(f".{name}."):
            return real_fdopen(fd, mode, *args, **kwargs)
        failed.append(path)
        raw = io.BufferedWriter(_FillingRaw(fd, [0]))
        if "b" in mode:
            return raw
        return io.TextIOWrapper(raw, encoding=kwargs.get("encoding"), newline=kwargs.get("newline"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return failed
