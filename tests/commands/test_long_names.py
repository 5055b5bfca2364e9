"""File and folder names near the file system's limit of 255 bytes: an atomic write of a legal name of 242 to 255
bytes (its temporary name is shortened), `export`'s sidecar `<out>.json`, and a `train --out` folder whose name no
file system takes (the folder is named, not `<dir>/last.ckpt`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.utils.io import (
    atomic_write_text,
    is_temp_of,
    remove_stale_temps_of,
    temp_prefix,
    temp_target,
)


def _name(size: int, char: str = "a", suffix: str = ".txt") -> str:
    """A file name of exactly ``size`` bytes (``char`` repeated, then ``suffix``)."""
    width = len(char.encode())
    body = size - len(suffix.encode())
    assert body % width == 0
    return char * (body // width) + suffix


@pytest.mark.parametrize("size, char, suffix", [(241, "a", ".txt"), (242, "a", ".txt"), (250, "a", ".txt"),
                                                (255, "a", ".txt"), (254, "é", ".txt"), (255, "中", ".js")])
def test_an_atomic_write_of_a_legal_long_name_works_and_leaves_no_temporary_file(tmp_path, size, char, suffix):
    """The temporary name ``.<name>.<8 random>.tmp`` is 14 bytes longer than the name: for 242 to 255 bytes the
    write failed with 'File name too long'."""
    name = _name(size, char, suffix)
    assert len(os.fsencode(name)) == size
    atomic_write_text(tmp_path / name, "first")
    atomic_write_text(tmp_path / name, "second")  # over the first: the rename works too
    assert (tmp_path / name).read_text() == "second"
    assert os.listdir(tmp_path) == [name]


def test_the_temporary_name_of_a_long_target_fits_and_is_known_as_its_own(tmp_path):
    long_a = _name(250, suffix=".a")
    long_b = _name(250, suffix=".b")  # the same first 230 bytes: the shortened names must still tell them apart
    for target in (long_a, long_b):
        prefix = temp_prefix(target)
        assert len(os.fsencode(prefix + "abcdefgh.tmp")) <= 255
        assert prefix.startswith(".aaaa") and "~" in prefix  # recognisable: a dot, the target's start, a digest
    stale_a = temp_prefix(long_a) + "k2x_9q0z.tmp"  # what a killed write of long_a leaves
    stale_b = temp_prefix(long_b) + "k2x_9q0z.tmp"
    assert stale_a != stale_b
    assert is_temp_of(stale_a, long_a) and not is_temp_of(stale_a, long_b) and is_temp_of(stale_b, long_b)
    assert temp_target(stale_a) is not None
    short = "metrics.json"  # a short target keeps its full temporary name
    assert temp_prefix(short) == ".metrics.json." and is_temp_of(".metrics.json.k2x_9q0z.tmp", short)
    for stale in (stale_a, stale_b):
        (tmp_path / stale).write_text("half")
    assert remove_stale_temps_of(tmp_path / long_a) == [tmp_path / stale_a]
    assert sorted(os.listdir(tmp_path)) == [stale_b]  # another file's leftovers are not touched


def test_a_name_over_the_limit_is_named_not_its_temporary_file(tmp_path):
    name = _name(256)
    with pytest.raises(InputError) as err:
        atomic_write_text(tmp_path / name, "x", key="--out")
    assert err.value.file == str(tmp_path / name) and err.value.key == "--out"
    assert err.value.message.startswith("file name of 256 bytes: a file system takes names of at most 255 bytes")
    assert os.listdir(tmp_path) == []


def test_export_refuses_an_out_name_whose_sidecar_name_cannot_exist(tmp_path):
    from dynametric.retrieval.export import check_export_target

    out = tmp_path / _name(252, suffix=".pt")  # legal; <out>.json would be 257 bytes
    with pytest.raises(InputError) as err:
        check_export_target(out, "torchscript")
    assert err.value.key == "--out" and err.value.file == str(out)
    assert "file name of 252 bytes" in err.value.message and "at most 250 bytes" in err.value.message
    check_export_target(tmp_path / _name(250, suffix=".pt"), "torchscript")  # 255 bytes with .json: allowed
    with pytest.raises(InputError, match="file name of 300 bytes"):
        check_export_target(tmp_path / _name(300, suffix=".pt"), "torchscript")


def test_export_cli_says_the_sidecar_problem_in_one_line(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / _name(252, suffix=".pt")
    assert main(["export", "--checkpoint", str(tiny_ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "key '--out'" in err and "<name>.json" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dry", [True, False])
def test_train_names_the_out_folder_whose_name_is_too_long(tmp_path, capsys, dry):
    folder = tmp_path / ("d" * 300)
    argv = ["train", "--out", str(folder / "run"), "trainer.max_epochs=1", *(["--dry-run"] if dry else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"dynametric train: error: {folder} key '--out': folder name of 300 bytes: a file system takes "
                   "names of at most 255 bytes (File name too long); choose a shorter name")
    assert os.listdir(tmp_path) == []


def test_train_resume_names_the_folder_whose_name_is_too_long(tmp_path, capsys):
    folder = Path(tmp_path) / ("r" * 256)
    assert main(["train", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{folder} key '--resume': folder name of 256 bytes: a file system takes names of at most "
                        "255 bytes (File name too long); choose a shorter name")
