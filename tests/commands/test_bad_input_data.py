"""Dataset readers (`dynametric data inspect`, `train`) under bad input: unreadable folders, paths leaving the
dataset root, BOMs, header-only files and one image under two names with different labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.data import build_dataset
from dynametric.errors import InputError
from tests.data.conftest import write_csv_dataset, write_dyml, write_folder, write_image


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


# ------------------------------------------------------------------------------------ paths leaving the root
ROWS = [("imgs/a.png", "train", "a", "x", "m"), ("imgs/b.png", "train", "b", "x", "m")]


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    write_image(tmp_path / "secret" / "passwd.png")  # a readable image outside the dataset
    return write_csv_dataset(tmp_path / "d", ROWS)


@pytest.mark.parametrize("row_path", ["../secret/passwd.png", "imgs/../../secret/passwd.png", "ABSOLUTE"])
def test_csv_rows_leaving_the_root_are_refused(csv_root, row_path) -> None:
    outside = csv_root.parent / "secret" / "passwd.png"
    row_path = str(outside) if row_path == "ABSOLUTE" else row_path
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write(f"{row_path},train,c,y,m\n")
    with pytest.raises(InputError) as err:
        build_dataset("csv", csv_root, "train")
    assert f"labels.csv:4: image path leaves the dataset root {os.path.realpath(csv_root)}" in str(err.value)
    lenient = build_dataset("csv", csv_root, "train", mode="lenient")
    assert len(lenient) == 2 and [p.kind for p in lenient.report.problems] == ["outside_root"]
    allowed = build_dataset("csv", csv_root, "train", allow_outside_root=True)  # the user's explicit choice
    assert len(allowed) == 3 and os.path.realpath(allowed.paths[2]) == str(outside)


def test_csv_symlink_to_a_file_outside_the_root_is_refused(csv_root) -> None:
    os.symlink(csv_root.parent / "secret" / "passwd.png", csv_root / "imgs" / "link.png")
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write("imgs/link.png,train,c,y,m\n")
    with pytest.raises(InputError, match=r"labels\.csv:4: image path leaves the dataset root .*passwd\.png"):
        build_dataset("csv", csv_root, "train")
    inside = csv_root / "imgs" / "inner.png"  # a link that stays inside is an ordinary image
    os.symlink(csv_root / "imgs" / "a.png", inside)
    (csv_root / "labels.csv").write_text("path,split,fine,middle,coarse\nimgs/b.png,train,b,x,m\n"
                                         "imgs/inner.png,train,a,x,m\n")
    assert len(build_dataset("csv", csv_root, "train")) == 2


@pytest.mark.parametrize("absolute", [False, True])
def test_dyml_rows_leaving_the_root_are_refused(tmp_path, absolute) -> None:
    root = write_dyml(tmp_path / "dyml_vehicle")
    write_image(tmp_path / "secret.jpg")
    with open(root / "train" / "label.csv", "a") as fh:
        fh.write(f"{tmp_path / 'secret.jpg' if absolute else '../../../secret.jpg'}, 9, 40, 300\n")
    with pytest.raises(InputError, match=r"label\.csv:6: image path leaves the dataset root .*secret\.jpg"):
        build_dataset("dyml-vehicle", root, "train")
    if not absolute:  # DyML names are relative to the image folder: an absolute one is never a file there
        assert len(build_dataset("dyml-vehicle", root, "train", allow_outside_root=True)) == 6


def test_folder_links_leaving_the_tree_are_reported(tree, tmp_path) -> None:
    write_image(tmp_path / "elsewhere" / "x" / "1.png")
    os.symlink(tmp_path / "elsewhere" / "x" / "1.png", tree / "bird" / "thrush" / "robin" / "9.png")
    os.symlink(tmp_path / "elsewhere" / "x", tree / "bird" / "thrush" / "linked")
    ds = build_dataset("folder", tree, "all", mode="lenient")
    assert len(ds) == 16
    found = sorted((Path(p.file).name, p.kind) for p in ds.report.problems)
    assert found == [("9.png", "outside_root"), ("linked", "outside_root")]
    with pytest.raises(InputError, match="symbolic link to a folder, not followed"):
        build_dataset("folder", tree, "all")
    assert len(build_dataset("folder", tree, "all", allow_outside_root=True)) == 18


# ------------------------------------------------------------------------- inputs that look right but are not
@pytest.mark.parametrize("alias", ["imgs/./a.png", "./imgs/a.png", "imgs//a.png", "imgs/../imgs/a.png", "LINK"])
def test_one_image_under_two_names_with_different_labels(csv_root, alias) -> None:
    if alias == "LINK":
        os.symlink(csv_root / "imgs" / "a.png", csv_root / "imgs" / "alias.png")
        alias = "imgs/alias.png"
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write(f"{alias},train,b,x,m\n")
    with pytest.raises(InputError) as err:
        build_dataset("csv", csv_root, "train")
    assert f"labels.csv:4: {alias} (the same file as 'imgs/a.png') listed again with labels ['b', 'x', 'm'] but " \
           "line 2 gives ['a', 'x', 'm']" in str(err.value)


def test_header_only_csv(csv_root, capsys) -> None:
    (csv_root / "labels.csv").write_text("path,split,fine,middle,coarse\n")
    with pytest.raises(InputError, match=r"labels\.csv: csv split 'train' has no records"):
        build_dataset("csv", csv_root, "train")
    assert main(["train", "--dry-run", "data.format=csv", f"data.root={csv_root}"]) == 2
    assert "has no records" in capsys.readouterr().err


def test_utf8_bom_is_not_part_of_the_first_column_name(csv_root) -> None:
    text = (csv_root / "labels.csv").read_bytes()
    (csv_root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text)  # as Excel writes it: header 'path' stays 'path'
    ds = build_dataset("csv", csv_root, "train")
    assert ds.scale_names == ("fine", "middle", "coarse") and len(ds) == 2
