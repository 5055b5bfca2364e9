"""The `oml` format: open-metric-learning's dataset CSV (splits, query/gallery flags, category as a coarser scale
only when asked, sequence ids, bounding-box crops, errors naming file, line and column), and a training run on it
with the query -> gallery test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.data import build_dataset, list_splits
from dynametric.errors import InputError

HEADER = "label,path,split,is_query,is_gallery,category,x_1,x_2,y_1,y_2"


def two_tone(path: Path, left: tuple[int, int, int], right: tuple[int, int, int]) -> None:
    """A 20x12 image: columns 0-9 `left`, columns 10-19 `right`."""
    arr = np.zeros((12, 20, 3), np.uint8)
    arr[:, :10], arr[:, 10:] = left, right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


RED, BLUE, GREEN = (250, 0, 0), (0, 0, 250), (0, 250, 0)


def write_oml(root: Path, rows: list[str], header: str = HEADER) -> Path:
    for r in rows:
        rel = r.split(",")[1]
        if rel and not (root / rel).exists():
            two_tone(root / rel, RED, BLUE)
    (root / "df.csv").write_text("\n".join([header, *rows]) + "\n")
    return root / "df.csv"


ROWS = [
    "0,img/a0.png,train,,,bird,,,,",
    "0,img/a1.png,train,,,bird,,,,",
    "1,img/b0.png,train,,,bird,,,,",
    "2,img/c0.png,train,,,fish,0,10,0,12",       # left half: red
    "10,img/q0.png,validation,True,False,cat,10,20,0,12",   # right half: blue
    "10,img/g0.png,validation,False,True,cat,,,,",
    "10,img/g1.png,validation,1,1,cat,,,,",       # query and gallery at once
    "11,img/g2.png,validation,False,True,dog,,,,",
    "12,img/g3.png,validation,false,true,dog,,,,",
]


def test_splits_scales_flags_and_shared_ids(tmp_path):
    csv = write_oml(tmp_path, ROWS)
    assert list_splits("oml", tmp_path) == ["train", "validation", "query", "gallery"]
    train = build_dataset("oml", csv, "train")  # root: the CSV itself or its folder
    assert train.scale_names == ("label",) and len(train) == 4  # category is not a scale unless asked (OML)
    assert train.labels.tolist() == [[0], [0], [1], [2]] and train.class_ids == [[0, 1, 2]]
    assert any("column 'category'" in n and "category_as_scale" in n for n in train.report.notes)
    train = build_dataset("oml", csv, "train", category_as_scale=True)
    assert train.scale_names == ("label", "category") and len(train) == 4
    assert train.labels.tolist() == [[0, 0], [0, 0], [1, 0], [2, 1]]  # contiguous, finest first
    assert train.class_ids == [[0, 1, 2], ["bird", "fish"]]
    val = build_dataset("oml", tmp_path, "validation")
    assert len(val) == 5
    query, gallery = (build_dataset("oml", tmp_path, s, category_as_scale=True) for s in ("query", "gallery"))
    assert [Path(p).name for p in query.paths] == ["q0.png", "g1.png"]
    assert [Path(p).name for p in gallery.paths] == ["g0.png", "g1.png", "g2.png", "g3.png"]
    assert query.class_ids == gallery.class_ids == [[10, 11, 12], ["cat", "dog"]]  # one id space
    assert query.labels.tolist() == [[0, 0], [0, 0]] and gallery.labels[:, 0].tolist() == [0, 0, 1, 2]


def test_category_is_a_scale_only_when_asked(tmp_path):
    """OML only splits its report by category: a label in two categories is fine by default; as a scale
    (category_as_scale) it is a hierarchy violation. The option is checked."""
    from dynametric.config import load_config
    from dynametric.engine.builders import load_split
    from dynametric.errors import ConfigError

    write_oml(tmp_path, ["5,img/a.png,train,,,bird,,,,", "5,img/b.png,train,,,fish,,,,",
                         "6,img/c.png,train,,,fish,,,,"])
    train = build_dataset("oml", tmp_path, "train")
    assert train.scale_names == ("label",) and train.labels.tolist() == [[0], [0], [1]]
    with pytest.raises(InputError, match="hierarchy violation: label class 5"):
        build_dataset("oml", tmp_path, "train", category_as_scale=True)
    with pytest.raises(InputError) as err:
        build_dataset("oml", tmp_path, "train", category_as_scale="yes")
    assert err.value.key == "category_as_scale" and "expected true or false, got 'yes'" in str(err.value)
    cfg = load_config(None, ["data.format=oml", f"data.root={tmp_path}", "data.options={category_as_scale: 1}"])
    with pytest.raises(ConfigError) as err:
        load_split(cfg, "train", train=False)
    assert err.value.key == "data.options.category_as_scale"
    write_oml(tmp_path, ["5,img/a.png,train,,"], header="label,path,split,is_query,is_gallery")
    with pytest.raises(InputError, match="category_as_scale is true, but the header has no 'category' column"):
        build_dataset("oml", tmp_path, "train", category_as_scale=True)


def test_boxes_crop_the_image_before_the_transform(tmp_path):
    write_oml(tmp_path, ROWS)
    train = build_dataset("oml", tmp_path, "train")
    whole, crop = train.load_image(0), train.load_image(3)
    assert whole.size == (20, 12) and crop.size == (10, 12)
    assert np.asarray(crop)[:, :, 0].min() == 250 and np.asarray(crop)[:, :, 2].max() == 0  # all red
    query = build_dataset("oml", tmp_path, "query", transform=lambda im: torch.as_tensor(np.array(im)))
    image, labels = query[0]
    assert tuple(image.shape) == (12, 10, 3) and int(image[..., 2].min()) == 250  # all blue
    sub = train.subset([3, 0])
    assert sub.load_image(0).size == (10, 12) and sub.load_image(1).size == (20, 12)


def test_sample_grid_draws_the_crop_the_item_is(tmp_path):
    """``data inspect --grid`` draws each item as training sees it: an oml row's box, not the whole image (it drew
    the red-and-blue image of a red crop); a box past the image's edge is left out of the grid (the inspection lists
    it), not a crash."""
    from dynametric.data.inspect import write_sample_grid

    write_oml(tmp_path, ["2,img/c0.png,train,,,fish,0,10,0,12", "3,img/c1.png,train,,,fish,10,20,0,12",
                         "4,img/c2.png,train,,,fish,0,30,0,12"])
    assert write_sample_grid("oml", tmp_path, "train", tmp_path / "grid.png", count=3, cell=8) == 3
    with Image.open(tmp_path / "grid.png") as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (16, 16, 3)
    assert (grid[:8, :8] == RED).all() and (grid[:8, 8:] == BLUE).all()  # the left crop red, the right one blue
    assert (grid[8:, :8] == 0).all()  # the box past the edge: an empty cell


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_boxes_are_in_stored_pixels_and_the_crop_is_shown_upright(tmp_path, suffix):
    """OML crops the stored pixel array (it does not apply EXIF orientation): the box is cut there, then the crop is
    shown upright, the same content as OML's crop. The edge check uses the stored size (was: the box was cut from
    the rotated image, other pixels, and checked against its rotated size)."""
    from PIL import ImageOps

    from dynametric.data.inspect import inspect_dataset

    s = 1 if suffix == ".png" else 8  # JPEG: flat 8x8 blocks (its DCT blocks), so compression keeps each colour
    grid = np.zeros((12, 20, 3), np.uint8)  # 20 wide, 12 high as stored; shown 12 wide, 20 high
    grid[..., 0] = np.arange(20)[None, :] * 12  # red: the stored column, green: the stored row
    grid[..., 1] = np.arange(12)[:, None] * 20
    stored = grid.repeat(s, 0).repeat(s, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    path = tmp_path / "img" / f"p{suffix}"
    path.parent.mkdir()
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100, subsampling=0)
    rows = [f"0,img/p{suffix},train,,,,{4 * s},{12 * s},0,{8 * s}",  # x_1, x_2, y_1, y_2 in stored pixels
            f"1,img/p{suffix},train,,,,0,{20 * s},{4 * s},{12 * s}"]  # x_2: past the shown width, inside the stored
    write_oml(tmp_path, rows)
    train = build_dataset("oml", tmp_path, "train")
    crop = np.asarray(train.load_image(0)).astype(int)
    expected = np.rot90(stored[0:8 * s, 4 * s:12 * s], k=-1)  # the stored crop, turned 90 degrees clockwise
    assert crop.shape == (8 * s, 8 * s, 3) and np.abs(crop - expected).max() <= (0 if s == 1 else 3)
    # OML's crop of the stored pixels, shown upright by Pillow: the same pixels
    oml_crop = Image.open(path).crop((4 * s, 0, 12 * s, 8 * s))
    assert np.abs(crop - np.asarray(ImageOps.exif_transpose(_with_orientation(oml_crop, 6)))).max() == 0
    assert np.asarray(train.load_image(1)).shape == (20 * s, 8 * s, 3)  # stored 20x8 (times s), shown 8 wide
    assert inspect_dataset("oml", tmp_path)["problems"] == []
    write_oml(tmp_path, [f"0,img/p{suffix},train,,,,0,{12 * s},0,{14 * s}"])  # y_2: past the stored height
    message = (f"column 'y_2': the box (x_1, y_1, x_2, y_2) = (0, 0, {12 * s}, {14 * s}) reaches y_2={14 * s}, past "
               f"the image's height {12 * s} (a {20 * s}x{12 * s} image as stored; boxes are in stored pixels, before "
               "its EXIF orientation is applied)")
    with pytest.raises(InputError) as err:
        build_dataset("oml", tmp_path, "train").load_image(0)
    assert str(err.value) == f"{path}: {message} (item 0)"
    assert [p["message"] for p in inspect_dataset("oml", tmp_path)["problems"]] == [f"{message}: {path}"]


def _with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    return image


def test_without_category_and_boxes_one_scale_whole_images(tmp_path):
    rows = ["3,img/a.png,train,,", "4,img/b.png,train,,", "3,img/c.png,validation,True,True"]
    write_oml(tmp_path, rows, header="label,path,split,is_query,is_gallery")
    train = build_dataset("oml", tmp_path, "train")
    assert train.scale_names == ("label",) and train.labels.tolist() == [[0], [1]]
    assert type(train).__name__ == "HierarchicalImageDataset"
    assert list_splits("oml", tmp_path) == ["train", "validation", "query", "gallery"]


def test_extra_columns_are_ignored_and_noted(tmp_path):
    write_oml(tmp_path, ["0,img/a.png,train,,,x,5"], header="label,path,split,is_query,is_gallery,category_int,seq")
    ds = build_dataset("oml", tmp_path, "train")
    assert any("category_int" in n and "seq" in n for n in ds.report.notes)


def test_sequence_ids_are_read_on_validation_rows(tmp_path):
    header = "label,path,split,is_query,is_gallery,sequence"
    csv = write_oml(tmp_path, ["0,img/a.png,train,,,", "0,img/b.png,train,,,7", "1,img/q.png,validation,True,True,7",
                               "1,img/g.png,validation,False,True,cam2", "2,img/h.png,validation,False,True,-3"],
                    header=header)
    train = build_dataset("oml", tmp_path, "train")  # train rows' values are not read (an empty one is fine)
    assert train.sequence_ids is None and not any("sequence" in n for n in train.report.notes)
    gallery = build_dataset("oml", tmp_path, "gallery")
    assert gallery.sequence_ids == [7, "cam2", -3]  # integers where they read as one, as OML's column
    assert build_dataset("oml", tmp_path, "query").sequence_ids == [7]
    assert gallery.subset([2, 0]).sequence_ids == [-3, 7]
    write_oml(tmp_path, ["1,img/q.png,validation,True,True,7", "1,img/g.png,validation,False,True,"], header=header)
    with pytest.raises(InputError) as err:
        build_dataset("oml", tmp_path, "gallery")
    assert f"{csv}:3: column 'sequence': empty on a validation row" in str(err.value)


def test_category_ids_are_kept_whether_or_not_category_is_a_scale(tmp_path):
    """Every split's dataset carries the category column as ``category_ids`` (OML's report split), a scale or not;
    one validation item listed as a query row and a gallery row has its query row's category; a split with an
    empty cell carries none (noted), and a CSV without the column none either."""
    header = "label,path,split,is_query,is_gallery,category"
    write_oml(tmp_path, ["0,img/a.png,train,,,bird", "1,img/b.png,train,,,7", "2,img/q.png,validation,True,False,fish",
                         "2,img/q.png,validation,False,True,bird", "3,img/g.png,validation,False,True,"],
              header=header)
    train = build_dataset("oml", tmp_path, "train")
    assert train.scale_names == ("label",) and train.category_ids == ["bird", 7]  # ints where they read as one
    assert build_dataset("oml", tmp_path, "train", category_as_scale=True).category_ids == ["bird", 7]
    assert train.subset([1, 0]).category_ids == [7, "bird"]
    from dynametric.data.splits import LabelledSubset

    assert LabelledSubset(train, [1]).category_ids == [7]  # a carved validation set keeps them
    assert build_dataset("oml", tmp_path, "query").category_ids == ["fish"]
    gallery = build_dataset("oml", tmp_path, "gallery")  # g.png has no category: the gallery split carries none
    assert gallery.category_ids is None  # the note says why, but the load report does not: a query -> gallery
    assert gallery.category_note == ("column 'category' of df.csv is empty on 1 of the 2 records of split "
                                     "'gallery' (first at line 6): no per-category metrics for it")
    assert not any("is empty on" in n for n in gallery.report.notes)  # report reads only the queries' categories
    validation = build_dataset("oml", tmp_path, "validation", mode="lenient")  # leave-one-out: each item a query
    assert validation.category_ids is None and len(validation) == 2
    assert validation.category_note in validation.report.notes and "split 'validation'" in validation.category_note
    assert validation.subset([0]).category_note == validation.category_note
    write_oml(tmp_path, ["0,img/a.png,train,,,bird", "2,img/q.png,validation,False,True,bird",
                         "2,img/q.png,validation,True,False,fish"], header=header)
    assert build_dataset("oml", tmp_path, "validation").category_ids == ["fish"]  # the query row's, listed second
    write_oml(tmp_path, ["0,img/a.png,train,,"], header="label,path,split,is_query,is_gallery")
    assert build_dataset("oml", tmp_path, "train").category_ids is None


def test_id_cells_are_ints_only_when_ascii_integers(tmp_path):
    """A ``category`` / ``sequence`` cell is an int only when it is an ASCII ``-?[0-9]+``; ``--1``, ``²``, ``+7``,
    ``1.5`` are text (``str.isdigit`` takes ``²`` for a digit, ``int`` does not: every read of the CSV used to
    crash, the category column being read on every row, the train rows too)."""
    header = "label,path,split,is_query,is_gallery,category,sequence"
    write_oml(tmp_path, ["5,img/t.png,train,,,--1,", "6,img/u.png,train,,,²,",
                         "0,img/a.png,validation,True,True,-3,--1", "0,img/b.png,validation,False,True,+7,²",
                         "1,img/c.png,validation,True,True,1.5,-12", "1,img/d.png,validation,False,True,07,x"],
              header=header)
    assert build_dataset("oml", tmp_path, "train").category_ids == ["--1", "²"]
    validation = build_dataset("oml", tmp_path, "validation")
    assert validation.category_ids == [-3, "+7", "1.5", 7]
    assert validation.sequence_ids == ["--1", "²", -12, "x"]
    assert build_dataset("oml", tmp_path, "query").category_ids == [-3, "1.5"]


def test_id_cells_spelt_two_ways_are_one_id_and_the_load_report_says_so(tmp_path):
    """``007`` and ``7`` are one category 7 (as pandas reads an integer column, so as an OML user's own code):
    kept, but never silently: the load report of each split that reads both names the cells and their lines (the
    same for ``sequence``). The gallery's categories are not read (the per-category report goes by the query's
    category), so its report says nothing of them, unless ``category_as_scale`` makes them labels; its sequences
    are read (the same-sequence exclusion): noted."""
    header = "label,path,split,is_query,is_gallery,category,sequence"
    write_oml(tmp_path, ["0,img/t0.png,train,,,007,", "0,img/t1.png,train,,,7,", "1,img/t2.png,train,,,-0,",
                         "1,img/t3.png,train,,,0,", "2,img/t4.png,train,,,10,",
                         "0,img/a.png,validation,True,True,7,01", "0,img/b.png,validation,False,True,07,1"],
              header=header)
    train = build_dataset("oml", tmp_path, "train")
    assert train.category_ids == [7, 7, 0, 0, 10]
    assert ("column 'category' of df.csv, split 'train': cells '007' (line 2) and '7' (line 3) are one category 7 "
            "(a cell that is an integer is read by its value, as pandas reads an integer column); 1 other category "
            "id(s) spelt more than one way too") in train.report.notes
    gallery = build_dataset("oml", tmp_path, "gallery")
    assert gallery.category_ids == [7, 7] and gallery.sequence_ids == [1, 1]
    assert not any("column 'category'" in n and "are one" in n for n in gallery.report.notes)
    assert any(n.startswith("column 'sequence' of df.csv, split 'gallery': cells '01' (line 7) and '1' (line 8) "
                            "are one sequence 1") for n in gallery.report.notes)
    as_scale = build_dataset("oml", tmp_path, "gallery", category_as_scale=True)  # a label scale: read, noted
    assert any(n.startswith("column 'category' of df.csv, split 'gallery': cells '7' (line 7) and '07' (line 8)")
               for n in as_scale.report.notes)
    validation = build_dataset("oml", tmp_path, "validation")  # its items are queries: noted
    assert any(n.startswith("column 'category' of df.csv, split 'validation': cells '7' (line 7) and '07' (line 8)")
               for n in validation.report.notes)
    query = build_dataset("oml", tmp_path, "query")  # one spelling each: nothing to say
    assert query.category_ids == [7] and not any("spelt" in n or "are one" in n for n in query.report.notes)


def test_id_cells_too_long_for_int64_are_text(tmp_path):
    """An integer id is one that fits in int64: a longer digit string is text, in the cells (``int`` used to raise
    ``ValueError: Exceeds the limit (4300 digits) for integer string conversion`` on a cell of 5000 digits) and in
    the note on merged spellings alike (which read every such cell with ``int`` too); leading zeros do not count."""
    big, top = "9" * 5000, str(2**63 - 1)
    header = "label,path,split,is_query,is_gallery,category,sequence"
    write_oml(tmp_path, [f"0,img/t0.png,train,,,{big},", f"0,img/t1.png,train,,,0{big},",
                         f"1,img/t2.png,train,,,{2**63},", f"1,img/t3.png,train,,,{top},",
                         f"2,img/t4.png,train,,,000000000000000000000{top},", f"2,img/t5.png,train,,,-{2**63},",
                         f"0,img/a.png,validation,True,True,x,{big}", f"0,img/b.png,validation,True,True,x,0{big}"],
              header=header)
    train = build_dataset("oml", tmp_path, "train")
    assert train.category_ids == [big, "0" + big, str(2**63), 2**63 - 1, 2**63 - 1, -2**63]
    assert [n for n in train.report.notes if "are one category" in n] == [
        f"column 'category' of df.csv, split 'train': cells '{top}' (line 5) and '000000000000000000000{top}' (line 6) "
        f"are one category {top} (a cell that is an integer is read by its value, as pandas reads an integer column)"]
    validation = build_dataset("oml", tmp_path, "validation")
    assert validation.sequence_ids == [big, "0" + big]
    assert not any("are one" in n for n in validation.report.notes)


@pytest.mark.parametrize("row,column,message", [
    ("x,img/a0.png,train,,,bird,,,,", "label", "expected an integer class id (ASCII digits, within 64 bits), got 'x'"),
    ("٣,img/a0.png,train,,,bird,,,,", "label", "got '٣'"),  # int() read it as 3
    ("1_0,img/a0.png,train,,,bird,,,,", "label", "got '1_0'"),  # int() read it as 10
    ("9" * 5000 + ",img/a0.png,train,,,bird,,,,", "label", "got '" + "9" * 40 + "...'"),
    ("0,img/a0.png,test,,,bird,,,,", "split", "expected 'train' or 'validation'"),
    ("0,img/a0.png,train,True,,bird,,,,", "is_query", "train rows are neither query nor gallery"),
    ("0,img/a0.png,validation,maybe,True,bird,,,,", "is_query", "expected True/False"),
    ("0,img/a0.png,validation,,True,bird,,,,", "is_query", "empty on a validation row"),
    ("0,img/a0.png,validation,False,False,bird,,,,", "is_query", "must be a query, a gallery item or both"),
    ("0,img/a0.png,train,,,,,,,", "category", "empty"),
    ("0,img/a0.png,train,,,bird,1,5,,", "y_1", "needs all four"),
    ("0,img/a0.png,train,,,bird,5,5,0,3", "x_2", "expected x_1 < x_2"),
    ("0,img/a0.png,train,,,bird,0,5,4,2", "y_2", "expected y_1 < y_2"),
    ("0,img/a0.png,train,,,bird,-1,5,0,3", "x_1", "expected >= 0"),
    ("0,img/a0.png,train,,,bird,a,5,0,3", "x_1", "expected a pixel coordinate"),
    ("7,img/a0.png,validation,True,False,bird,,,,", "label", "query label 7 has no gallery item"),
])
def test_row_errors_name_file_line_and_column(tmp_path, row, column, message):
    csv = write_oml(tmp_path, ["1,img/ok.png,validation,True,True,bird,,,,", row])
    with pytest.raises(InputError) as err:  # category read as the coarser scale: its cells are checked too
        build_dataset("oml", tmp_path, "train" if ",train," in row else "validation", category_as_scale=True)
    text = str(err.value)
    assert f"{csv}:3:" in text and f"column '{column}'" in text and message in text


def test_header_errors(tmp_path):
    write_oml(tmp_path, ["0,img/a.png,train,,"], header="label,path,split,is_query,flag")
    with pytest.raises(InputError, match=r"df.csv:1: missing column\(s\) \['is_gallery'\]"):
        build_dataset("oml", tmp_path, "train")
    write_oml(tmp_path, ["0,img/a.png,train,,,1,2,3"], header="label,path,split,is_query,is_gallery,x_1,x_2,y_1")
    with pytest.raises(InputError, match=r"all four columns .* missing \['y_2'\]"):
        build_dataset("oml", tmp_path, "train")
    with pytest.raises(InputError, match="unknown split 'test' for oml"):
        build_dataset("oml", tmp_path, "test")


def test_missing_image_names_the_line_and_lenient_mode_skips_it(tmp_path):
    csv = write_oml(tmp_path, ["0,img/a.png,train,,,bird,,,,", "1,img/b.png,train,,,bird,,,,"])
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(InputError, match=rf"{csv}:3: image file not found"):
        build_dataset("oml", tmp_path, "train")
    ds = build_dataset("oml", tmp_path, "train", mode="lenient")
    assert len(ds) == 1 and len(ds.report.problems) == 1


def test_training_on_an_oml_csv_tests_query_to_gallery(tmp_path, capsys):
    from dynametric.cli import main

    rng = np.random.default_rng(0)
    rows = []
    for c in range(12):
        split = "train" if c < 8 else "validation"
        colour = ((c * 41) % 256, (c * 83) % 256, (c * 17) % 256)
        for i in range(4):
            rel = f"img/{c}_{i}.png"
            two_tone(tmp_path / rel, colour, tuple(int(v) for v in rng.integers(0, 255, 3)))
            flags = ",," if split == "train" else (",True,False" if i == 0 else ",False,True")
            rows.append(f"{c},{rel},{split}{flags},{'warm' if c % 2 else 'cold'},0,10,0,12")
    write_oml(tmp_path, rows)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "data.format=oml", f"data.root={tmp_path}", "data.image_size=8",
                 "data.batch_size=8", "data.m=2", "model.embedding_dim=8",
                 "model.backbone_kwargs={width: 4, depth: 2}", "trainer.max_epochs=1", "trainer.progress_bar=false",
                 "run.report=false", "eval.protocol=query_gallery", "eval.query_split=query",
                 "eval.gallery_split=gallery"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["protocol"]["queries"] == 4 and metrics["test"]["protocol"]["gallery"] == 12
    assert set(metrics["test"]) == {"label", "mean", "protocol", "by_category"}  # category: not a scale unless asked
    assert metrics["test"]["label"]["num_queries"] == 4
    # ... but the report's split: the 4 queries (classes 8-11) are 2 cold and 2 warm, the carved validation's items
    # (training rows) carry their categories too
    by_category = metrics["test"]["by_category"]
    assert list(by_category) == ["cold", "warm"]
    assert [by_category[c]["label"]["num_queries"] for c in by_category] == [2, 2]
    mean = sum(by_category[c]["label"]["map@r"] for c in by_category) / 2
    assert mean == pytest.approx(metrics["test"]["label"]["map@r"])
    for entry in metrics["validation"]:
        assert set(entry["by_category"]) <= {"cold", "warm"} and set(entry) == {"epoch", "label", "mean",
                                                                               "by_category"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["scale_names"] == ["label"] and info["selected"]["monitor"] == "label/map@r"


def test_one_item_as_query_only_and_gallery_only_rows_is_one_validation_item(tmp_path, capsys):
    from dynametric.cli import main

    rows = ["0,img/a0.png,train,,,bird,,,,", "0,img/a1.png,train,,,bird,,,,",
            "1,img/q0.png,validation,True,False,cat,,,,", "1,./img/q0.png,validation,False,True,cat,,,,",
            "1,img/q1.png,validation,True,True,cat,,,,"]
    write_oml(tmp_path, rows)
    val = build_dataset("oml", tmp_path, "validation")  # one item per image: not a duplicate, not listed twice
    assert len(val) == 2 and not val.report.problems
    assert len(build_dataset("oml", tmp_path, "query")) == 2 and len(build_dataset("oml", tmp_path, "gallery")) == 2
    assert main(["data", "inspect", "--format", "oml", "--root", str(tmp_path), "--no-verify-images"]) == 0
    assert "no problems found" in capsys.readouterr().out
    # the same role twice is a true repeat
    write_oml(tmp_path, [*rows, "1,./img/q0.png,validation,True,False,cat,,,,"])
    with pytest.raises(InputError, match=r"df.csv:7: ./img/q0.png \(the same file as 'img/q0.png'\) listed again"):
        build_dataset("oml", tmp_path, "validation")
    write_oml(tmp_path, [*rows, "1,img/q1.png,validation,False,True,cat,,,,"])  # gallery again
    with pytest.raises(InputError, match=r"df.csv:7: img/q1.png listed again with the same labels as line 6"):
        build_dataset("oml", tmp_path, "validation")
    # the query row and the gallery row of one item with other labels: a problem, never a row silently dropped
    write_oml(tmp_path, [*rows[:3], "2,./img/q0.png,validation,False,True,cat,,,,", rows[4]])
    with pytest.raises(InputError, match=r"df.csv:5: ./img/q0.png: listed with labels \(1,\) at line 4 and \(2,\) "
                                         r"here: one item of the validation split"):
        build_dataset("oml", tmp_path, "validation")


def test_train_and_held_out_rows_of_one_file_with_other_boxes_are_other_items(tmp_path, capsys):
    # OML's item is the image and its crop box: two boxes of one file in train and validation are two items
    from dynametric.cli import main

    rows = ["0,img/a0.png,train,,,bird,0,10,0,12", "0,img/a1.png,train,,,bird,0,10,0,12",
            "1,img/b0.png,train,,,bird,0,10,0,12", "1,img/b1.png,train,,,bird,0,10,0,12",
            "2,img/a0.png,validation,True,True,cat,10,20,0,12", "2,img/c1.png,validation,True,True,cat,0,10,0,12"]
    write_oml(tmp_path, rows)
    args = ["train", "--dry-run", "data.format=oml", f"data.root={tmp_path}", "data.image_size=8",
            "data.batch_size=4", "data.m=2", "model.backbone=simple_cnn", "model.embedding_dim=8",
            "eval.protocol=query_gallery", "eval.query_in_gallery=true",
            "data.val_fraction=0"]  # 2 training classes: 0.2 of them rounds to none, refused
    assert main(args) == 0
    assert main(["data", "inspect", "--format", "oml", "--root", str(tmp_path), "--no-verify-images"]) == 0
    assert "no problems found" in capsys.readouterr().out
    # the same box is the same item: refused by both
    write_oml(tmp_path, [*rows[:4], "2,img/a0.png,validation,True,True,cat,0,10,0,12", rows[5]])
    assert main(args) == 2
    assert (f"share 1 image file(s), e.g. {(tmp_path / 'img' / 'a0.png').resolve()} box (0, 0, 10, 12): training "
            "and testing must use different images") in capsys.readouterr().err
    assert main(["data", "inspect", "--format", "oml", "--root", str(tmp_path), "--no-verify-images"]) == 1
    assert "splits 'train' and 'validation' list 1 of the same image file(s)" in capsys.readouterr().out


def test_validating_on_the_oml_validation_split_names_data_val_split(tmp_path, capsys):
    # the validation split holds the query and gallery rows: the error names the key the user set, with its origin
    from dynametric.cli import main

    rows = ["0,img/a0.png,train,,,bird,,,,", "0,img/a1.png,train,,,bird,,,,",
            "1,img/q0.png,validation,True,True,cat,,,,", "1,img/q1.png,validation,True,True,cat,,,,"]
    write_oml(tmp_path, rows)
    assert main(["train", "--dry-run", "data.format=oml", f"data.root={tmp_path}", "data.image_size=8",
                 "data.batch_size=4", "data.m=2", "model.backbone=simple_cnn", "model.embedding_dim=8",
                 "eval.protocol=query_gallery", "eval.query_in_gallery=true", "data.val_split=validation"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: <command line> key 'data.val_split': the validation split 'validation' "
        "(data.val_split) and the test split 'gallery' (eval.gallery_split) share 2 image file(s), e.g. "
        f"{(tmp_path / 'img' / 'q0.png').resolve()}: model selection and testing must use different images")


def test_integer_labels_are_ascii_digits_within_int64():
    """The one label-field rule of the readers (oml, csv labels, DyML lists, CUB / SOP / In-Shop indices)."""
    from dynametric.utils.readers import integer_label

    for text in ["٣", "1_000", "+-1", "9" * 5000, "9223372036854775808", "1.0", "", " "]:
        assert integer_label(text) is None, text
    assert integer_label(" 7 ") == 7 and integer_label("-007") == -7 and integer_label("+7") == 7
    assert integer_label(str(2**63 - 1)) == 2**63 - 1 and integer_label(str(-2**63)) == -2**63
