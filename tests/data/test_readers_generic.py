"""Generic CSV and folder formats, hierarchy checks, registry, subset, transforms."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.data import FORMAT_NAMES, build_dataset, build_transform, list_splits
from dynametric.data.base import check_hierarchy
from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dynametric.errors import ConfigError, InputError
from tests.data.conftest import write_csv_dataset, write_folder, write_image


def test_csv_string_labels_scales_from_header(csv_root: Path) -> None:
    assert list_splits("csv", csv_root) == ["train", "query", "gallery"]
    train = build_dataset("csv", csv_root, "train")
    assert train.scale_names == ("fine", "middle", "coarse")
    assert train.class_ids == [["brown_bear", "polar_bear", "robin"], ["bear", "thrush"], ["bird", "mammal"]]
    assert train.labels.tolist() == [[0, 0, 1], [0, 0, 1], [1, 0, 1], [2, 1, 0]]
    q = build_dataset("csv", csv_root / "labels.csv", "query")  # root may be the CSV itself
    g = build_dataset("csv", csv_root, "gallery")
    assert q.class_ids == g.class_ids  # one id space for query and gallery
    assert q.raw_label(0) == g.raw_label(0) == ("grizzly", "bear", "mammal")
    assert q.labels[0].tolist() == g.labels[0].tolist()


def test_csv_integer_labels_and_custom_file(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_image(root / "x" / "1.png")
    write_image(root / "x" / "2.png")
    (root / "my.csv").write_text("split,path,item,group\ntrain,x/1.png,10,3\ntrain,x/2.png,2,3\n")
    ds = build_dataset("csv", root, "train", csv_file="my.csv")
    assert ds.scale_names == ("item", "group")
    assert ds.class_ids == [[2, 10], [3]]  # integers sort numerically
    assert ds.labels.tolist() == [[1, 0], [0, 0]]


def test_csv_errors_name_lines(tmp_path: Path) -> None:
    rows = [("imgs/a.png", "train", "a", "x", "m"), ("imgs/b.png", "training", "b", "x", "m"),
            ("imgs/c.png", "train", "a", "y", "m")]
    root = write_csv_dataset(tmp_path / "d", rows)
    with open(root / "labels.csv", "a") as fh:
        fh.write("imgs/d.png,train,a\n")
    csv = root / "labels.csv"
    with pytest.raises(InputError) as err:
        build_dataset("csv", root, "train")
    msg = str(err.value)
    assert f"{csv}:3: split must be one of ['train', 'val', 'test', 'query', 'gallery'], got 'training'" in msg
    assert f"{csv}:5: expected 5 fields" in msg
    with pytest.raises(InputError) as err:  # lenient skips bad rows but the hierarchy violation remains
        build_dataset("csv", root, "train", mode="lenient")
    msg = str(err.value)
    assert "fine class 'a' has 2 middle parents" in msg and f"{csv}:2" in msg and f"{csv}:4" in msg
    csv.write_text("file,split,fine\nimgs/a.png,train,a\n")
    with pytest.raises(InputError, match=r"labels\.csv:1: header must name 'path', 'split'"):
        build_dataset("csv", root, "train")


@pytest.mark.parametrize("fmt", ["csv", "oml"])
def test_a_relative_image_root_is_relative_to_the_csvs_folder(tmp_path: Path, monkeypatch, fmt: str) -> None:
    """As the cub200 / sop / inshop readers take it relative to the dataset root: a run started in another folder
    reads the same images. Where only the working directory has such a folder (what image_root once meant), one
    error names both; where both exist, the CSV's is read and a note says so."""
    ds, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    write_image(ds / "pics" / "a.png", (200, 30, 30))
    write_image(ds / "pics" / "b.png", (30, 200, 30))
    name, text = (("labels.csv", "path,split,fine\na.png,train,0\nb.png,train,1\n") if fmt == "csv" else
                  ("df.csv", "label,path,split,is_query,is_gallery\n0,a.png,train,,\n1,b.png,train,,\n"))
    (ds / name).write_text(text)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds, elsewhere = Path.cwd().parent / "ds", Path.cwd()  # as the messages show them (absolute)
    train = build_dataset(fmt, "../ds", "train", image_root="pics")
    assert [Path(p).resolve() for p in train.paths] == [(ds / "pics" / n).resolve() for n in ("a.png", "b.png")]
    assert train.load_image(1).getpixel((0, 0)) == (30, 200, 30)
    with pytest.raises(InputError) as err:  # the folder is nowhere
        build_dataset(fmt, "../ds", "train", image_root="nope")
    assert str(err.value) == (f"key 'image_root': folder not found: {ds / 'nope'} (image_root is the "
                              "folder the listed image paths are relative to: an absolute path or one relative to "
                              f"the CSV's folder {ds})")
    write_image(elsewhere / "only_here" / "a.png")
    with pytest.raises(InputError) as err:  # only under the working directory: not read from there, and said so
        build_dataset(fmt, "../ds", "train", image_root="only_here")
    message = str(err.value)
    assert "\n" not in message and f"folder not found: {ds / 'only_here'} " in message
    assert f"not to the working directory, where {elsewhere / 'only_here'} exists" in message
    assert f"write the folder as an absolute path or as a path relative to {ds}" in message
    write_image(elsewhere / "pics" / "a.png")  # both: the CSV's folder wins, and a note says so
    rec = build_dataset(fmt, "../ds", "train", image_root="pics")
    assert Path(rec.paths[0]).resolve() == (ds / "pics" / "a.png").resolve()
    from dynametric.data.registry import get_format

    notes = get_format(fmt).read("../ds", "train", image_root="pics").report.notes
    assert f"image_root 'pics' is read as {ds / 'pics'} (relative to the CSV's folder), not as " \
           f"{elsewhere / 'pics'} (relative to the working directory)" in notes
    absolute = build_dataset(fmt, ds / name, "train", image_root=str(ds / "pics"))  # absolute: as it is
    assert len(absolute) == 2


