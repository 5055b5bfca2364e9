"""save_pretrained into a folder it did not make: files of its names that no earlier save wrote are refused (a
project's README.md, a run folder's config.yaml), an earlier save's stale config.yaml goes, the weights' SHA-256 in
dynametric.json catches a mixed or interrupted save; from_pretrained of another tool's folder says what it is not."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models import Embedder, build_embedder
from dynametric.models import hub as hubmod

SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}


def _model(seed: int, **kwargs) -> Embedder:
    torch.manual_seed(seed)
    return build_embedder(**{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("name", ["README.md", "config.yaml", "model.safetensors", "dynametric.json"])
def test_a_file_no_earlier_save_wrote_is_not_overwritten(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / name).write_text("mine\n")
    with pytest.raises(InputError, match=rf"^{folder / name}: exists and was not written by an earlier "
                                         "save_pretrained"):
        _model(0).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == [name] and (folder / name).read_text() == "mine\n"


def test_an_earlier_save_is_replaced_and_its_stale_config_removed(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _model(0, num_heads=2).save_pretrained(folder, config_yaml="model:\n  num_heads: 2\n")
    (folder / "notes.txt").write_text("kept")
    one = _model(1)
    one.save_pretrained(folder)  # was: config.yaml of the two-head model stayed beside the one-head description
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "dynametric.json", "model.safetensors",
                                                        "notes.txt"]
    meta = json.loads((folder / "dynametric.json").read_text())
    assert meta["files"] == ["model.safetensors", "dynametric.json", "README.md"]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(Embedder.from_pretrained(folder)(x), one(x))


def test_weights_of_another_save_are_caught_by_their_hash(tmp_path: Path) -> None:
    _model(0).save_pretrained(tmp_path / "a")
    _model(1).save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(InputError, match=r"model.safetensors: does not match the weights dynametric.json describes "
                                         r"\(SHA-256 .*an interrupted or mixed save\? save the model again$"):
        Embedder.from_pretrained(tmp_path / "a")


def test_a_save_killed_after_its_description_is_taken_up_again(tmp_path: Path, monkeypatch) -> None:
    import dynametric.utils.io as io_mod

    folder = tmp_path / "m"
    real = io_mod.commit_staged

    def killed(tmp, path, **kwargs):
        if Path(path).name == "model.safetensors":  # renamed after the description that marks the save unfinished
            raise KeyboardInterrupt
        return real(tmp, path, **kwargs)

    monkeypatch.setattr(io_mod, "commit_staged", killed)
    with pytest.raises(KeyboardInterrupt):
        _model(0).save_pretrained(folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == ["dynametric.json"]
    with pytest.raises(InputError, match="interrupted before it finished"):
        Embedder.from_pretrained(folder)
    model = _model(0)
    model.save_pretrained(folder)  # its own description: not refused as someone else's folder
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(Embedder.from_pretrained(folder)(x), model(x))


def test_a_folder_with_another_tools_config_is_neither_kind(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model:\n  lr: 0.1\n")
    with pytest.raises(InputError, match=r"neither a dynametric model folder \(no dynametric.json\) nor a dynametric "
                                         r"train run folder \(a config.yaml without best.ckpt or last.ckpt"):
        hubmod.from_pretrained(tmp_path)


def test_a_second_save_into_a_folder_being_saved_is_refused_and_the_first_finishes(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """Two save_pretrained into one folder at once: the second removed the first's temporary files as a killed
    save's, and the first failed with FileNotFoundError naming its temporary file."""
    import os

    from dynametric.utils import io

    folder = tmp_path / "m"
    real = io.StagedFiles.commit
    refused: list[str] = []

    def commit_after_another_save(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not refused:  # every file of the first save staged: a second save starts into the folder
            refused.append("")
            with pytest.raises(InputError) as err:
                _model(1).save_pretrained(folder)
            refused[0] = str(err.value)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(io.StagedFiles, "commit", commit_after_another_save)
    first = _model(0)
    first.save_pretrained(folder)
    assert refused == [f"{folder}: the model folder is being written by another save_pretrained (process "
                       f"{os.getpid()}); wait for it to finish or write to another place"]
    loaded = Embedder.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), first.state_dict().values()))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "dynametric.json", "model.safetensors"]


def test_a_failed_save_removes_only_the_folders_it_made_itself(tmp_path: Path, monkeypatch) -> None:
    """Another save makes the new folder between this save's look and its mkdir; this save then fails: the folder is
    the other save's and stays (a failed save removed every folder that had been missing when it looked, so it could
    remove the other save's folder before that one took its lock)."""
    target = tmp_path / "a" / "model"
    exists = Path.exists

    def another_save_made_it_meanwhile(self: Path, *args, **kwargs) -> bool:
        # the save's look for the folders it has to make (not its earlier checks of the path)
        looking = sys._getframe(1).f_code.co_name in ("_missing_folders", "_make_folders")
        if looking and self == target and not exists(self):
            self.mkdir(parents=True)  # made by the other save just after this save looked
            return False
        return exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", another_save_made_it_meanwhile)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hubmod, "_save_locked", fail)
    with pytest.raises(OSError):
        hubmod.save_pretrained(_model(0), target)
    monkeypatch.undo()
    assert target.is_dir() and list(target.iterdir()) == []  # the other save's folder, as it made it
    # a folder this save made itself is removed when it fails
    monkeypatch.setattr(hubmod, "_save_locked", fail)
    with pytest.raises(OSError):
        hubmod.save_pretrained(_model(0), tmp_path / "b" / "model")
    assert not (tmp_path / "b").exists()
