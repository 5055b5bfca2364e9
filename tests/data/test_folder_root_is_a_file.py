"""The folder format given a file as its root says so (was: ``unknown split 'train' ...; found ['all']``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.data.registry import build_dataset, list_splits
from dynametric.errors import InputError


@pytest.mark.parametrize("name, hint", [("labels.csv", "for a CSV file use the format csv"),
                                        ("images.txt", "give the tree's folder, or the format that reads this file")])
def test_a_file_as_the_folder_root_is_named_as_a_file(tmp_path: Path, name: str, hint: str) -> None:
    path = tmp_path / name
    path.write_text("path,split,fine\n")
    for call in (lambda: build_dataset("folder", path, "train"), lambda: list_splits("folder", path)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.key == "root" and str(err.value).startswith(f"key 'root': {path} is a file, not a folder ")
        assert "unknown split" not in str(err.value)
        assert hint in str(err.value)


def test_train_dry_run_names_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("path,split,fine\n")
    assert main(["train", "data.format=folder", f"data.root={path}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key 'data.root': {path} is a file, not a folder" in err[0]
    assert "use the format csv" in err[0]
