"""Dataset readers (`dynametric data inspect`, `train`) under bad input: unreadable folders, paths leaving the
dataset root, BOMs, header-only files, one image under two names with different labels, CSVs whose every row is
bad, quoted line breaks, problems of one split listed with another, empty splits and crop boxes past the image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.data import build_dataset
from dynametric.errors import InputError
from tests.data.conftest import (
    write_cars,
    write_csv_dataset,
    write_cub,
    write_dyml,
    write_folder,
    write_image,
    write_inshop,
    write_sop,
)


def _deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Make ``denied`` folders unreadable the way a 000 permission does (also when the tests run as root, where
    chmod does not block reads): listing them raises PermissionError."""
    real = os.scandir
    blocked = {os.path.realpath(d) for d in denied}

    def scandir(path=".", *a, **k):
        if os.path.realpath(os.fspath(path)) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *a, **k)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = [f"{c}/{m}/{f}/{i}.png" for c, m, f in (("bird", "thrush", "robin"), ("bird", "thrush", "wren"),
                                                   ("mammal", "bear", "brown"), ("mammal", "bear", "polar"))
             for i in range(4)]
    return write_folder(tmp_path / "tree", files)


def test_folder_unreadable_class_folder_is_an_error_in_strict_mode(tree, monkeypatch) -> None:
    _deny(monkeypatch, tree / "mammal" / "bear" / "polar")
    with pytest.raises(InputError) as err:
        build_dataset("folder", tree, "all")
    assert "cannot read folder" in str(err.value) and str(tree / "mammal" / "bear" / "polar") in str(err.value)


def test_folder_unreadable_folders_are_all_reported_in_lenient_mode(tree, monkeypatch) -> None:
    _deny(monkeypatch, tree / "mammal" / "bear" / "polar", tree / "bird" / "thrush")
    ds = build_dataset("folder", tree, "all", mode="lenient")
    assert len(ds) == 4  # only mammal/bear/brown remains readable
    unreadable = sorted(p.file for p in ds.report.problems if p.kind == "unreadable_folder")
    assert unreadable == sorted([str(tree / "bird" / "thrush"), str(tree / "mammal" / "bear" / "polar")])


def test_data_inspect_lists_the_unreadable_folder(tree, monkeypatch, capsys) -> None:
    _deny(monkeypatch, tree / "bird")
    assert main(["data", "inspect", "--format", "folder", "--root", str(tree), "--no-verify-images"]) == 1
    out = capsys.readouterr().out
    assert str(tree / "bird") in out and "cannot read folder" in out


# ------------------------------------------------------------------------------------ paths leaving the root
ROWS = [("imgs/a.png", "train", "a", "x", "m"), ("imgs/b.png", "train", "b", "x", "m")]


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    write_image(tmp_path / "secret" / "passwd.png")  # a readable image outside the dataset
    return write_csv_dataset(tmp_path / "d", ROWS)


@pytest.mark.parametrize("row_path", ["../secret/passwd.png", "imgs/../../secret/passwd.png", "ABSOLUTE"])
def test_csv_rows_leaving_the_root_are_refused(csv_root, row_path) -> None:
    outside = csv_root.parent / "secret" / "passwd.png"
    row_path = str(outside) if row_path == "ABSOLUTE" else row_path
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write(f"{row_path},train,c,y,m\n")
    with pytest.raises(InputError) as err:
        build_dataset("csv", csv_root, "train")
    assert f"labels.csv:4: image path leaves the dataset root {os.path.realpath(csv_root)}" in str(err.value)
    lenient = build_dataset("csv", csv_root, "train", mode="lenient")
    assert len(lenient) == 2 and [p.kind for p in lenient.report.problems] == ["outside_root"]
    allowed = build_dataset("csv", csv_root, "train", allow_outside_root=True)  # the user's explicit choice
    assert len(allowed) == 3 and os.path.realpath(allowed.paths[2]) == str(outside)


