"""save_pretrained over an earlier model folder writes every file before it renames any: a full disk at any file
leaves the earlier folder exactly as it was (it loads the earlier model), a kill between the renames leaves a
folder that loading refuses and the next save takes up; a folder path under a file is one InputError."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models import Embedder, build_embedder
from dynametric.utils import io as io_mod

SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}
CONFIG_A = "model:\n  backbone: simple_cnn\n"


def _model(seed: int) -> Embedder:
    torch.manual_seed(seed)
    return build_embedder(**SMALL).eval()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(folder.iterdir())}


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class _FullDisk:
    """``os.fdopen`` whose ``n``-th file (counted from 0, whatever its mode) takes half its first write and then
    fails as a full disk does."""

    def __init__(self, n: int) -> None:
        self.n, self.opened, self.real = n, 0, os.fdopen

    def __call__(self, fd: int, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        fh = self.real(fd, *args, **kwargs)
        index, self.opened = self.opened, self.opened + 1
        if index != self.n:
            return fh
        write = fh.write

        def full(data):  # noqa: ANN001, ANN202
            write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        fh.write = full
        return fh


def _count_files_written(tmp_path: Path, config_yaml: str | None) -> int:
    counter = _FullDisk(-1)
    real = os.fdopen
    os.fdopen = counter
    try:
        _model(1).save_pretrained(tmp_path / "count", config_yaml=config_yaml)
    finally:
        os.fdopen = real
    return counter.opened


@pytest.mark.parametrize("config_b", [None, "model:\n  backbone: simple_cnn\n  # b\n"])
def test_a_full_disk_at_any_file_leaves_the_earlier_model_folder_as_it_was(tmp_path: Path, monkeypatch,
                                                                          config_b: str | None) -> None:
    """Was: dynametric.json written first, the weights failing with ENOSPC: the folder then held the new description
    and the earlier weights and loaded neither model; the earlier save's config.yaml was even removed first."""
    folder = tmp_path / "m"
    first = _model(0)
    first.save_pretrained(folder, config_yaml=CONFIG_A, scale_names=["fine"])
    (folder / "notes.txt").write_text("mine")
    before = _snapshot(folder)
    files = _count_files_written(tmp_path, config_b)
    assert files >= (4 if config_b else 3)
    for n in range(files):
        monkeypatch.setattr(os, "fdopen", _FullDisk(n))
        with pytest.raises(OSError) as info:
            _model(1).save_pretrained(folder, config_yaml=config_b, scale_names=["fine"])
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC
        assert Path(info.value.filename).parent == folder and ".tmp" not in info.value.filename  # the target
        assert _snapshot(folder) == before, n  # every file, byte for byte, and no temporary file
        assert _same_model(Embedder.from_pretrained(folder), first), n


def test_a_failed_first_save_leaves_no_folder_it_made(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "fdopen", _FullDisk(1))
    with pytest.raises(OSError):
        _model(0).save_pretrained(tmp_path / "new" / "m")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def _kill_at_rename(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    real = io_mod.commit_staged
    calls = iter(range(1000))

    def killed(tmp, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if next(calls) == k:
            raise KeyboardInterrupt
        return real(tmp, path, **kwargs)

    monkeypatch.setattr(io_mod, "commit_staged", killed)


@pytest.mark.parametrize(("config_a", "config_b"), [(CONFIG_A, None), (None, CONFIG_A), (CONFIG_A, CONFIG_A + "#\n")])
def test_a_save_killed_between_its_renames_is_refused_on_load_and_taken_up_again(tmp_path: Path, monkeypatch,
                                                                                 config_a, config_b) -> None:
    x = torch.randn(2, 3, 16, 16)
    renames = 5 if config_b else 4  # the unfinished description, weights, [config], card, the description
    for k in range(renames):
        folder = tmp_path / f"m{k}"
        first = _model(0)
        first.save_pretrained(folder, config_yaml=config_a)
        before = _snapshot(folder)
        second = _model(1)
        _kill_at_rename(monkeypatch, k)
        with pytest.raises(KeyboardInterrupt):
            second.save_pretrained(folder, config_yaml=config_b)
        monkeypatch.undo()
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # the staged files are removed
        if k == 0:  # nothing renamed yet: the earlier model, its config.yaml included, every file as it was
            assert _snapshot(folder) == before
            assert _same_model(Embedder.from_pretrained(folder), first)
        else:
            with pytest.raises(InputError, match=rf"^{folder / 'dynametric.json'}: a save_pretrained into this "
                                                 r"folder was interrupted before it finished .*save the model again$"):
                Embedder.from_pretrained(folder)
        second.save_pretrained(folder, config_yaml=config_b)  # the next save knows the folder as its own
        assert torch.equal(Embedder.from_pretrained(folder)(x), second(x))
        names = {"README.md", "dynametric.json", "model.safetensors", *(["config.yaml"] if config_b else [])}
        assert {p.name for p in folder.iterdir()} == names, k
        if config_b:
            assert (folder / "config.yaml").read_text() == config_b


def test_the_temporary_files_of_a_killed_save_are_removed_by_the_next(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _model(0).save_pretrained(folder)
    (folder / ".model.safetensors.abcd1234.tmp").write_bytes(b"half")
    (folder / ".notes.txt.abcd1234.tmp").write_bytes(b"not a file this save writes")
    _model(1).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [".notes.txt.abcd1234.tmp", "README.md", "dynametric.json",
                                                        "model.safetensors"]


def test_a_model_folder_under_a_file_is_one_input_error(tmp_path: Path) -> None:
    """Was a raw NotADirectoryError."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(InputError, match=rf"^{afile}: is a file, not a folder; expected a folder to hold the model "
                                         rf"folder {afile / 'x'}$"):
        _model(0).save_pretrained(afile / "x")
    with pytest.raises(InputError, match=rf"^{afile}: is a file, not a folder"):
        _model(0).save_pretrained(afile / "x" / "y")
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_read_only_file_of_an_earlier_save_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    first = _model(0)
    first.save_pretrained(folder, config_yaml=CONFIG_A)
    (folder / "config.yaml").chmod(0o444)
    before = _snapshot(folder)
    try:
        for config_b in (None, "other: 1\n"):  # neither removed nor replaced
            with pytest.raises(InputError, match=rf"^{folder / 'config.yaml'}: is read-only \(mode 0444\); not "
                                                 "replaced"):
                _model(1).save_pretrained(folder, config_yaml=config_b)
            assert _snapshot(folder) == before
    finally:
        (folder / "config.yaml").chmod(0o644)
    assert _same_model(Embedder.from_pretrained(folder), first)