def test_folder_depth_scales_and_splits(folder_root: Path) -> None:
    assert list_splits("folder", folder_root) == ["train", "test"]
    ds = build_dataset("folder", folder_root, "train")
    assert ds.scale_names == ("fine", "middle", "coarse")
    assert ds.class_ids == [["bird/thrush/robin", "mammal/bear/brown", "mammal/bear/polar"],
                            ["bird/thrush", "mammal/bear"], ["bird", "mammal"]]
    assert ds.labels.tolist() == [[0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 1, 1]]
    assert ds.class_counts() == {"fine": 3, "middle": 2, "coarse": 2}
    two = write_folder(folder_root.parent / "flat", ["cats/lynx/1.png", "cats/puma/1.jpg", "dogs/wolf/1.png"])
    (two / "dogs" / "wolf" / "notes.txt").write_text("not an image")
    ds2 = build_dataset("folder", two, "all", scale_names=["species", "family"])
    assert list_splits("folder", two) == ["all"]
    assert ds2.scale_names == ("species", "family") and ds2.labels.tolist() == [[0, 0], [1, 0], [2, 1]]
    assert ds2.report.warnings == [f"1 file(s) in {two} not read, their names lacking an image extension (.bmp .gif "
                                   ".jfif .jpe .jpeg .jpg .png .tif .tiff .webp): dogs/wolf/notes.txt"]


def test_folder_reads_jfif_and_warns_of_every_file_it_does_not_read(tmp_path: Path, caplog, capsys) -> None:
    from dynametric.cli import main

    root = write_folder(tmp_path / "tree", ["train/a/0.jpg", "train/a/1.jfif", "train/a/2.JPE", "train/b/0.png"])
    for name in ("noext", "raw.cr2", "notes.txt", "x.psd", "y.heic", "z.svg"):
        write_image(root / "train" / "b" / name)  # six files whose names lack an image extension (five are JPEGs)
    with caplog.at_level("WARNING", logger="dynametric.data.base"):
        ds = build_dataset("folder", root, "train")
    assert sorted(Path(p).name for p in ds.paths) == ["0.jpg", "0.png", "1.jfif", "2.JPE"]  # .jfif was ignored
    warning = (f"6 file(s) in {root / 'train'} not read, their names lacking an image extension (.bmp .gif .jfif .jpe "
               ".jpeg .jpg .png .tif .tiff .webp): b/noext, b/notes.txt, b/raw.cr2, b/x.psd, b/y.heic, ... (1 more)")
    assert ds.report.warnings == [warning]  # was a note: "2 non-image file(s) ignored"
    assert caplog.messages == [f"folder split 'train': {warning}"]
    assert main(["data", "inspect", "--format", "folder", "--root", str(root)]) == 0  # readable: a warning only
    assert f"      warning: {warning}" in capsys.readouterr().out.splitlines()