def test_csv_symlink_to_a_file_outside_the_root_is_refused(csv_root) -> None:
    os.symlink(csv_root.parent / "secret" / "passwd.png", csv_root / "imgs" / "link.png")
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write("imgs/link.png,train,c,y,m\n")
    with pytest.raises(InputError, match=r"labels\.csv:4: image path leaves the dataset root .*passwd\.png"):
        build_dataset("csv", csv_root, "train")
    inside = csv_root / "imgs" / "inner.png"  # a link that stays inside is an ordinary image
    os.symlink(csv_root / "imgs" / "a.png", inside)
    (csv_root / "labels.csv").write_text("path,split,fine,middle,coarse\nimgs/b.png,train,b,x,m\n"
                                         "imgs/inner.png,train,a,x,m\n")
    assert len(build_dataset("csv", csv_root, "train")) == 2


@pytest.mark.parametrize("absolute", [False, True])
def test_dyml_rows_leaving_the_root_are_refused(tmp_path, absolute) -> None:
    root = write_dyml(tmp_path / "dyml_vehicle")
    write_image(tmp_path / "secret.jpg")
    with open(root / "train" / "label.csv", "a") as fh:
        fh.write(f"{tmp_path / 'secret.jpg' if absolute else '../../../secret.jpg'}, 9, 40, 300\n")
    with pytest.raises(InputError, match=r"label\.csv:6: image path leaves the dataset root .*secret\.jpg"):
        build_dataset("dyml-vehicle", root, "train")
    if not absolute:  # DyML names are relative to the image folder: an absolute one is never a file there
        assert len(build_dataset("dyml-vehicle", root, "train", allow_outside_root=True)) == 6


def test_folder_links_leaving_the_tree_are_reported(tree, tmp_path) -> None:
    write_image(tmp_path / "elsewhere" / "x" / "1.png")
    os.symlink(tmp_path / "elsewhere" / "x" / "1.png", tree / "bird" / "thrush" / "robin" / "9.png")
    os.symlink(tmp_path / "elsewhere" / "x", tree / "bird" / "thrush" / "linked")
    ds = build_dataset("folder", tree, "all", mode="lenient")
    assert len(ds) == 16
    found = sorted((Path(p.file).name, p.kind) for p in ds.report.problems)
    assert found == [("9.png", "outside_root"), ("linked", "outside_root")]
    with pytest.raises(InputError, match="symbolic link to a folder, not followed"):
        build_dataset("folder", tree, "all")
    with pytest.raises(InputError, match=r"robin/9\.png \(the same file as 'bird/thrush/linked/1\.png'\) listed "
                       "again with labels"):  # followed, the link and the linked folder list one file twice
        build_dataset("folder", tree, "all", allow_outside_root=True)
    (tree / "bird" / "thrush" / "robin" / "9.png").unlink()
    assert len(build_dataset("folder", tree, "all", allow_outside_root=True)) == 17


# ------------------------------------------------------------------------- inputs that look right but are not
@pytest.mark.parametrize("alias", ["imgs/./a.png", "./imgs/a.png", "imgs//a.png", "imgs/../imgs/a.png", "LINK"])
def test_one_image_under_two_names_with_different_labels(csv_root, alias) -> None:
    if alias == "LINK":
        os.symlink(csv_root / "imgs" / "a.png", csv_root / "imgs" / "alias.png")
        alias = "imgs/alias.png"
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write(f"{alias},train,b,x,m\n")
    with pytest.raises(InputError) as err:
        build_dataset("csv", csv_root, "train")
    assert f"labels.csv:4: {alias} (the same file as 'imgs/a.png') listed again with labels ['b', 'x', 'm'] but " \
           "line 2 gives ['a', 'x', 'm']" in str(err.value)


