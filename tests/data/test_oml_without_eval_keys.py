"""An OML CSV trained without eval keys: the missing test split says what to set (was only the splits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from tests.data.test_oml import ROWS, write_oml


def test_a_missing_test_split_of_oml_data_names_the_query_gallery_keys(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_oml(tmp_path, ROWS)
    assert main(["train", "--dry-run", "data.format=oml", f"data.root={csv}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "dynametric train: error: key 'data.test_split': the test split 'test' is not in the data: "
        "the oml data has the splits train, validation, query, gallery; to test query -> gallery set "
        "eval.protocol=query_gallery (its splits eval.query_split=query and eval.gallery_split=gallery are the "
        "defaults; eval.query_in_gallery=true where rows are both query and gallery), or data.test_split=validation "
        "to evaluate that split leave-one-out")


def test_the_suggested_keys_pass_the_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_oml(tmp_path, ROWS)
    for keys in (["eval.protocol=query_gallery", "eval.query_in_gallery=true"], ["data.test_split=validation"]):
        assert main(["train", "--dry-run", "data.format=oml", f"data.root={csv}",
                     "data.batch_size=4", "data.m=2", *keys]) == 0, capsys.readouterr().err
