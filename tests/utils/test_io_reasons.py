"""Why a file is not replaced: a read-only file system, another user's file and a file its owner protected are told
apart (``dynametric.utils.io.replacement_mode``); only the last gets the ``chmod u+w`` advice. Simulated with
monkeypatched ``os.statvfs`` / ``os.access`` / ``os.geteuid``: no root, no mount needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from dynametric.errors import InputError
from dynametric.utils import io as io_mod

pytestmark = pytest.mark.skipif(not hasattr(os, "geteuid") or not hasattr(os, "ST_RDONLY"), reason="POSIX only")


def _file(tmp_path: Path, mode: int) -> Path:
    target = tmp_path / "o.json"
    target.write_text("mine\n")
    target.chmod(mode)
    return target


def _world(monkeypatch: pytest.MonkeyPatch, *, read_only_fs: bool = False, writable: bool = True,
           euid: int | None = None) -> None:
    """The answers of the system: the file system's mount flags, ``access(W_OK)``, the effective user id."""
    real_statvfs = os.statvfs

    def statvfs(path: object) -> object:
        real = real_statvfs(path)  # type: ignore[arg-type]
        flag = real.f_flag | os.ST_RDONLY if read_only_fs else real.f_flag & ~os.ST_RDONLY
        return SimpleNamespace(f_flag=flag, f_bavail=real.f_bavail)

    monkeypatch.setattr(os, "statvfs", statvfs)
    monkeypatch.setattr(os, "access", lambda path, how, **kw: writable)
    if euid is not None:
        monkeypatch.setattr(os, "geteuid", lambda: euid)


def _refused(target: Path, match: str) -> str:
    with pytest.raises(InputError, match=match) as err:
        io_mod.atomic_write_text(target, "new\n", key="--out")
    assert target.read_text() == "mine\n"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporary file
    message = str(err.value)
    assert message.startswith(f"{target} key '--out': ") and "\n" not in message
    return message


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o444])
def test_a_file_on_a_read_only_file_system_is_said_to_be_on_one_not_told_to_chmod(tmp_path: Path, monkeypatch,
                                                                                   mode: int) -> None:
    """Was: `embed.json key '--out': is read-only (mode 0644); not replaced: make it writable (chmod u+w)`: 0644 is
    writable by its owner, and no chmod helps on a read-only mount."""
    target = _file(tmp_path, mode)
    _world(monkeypatch, read_only_fs=True, writable=False, euid=target.stat().st_uid)
    message = _refused(target, "is on a read-only file system; not replaced: write to another path")
    assert "chmod" not in message and "(mode" not in message


@pytest.mark.parametrize("mode", [0o644, 0o444])
def test_another_users_file_this_user_may_not_write_is_said_to_be_theirs(tmp_path: Path, monkeypatch,
                                                                         mode: int) -> None:
    target = _file(tmp_path, mode)
    owner = target.stat().st_uid
    _world(monkeypatch, writable=False, euid=owner + 1)  # another user, not root
    message = _refused(target, rf"belongs to another user \((\S+, )?uid {owner}; mode {mode:04o}\) and this user "
                               r"may not write it; not replaced: write to another path, or have its owner make it")
    assert "chmod" not in message


@pytest.mark.parametrize("euid", ["owner", 0])
def test_a_file_its_owner_protected_gets_the_chmod_advice(tmp_path: Path, monkeypatch, euid: object) -> None:
    target = _file(tmp_path, 0o444)
    _world(monkeypatch, writable=euid == 0, euid=target.stat().st_uid if euid == "owner" else 0)
    _refused(target, r"is read-only \(mode 0444\); not replaced: make it writable \(chmod u\+w\)")


def test_an_own_writable_mode_the_system_still_denies_is_said_so_without_chmod(tmp_path: Path, monkeypatch) -> None:
    target = _file(tmp_path, 0o644)  # an immutable attribute (chattr +i) or an access control list
    _world(monkeypatch, writable=False, euid=target.stat().st_uid)
    message = _refused(target, r"may not be written by this process \(mode 0644: ")
    assert "chmod" not in message and "another user" not in message and "file system" not in message


@pytest.mark.parametrize(("mode", "euid"), [(0o664, "other"), (0o644, 0)])
def test_another_users_file_this_user_may_write_is_replaced_keeping_its_mode(tmp_path: Path, monkeypatch,
                                                                             mode: int, euid: object) -> None:
    target = _file(tmp_path, mode)
    owner = target.stat().st_uid
    _world(monkeypatch, writable=True, euid=0 if euid == 0 else owner + 1)
    io_mod.atomic_write_text(target, "new\n", key="--out")
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == mode


def test_embed_overwrite_on_a_read_only_file_system_names_it(tmp_path: Path, monkeypatch) -> None:
    """The QA case: `embed --overwrite --out ro/emb` asks every file of the job before anything is done."""
    from dynametric.retrieval.embed import check_job_replaceable

    emb = tmp_path / "emb"
    emb.mkdir()
    for name in ("embed.json", "items.csv"):
        (emb / name).write_text("x\n")
    _world(monkeypatch, read_only_fs=True, writable=False, euid=(emb / "embed.json").stat().st_uid)
    with pytest.raises(InputError) as err:
        check_job_replaceable(emb)
    assert str(err.value) == (f"{emb / 'embed.json'} key '--out': is on a read-only file system; not replaced: write "
                              "to another path (or mount the file system read-write)")