def test_header_only_csv(csv_root, capsys) -> None:
    (csv_root / "labels.csv").write_text("path,split,fine,middle,coarse\n")
    with pytest.raises(InputError, match=r"labels\.csv: csv split 'train' has no records"):
        build_dataset("csv", csv_root, "train")
    assert main(["train", "--dry-run", "data.format=csv", f"data.root={csv_root}"]) == 2
    assert "has no records" in capsys.readouterr().err


def test_utf8_bom_is_not_part_of_the_first_column_name(csv_root) -> None:
    text = (csv_root / "labels.csv").read_bytes()
    (csv_root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text)  # as Excel writes it: header 'path' stays 'path'
    ds = build_dataset("csv", csv_root, "train")
    assert ds.scale_names == ("fine", "middle", "coarse") and len(ds) == 2


# ----------------------------------------------------------- CSV rows that inspect never read, quoting, attribution
def _inspect(root: Path, capsys: pytest.CaptureFixture[str], fmt: str = "csv", *extra: str) -> tuple[int, dict]:
    code = main(["data", "inspect", "--format", fmt, "--root", str(root), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("body", "expected"), [
    ("imgs/0000.png,train\nimgs/0001.png,train\n",  # every row has 2 fields of 3
     [(2, "expected 3 fields ['path', 'split', 'fine'], got 2: ['imgs/0000.png', 'train']"),
      (3, "expected 3 fields ['path', 'split', 'fine'], got 2: ['imgs/0001.png', 'train']")]),
    ('"imgs/0000.png,train,f0\n',  # a quote never closed
     [(2, "unterminated quoted field: a quote opened in this record is never closed")]),
    ("", []),  # header only
])
def test_inspect_reports_a_csv_whose_rows_are_all_bad(tmp_path, capsys, body, expected) -> None:
    write_image(tmp_path / "imgs" / "0000.png")
    (tmp_path / "labels.csv").write_text("path,split,fine\n" + body)
    code, doc = _inspect(tmp_path, capsys)
    assert code == 1
    csv = str(tmp_path / "labels.csv")
    rows = [(p["line"], p["message"]) for p in doc["problems"] if p["kind"] == "malformed_row"]
    assert rows == expected
    assert {"file": csv, "line": None, "message": "split 'train' has no records", "kind": "empty_split",
            "split_unknown": False, "splits": ["train"]} in doc["problems"]
    assert doc["splits"]["train"]["images"] == 0


def test_csv_quoted_line_breaks_are_one_record_numbered_by_its_first_line(tmp_path) -> None:
    root = write_csv_dataset(tmp_path / "d", [("imgs/a.png", "train", "a", "x", "m"),
                                              ("imgs/b.png", "train", "b", "x", "m")])
    (root / "labels.csv").write_text('path,split,fine,middle,coarse\n'
                                     'imgs/a.png,train,"two\nlines, ""quoted""",x,m\n'  # lines 2-3
                                     'imgs/b.png,train,b,x,m\n'  # line 4
                                     '\n'  # line 5: blank
                                     'imgs/nope.png,train,c,x,m\n')  # line 6: no such image
    with pytest.raises(InputError) as err:
        build_dataset("csv", root, "train")
    assert str(err.value).startswith(f"{root / 'labels.csv'}:6: 1 problem(s) in csv split 'train': image file "
                                     "not found")
    ds = build_dataset("csv", root, "train", mode="lenient")
    assert [ds.raw_label(i)[0] for i in range(len(ds))] == ['two\nlines, "quoted"', "b"]
    assert [p.line for p in ds.report.problems] == [6] and ds.report.blank_lines == 1
    # a quote opened in the middle of the file swallows the rest of it: one problem where the record starts
    (root / "labels.csv").write_text('path,split,fine,middle,coarse\nimgs/a.png,train,a,x,m\n'
                                     'imgs/b.png,train,"b,x,m\nimgs/c.png,train,c,x,m\n')
    with pytest.raises(InputError, match=r"labels\.csv:3: 1 problem\(s\) .* unterminated quoted field: a quote "
                                         r"opened in this record is never closed; lines 3-4 \(the end of the file\) "
                                         "are one record"):
        build_dataset("csv", root, "train")
    # a quote left open on the header line: the header cannot be read
    (root / "labels.csv").write_text('path,"split,fine,middle,coarse\nimgs/a.png,train,a,x,m\n')
    with pytest.raises(InputError, match=r"labels\.csv:1: cannot read the header \(unterminated quoted field"):
        build_dataset("csv", root, "train")


def _train_test_csv(tmp_path: Path) -> Path:
    """A clean two-split CSV dataset (rows 2-5: two train, two test images); tests append bad rows to it."""
    return write_csv_dataset(tmp_path / "d", [("imgs/a.png", "train", "a", "x", "m"),
                                              ("imgs/b.png", "train", "b", "x", "m"),
                                              ("imgs/c.png", "test", "c", "y", "m"),
                                              ("imgs/d.png", "test", "d", "y", "m")])


def test_csv_problems_belong_to_their_own_split(tmp_path, caplog) -> None:
    root = _train_test_csv(tmp_path)
    with open(root / "labels.csv", "a") as fh:
        fh.write("imgs/e.png,train,e,x\n"  # line 6: a train row with a field missing
                 "imgs/f.png,test,,y,m\n"  # line 7: a test row with an empty label
                 "imgs/g.png,trian,g,x,m\n"  # line 8: no readable split
                 "imgs/h,1.png,test,h,y,m\n")  # line 9: shifted fields, no readable split
    train = build_dataset("csv", root, "train", mode="lenient")
    test = build_dataset("csv", root, "test", mode="lenient")
    assert [p.line for p in train.report.problems] == [6, 8, 9]  # its own row and the two of no split
    assert [p.line for p in test.report.problems] == [7, 8, 9]
    assert [p.split_unknown for p in test.report.problems] == [False, True, True]
    assert "its split cannot be read" in test.report.problems[2].message
    warnings = [r.getMessage() for r in caplog.records if "lenient mode" in r.getMessage()]
    assert warnings[1].startswith("csv split 'test': skipped 1 bad record(s) of this split and 2 whose split cannot "
                                  "be read (left out of every split) (lenient mode); first: ")
    assert warnings[1].endswith("labels.csv:7: empty path or label in ['imgs/f.png', 'test', '', 'y', 'm']")
    with pytest.raises(InputError) as err:  # strict: the train split lists its own row and those of no split
        build_dataset("csv", root, "train")
    assert "3 problem(s) in csv split 'train'" in str(err.value) and "labels.csv:7" not in str(err.value)


def test_inspect_json_says_which_splits_a_problem_belongs_to(tmp_path, capsys) -> None:
    root = _train_test_csv(tmp_path)
    with open(root / "labels.csv", "a") as fh:
        fh.write("imgs/e.png,train,e,x\n"  # line 6: a train row with a field missing
                 "imgs/g.png,trian,g,x,m\n")  # line 7: no readable split
    code, doc = _inspect(root, capsys, "csv", "--no-verify-images")
    assert code == 1
    assert [(p["line"], p["split_unknown"], p["splits"]) for p in doc["problems"]] == [
        (6, False, ["train"]), (7, True, ["train", "test"])]  # the shared bad row once, found by both splits


def test_oml_and_inshop_problems_belong_to_their_own_split(tmp_path) -> None:
    from tests.data.test_oml import write_oml

    write_oml(tmp_path / "oml", ["0,img/a.png,train,,,bird", "1,img/b.png,validation,True,True,bird",
                                 "x,img/c.png,train,,,bird",  # line 4: a train row's label
                                 "1,img/d.png,validation,True,False,",  # line 5: a query row's category
                                 "1,img/e.png,valdation,True,True,bird"],  # line 6: no readable split
              header="label,path,split,is_query,is_gallery,category")
    problems = {s: build_dataset("oml", tmp_path / "oml", s, mode="lenient", category_as_scale=True).report.problems
                for s in ("train", "validation", "query", "gallery")}  # category read: its empty cell is a problem
    assert {s: [p.line for p in found] for s, found in problems.items()} == {
        "train": [4, 6], "validation": [5, 6], "query": [5, 6], "gallery": [6]}
    assert [p.split_unknown for p in problems["query"]] == [False, True]
    root = write_inshop(tmp_path / "inshop", declared=9)  # line 1 counts the two rows added below
    with open(root / "Eval" / "list_eval_partition.txt", "a") as fh:
        fh.write("img/MEN/Pants/id_1/a b.jpg id_1 train\n"  # line 10: a train row (a space in the name)
                 "img/MEN/Pants/id_1/c.jpg id_1 testing\n")  # line 11: no readable split
    found = {s: [(p.line, p.kind) for p in build_dataset("inshop", root, s, mode="lenient").report.problems]
             for s in ("train", "query")}
    assert found == {"train": [(10, "malformed_row"), (11, "malformed_row")], "query": [(11, "malformed_row")]}


def test_inspect_reports_an_empty_split(tmp_path, capsys) -> None:
    sop_root = write_sop(tmp_path / "sop")
    (sop_root / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n")
    code, doc = _inspect(sop_root, capsys, "sop", "--no-verify-images")
    assert code == 1 and doc["splits"]["test"]["images"] == 0
    assert doc["problems"] == [{"file": str(sop_root / "Ebay_test.txt"), "line": None,
                                "message": "split 'test' has no records", "kind": "empty_split",
                                "split_unknown": False, "splits": ["test"]}]
    with pytest.raises(InputError, match="split 'test' has no records"):
        build_dataset("sop", sop_root, "test")


def test_oml_box_past_the_image_edge(tmp_path, capsys, caplog) -> None:
    img = write_image(tmp_path / "img" / "a.png", size=32)
    write_image(tmp_path / "img" / "b.png", size=32)
    write_image(tmp_path / "img" / "c.png", size=32)
    (tmp_path / "df.csv").write_text("label,path,split,is_query,is_gallery,x_1,x_2,y_1,y_2\n"
                                     "0,img/c.png,train,,,0,32,0,32\n"  # the whole image: fits
                                     "0,img/a.png,train,,,4,99,0,10\n"  # line 3: x_2 past the right edge
                                     "1,img/b.png,train,,,0,8,30,33\n")  # line 4: y_2 past the bottom edge
    code, doc = _inspect(tmp_path, capsys, "oml")
    assert code == 1
    assert [(p["file"], p["line"], p["message"]) for p in doc["problems"]] == [
        (str(tmp_path / "df.csv"), 3, "column 'x_2': the box (x_1, y_1, x_2, y_2) = (4, 0, 99, 10) reaches x_2=99, "
                                      f"past the image's width 32 (a 32x32 image): {img}"),
        (str(tmp_path / "df.csv"), 4, "column 'y_2': the box (x_1, y_1, x_2, y_2) = (0, 30, 8, 33) reaches y_2=33, "
                                      f"past the image's height 32 (a 32x32 image): {tmp_path / 'img' / 'b.png'}")]
    ds = build_dataset("oml", tmp_path, "train")  # the reader does not open images; loading the item does
    assert ds.load_image(0).size == (32, 32)
    with pytest.raises(InputError, match=rf"{img}: column 'x_2': the box .* reaches x_2=99, past the image's width "
                                         r"32 \(a 32x32 image\) \(item 1\)"):
        ds[1]
    skipping = build_dataset("oml", tmp_path, "train", skip_corrupt=True)
    assert skipping.load_image(0).size == skipping[1][0].size == (32, 32)  # replaced by the good crop of label 0
    assert skipping.skipped_corrupt == 1 and "reaches x_2=99" in caplog.text


def test_a_file_name_that_is_not_utf8_is_one_line_at_inspect_and_train(tmp_path, capsys) -> None:
    root = write_folder(tmp_path / "tree", ["train/a/0.png", "train/a/1.png", "train/b/0.png", "train/b/1.png"])
    latin1 = os.path.join(os.fsencode(root / "train" / "a"), b"caf\xe9.png")  # a Latin-1 name: not UTF-8
    write_image(Path(os.fsdecode(latin1)))
    shown = f"{root / 'train' / 'a'}/caf\\xe9.png"
    message = "the file name is not UTF-8 text; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)"
    problem = f"{shown}: {message}"
    assert main(["data", "inspect", "--format", "folder", "--root", str(root)]) == 1  # was: counted, exit 0
    out = capsys.readouterr().out
    assert "  train: 4 images; classes: fine=2" in out and out.splitlines()[-2:] == ["1 problem(s):", f"  {problem}"]
    with pytest.raises(InputError) as err:
        build_dataset("folder", root, "train")
    assert str(err.value).splitlines()[1] == f"  {problem}"
    assert len(build_dataset("folder", root, "train", mode="lenient")) == 4
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("data: {transform: small, batch_size: 4, m: 2}\nmodel: {backbone: simple_cnn, embedding_dim: 8}\n"
                   "trainer: {max_epochs: 1, progress_bar: false}\n")
    code = main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "data.format=folder",
                 f"data.root={root}"])  # was: a 34-line UnicodeEncodeError traceback from PathTable
    assert code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"dynametric train: error: {shown}: 1 problem(s) in folder split 'train': {message}", f"  {problem}"]


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


