"""Listing mistakes the readers and `data inspect` name: Windows separators, a dataset root one level too deep,
queries without a gallery match, an In-Shop image listed as both query and gallery."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from dynametric.commands import data as data_cmd
from dynametric.data import build_dataset
from dynametric.data.registry import get_format
from dynametric.errors import InputError
from tests.data.conftest import write_csv_dataset, write_cub, write_dyml, write_image, write_inshop, write_sop
from tests.data.test_oml import write_oml


def _inspect(capsys: pytest.CaptureFixture[str], fmt: str, root: Path, *extra: str) -> tuple[int, dict]:
    parser = data_cmd.argparse.ArgumentParser()
    data_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "inspect", "--format", fmt, "--root", str(root), "--json", *extra])
    code = args.func(args)
    return code, json.loads(capsys.readouterr().out)


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


# ------------------------------------------------------------------------------------------- Windows separators

def _backslashed(fmt: str, tmp_path: Path) -> tuple[Path, str, str, Path, int]:
    """A dataset of ``fmt`` with one listed path written with backslashes: (root, split, the path as written with
    slashes, the index file, its line)."""
    if fmt == "csv":
        root = write_csv_dataset(tmp_path / "mydata")
        _replace(root / "labels.csv", "imgs/b.png", "imgs\\b.png")
        return root, "train", "imgs/b.png", root / "labels.csv", 3
    if fmt == "oml":
        root = tmp_path / "oml"
        write_oml(root, ["0,img/a.png,train,,,", "0,img/b.png,train,,,", "1,img/c.png,validation,True,True,"],
                  header="label,path,split,is_query,is_gallery,category")
        _replace(root / "df.csv", "img/b.png", "img\\b.png")
        return root, "train", "img/b.png", root / "df.csv", 3
    if fmt == "cub200":
        root = write_cub(tmp_path / "cub")
        index = root / "CUB_200_2011" / "images.txt"
        _replace(index, "001.A/a2.jpg", "001.A\\a2.jpg")
        return root, "train", "001.A/a2.jpg", index, 2
    if fmt == "sop":
        root = write_sop(tmp_path / "sop")
        _replace(root / "Ebay_train.txt", "bicycle_final/111_1.JPG", "bicycle_final\\111_1.JPG")
        return root, "train", "bicycle_final/111_1.JPG", root / "Ebay_train.txt", 3
    if fmt == "inshop":
        root = write_inshop(tmp_path / "inshop")
        index = root / "Eval" / "list_eval_partition.txt"
        name = "img/WOMEN/Dresses/id_00000002/02_2_side.jpg"
        _replace(index, name, name.replace("/", "\\"))
        return root, "train", "img/WOMEN/Dresses/id_00000002/02_2_side.jpg", index, 4
    root = write_dyml(tmp_path / "dyml_vehicle")
    imgs = root / "train" / "imgs"
    (imgs / "sub").mkdir()
    (imgs / "1.jpg").rename(imgs / "sub" / "1.jpg")  # where imgs/sub/1.jpg would find it
    _replace(root / "train" / "label.csv", "\n1.jpg, ", "\nsub\\1.jpg, ")
    return root, "train", "sub/1.jpg", root / "train" / "label.csv", 2


@pytest.mark.skipif(os.sep == "\\", reason="a backslash is a separator on Windows")
@pytest.mark.parametrize("fmt", ["csv", "oml", "cub200", "sop", "inshop", "dyml-vehicle"])
def test_a_path_with_backslashes_says_they_are_no_separators(tmp_path: Path, fmt: str) -> None:
    """Was `image file not found: .../imgs\\b.png` with no hint; the path is not converted (still not found)."""
    root, split, slashed, index, line = _backslashed(fmt, tmp_path)
    with pytest.raises(InputError) as err:
        build_dataset(fmt, root, split)
    problem = str(err.value).splitlines()[1].strip()
    assert problem.startswith(f"{index}:{line}: image file not found: ")
    assert problem.endswith(f"{slashed.replace('/', chr(92))} (backslashes are not path separators here; write "
                            f"{slashed})")
    kept = build_dataset(fmt, root, split, mode="lenient")
    assert not any("\\" in p for p in kept.paths)  # never silently converted


def test_a_missing_path_without_backslashes_gets_no_hint(csv_root: Path) -> None:
    (csv_root / "imgs" / "b.png").unlink()
    with pytest.raises(InputError) as err:
        build_dataset("csv", csv_root, "train")
    assert str(err.value).splitlines()[1].strip() == (
        f"{csv_root / 'labels.csv'}:3: image file not found: {csv_root / 'imgs' / 'b.png'}")


# ------------------------------------------------------------------------------ a root one level too deep (L6)

def test_a_root_one_level_too_deep_is_said_once_before_its_missing_images(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`--root inshop/Eval` (which holds the partition file) listed one `image file not found` per image and
    nothing else: now one line first names the folder looked in and where the first image is."""
    root = write_inshop(tmp_path / "inshop")
    deep = root / "Eval"
    index = deep / "list_eval_partition.txt"
    summary = (f"none of the 7 images list_eval_partition.txt lists is under {deep}; the first, "
               f"img/WOMEN/Dresses/id_00000002/02_1_front.jpg, is under {root}: is the dataset root one level up? "
               "(each missing image is listed too)")
    code, doc = _inspect(capsys, "inshop", deep, "--no-verify-images")
    assert code == 1
    assert doc["problems"][0] == {"file": str(index), "line": None, "message": summary, "kind": "missing_images",
                                  "split_unknown": False, "splits": ["train", "query", "gallery"]}
    missing = [p for p in doc["problems"] if p["kind"] == "missing_image"]
    assert [p["line"] for p in missing] == [3, 4, 5, 6, 7, 8, 9]  # each image still named
    with pytest.raises(InputError) as err:  # a run's error leads with it too
        build_dataset("inshop", deep, "gallery")
    assert str(err.value).splitlines()[1] == f"  {index}: {summary}"


