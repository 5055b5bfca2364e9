"""Dataset readers (`dynametric data inspect`, `train`) under bad input: unreadable folders, paths leaving the
dataset root, BOMs, header-only files and one image under two names with different labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.data import build_dataset
from dynametric.errors import InputError
from tests.data.conftest import write_folder


def _deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Make ``denied`` folders unreadable the way a 000 permission does (also when the tests run as root, where
    chmod does not block reads): listing them raises PermissionError."""
    real = os.scandir
    blocked = {os.path.realpath(d) for d in denied}

    def scandir(path=".", *a, **k):
        if os.path.realpath(os.fspath(path)) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = [f"{c}/{m}/{f}/{i}.png" for c, m, f in (("bird", "thrush", "robin"), ("bird", "thrush", "wren"),
                                                   ("mammal", "bear", "brown"), ("mammal", "bear", "polar"))
             for i in range(4)]
    return write_folder(tmp_path / "tree", files)


def test_folder_unreadable_class_folder_is_an_error_in_strict_mode(tree, monkeypatch) -> None:
    _deny(monkeypatch, tree / "mammal" / "bear" / "polar")
    with pytest.raises(InputError) as err:
        build_dataset("folder", tree, "all")
    assert "cannot read folder" in str(err.value) and str(tree / "mammal" / "bear" / "polar") in str(err.value)


def test_folder_unreadable_folders_are_all_reported_in_lenient_mode(tree, monkeypatch) -> None:
    _deny(monkeypatch, tree / "mammal" / "bear" / "polar", tree / "bird" / "thrush")
    ds = build_dataset("folder", tree, "all", mode="lenient")
    assert len(ds) == 4  # only mammal/bear/brown remains readable
    unreadable = sorted(p.file for p in ds.report.problems if p.kind == "unreadable_folder")
    assert unreadable == sorted([str(tree / "bird" / "thrush"), str(tree / "mammal" / "bear" / "polar")])


def test_data_inspect_lists_the_unreadable_folder(tree, monkeypatch, capsys) -> None:
    _deny(monkeypatch, tree / "bird")
    assert main(["data", "inspect", "--format", "folder", "--root", str(tree), "--no-verify-images"]) == 1
    out = capsys.readouterr().out
    assert str(tree / "bird") in out and "cannot read folder" in out