def _listed_twice(fmt: str, tmp_path: Path) -> tuple[Path, str, str]:
    """A dataset of ``fmt`` listing one image twice in one split with the same labels (under another name where
    the format allows one); returns (root, split, the expected problem line)."""
    if fmt == "cub200":
        root = write_cub(tmp_path / "cub")
        images = root / "CUB_200_2011" / "images.txt"
        _append(images, "8 101.D/d1.jpg\n")  # image 5's file under a new image_id
        _append(root / "CUB_200_2011" / "image_class_labels.txt", "8 101\n")
        return root, "test", f"{images}:8: 101.D/d1.jpg listed again with the same labels as line 5"
    if fmt == "sop":
        root = write_sop(tmp_path / "sop")
        _append(root / "Ebay_test.txt", "8 11 1 ./bicycle_final/444_0.JPG\n")
        return root, "test", (f"{root / 'Ebay_test.txt'}:5: ./bicycle_final/444_0.JPG (the same file as "
                              "'bicycle_final/444_0.JPG') listed again with the same labels as line 2")
    if fmt == "inshop":
        root = write_inshop(tmp_path / "inshop")
        part = root / "Eval" / "list_eval_partition.txt"
        part.write_text(part.read_text().replace("7\n", "8\n", 1)
                        + "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train\n")
        return root, "train", (f"{part}:10: img/WOMEN/Dresses/id_00000002/02_1_front.jpg listed again with the same "
                               "labels as line 3")
    if fmt == "csv":
        root = write_csv_dataset(tmp_path / "mydata")
        _append(root / "labels.csv", "imgs/./b.png,train,brown_bear,bear,mammal\n")
        return root, "train", (f"{root / 'labels.csv'}:9: imgs/./b.png (the same file as 'imgs/b.png') listed again "
                               "with the same labels as line 3")
    if fmt == "dyml-vehicle":
        root = write_dyml(tmp_path / "dyml")
        _append(root / "train" / "label.csv", "3.jpg, 9, 40, 300\n")
        return root, "train", f"{root / 'train' / 'label.csv'}:6: 3.jpg listed again with the same labels as line 4"
    root = write_folder(tmp_path / "tree", ["train/a/0.png", "train/a/1.png", "train/b/0.png"])
    os.symlink(root / "train" / "a" / "0.png", root / "train" / "a" / "2.png")  # a link inside the tree
    return root, "train", (f"{root / 'train' / 'a' / '2.png'}: a/2.png (the same file as 'a/0.png') listed again "
                           f"with the same labels as {root / 'train' / 'a' / '0.png'}")