def test_no_summary_when_most_images_are_there(tmp_path: Path) -> None:
    root = write_inshop(tmp_path / "inshop")
    (root / "img/WOMEN/Dresses/id_00000002/02_1_front.jpg").unlink()
    found = build_dataset("inshop", root, "train", mode="lenient").report.problems
    assert [p.kind for p in found] == ["missing_image"]


def test_the_root_named_where_the_images_are_nowhere(tmp_path: Path) -> None:
    root = write_sop(tmp_path / "sop")
    for folder in ("bicycle_final", "cabinet_final"):
        for image in (root / folder).iterdir():
            image.unlink()
    found = get_format("sop").read(root, "test").report.problems
    assert [p.kind for p in found] == ["missing_images", "missing_image", "missing_image", "missing_image"]  # 3 rows
    assert found[0].message == (
        f"none of the 3 images Ebay_test.txt lists is under {root}; the first, bicycle_final/444_0.JPG, is not "
        f"under {root.parent} either: is the dataset root right? (each missing image is listed too)")


def test_inspect_shows_the_first_missing_images_after_the_summary() -> None:
    problems = [{"file": "/d/list.txt", "line": None, "message": "none of the 15 images ...",
                 "kind": "missing_images"}]
    problems += [{"file": "/d/list.txt", "line": n, "message": f"image file not found: /d/{n}.jpg",
                  "kind": "missing_image"} for n in range(3, 18)]
    problems.append({"file": "/d/list.txt", "line": 20, "message": "bad row", "kind": "malformed_row"})
    text = data_cmd.format_report({"format": "inshop", "root": "/d", "splits": {}, "details": {},
                                   "problems": problems}).splitlines()
    assert text[1:4] == ["17 problem(s):", "  /d/list.txt: none of the 15 images ...",
                         "  /d/list.txt:3: image file not found: /d/3.jpg"]
    assert text[-3:] == ["  /d/list.txt:12: image file not found: /d/12.jpg", "  /d/list.txt:20: bad row",
                         "  ... and 5 more missing image(s) (--json lists every problem)"]
    problems.pop(0)  # without a summary every problem is printed, as before
    assert len(data_cmd.format_report({"format": "inshop", "root": "/d", "splits": {}, "details": {},
                                       "problems": problems}).splitlines()) == 2 + 16


# ------------------------------------------------------------------------- queries without a gallery match (M2)