def test_folder_beside_the_split_folders_is_a_problem(tmp_path: Path, capsys) -> None:
    from dynametric.cli import main

    root = write_folder(tmp_path / "tree", ["train/a/0.png", "train/b/0.png", "test/c/0.png", "test/d/0.png",
                                            "reptile/lizard/0.png", "Val/e/0.png", "stray.png"])
    (root / "README.txt").write_text("a note beside the splits is no image: not reported")
    expected = [
        f"{root / 'Val'}: folder Val/ beside the split folders train/, test/ is in no split, so its images would be "
        "left out (move it into a split folder; split folders are lower case (val/))",
        f"{root / 'reptile'}: folder reptile/ beside the split folders train/, test/ is in no split, so its images "
        "would be left out (move it into a split folder)",
        f"{root / 'stray.png'}: image stray.png beside the split folders train/, test/ is in no split (move it into "
        "a split folder)"]
    for split in ("train", "test"):  # they belong to no split, so to every one
        with pytest.raises(InputError) as err:
            build_dataset("folder", root, split)
        assert str(err.value).splitlines()[1:] == [f"  {e}" for e in expected]
    assert len(build_dataset("folder", root, "test", mode="lenient")) == 2
    assert main(["data", "inspect", "--format", "folder", "--root", str(root)]) == 1  # was "no problems found"
    out = capsys.readouterr().out.splitlines()
    assert out[-4:] == ["3 problem(s):"] + [f"  {e}" for e in expected]


def test_folder_wrong_depth_and_name_key_violation(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "t", ["a/x/1.png", "a/x/2.png", "b/x/1.png", "b/y/1.png", "b/stray.png"])
    with pytest.raises(InputError, match=r"stray\.png: image at depth 1, but the tree's images are at depth 2"):
        build_dataset("folder", root, "all")
    ds = build_dataset("folder", root, "all", mode="lenient")  # class_key="path": a/x and b/x are distinct
    assert ds.class_counts() == {"fine": 3, "coarse": 2}
    with pytest.raises(InputError, match="fine class 'x' has 2 coarse parents"):
        build_dataset("folder", root, "all", mode="lenient", class_key="name")


def test_check_hierarchy_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        labels = rng.integers(0, 4, size=(n, 3))
        ids = [list(range(4))] * 3
        problems, notes = check_hierarchy(labels, ("f", "m", "c"), ids)
        expected = 0
        for parent in (1, 2):
            for f in set(labels[:, 0].tolist()):
                expected += len({p for c, p in zip(labels[:, 0], labels[:, parent]) if c == f}) > 1
        assert len(problems) == expected
        middle_ok = all(len({c for m, c in zip(labels[:, 1], labels[:, 2]) if m == x}) == 1
                        for x in set(labels[:, 1].tolist()))
        assert len(notes) == 1
        assert notes[0].startswith(f"each m class has a single c parent: {'yes' if middle_ok else 'no'}")