@pytest.mark.parametrize("fmt", ["cub200", "sop", "inshop", "csv", "dyml-vehicle", "folder"])
def test_an_image_listed_twice_in_a_split_is_a_problem_of_every_reader(tmp_path, capsys, fmt) -> None:
    root, split, expected = _listed_twice(fmt, tmp_path)
    expected += ": a split lists each image once (a second listing would be its own rank-1 match when evaluating)"
    with pytest.raises(InputError) as err:
        build_dataset(fmt, root, split)
    assert str(err.value).splitlines()[1:] == [f"  {expected}"]  # was kept with a note (CUB: not even that)
    kept = build_dataset(fmt, root, split, mode="lenient")  # lenient keeps the first listing only
    assert len(kept) == len({os.path.realpath(p) for p in kept.paths})
    assert [p.kind for p in kept.report.problems] == ["duplicate"]
    assert main(["data", "inspect", "--format", fmt, "--root", str(root), "--split", split,
                 "--no-verify-images"]) == 1
    assert f"  {expected}" in capsys.readouterr().out.splitlines()


def test_cars_annotations_listing_one_image_twice(tmp_path) -> None:
    root = write_cars(tmp_path / "cars", [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 1),
                                          ("car_ims/../car_ims/000001.jpg", 1)])
    with pytest.raises(InputError) as err:
        build_dataset("cars196", root, "train")
    assert str(err.value).splitlines()[1] == (
        f"  {root / 'cars_annos.mat'}: annotation #3: car_ims/../car_ims/000001.jpg (the same file as "
        "'car_ims/000001.jpg') listed again with the same labels as annotation #1: a split lists each image once (a "
        "second listing would be its own rank-1 match when evaluating)")


