"""A model folder's ``dynametric.json`` written by a later dynametric (a ``format_version`` newer than this code
reads) is refused in one line naming the file, the writer's version and the formats; the ones this code writes
load as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynametric import __version__
from dynametric.errors import InputError
from dynametric.models import build_embedder
from dynametric.models import hub as hubmod

SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}


def _folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return build_embedder(**SMALL).save_pretrained(tmp_path / "m")


def _set_meta(folder: Path, **entries: object) -> Path:
    path = folder / "dynametric.json"
    meta = json.loads(path.read_text())
    meta.update(entries)
    path.write_text(json.dumps(meta))
    return path


def test_a_saved_folder_records_this_codes_format_and_version_and_loads(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    meta = json.loads((folder / "dynametric.json").read_text())
    assert meta["format_version"] == hubmod.FORMAT_VERSION == 1
    assert meta["dynametric_version"] == __version__
    assert hubmod.from_pretrained(folder) is not None


def test_a_newer_format_version_is_refused_naming_the_file_the_writer_and_both_formats(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = _set_meta(folder, format_version=2, dynametric_version="9.1.0")
    with pytest.raises(InputError) as info:
        hubmod.from_pretrained(folder)
    assert str(info.value) == (f"{path} key 'format_version': written by dynametric 9.1.0 (format 2); this version "
                               f"({__version__}) reads format 1: upgrade dynametric")


def test_a_newer_format_is_refused_before_its_other_entries_are_read(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    # a later layout may move the model's description: the format is what is said, not the missing entry
    path = _set_meta(folder, format_version=3, dynametric_version="2.0.0", model=None)
    with pytest.raises(InputError, match=r"written by dynametric 2\.0\.0 \(format 3\)"):
        hubmod.from_pretrained(folder)
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 3, "dynametric_version": None}))
    with pytest.raises(InputError, match=r"written by a later dynametric \(format 3\)"):
        hubmod.from_pretrained(folder)


@pytest.mark.parametrize("value", ["2", 1.5, True, 0])
def test_a_format_version_that_is_not_a_whole_number_is_refused(tmp_path: Path, value: object) -> None:
    folder = _folder(tmp_path)
    path = _set_meta(folder, format_version=value)
    with pytest.raises(InputError) as info:
        hubmod.from_pretrained(folder)
    assert str(info.value) == f"{path} key 'format_version': expected a whole number >= 1, got {value!r}"


def test_a_description_without_a_format_version_is_read_as_format_1(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / "dynametric.json"
    meta = json.loads(path.read_text())
    del meta["format_version"]
    path.write_text(json.dumps(meta))
    assert hubmod.from_pretrained(folder) is not None
