"""CUB-200-2011, CARS196, SOP and In-Shop readers on tiny official layouts written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.data import build_dataset
from dynametric.errors import InputError
from tests.data.conftest import write_cars, write_cars_devkit, write_image, write_inshop


def test_cub_class_split_and_ids(cub_root: Path) -> None:
    train = build_dataset("cub200", cub_root, "train")  # root is the parent of CUB_200_2011/
    test = build_dataset("cub200", cub_root / "CUB_200_2011", "test")
    assert len(train) == 4 and len(test) == 3  # classes 1-100 train, 101-200 test
    assert train.class_ids == [[1, 2, 100]] and test.class_ids == [[101, 200]]
    assert train.labels[:, 0].tolist() == [0, 0, 1, 2] and test.labels[:, 0].tolist() == [0, 0, 1]
    assert Path(train.paths[2]) == cub_root / "CUB_200_2011" / "images" / "002.B" / "b1.jpg"
    assert train.class_names == [{1: "001.A", 2: "002.B", 100: "100.C", 101: "101.D", 200: "200.E"}]
    assert test.scale_names == ("fine",)


def test_cub_bad_rows_name_file_and_line(cub_root: Path) -> None:
    base = cub_root / "CUB_200_2011"
    with open(base / "images.txt", "a") as fh:
        fh.write("8 150.F/f1.jpg\nnine 150.F/f2.jpg\n")  # line 8 has no class; line 9 malformed
    with open(base / "image_class_labels.txt", "a") as fh:
        fh.write("3 7\n")  # line 8: repeated image id
    with pytest.raises(InputError) as err:
        build_dataset("cub200", cub_root, "test")
    msg = str(err.value)
    assert f"{base / 'images.txt'}:9: expected 'image_id relative_path', got 'nine 150.F/f2.jpg'" in msg
    assert f"{base / 'image_class_labels.txt'}:8: image_id 3 repeats line 3" in msg
    assert f"{base / 'images.txt'}:8: image_id 8 has no class in image_class_labels.txt" in msg
    assert len(build_dataset("cub200", cub_root, "test", mode="lenient")) == 3
    (base / "image_class_labels.txt").unlink()
    with pytest.raises(InputError, match=r"image_class_labels\.txt: file not found"):
        build_dataset("cub200", cub_root, "train")


def test_cub_class_ids_must_be_1_to_200(cub_root: Path) -> None:
    base = cub_root / "CUB_200_2011"
    labels = base / "image_class_labels.txt"
    labels.write_text("1 1\n2 1\n3 2\n4 100\n5 250\n6 101\n7 200\n")  # line 5: no such class
    for split in ("train", "test"):  # the split comes from the class: the bad line is a problem of both
        with pytest.raises(InputError) as err:
            build_dataset("cub200", cub_root, split)
        assert str(err.value).splitlines()[1] == f"  {labels}:5: image_id 5: expected a class id in 1..200, got 250"
    test = build_dataset("cub200", cub_root, "test", mode="lenient")
    assert test.class_ids == [[101, 200]] and len(test) == 2  # 250 does not land in test
    assert [(p.line, p.split_unknown) for p in test.report.problems] == [(5, True)]
    # a 0-based file (0..199): class 0 is out of range, with a hint
    labels.write_text("".join(f"{i} {c - 1}\n" for i, c in [(1, 1), (2, 1), (3, 2), (4, 100), (5, 101), (6, 101),
                                                             (7, 200)]))
    with pytest.raises(InputError) as err:
        build_dataset("cub200", cub_root, "train")
    assert str(err.value).splitlines()[1:] == [
        f"  {labels}:1: image_id 1: expected a class id in 1..200, got 0 (the ids are 1-based; is the file 0-based?)",
        f"  {labels}:2: image_id 2: expected a class id in 1..200, got 0 (the ids are 1-based; is the file 0-based?)"]


def test_cars_class_ids_must_be_1_to_196(tmp_path: Path) -> None:
    root = write_cars(tmp_path / "cars", [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 197),
                                          ("car_ims/000003.jpg", 196)])
    with pytest.raises(InputError) as err:
        build_dataset("cars196", root, "train")
    assert str(err.value).splitlines()[1] == (f"  {root / 'cars_annos.mat'}: annotation #2: expected a class id in "
                                              "1..196, got 197")


def test_cars_a_class_that_is_not_an_integer_is_refused(tmp_path: Path) -> None:
    """`class` 1.5 (a MATLAB double) was read as class 1; a whole double (MATLAB's default type) is that class."""
    import numpy as np
    import scipy.io

    root = write_cars(tmp_path / "cars", [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 2),
                                          ("car_ims/000003.jpg", 3)])
    mat = root / "cars_annos.mat"
    loaded = scipy.io.loadmat(str(mat))
    ann = loaded["annotations"]
    ann[0, 0]["class"] = np.array([[1.5]])
    ann[0, 2]["class"] = np.array([[2.0]])
    scipy.io.savemat(str(mat), {"annotations": ann, "class_names": loaded["class_names"]})
    with pytest.raises(InputError) as err:
        build_dataset("cars196", root, "train")
    assert str(err.value).splitlines()[1:] == [
        f"  {mat}: annotation #1: expected a class id in 1..196, got 1.5 (not an integer)"]
    kept = build_dataset("cars196", root, "train", mode="lenient")
    assert [kept.raw_label(i) for i in range(len(kept))] == [(2,), (2,)]