def test_different_files_with_one_base_name_are_no_duplicates(tmp_path) -> None:
    root = write_sop(tmp_path / "sop")
    write_image(root / "cabinet_final" / "444_0.JPG")  # the base name of bicycle_final/444_0.JPG, another file
    _append(root / "Ebay_test.txt", "8 12 2 cabinet_final/444_0.JPG\n")
    assert len(build_dataset("sop", root, "test")) == 4
    root = write_csv_dataset(tmp_path / "mydata", [("x/a.png", "test", "1"), ("y/a.png", "test", "1")])
    (root / "labels.csv").write_text("path,split,fine\nx/a.png,test,1\ny/a.png,test,1\n")
    assert len(build_dataset("csv", root, "test")) == 2


def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(tmp_path) -> None:
    root = write_csv_dataset(tmp_path / "mydata")
    csv = root / "labels.csv"
    lines = csv.read_bytes().split(b"\n")
    lines[2] = b"imgs/b.png,train,caf\xe9,bear,mammal"  # a Latin-1 byte on line 3, after a BOM and CRLF line ends
    csv.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))
    with pytest.raises(InputError) as err:
        build_dataset("csv", root, "train")
    assert str(err.value) == (f"{csv}:3: not UTF-8 text: byte 0xe9 at column 21 cannot be decoded (save the file as "
                              "UTF-8)")
    sop = write_sop(tmp_path / "sop")  # was "(... can't decode byte 0xe9 in position 93 ...)", no line
    (sop / "Ebay_test.txt").write_bytes(b"image_id class_id super_class_id path\n5 11 1 bicycle_final/444_0.JPG\n"
                                        b"6 11 1 bicycle_final/\xe94_1.JPG\n")
    with pytest.raises(InputError, match=r"Ebay_test\.txt:3: not UTF-8 text: byte 0xe9 at column 22 cannot be"):
        build_dataset("sop", sop, "test")