def test_an_inshop_query_item_without_gallery_images_is_a_problem(inshop_root: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Was `no problems found`, and the query silently counted in excluded_queries."""
    index = inshop_root / "Eval" / "list_eval_partition.txt"
    _replace(index, "id_00000013/01_1_front.jpg          id_00000013          gallery",
             "id_00000013/01_1_front.jpg          id_00000013          query")
    expected = ("query item id_00000013 has no gallery image: In-Shop's protocol lists gallery images of every "
                "query item (a query without one cannot be scored)")
    code, doc = _inspect(capsys, "inshop", inshop_root, "--no-verify-images")
    assert code == 1 and [(p["line"], p["message"], p["splits"]) for p in doc["problems"]] == [
        (9, expected, ["query"])]
    with pytest.raises(InputError) as err:
        build_dataset("inshop", inshop_root, "query")
    assert str(err.value).splitlines()[1] == f"  {index}:9: {expected}"
    assert len(build_dataset("inshop", inshop_root, "query", mode="lenient")) == 1  # the matched query kept


def test_a_dyml_query_label_without_gallery_items_is_a_problem(dyml_vehicle: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    query = dyml_vehicle / "bmk_middle" / "query.csv"
    query.write_text("fname, labels30.jpg, 2\n31.jpg, 9\n")  # 31.jpg: label 9, which gallery.csv has not
    write_image(dyml_vehicle / "bmk_middle" / "query" / "31.jpg")
    expected = ("query label 9 has no gallery item in gallery.csv (every query of the DyML benchmark has matches "
                "in its gallery)")
    code, doc = _inspect(capsys, "dyml-vehicle", dyml_vehicle, "--no-verify-images")
    assert code == 1 and [(p["file"], p["line"], p["message"], p["splits"]) for p in doc["problems"]] == [
        (str(query), 2, expected, ["query_middle"])]
    with pytest.raises(InputError, match="query label 9 has no gallery item"):
        build_dataset("dyml-vehicle", dyml_vehicle, "query_middle")
    kept = build_dataset("dyml-vehicle", dyml_vehicle, "query_middle", mode="lenient")
    assert kept.raw_label(0) == (2,) and len(kept) == 1
    assert build_dataset("dyml-vehicle", dyml_vehicle, "gallery_middle").class_ids == [[2, 3, 9]]  # the id map


def test_a_csv_query_without_gallery_rows_is_a_warning(csv_root: Path, capsys: pytest.CaptureFixture[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A user's own csv may hold such queries on purpose (the evaluation has eval.empty_queries for them): said,
    never silent, but no problem."""
    _replace(csv_root / "labels.csv", "imgs/e.png,query,grizzly,bear,mammal", "imgs/e.png,query,kodiak,bear,mammal")
    warning = ("1 of the 1 queries of labels.csv have no gallery row of their 'fine' class (first: line 6, class "
               "'kodiak'): at that scale the evaluation cannot score them and counts them in excluded_queries "
               "(eval.empty_queries: exclude) or scores them 0 (count_as_zero)")
    code, doc = _inspect(capsys, "csv", csv_root, "--no-verify-images")
    assert code == 0 and doc["problems"] == [] and doc["details"]["query"]["warnings"] == [warning]
    with caplog.at_level(logging.WARNING, logger="dynametric.data.base"):
        query = build_dataset("csv", csv_root, "query")
    assert len(query) == 1 and f"csv split 'query': {warning}" in caplog.messages
    assert build_dataset("csv", csv_root, "gallery").report.warnings == []  # the queries' split only


# ------------------------------------------------------------------- an In-Shop image as both query and gallery (L7)

def test_an_inshop_image_listed_as_query_and_gallery_is_a_listing_mistake(inshop_root: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Passed `data inspect`; `train` refused it suggesting eval.query_in_gallery: true, which would hide the
    mistake (In-Shop's query and gallery images are disjoint by definition)."""
    index = inshop_root / "Eval" / "list_eval_partition.txt"
    _replace(index, "7\n", "8\n")
    with open(index, "a") as fh:
        fh.write("img/WOMEN/Skirts/id_00000010/01_1_front.jpg id_00000010 gallery\n")  # line 10: line 6's query
    expected = ("img/WOMEN/Skirts/id_00000010/01_1_front.jpg is listed as query (line 6) and as gallery: In-Shop's "
                "query and gallery images are disjoint, each image has one evaluation_status (a listing mistake; "
                "eval.query_in_gallery does not apply)")
    code, doc = _inspect(capsys, "inshop", inshop_root, "--no-verify-images")
    assert code == 1 and [(p["line"], p["message"], p["kind"], p["splits"]) for p in doc["problems"]] == [
        (10, expected, "duplicate", ["gallery"])]
    with pytest.raises(InputError) as err:
        build_dataset("inshop", inshop_root, "gallery")
    assert str(err.value).splitlines()[1] == f"  {index}:10: {expected}"
    assert len(build_dataset("inshop", inshop_root, "query")) == 1  # the first listing stands
    assert len(build_dataset("inshop", inshop_root, "gallery", mode="lenient")) == 3