def test_registry_errors_and_synthetic(tmp_path: Path) -> None:
    assert FORMAT_NAMES == ("cub200", "cars196", "sop", "inshop", "dyml-vehicle", "dyml-animal", "dyml-product",
                            "csv", "folder", "oml", "synthetic")
    with pytest.raises(ConfigError, match="unknown dataset format 'cub'; valid formats: cub200, cars196"):
        build_dataset("cub", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['swap'\] for format 'sop'.*'swap_rb'"):
        build_dataset("sop", tmp_path, "train", swap="yes")
    with pytest.raises(InputError, match="dataset root not found"):
        build_dataset("sop", tmp_path / "missing", "train")
    with pytest.raises(InputError, match="mode must be one of"):
        build_dataset("csv", write_csv_dataset(tmp_path / "c"), "train", mode="loose")
    syn = build_dataset("synthetic", None, "test", images_per_class=1, image_size=16)
    assert syn.labels.shape[1] == 3 and len(syn) == syn.labels.shape[0] > 0
    assert isinstance(syn[0][0], Image.Image)  # transform=None gives PIL images, as for file datasets
    with pytest.raises(ConfigError, match="unknown option"):
        build_dataset("synthetic", None, "test", colour=3)


def test_subset_remaps_and_keeps_raw_ids(csv_root: Path) -> None:
    ds = build_dataset("csv", csv_root, "train")
    sub = ds.subset([2, 3], split="val")
    assert sub.split == "val" and len(sub) == 2
    assert sub.labels.tolist() == [[0, 0, 1], [1, 1, 0]]  # contiguous again, by sorted raw id
    assert sub.class_ids == [["polar_bear", "robin"], ["bear", "thrush"], ["bird", "mammal"]]
    assert sub.raw_label(0) == ds.raw_label(2) and sub.raw_label(1) == ds.raw_label(3)
    assert sub.paths[1] == ds.paths[3]


@pytest.mark.parametrize(("preset", "train", "size"), [("standard", True, 224), ("standard", False, 224),
                                                        ("reality_check", True, 227), ("reality_check", False, 227),
                                                        ("small", True, 32)])
def test_transform_presets_shapes(preset: str, train: bool, size: int) -> None:
    img = Image.new("RGB", (300, 260), (128, 64, 32))
    out = build_transform(preset, train=train)(img)
    assert out.shape == (3, size, size)
    expected = torch.tensor([(128 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], (64 / 255 - IMAGENET_MEAN[1]) /
                             IMAGENET_STD[1], (32 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]])
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected, atol=2e-3, rtol=0)  # a flat image stays flat


def test_transform_specs_and_overrides() -> None:
    from torchvision import transforms as T

    rc = build_transform("reality_check", train=True)
    kinds = [type(t).__name__ for t in rc.transforms]
    assert kinds == ["BoundedResize", "RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert isinstance(rc.transforms[0], T.Resize)  # torchvision's Resize of an image cut to at most 8:1
    crop = rc.transforms[1]
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (227, 227) and crop.scale == (0.16, 1.0)
    assert crop.ratio == (0.75, 1.33) and rc.transforms[0].size == 256
    std_eval = build_transform("standard", train=False)
    assert [type(t).__name__ for t in std_eval.transforms] == ["BoundedResize", "CenterCrop", "ToTensor", "Normalize"]
    assert std_eval.transforms[1].size == (224, 224)
    half = build_transform("standard", train=False, size=112)
    assert half.transforms[0].size == 128 and half.transforms[1].size == (112, 112)  # 256:224 ratio kept
    assert build_transform("reality_check", train=True, size=114).transforms[0].size == 129
    custom = build_transform("standard", train=False, size=64, resize=72, normalize=False)
    out = custom(Image.new("RGB", (100, 80), (255, 0, 0)))
    assert out.shape == (3, 64, 64) and float(out[0].min()) == 1.0 and float(out[2].max()) == 0.0
    with pytest.raises(ConfigError, match="unknown transform preset 'imagenet'"):
        build_transform("imagenet")
    with pytest.raises(ConfigError, match=r"unknown transform option\(s\) \['crop'\]"):
        build_transform("standard", crop=3)


def test_path_table_round_trip() -> None:
    from dynametric.data.base import PathTable

    paths = ["a/b.jpg", "ünï/çødé.png", "", "/abs/x.jpg"]
    table = PathTable(paths)
    assert len(table) == 4 and list(table) == paths
    assert table[-1] == "/abs/x.jpg" and table[1:3] == paths[1:3] and table[np.array([3, 0])] == [paths[3], paths[0]]
    with pytest.raises(IndexError):
        table[4]
    assert len(PathTable([])) == 0


def test_dataloader_workers_and_pickle(csv_root: Path) -> None:
    import pickle

    ds = build_dataset("csv", csv_root, "train", transform=build_transform("small", train=False, size=8))
    clone = pickle.loads(pickle.dumps(ds))
    assert list(clone.paths) == list(ds.paths) and torch.equal(clone.labels, ds.labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 8, 8), (2, 3, 8, 8)]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)