def test_a_cub_image_that_cannot_be_read_is_cited_at_its_images_txt_line(tmp_path, capsys) -> None:
    root = write_cub(tmp_path / "cub")
    base = root / "CUB_200_2011"
    image = base / "images" / "101.D" / "d2.jpg"
    image.write_bytes(image.read_bytes()[:40])  # truncated
    assert main(["data", "inspect", "--format", "cub200", "--root", str(root), "--split", "test"]) == 1
    out = capsys.readouterr().out
    assert f"(listed at {base / 'images.txt'}:6)" in out  # was image_class_labels.txt:6 (which holds no path)
    assert "image_class_labels.txt" not in out


def test_a_reversed_csv_hierarchy_says_label_columns_go_finest_first(tmp_path) -> None:
    root = tmp_path / "rev"
    rows = [("a.png", "mammal", "bear", "brown"), ("b.png", "mammal", "bear", "polar"),
            ("c.png", "bird", "thrush", "robin"), ("d.png", "bird", "thrush", "wren")]
    for name, *_ in rows:
        write_image(root / name)
    (root / "labels.csv").write_text("path,split,coarse,middle,fine\n"
                                     + "".join(f"{p},train,{c},{m},{f}\n" for p, c, m, f in rows))
    with pytest.raises(InputError) as err:
        build_dataset("csv", root, "train")
    csv = root / "labels.csv"
    assert str(err.value).splitlines() == [  # one line, what to do first (was a line per class, the hint last)
        f"{csv}:4: csv split 'train': the scales look reversed: label columns go finest first, here e.g. "
        "path,split,fine,middle,coarse (every fine class lies in a single coarse class and there are more fine "
        "classes, 4 against 2); as given, 2 hierarchy violation(s): coarse class 'bird' has 2 fine parents: 'robin' "
        "(line 4), 'wren' (line 5); coarse class 'mammal' has 2 fine parents: 'brown' (line 2), 'polar' (line 3)"]


