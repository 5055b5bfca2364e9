"""``declared_scale_names``: the scale names a format fixes without reading data are the names its reader gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.data import build_dataset
from dynametric.data.registry import declared_scale_names
from dynametric.errors import ConfigError, InputError
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


@pytest.mark.parametrize("names, message", [
    (["x", "x", "y"], "scale names must be distinct (one per label column), got ['x', 'x', 'y']: 'x' repeats"),
    (["leaf", "mean", "group"], "'mean' cannot be a scale name (an evaluation reports the mean over the scales under "
                                "it), got ['leaf', 'mean', 'group']"),
    # keys an evaluation result holds beside its scales: a scale so named was overwritten in metrics.json and never
    # logged
    (["leaf", "protocol"], "'protocol' cannot be a scale name (an evaluation reports what the evaluation protocol "
                           "excluded under it), got ['leaf', 'protocol']"),
    (["by_category", "group"], "'by_category' cannot be a scale name (an evaluation reports the per-category results "
                               "under it), got ['by_category', 'group']"),
    (["leaf", 2, "group"], "scale names must be non-empty strings, got ['leaf', 2, 'group']"),
    (["leaf", "", "group"], "scale names must be non-empty strings, got ['leaf', '', 'group']"),
    # blank: a column no table, report or --scale could show or name (was accepted by the readers)
    (["leaf", " ", "group"], "scale names must be non-empty strings (not blank), got ['leaf', ' ', 'group']"),
])
def test_folder_scale_names_that_would_merge_scales_are_refused_before_any_data(folder_root: Path, names,
                                                                                   message) -> None:
    """Repeated names passed the reader (and a dry run) and stopped a run at its first evaluation; `mean` is the
    evaluation's mean over the scales; a non-string was silently not declared."""
    for read in (lambda: declared_scale_names("folder", scale_names=names),
                 lambda: build_dataset("folder", folder_root, "train", scale_names=names),
                 lambda: build_dataset("folder", folder_root / "missing", "train", scale_names=names)):  # no data
        with pytest.raises(InputError) as info:
            read()
        assert (info.value.key, info.value.message) == ("scale_names", message)


def test_a_csv_scale_column_named_mean_is_refused_at_its_header(tmp_path: Path) -> None:
    root = write_csv_dataset(tmp_path / "c")
    csv = root / "labels.csv"
    csv.write_text(csv.read_text().replace("path,split,fine,middle,coarse", "path,split,fine,mean,coarse", 1))
    with pytest.raises(InputError) as info:
        build_dataset("csv", root, "train")
    assert str(info.value) == (f"{csv}:1: a scale column cannot be named 'mean' (an evaluation reports the mean over "
                               "the scales under it); got ['path', 'split', 'fine', 'mean', 'coarse']")


@pytest.mark.parametrize("name", ["swap_rb", "skip_corrupt", "check_files", "check_hierarchy", "allow_outside_root"])
@pytest.mark.parametrize("value", ["maybe", "false", "no", 1, None])
def test_on_off_options_take_only_true_or_false(tmp_path: Path, name: str, value: object) -> None:
    # read by truth, 'false' or 'no' switched the option on (swap_rb: colour channels silently swapped)
    root = write_csv_dataset(tmp_path / "c")
    with pytest.raises(ConfigError) as info:
        build_dataset("csv", root, "train", **{name: value})
    assert info.value.key == name and info.value.message == f"expected true or false, got {value!r}"


def test_on_off_options_take_python_and_numpy_bools(tmp_path: Path) -> None:
    import numpy as np

    root = write_csv_dataset(tmp_path / "c")
    assert build_dataset("csv", root, "train", swap_rb=np.bool_(True)).swap_rb is True
    ds = build_dataset("csv", root, "train", swap_rb=False, skip_corrupt=np.bool_(False), check_hierarchy=True)
    assert ds.swap_rb is False and ds.skip_corrupt is False
    with pytest.raises(ConfigError, match="expected true or false, got 'yes'") as info:
        build_dataset("inshop", tmp_path, "train", with_category="yes")  # a format's own on/off option too
    assert info.value.key == "with_category"
