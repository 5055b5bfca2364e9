"""``declared_scale_names``: the scale names a format fixes without reading data are the names its reader gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.data import build_dataset
from dynametric.data.registry import declared_scale_names
from dynametric.errors import ConfigError
from tests.data.conftest import write_csv_dataset, write_folder


@pytest.mark.parametrize("fmt, fixture, options, expected", [
    ("cub200", "cub_root", {}, ("fine",)),
    ("cars196", "cars_root", {}, ("fine",)),
    ("sop", "sop_root", {}, ("product", "category")),
    ("inshop", "inshop_root", {}, ("item",)),
    ("inshop", "inshop_root", {"with_category": True}, ("item", "category")),
    ("dyml-vehicle", "dyml_vehicle", {}, ("fine", "middle", "coarse")),
    ("dyml-product", "dyml_product", {}, ("fine", "middle", "coarse")),
    ("folder", "folder_root", {"scale_names": ["leaf", "family", "group"]}, ("leaf", "family", "group")),
])
def test_declared_scale_names_are_the_readers(request, fmt: str, fixture: str, options: dict,
                                              expected: tuple[str, ...]) -> None:
    root = request.getfixturevalue(fixture)
    assert declared_scale_names(fmt, **options) == expected
    assert tuple(build_dataset(fmt, root, "train", **options).scale_names) == expected


def test_scale_names_that_come_from_the_data_are_not_declared(tmp_path: Path) -> None:
    # a csv header, a folder tree's depth: only the data knows them
    assert declared_scale_names("csv") is None and declared_scale_names("oml") is None
    assert declared_scale_names("folder") is None
    assert build_dataset("csv", write_csv_dataset(tmp_path / "c"), "train").scale_names == ("fine", "middle", "coarse")
    assert build_dataset("folder", write_folder(tmp_path / "f"), "train").scale_names == ("fine", "middle", "coarse")
    assert declared_scale_names("synthetic") == ("fine", "middle", "coarse")


def test_declared_scale_names_refuses_unknown_options() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        declared_scale_names("sop", with_category=True)