def test_cars_mat_split_by_class(cars_root: Path) -> None:
    train = build_dataset("cars196", cars_root, "train")
    test = build_dataset("cars196", cars_root, "test")
    assert train.class_ids == [[1, 98]] and test.class_ids == [[99, 196]]  # the 'test' flag is ignored
    assert train.labels[:, 0].tolist() == [0, 0, 1] and test.labels[:, 0].tolist() == [0, 1, 1]
    assert [Path(p).name for p in test.paths] == ["000004.jpg", "000005.jpg", "000006.jpg"]
    assert train.class_names is not None and train.class_names[0][98] == "car 98"


def test_cars_missing_image_and_bad_mat(tmp_path: Path) -> None:
    root = write_cars(tmp_path / "cars")
    (root / "car_ims" / "000005.jpg").unlink()
    with pytest.raises(InputError, match=r"cars_annos\.mat: .*annotation #5: image file not found"):
        build_dataset("cars196", root, "test")
    (root / "cars_annos.mat").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"cars_annos\.mat"):
        build_dataset("cars196", root, "train")


@pytest.mark.parametrize("raised", [IndexError("index 0 is out of bounds"), KeyError("mdtype"), EOFError()])
def test_a_mat_file_scipy_cannot_read_is_one_line_whatever_scipy_raises(tmp_path: Path, monkeypatch, raised) -> None:
    """scipy 1.10 (the pyproject floor) raises an IndexError on a garbage cars_annos.mat, which was not caught: a
    traceback instead of the file's name. The devkit layout's cars_meta.mat was read with no check at all."""
    import scipy.io

    def broken(*args, **kwargs):
        raise raised

    for root in (write_cars(tmp_path / "cars"), write_cars_devkit(tmp_path / "mirror")):
        with monkeypatch.context() as m:
            m.setattr(scipy.io, "loadmat", broken)
            with pytest.raises(InputError, match=rf"\.mat: cannot read MATLAB file \({type(raised).__name__}"):
                build_dataset("cars196", root, "train")


def test_cars_devkit_layout_same_class_ids(tmp_path: Path) -> None:
    root = write_cars_devkit(tmp_path / "mirror")
    train = build_dataset("cars196", root, "train")
    test = build_dataset("cars196", root, "test")
    top = root / "stanford_cars"
    assert train.class_ids == [[1, 98]] and test.class_ids == [[99, 196]]  # split by class, not by annotation file
    assert list(train.paths) == [str(top / "cars_train" / "00001.jpg"), str(top / "cars_test" / "00001.jpg")]
    assert list(test.paths) == [str(top / "cars_train" / "00002.jpg"), str(top / "cars_test" / "00002.jpg")]
    assert train.class_names is not None and train.class_names[0][1] == "car 1"
    (top / "cars_test" / "00002.jpg").unlink()
    with pytest.raises(InputError, match=r"cars_test_annos_withlabels\.mat: .*annotation #2: image file not found"):
        build_dataset("cars196", root, "test")


def test_sop_two_scales(sop_root: Path) -> None:
    train = build_dataset("sop", sop_root, "train")
    assert train.scale_names == ("product", "category")
    assert train.labels.tolist() == [[0, 0], [0, 0], [1, 0], [2, 1]]
    assert train.class_ids == [[1, 2, 3], [1, 2]]
    test = build_dataset("sop", sop_root, "test")
    assert test.class_counts() == {"product": 2, "category": 2}
    assert Path(test.paths[2]) == sop_root / "cabinet_final" / "555_0.JPG"


