"""`embed --csv` with a path written with Windows separators (`imgs\\animal\\img_00.png`) says why it is not found, as
the dataset readers do (`backslash_hint`): the path is not converted (a backslash is a legal file name character)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import read_image_csv


def test_a_listed_path_with_backslashes_says_they_are_no_separators(image_root: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "win.csv"
    csv_path.write_text("path,fine\nimgs\\animal\\img_00.png,1\nimgs/nope.png,2\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    lines = str(err.value).split("\n")
    root = image_root.resolve()
    listed = root / "imgs\\animal\\img_00.png"  # one file name with two backslashes in it
    assert lines[1:] == [f"  {csv_path}:2: image file not found: {listed} (backslashes are not path separators "
                         "here; write imgs/animal/img_00.png)",
                         f"  {csv_path}:3: image file not found: {root / 'imgs' / 'nope.png'}"]  # no backslash, no hint


def test_embed_cli_gives_the_hint(run_ckpt: Path, image_root: Path, tmp_path: Path, capsys) -> None:
    csv_path = tmp_path / "win.csv"
    csv_path.write_text("path,fine\nimgs\\plant\\img_01.png,1\n", encoding="utf-8")
    assert main(["embed", "--checkpoint", str(run_ckpt), "--csv", str(csv_path), "--image-root", str(image_root),
                 "--out", str(tmp_path / "emb")]) == 2
    err = capsys.readouterr().err
    assert "(backslashes are not path separators here; write imgs/plant/img_01.png)" in err