def test_direct_construction_validates(tmp_path: Path) -> None:
    from dynametric.data.base import HierarchicalImageDataset

    img = write_image(tmp_path / "a.png")
    ds = HierarchicalImageDataset([str(img), str(img)], torch.tensor([[0, 1], [2, 1]]), ("fine", "coarse"), "train")
    assert ds.class_ids == [[0, 1, 2], [0, 1]] and ds.raw_label(1) == (2, 1)
    assert ds[1][1].tolist() == [2, 1]
    with pytest.raises(InputError, match="only 2 class ids"):
        HierarchicalImageDataset([str(img)], torch.tensor([[2]]), ("fine",), "train", class_ids=[["a", "b"]])
    with pytest.raises(InputError, match="do not match 1 paths and 2 scale names"):
        HierarchicalImageDataset([str(img)], torch.tensor([[0]]), ("fine", "coarse"), "train")


def test_parse_csv_numbers_records_by_their_first_line() -> None:
    from dynametric.data.base import LoadReport
    from dynametric.data.readers import parse_csv

    report = LoadReport(split="*")
    text = 'h1,h2\n\n"a\nb",1\n  \nc,"x ""y""\n\nz"\nd,2'  # no newline at the end
    assert parse_csv(text, "f.csv", report) == [(1, ["h1", "h2"]), (3, ["a\nb", "1"]), (6, ["c", 'x "y"\n\nz']),
                                               (9, ["d", "2"])]
    assert report.blank_lines == 2 and report.problems == []
    report = LoadReport(split="*")
    rows = parse_csv('a,b\r\nc\rd,e\r\nf,"g\n', "f.csv", report)  # a carriage return inside a field; an open quote
    assert rows == [(1, ["a", "b"])]
    assert [(str(p), p.split_unknown) for p in report.problems] == [
        ("f.csv:2: a line break (\\r) inside an unquoted field on line 2 (quote the field)", True),
        ("f.csv:3: unterminated quoted field: a quote opened in this record is never closed", True)]


def test_parse_csv_goes_on_after_a_field_past_the_csv_limit() -> None:
    import csv

    from dynametric.data.base import LoadReport
    from dynametric.data.readers import parse_csv

    old = csv.field_size_limit(40)
    try:
        report = LoadReport(split="*")
        rows = parse_csv('a,b\nc,"' + "x" * 30 + "\n" + "y" * 30 + "\nd,e\n", "f.csv", report)
    finally:
        csv.field_size_limit(old)
    assert rows == [(1, ["a", "b"]), (4, ["d", "e"])]
    assert [str(p) for p in report.problems] == ["f.csv:2: a field longer than 40 characters on lines 2-3; is a "
                                                 "quote left open?"]


def test_the_collector_is_paused_while_reading_and_restored_after():
    """build_dataset pauses Python's cyclic garbage collector while it reads (the collector's passes over a large
    CSV's rows cost ~40 % of the read) and restores its state afterwards, also when the read fails."""
    import gc

    from dynametric.data.registry import cyclic_gc_paused

    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():  # nested: the inner one leaves it off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), cyclic_gc_paused():
        raise RuntimeError("a reader failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller who had it off keeps it off
    finally:
        gc.enable()


def test_non_utf8_names_a_root_is_refused_and_path_tables_keep_them(tmp_path: Path) -> None:
    import os

    from dynametric.data.base import PathTable

    table = PathTable(["a.png", "caf\udce9.png"])  # a Latin-1 file name as os.listdir returns it
    assert table[1] == "caf\udce9.png" and os.fsencode(table[1]) == b"caf\xe9.png"  # was a UnicodeEncodeError
    root = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"donn\xe9es"))
    write_folder(Path(root), ["a/0.png", "b/0.png"])
    with pytest.raises(InputError) as err:
        build_dataset("folder", root, "all")
    assert str(err.value) == (f"key 'root': dataset root {tmp_path}/donn\\xe9es: the file name is not UTF-8 text; "
                              "rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)")