def test_sop_hierarchy_violation_and_malformed(sop_root: Path) -> None:
    path = sop_root / "Ebay_train.txt"
    with open(path, "a") as fh:
        fh.write("9 1 2 bicycle_final/111_0.JPG\n")  # line 6: product 1 under category 2 (and a repeated path)
    with pytest.raises(InputError, match=r"Ebay_train\.txt:6: .*listed again"):
        build_dataset("sop", sop_root, "train")
    path.write_text("image_id class_id super_class_id path\n1 1 1 bicycle_final/111_0.JPG\n"
                    "2 1 2 bicycle_final/111_1.JPG\n3 2 1\n")
    with pytest.raises(InputError) as err:
        build_dataset("sop", sop_root, "train")
    assert f"{path}:4: expected 'image_id class_id super_class_id path', got '3 2 1'" in str(err.value)
    with pytest.raises(InputError) as err:
        build_dataset("sop", sop_root, "train", mode="lenient")
    msg = str(err.value)
    assert "product class 1 has 2 category parents" in msg
    assert f"category 1 (e.g. {path}:2)" in msg and f"category 2 (e.g. {path}:3)" in msg


def test_inshop_splits_share_query_gallery_ids(inshop_root: Path) -> None:
    train = build_dataset("inshop", inshop_root, "train")
    query = build_dataset("inshop", inshop_root, "query")
    gallery = build_dataset("inshop", inshop_root, "gallery")
    assert (len(train), len(query), len(gallery)) == (3, 1, 3)
    assert train.class_ids == [["id_00000002", "id_00000007"]]
    assert query.class_ids == gallery.class_ids == [["id_00000010", "id_00000012", "id_00000013"]]
    assert query.labels[:, 0].tolist() == [0] and gallery.labels[:, 0].tolist() == [0, 1, 2]
    assert query.raw_label(0) == gallery.raw_label(0) == ("id_00000010",)
    cat = build_dataset("inshop", inshop_root, "train", with_category=True)
    assert cat.scale_names == ("item", "category")
    assert cat.class_ids[1] == ["MEN/Denim", "WOMEN/Dresses"]
    assert cat.labels.tolist() == [[0, 1], [0, 1], [1, 0]]


def test_inshop_count_mismatch_and_bad_status(tmp_path: Path) -> None:
    root = write_inshop(tmp_path / "inshop", declared=9)
    path = root / "Eval" / "list_eval_partition.txt"
    with pytest.raises(InputError, match=rf"{path}:1: line 1 declares 9 images but 7 rows follow"):
        build_dataset("inshop", root, "query")
    with open(path, "a") as fh:
        fh.write("img/MEN/Pants/x/1.jpg id_1 validation\n")
    ds = build_dataset("inshop", root, "query", mode="lenient")
    assert len(ds) == 1
    assert [(p.line, p.kind) for p in ds.report.problems] == [(10, "malformed_row"), (1, "count_mismatch")]
    assert ds.report.problems[1].message == "line 1 declares 9 images but 8 rows follow"  # the bad row is a row


def test_inshop_a_bad_row_is_counted_as_a_row_of_line_1(tmp_path: Path) -> None:
    """Line 1 counts the data rows: one row with a bad status was two problems, itself and `line 1 declares 8
    images but 7 well-formed rows follow` although 8 rows were there."""
    root = write_inshop(tmp_path / "inshop", declared=8)
    path = root / "Eval" / "list_eval_partition.txt"
    with open(path, "a") as fh:
        fh.write("img/MEN/Pants/id_00000014/1.jpg id_00000014 val\n")  # line 10: status val
    for split in ("train", "query", "gallery"):
        found = build_dataset("inshop", root, split, mode="lenient").report.problems
        assert [(p.line, p.kind, p.split_unknown) for p in found] == [(10, "malformed_row", True)]
    with pytest.raises(InputError, match="unknown split 'test' for inshop"):
        build_dataset("inshop", root, "test")


