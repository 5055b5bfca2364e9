"""An atomic write keeps the permission bits of the file it replaces, refuses a file the user made read-only, and
gives a new file the umask's mode, read without changing the process umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dynametric.errors import InputError
from dynametric.utils import io as io_mod


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o700])
@pytest.mark.parametrize("writer", ["text", "bytes", "npy", "torch"])
def test_a_replaced_file_keeps_its_permission_bits(tmp_path: Path, mode: int, writer: str, umask_022) -> None:
    """A 0600 file replaced by `evaluate --json` / `export --out` became 0644 (world-readable)."""
    import numpy as np

    target = tmp_path / "o.json"
    target.write_text("old\n")
    target.chmod(mode)
    if writer == "text":
        io_mod.atomic_write_text(target, "new\n")
    elif writer == "bytes":
        io_mod.atomic_write_bytes(target, b"new\n")
    elif writer == "npy":
        io_mod.atomic_save_npy(target, np.zeros(3, dtype=np.float32))
    else:
        io_mod.atomic_torch_save(target, {"a": 1})
    assert _mode(target) == mode
    assert target.read_bytes() != b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


@pytest.mark.parametrize("mode", [0o444, 0o400, 0o044])
def test_a_file_its_owner_may_not_write_is_refused_and_left_as_it_was(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "o.json"
    target.write_text("mine\n")
    target.chmod(mode)
    try:
        with pytest.raises(InputError, match=rf"^{target} key '--json': is read-only \(mode {mode:04o}\); not "
                                             r"replaced: make it writable \(chmod u\+w\)"):
            io_mod.atomic_write_text(target, "new\n", key="--json")
        with pytest.raises(InputError, match=rf"^{target}: is read-only"):  # no option: the file alone
            io_mod.atomic_write_bytes(target, b"new\n")
        assert _mode(target) == mode
    finally:
        target.chmod(0o644)
    assert target.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]  # no temporary file either


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_umask_mode_and_the_umask_is_never_changed(tmp_path: Path, mask: int,
                                                                        monkeypatch) -> None:
    """The umask was read by setting it to 0 and back: a file another thread made meanwhile got mode 0666."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("the umask is read from /proc/self/status on Linux only")
    old = os.umask(mask)
    try:
        def no_umask(_mask: int) -> int:
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        io_mod.atomic_write_text(tmp_path / "new.txt", "x")
        io_mod.atomic_write_json(tmp_path / "new.json", {})
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.txt") == 0o666 & ~mask
    assert _mode(tmp_path / "new.json") == 0o666 & ~mask