def _csv(root: Path, header: str, rows: list[tuple[str, ...]]) -> Path:
    """A ``csv`` dataset at ``root``: ``rows`` (path, split, labels...) with an image per path, under ``header``."""
    for i, r in enumerate(rows):
        if not (root / r[0]).exists():
            write_image(root / r[0], (10 * i, 0, 0))
    (root / "labels.csv").write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return root


def test_a_csv_label_cell_means_the_same_whatever_the_other_rows_hold(tmp_path: Path) -> None:
    """A column was typed as a whole, over every row of every split: all integers made '01' and '1' one class, one
    text cell anywhere (a training row) made every cell text, so the query's '1' and the gallery's '01' became two
    classes, silently. Now a cell that is an integer is that integer, and the two spellings are noted."""
    rows = [("imgs/0.png", "query", "1"), ("imgs/1.png", "gallery", "01"), ("imgs/2.png", "gallery", "2")]
    note = ("column 'fine' of labels.csv, split '{}': cells '1' (line 2) and '01' (line 3) are one class 1 (a cell "
            "that is an integer is read by its value, as pandas reads an integer column)")
    for extra in ([("imgs/3.png", "train", "x"), ("imgs/4.png", "train", "x")], []):  # with text, then without
        root = _csv(tmp_path / f"d{len(extra)}", "path,split,fine", rows + extra)
        q, g = build_dataset("csv", root, "query"), build_dataset("csv", root, "gallery")
        assert q.raw_label(0) == g.raw_label(0) == (1,)  # was ('1',) and ('01',) with the training rows
        assert q.labels[0].tolist() == g.labels[0].tolist() == [0]
        assert q.class_ids == g.class_ids == [[1, 2]]
        assert note.format("query") in q.report.notes and note.format("gallery") in g.report.notes
    train = build_dataset("csv", tmp_path / "d2", "train")
    assert train.class_ids == [["x"]] and train.report.notes == []  # no spelling of an integer twice in train
    # a mixed column: integers by value first, then text by name; '1.0' and '+x' are text, '+7' is 7
    mixed = [("imgs/0.png", "train", "10"), ("imgs/1.png", "train", "b"), ("imgs/2.png", "train", "2"),
             ("imgs/3.png", "train", "1.0"), ("imgs/4.png", "train", "a"), ("imgs/5.png", "train", "+7"),
             ("imgs/6.png", "train", "7"), ("imgs/7.png", "test", "02")]
    ds = build_dataset("csv", _csv(tmp_path / "mixed", "path,split,fine", mixed), "train")
    assert ds.class_ids == [[2, 7, 10, "1.0", "a", "b"]]
    assert ds.labels[:, 0].tolist() == [2, 5, 0, 3, 4, 1, 1]
    assert ds.report.notes == ["column 'fine' of labels.csv, split 'train': cells '+7' (line 7) and '7' (line 8) "
                               "are one class 7 (a cell that is an integer is read by its value, as pandas reads an "
                               "integer column)"]  # '02' is a test row: another split's id space
    ints = build_dataset("csv", _csv(tmp_path / "ints", "path,split,fine", [(p, "train", c) for p, _, c in mixed
                                                                             if c.lstrip("+").isdigit()]), "train")
    assert ints.class_ids == [[2, 7, 10]]  # an all-integer column as before


@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_a_csv_header_with_an_unnamed_scale_column_is_refused_at_line_1(tmp_path: Path, capsys, name: str) -> None:
    """Was accepted (`data inspect`: `classes: =12`), and `train` then stopped with `key 'scale_names': scale names
    must be non-empty strings`, a key the user never set, without file or line."""
    from dynametric.cli import main

    root = _csv(tmp_path / "d", f"path,split,{name},coarse", [("imgs/0.png", "train", "1", "0")])
    expected = (f"{root / 'labels.csv'}:1: header column 3 has no name (empty or blank); every label column needs a "
                "scale name (it names the scale in results), got ['path', 'split', '', 'coarse']")
    with pytest.raises(InputError) as err:
        build_dataset("csv", root, "train")
    assert str(err.value) == expected
    assert main(["data", "inspect", "--format", "csv", "--root", str(root)]) == 1  # was 0, "classes: =1"
    assert capsys.readouterr().out.splitlines()[1:] == ["1 problem(s):", f"  {expected}"]
    (root / "labels.csv").write_text("path,split,,\nimgs/0.png,train,1,0\n")  # two of them: not a 'repeated' name
    with pytest.raises(InputError, match=r"labels\.csv:1: header column 3 has no name"):
        build_dataset("csv", root, "train")