def test_inshop_images_extracted_into_img_are_found_and_said_so(tmp_path: Path) -> None:
    root = write_inshop(tmp_path / "inshop")
    (root / "Img").mkdir()
    (root / "img").rename(root / "Img" / "img")  # the release's Img/img.zip extracted where it lies
    ds = build_dataset("inshop", root, "gallery")  # was one "image file not found" per image
    assert list(ds.paths) == [str(root / "Img" / "img/WOMEN/Skirts/id_00000010/01_2_side.jpg"),
                              str(root / "Img" / "img/MEN/Pants/id_00000012/01_1_front.jpg"),
                              str(root / "Img" / "img/MEN/Pants/id_00000013/01_1_front.jpg")]
    assert ds.report.notes == [
        f"images read from {root / 'Img'} (the release's Img/img.zip extracted in Img/): the first listed image, "
        f"img/WOMEN/Dresses/id_00000002/02_1_front.jpg, is there and not in {root} (set the option image_root to "
        "choose another folder)"]
    chosen = build_dataset("inshop", root, "train", image_root="Img")  # the option (was refused as unknown)
    assert chosen.report.notes == []
    assert chosen.paths[0] == str(root / "Img" / "img/WOMEN/Dresses/id_00000002/02_1_front.jpg")
    with pytest.raises(InputError) as err:
        build_dataset("inshop", root, "train", image_root="Images")
    assert err.value.key == "image_root" and str(err.value) == (
        f"key 'image_root': folder not found: {root / 'Images'} (image_root is the folder the listed image paths "
        f"are relative to, itself relative to the dataset root {root})")


def test_cub_and_sop_take_an_image_root(cub_root: Path, sop_root: Path) -> None:
    base = cub_root / "CUB_200_2011"
    (base / "images").rename(base / "pics")
    with pytest.raises(InputError, match="image file not found"):
        build_dataset("cub200", cub_root, "train")
    ds = build_dataset("cub200", cub_root, "train", image_root="CUB_200_2011/pics")  # relative to the root given
    assert Path(ds.paths[0]) == base / "pics" / "001.A" / "a1.jpg" and len(ds) == 4
    (sop_root / "photos").mkdir()
    for folder in ("bicycle_final", "cabinet_final"):
        (sop_root / folder).rename(sop_root / "photos" / folder)
    ds = build_dataset("sop", sop_root, "test", image_root=str(sop_root / "photos"))  # or absolute
    assert Path(ds.paths[2]) == sop_root / "photos" / "cabinet_final" / "555_0.JPG"


def test_sop_an_image_id_on_two_rows_is_a_problem(sop_root: Path) -> None:
    """Was accepted: two rows of one image_id (other images) read as two items without a word."""
    path = sop_root / "Ebay_train.txt"
    with open(path, "a") as fh:
        fh.write("3 3 2 cabinet_final/333_1.JPG\n")  # line 6: image_id 3 again, another image
        fh.write("x1 3 2 cabinet_final/333_2.JPG\n")  # line 7: an image_id that is no integer
    for name in ("333_1", "333_2"):
        write_image(sop_root / "cabinet_final" / f"{name}.JPG")
    expected = [f"{path}:6: image_id 3 listed again (cabinet_final/333_1.JPG); line 4 gives it to "
                "bicycle_final/222_0.JPG: each row has its own image_id",
                f"{path}:7: expected 'image_id class_id super_class_id path', got 'x1 3 2 cabinet_final/333_2.JPG'"]
    with pytest.raises(InputError) as err:
        build_dataset("sop", sop_root, "train")
    assert str(err.value).splitlines()[1:] == [f"  {e}" for e in expected]
    ds = build_dataset("sop", sop_root, "train", mode="lenient")  # the first row of the id is kept
    assert len(ds) == 4 and [(p.line, p.kind) for p in ds.report.problems] == [(6, "duplicate"), (7, "malformed_row")]
    assert len(build_dataset("sop", sop_root, "test")) == 3  # ids are per file: the test file is its own


def test_inshop_an_item_id_that_contradicts_its_path_is_a_problem(inshop_root: Path) -> None:
    """Was accepted: `.../id_00000010/01_3_back.jpg id_00000012` made an image of one item a gallery item of
    another."""
    path = inshop_root / "Eval" / "list_eval_partition.txt"
    write_image(inshop_root / "img/WOMEN/Skirts/id_00000010/01_3_back.jpg")
    path.write_text(path.read_text().replace("7\n", "8\n", 1)
                    + "img/WOMEN/Skirts/id_00000010/01_3_back.jpg id_00000012 gallery\n")  # line 10
    expected = (f"{path}:10: item_id id_00000012 contradicts the image's path "
                "img/WOMEN/Skirts/id_00000010/01_3_back.jpg, which lies in the folder of item id_00000010 (the "
                "release keeps each item's images in a folder named by its item_id)")
    with pytest.raises(InputError) as err:
        build_dataset("inshop", inshop_root, "gallery")
    assert str(err.value).splitlines()[1:] == [f"  {expected}"]
    gallery = build_dataset("inshop", inshop_root, "gallery", mode="lenient")
    assert len(gallery) == 3 and [p.line for p in gallery.report.problems] == [10]
    assert len(build_dataset("inshop", inshop_root, "query")) == 1  # a problem of the row's own split only
