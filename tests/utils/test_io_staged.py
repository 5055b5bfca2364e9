"""``dynametric.utils.io.StagedFiles``: the files of a folder written aside, then renamed in the caller's order, what
was not renamed removed on leaving it. The index build, the merge of embedding jobs and ``save_pretrained`` use it."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from dynametric.utils import io as io_mod
from dynametric.utils.io import StagedFiles
from tests.disk import fail_writes_of


class _Killed(BaseException):
    """A failure that is no Exception (a kill, Ctrl-C): the clean-up on leaving still runs."""


def _folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _old(folder: Path) -> dict[str, bytes]:
    """An earlier write's files in ``folder``."""
    for name in ("a.txt", "b.npy", "c.json", "gone.npy"):
        (folder / name).write_bytes(f"old {name}".encode())
    return _folder(folder)


def _recorded_renames(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    renames: list[str] = []
    real = io_mod.commit_staged

    def commit(tmp: str, path: str | Path, **kwargs: object) -> None:
        real(tmp, path)
        renames.append(Path(path).name)

    monkeypatch.setattr(io_mod, "commit_staged", commit)
    return renames


def test_renames_in_the_given_order_with_the_hooks_at_their_place(tmp_path: Path, monkeypatch) -> None:
    _old(tmp_path)
    renames = _recorded_renames(monkeypatch)
    seen: list[tuple[str, str, dict[str, bytes]]] = []
    with StagedFiles() as staged:
        staged.write("unfinished", tmp_path / "c.json", b"unfinished c")  # two stages of one target
        staged.write("a.txt", tmp_path / "a.txt", b"new a")
        with staged.open("b.npy", tmp_path / "b.npy") as fh:
            fh.write(b"new ")
            fh.write(b"b")
        staged.write("c.json", tmp_path / "c.json", b"complete c")
        assert renames == [] and _folder(tmp_path)["a.txt"] == b"old a.txt"  # nothing renamed while staging
        staged.commit(("unfinished", "b.npy", "gone.npy", "a.txt", "c.json"),
                      renamed=lambda name: seen.append(("renamed", name, _folder(tmp_path))),
                      absent=lambda name: seen.append(("absent", name, _folder(tmp_path))))
    assert renames == ["c.json", "b.npy", "a.txt", "c.json"]  # the given order, not the order of staging
    assert [(what, name) for what, name, _ in seen] == [("renamed", "unfinished"), ("renamed", "b.npy"),
                                                      ("absent", "gone.npy"), ("renamed", "a.txt"),
                                                      ("renamed", "c.json")]
    # each hook runs right after its rename (or at its name's place), before the next rename
    assert seen[0][2]["c.json"] == b"unfinished c" and seen[0][2]["b.npy"] == b"old b.npy"
    assert seen[1][2]["b.npy"] == b"new b" and seen[1][2]["a.txt"] == b"old a.txt"
    assert seen[2][2]["a.txt"] == b"old a.txt" and seen[2][2]["c.json"] == b"unfinished c"
    assert seen[3][2]["a.txt"] == b"new a" and seen[3][2]["c.json"] == b"unfinished c"
    assert _folder(tmp_path) == {"a.txt": b"new a", "b.npy": b"new b", "c.json": b"complete c",
                                 "gone.npy": b"old gone.npy"}  # an absent name is the hook's to act on, no more


def test_staged_files_get_the_mode_of_the_file_they_replace(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"old")
    (tmp_path / "a.txt").chmod(0o640)
    with StagedFiles() as staged:
        staged.write("a.txt", tmp_path / "a.txt", b"new")
        with staged.open("t.txt", tmp_path / "t.txt", "w", encoding="utf-8") as fh:
            fh.write("text é")
        staged.commit(("a.txt", "t.txt"))
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert (tmp_path / "t.txt").read_bytes() == "text é".encode()
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == io_mod._umask_mode()


@pytest.mark.parametrize("how", ["full disk", "raise in open", "raise after writes"])
def test_a_failure_among_the_writes_leaves_no_temporary_file_and_renames_nothing(tmp_path: Path, monkeypatch,
                                                                               how: str) -> None:
    before = _old(tmp_path)
    renames = _recorded_renames(monkeypatch)
    failed = fail_writes_of(monkeypatch, "b.npy") if how == "full disk" else []
    with pytest.raises((OSError, _Killed)) as info, StagedFiles() as staged:
        staged.write("a.txt", tmp_path / "a.txt", b"new a")
        with staged.open("b.npy", tmp_path / "b.npy") as fh:
            fh.write(b"half of b")
            if how == "raise in open":
                raise _Killed
        staged.write("c.json", tmp_path / "c.json", b"new c")
        if how == "raise after writes":
            raise _Killed
        staged.commit(("a.txt", "b.npy", "c.json"))
    if how == "full disk":
        assert len(failed) == 1 and info.value.errno == errno.ENOSPC  # type: ignore[union-attr]
        assert info.value.filename == str(tmp_path / "b.npy")  # type: ignore[union-attr]  # the target
    assert renames == []
    assert _folder(tmp_path) == before  # the earlier files as they were, and no temporary file


def test_a_failure_between_the_renames_keeps_those_done_and_discards_the_rest(tmp_path: Path, monkeypatch) -> None:
    _old(tmp_path)
    real = io_mod.commit_staged
    renames: list[str] = []

    def commit(tmp: str, path: str | Path, **kwargs: object) -> None:
        if Path(path).name == "a.txt":
            raise _Killed
        real(tmp, path)
        renames.append(Path(path).name)

    monkeypatch.setattr(io_mod, "commit_staged", commit)
    after: list[str] = []
    with pytest.raises(_Killed), StagedFiles() as staged:
        for name in ("c.json", "b.npy", "a.txt"):
            staged.write(name, tmp_path / name, f"new {name}".encode())
        staged.commit(("c.json", "a.txt", "b.npy"), renamed=after.append)
    assert renames == ["c.json"] and after == ["c.json"]  # nothing after the failed rename
    assert _folder(tmp_path) == {"a.txt": b"old a.txt", "b.npy": b"old b.npy", "c.json": b"new c.json",
                                 "gone.npy": b"old gone.npy"}  # and no temporary file of a.txt or b.npy


def test_leaving_without_a_commit_discards_everything_through_discard_staged(tmp_path: Path, monkeypatch) -> None:
    before = _old(tmp_path)
    discarded: list[list[str]] = []
    real = io_mod.discard_staged
    monkeypatch.setattr(io_mod, "discard_staged", lambda tmps: (discarded.append(list(tmps)), real(tmps)))
    with StagedFiles() as staged:
        staged.write("a.txt", tmp_path / "a.txt", b"new a")
        staged.write("b.npy", tmp_path / "b.npy", b"new b")
        temps = sorted(p.name for p in tmp_path.iterdir() if p.name not in before)
        assert len(temps) == 2 and all(io_mod.temp_target(name) in ("a.txt", "b.npy") for name in temps)
    assert [sorted(Path(t).name for t in tmps) for tmps in discarded] == [temps]  # one call, the staged files
    assert _folder(tmp_path) == before