@pytest.mark.parametrize("fmt", ["csv", "oml"])
def test_a_row_naming_a_folder_says_it_is_a_folder(tmp_path: Path, fmt: str) -> None:
    """Was `image file not found: .../imgs` for a folder that is there (as `embed --csv` already said)."""
    root = tmp_path / "d"
    write_image(root / "imgs" / "a.png")
    text = ("path,split,fine\nimgs/a.png,train,1\nimgs,train,2\n" if fmt == "csv" else
            "label,path,split,is_query,is_gallery\n1,imgs/a.png,train,,\n2,imgs,train,,\n")
    (root / ("labels.csv" if fmt == "csv" else "df.csv")).write_text(text)
    ds = build_dataset(fmt, root, "train", mode="lenient")
    assert [(p.line, p.kind, p.message) for p in ds.report.problems] == [
        (3, "missing_image", f"{root / 'imgs'} is a folder; expected an image file")]
    (root / "imgs" / "a.png").unlink()  # a file that is not there is still "not found"
    with pytest.raises(InputError) as err:
        build_dataset(fmt, root, "train")
    assert str(err.value).splitlines()[1:] == [f"  {root / ('labels.csv' if fmt == 'csv' else 'df.csv')}:{n}: {m}"
                                               for n, m in ((2, f"image file not found: {root / 'imgs' / 'a.png'}"),
                                                            (3, f"{root / 'imgs'} is a folder; expected an image "
                                                                "file"))]


def test_folder_counts_the_hidden_images_it_does_not_read(tmp_path: Path, caplog, capsys) -> None:
    """Hidden image files (`.1.png`) and images in hidden folders (`.thumbs/x/5.png`) were skipped without a word;
    now a warning counts and names them (other hidden files, `.DS_Store`, stay unmentioned)."""
    from dynametric.cli import main

    root = write_folder(tmp_path / "tree", ["train/a/0.png", "train/a/.1.png", "train/.thumbs/x/5.png",
                                            "train/b/0.png", "train/b/.cache/deep/er/7.JPG", "test/c/0.png"])
    (root / "train" / "a" / ".DS_Store").write_bytes(b"x")
    (root / "train" / ".thumbs" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path, root / "train" / ".elsewhere")  # a hidden link to a folder: not followed
    with caplog.at_level("WARNING", logger="dynametric.data.base"):
        ds = build_dataset("folder", root, "train")
    assert sorted(Path(p).relative_to(root / "train").as_posix() for p in ds.paths) == ["a/0.png", "b/0.png"]
    warning = (f"3 image file(s) in {root / 'train'} not read, being hidden (a name or a folder above it starting "
               "with '.'; rename to read them): .thumbs/x/5.png, a/.1.png, b/.cache/deep/er/7.JPG")
    assert ds.report.warnings == [warning]
    assert caplog.messages == [f"folder split 'train': {warning}"]
    assert build_dataset("folder", root, "test").report.warnings == []
    assert main(["data", "inspect", "--format", "folder", "--root", str(root), "--split", "train"]) == 0
    assert f"      warning: {warning}" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("fmt", ["csv", "oml"])
def test_a_home_folder_tilde_in_image_root_is_expanded(tmp_path: Path, monkeypatch, fmt: str) -> None:
    """``image_root: ~/pics`` is the home folder's pics (was joined under the CSV's folder as a literal ``~``)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_image(tmp_path / "home" / "pics" / "a.png", (200, 30, 30))
    ds = tmp_path / "ds"
    ds.mkdir()
    name, text = (("labels.csv", "path,split,fine\na.png,train,0\n") if fmt == "csv" else
                  ("df.csv", "label,path,split,is_query,is_gallery\n0,a.png,train,,\n"))
    (ds / name).write_text(text)
    train = build_dataset(fmt, ds, "train", image_root="~/pics")
    assert [Path(p).resolve() for p in train.paths] == [(tmp_path / "home" / "pics" / "a.png").resolve()]