def test_a_missing_index_file_is_a_problem_of_every_format_in_inspect(tmp_path, capsys) -> None:
    root = write_csv_dataset(tmp_path / "mydata")
    assert main(["data", "inspect", "--format", "csv", "--root", str(root), "-o", "csv_file=other.csv"]) == 1
    out = capsys.readouterr().out.splitlines()  # was exit status 2, while a missing SOP index was 1
    assert out[-2:] == ["1 problem(s):", f"  {root / 'other.csv'}: file not found (expected a CSV with a header "
                                         "'path,split,<finest scale>,...,<coarsest scale>')"]
    (tmp_path / "sop").mkdir()
    assert main(["data", "inspect", "--format", "sop", "--root", str(tmp_path / "sop")]) == 1
    assert capsys.readouterr().out.splitlines()[-3] == "2 problem(s):"
    assert main(["data", "inspect", "--format", "csv", "--root", str(tmp_path / "nowhere")]) == 2  # a usage error


def test_inspect_errors_name_the_command_with_its_action(tmp_path, capsys) -> None:
    """`dynametric data inspect` errors start with the command the user ran: an image_root that is not a folder
    said `dynametric data: error: ...`."""
    root = write_cub(tmp_path / "cub")
    assert main(["data", "inspect", "--format", "cub200", "--root", str(root), "-o", "image_root=pics"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dynametric data inspect: error: key 'image_root': folder not found: {root / 'pics'} (image_root "
                   f"is the folder the listed image paths are relative to, itself relative to the dataset root {root})")


def test_data_inspect_refuses_an_on_off_option_that_is_not_true_or_false(csv_root, capsys) -> None:
    assert main(["data", "inspect", "--format", "csv", "--root", str(csv_root), "-o", "check_files=maybe"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ("dynametric data inspect: error: key 'check_files': expected true or false, "
                                         "got 'maybe'\n")
