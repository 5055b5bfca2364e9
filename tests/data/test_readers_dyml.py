"""DyML readers on tiny releases written into tmp_path (glued header, own-line header, no header, bad rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.data import build_dataset, list_splits
from dynametric.data.dyml import benchmark_protocol, strip_header
from dynametric.errors import InputError
from tests.data.conftest import DYML_TRAIN_ROWS, write_corrupt, write_dyml, write_image

EXPECTED_TRAIN = [  # finest first, contiguous by sorted raw id: fine 100,101,205,300; middle 30,31,40; coarse 7,9
    [0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 2, 1], [3, 2, 1]]


@pytest.mark.parametrize("header", ["glued", "own_line", "none"])
def test_train_records_identical_for_every_header_mode(tmp_path: Path, header: str) -> None:
    root = write_dyml(tmp_path / "dyml_vehicle", header=header)
    ds = build_dataset("dyml-vehicle", root, "train")
    assert len(ds) == len(DYML_TRAIN_ROWS) == 5  # the record glued to the header is kept
    assert ds.labels.tolist() == EXPECTED_TRAIN
    assert ds.scale_names == ("fine", "middle", "coarse")
    assert ds.class_ids == [[100, 101, 205, 300], [30, 31, 40], [7, 9]]
    assert ds.id_maps[0] == {100: 0, 101: 1, 205: 2, 300: 3}
    assert ds.raw_label(0) == (100, 30, 7)  # file order is coarse, middle, fine
    assert Path(ds.paths[0]).name == "0.jpg" and Path(ds.paths[0]).parent.name == "imgs"
    label_csv = str(root / "train" / "label.csv")
    assert ds.report.header == {label_csv: header}
    assert ds.report.records == 5
    assert ds.class_counts() == {"fine": 4, "middle": 3, "coarse": 2}


def test_strip_header_modes() -> None:
    assert strip_header("fname, coarse_id, middle_id, fine_id0.jpg, 7, 30, 100", 4) == ("glued", "0.jpg, 7, 30, 100")
    assert strip_header("fname,coarse_id ,  middle_id,fine_id", 4) == ("own_line", "")
    assert strip_header("fname, labels0.jpg, 5", 2) == ("glued", "0.jpg, 5")
    assert strip_header("0.jpg, 5", 2) == ("none", "0.jpg, 5")


def test_query_gallery_glued_header_and_shared_id_map(dyml_vehicle: Path) -> None:
    q = build_dataset("dyml-vehicle", dyml_vehicle, "query_fine")
    g = build_dataset("dyml-vehicle", dyml_vehicle, "gallery_fine")
    assert len(q) == 2 and len(g) == 3  # the query file's glued first record (20.jpg, 5) is kept
    assert q.scale_names == ("fine",) and q.labels.shape == (2, 1)
    assert q.class_ids == g.class_ids == [[5, 8, 12]]
    assert q.labels[:, 0].tolist() == [0, 1] and g.labels[:, 0].tolist() == [0, 1, 2]
    assert [Path(p).name for p in q.paths] == ["20.jpg", "21.jpg"]
    assert Path(q.paths[0]).parent == dyml_vehicle / "bmk_fine" / "query"
    cq = build_dataset("dyml-vehicle", dyml_vehicle, "query_coarse")
    assert cq.scale_names == ("coarse",) and cq.raw_label(0) == (1,)


def test_splits_per_variant(dyml_vehicle: Path, dyml_product: Path) -> None:
    assert list_splits("dyml-vehicle", dyml_vehicle) == [
        "train", "query_fine", "gallery_fine", "query_middle", "gallery_middle", "query_coarse", "gallery_coarse"]
    assert list_splits("dyml-product", dyml_product) == ["train", "test"]
    nest = "each middle class has a single coarse parent: yes"
    assert build_dataset("dyml-vehicle", dyml_vehicle, "train").report.notes == [nest]
    mismatch = build_dataset("dyml-animal", dyml_vehicle, "train").report.notes
    assert mismatch == ["the root is named 'dyml_vehicle' but is read as dyml-animal", nest]
    test = build_dataset("dyml-product", dyml_product, "test")
    assert test.labels.tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 1]]
    assert test.class_ids == [[900, 950], [50, 60], [3, 4]]
    with pytest.raises(InputError, match="unknown split 'query_fine' for dyml-product.*'train', 'test'"):
        build_dataset("dyml-product", dyml_product, "query_fine")


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_blank_lines_counted_and_malformed_rows_all_reported(dyml_vehicle: Path) -> None:
    csv = dyml_vehicle / "train" / "label.csv"
    _rewrite(csv, ["fname, coarse_id, middle_id, fine_id0.jpg, 7, 30, 100",
                   "",
                   "1.jpg, 7, 30",  # line 3: 3 fields
                   "2.jpg, 7, 31, 205",
                   "   ",
                   "3.jpg, 9, x40, 300",  # line 6: non-integer
                   "4.jpg, 9, 40, 300"])
    with pytest.raises(InputError) as err:
        build_dataset("dyml-vehicle", dyml_vehicle, "train")
    msg = str(err.value)
    assert err.value.file == str(csv) and err.value.line == 3
    assert f"{csv}:3:" in msg and f"{csv}:6:" in msg  # never stops at the first bad line
    assert "2 problem(s)" in msg and "'1.jpg, 7, 30'" in msg and "expected 4" in msg
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train", mode="lenient")
    assert [Path(p).name for p in ds.paths] == ["0.jpg", "2.jpg", "4.jpg"]
    assert ds.report.blank_lines == 2
    assert [(p.line, p.kind) for p in ds.report.problems] == [(3, "malformed_row"), (6, "malformed_row")]
    assert ds.report.header[str(csv)] == "glued"


def test_missing_image_and_missing_csv(dyml_vehicle: Path) -> None:
    (dyml_vehicle / "train" / "imgs" / "2.jpg").unlink()
    with pytest.raises(InputError, match=r"label\.csv:3: .*image file not found: .*2\.jpg"):
        build_dataset("dyml-vehicle", dyml_vehicle, "train")
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train", check_files=False)
    assert len(ds) == 5
    (dyml_vehicle / "bmk_middle" / "gallery.csv").unlink()
    with pytest.raises(InputError, match=r"gallery\.csv: file not found \(expected a DyML csv with 2 fields"):
        build_dataset("dyml-vehicle", dyml_vehicle, "gallery_middle")


def test_repeats_and_conflicts_are_problems(dyml_vehicle: Path) -> None:
    csv = dyml_vehicle / "train" / "label.csv"
    _rewrite(csv, ["fname, coarse_id, middle_id, fine_id", "0.jpg, 7, 30, 100", "0.jpg, 7, 30, 100",
                   "1.jpg, 7, 30, 101", "1.jpg, 7, 30, 205"])
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train", mode="lenient")
    assert len(ds) == 2  # an identical repeat is a problem too (it was kept with a note); lenient keeps the first
    assert [(p.line, p.kind) for p in ds.report.problems] == [(3, "duplicate"), (5, "duplicate")]
    with pytest.raises(InputError) as err:
        build_dataset("dyml-vehicle", dyml_vehicle, "train")
    assert str(err.value).splitlines()[1:] == [
        f"  {csv}:3: 0.jpg listed again with the same labels as line 2: a split lists each image once (a second "
        "listing would be its own rank-1 match when evaluating)",
        f"  {csv}:5: 1.jpg listed again with labels [205, 30, 7] but line 4 gives [101, 30, 7]"]


def test_hierarchy_violation_names_lines_in_both_modes(dyml_vehicle: Path) -> None:
    csv = dyml_vehicle / "train" / "label.csv"
    _rewrite(csv, ["fname, coarse_id, middle_id, fine_id0.jpg, 7, 30, 100", "1.jpg, 7, 31, 100",
                   "2.jpg, 7, 31, 205"])
    for mode in ("strict", "lenient"):
        with pytest.raises(InputError) as err:
            build_dataset("dyml-vehicle", dyml_vehicle, "train", mode=mode)
        msg = str(err.value)
        assert "fine class 100 has 2 middle parents" in msg
        assert f"middle 30 (e.g. {csv}:1)" in msg and f"middle 31 (e.g. {csv}:2)" in msg
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train", check_hierarchy=False)
    assert len(ds) == 3


def test_a_middle_class_under_two_coarse_classes_is_a_violation_of_the_dyml_release(
        dyml_vehicle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The DyML benchmarks nest fine in middle in coarse: a middle class with two coarse parents (every fine class
    with one) was a note only. A csv with the same labels keeps it a note (its scales need not nest)."""
    from dynametric.cli import main

    csv = dyml_vehicle / "train" / "label.csv"
    rows = ["0.jpg, 7, 30, 100", "1.jpg, 8, 30, 101", "2.jpg, 7, 31, 205"]
    _rewrite(csv, ["fname, coarse_id, middle_id, fine_id" + rows[0], *rows[1:]])
    expected = (f"hierarchy violation: middle class 30 has 2 coarse parents: coarse 7 (e.g. {csv}:1); coarse 8 "
                f"(e.g. {csv}:2)")
    for mode in ("strict", "lenient"):
        with pytest.raises(InputError) as err:
            build_dataset("dyml-vehicle", dyml_vehicle, "train", mode=mode)
        assert str(err.value).splitlines()[1:] == [f"  {csv}:1: {expected}"]
    assert main(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle), "--split", "train",
                 "--no-verify-images"]) == 1
    out = capsys.readouterr().out
    assert "each middle class has a single coarse parent: no (1 middle class(es) have several)" in out
    assert f"  {csv}:1: {expected}" in out
    mine = tmp_path / "mine"
    for i, _ in enumerate(rows):
        write_image(mine / "imgs" / f"{i}.jpg")
    (mine / "labels.csv").write_text("path,split,fine,middle,coarse\n" + "".join(
        f"imgs/{r.split(', ')[0]},train,{r.split(', ')[3]},{r.split(', ')[2]},{r.split(', ')[1]}\n" for r in rows))
    own = build_dataset("csv", mine, "train")
    assert own.report.notes[-1] == "each middle class has a single coarse parent: no (1 middle class(es) have several)"


def test_corrupt_image_error_and_skip_corrupt(dyml_vehicle: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = write_corrupt(dyml_vehicle / "train" / "imgs" / "3.jpg")  # fine 300 also has 4.jpg
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train")
    with pytest.raises(InputError, match=rf"{bad}: cannot read image"):
        ds[3]
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train", skip_corrupt=True)
    with caplog.at_level("WARNING"):
        image, labels = ds[3]
    assert image.size == (6, 6)
    assert labels.tolist() == [3, 2, 1]  # a substitute of the same fine class
    assert ds.skipped_corrupt == 1 and ds.corrupt_paths == {str(bad)}
    assert str(bad) in caplog.text
    write_corrupt(dyml_vehicle / "train" / "imgs" / "0.jpg")  # fine 100 has no other image
    with pytest.raises(InputError, match="every image of fine class 100 is unreadable"):
        ds[0]


def test_swap_rb_and_transform(dyml_vehicle: Path) -> None:
    write_image(dyml_vehicle / "train" / "imgs" / "0.jpg", (250, 0, 0), size=16)
    plain = build_dataset("dyml-vehicle", dyml_vehicle, "train")
    swapped = build_dataset("dyml-vehicle", dyml_vehicle, "train", swap_rb=True)
    r, g, b = plain[0][0].getpixel((8, 8))
    assert r > 200 and b < 50
    assert swapped[0][0].getpixel((8, 8)) == (b, g, r)
    tds = build_dataset("dyml-vehicle", dyml_vehicle, "train", transform=lambda im: torch.tensor(im.size))
    x, y = tds[2]
    assert x.tolist() == [6, 6] and y.dtype == torch.long and y.tolist() == [2, 1, 0]


def test_crlf_bom_and_no_final_newline(dyml_vehicle: Path) -> None:
    csv = dyml_vehicle / "train" / "label.csv"
    text = "\ufefffname, coarse_id, middle_id, fine_id0.jpg, 7, 30, 100\r\n1.jpg,7,30,101\r\n\r\n2.jpg ,  7 , 31, 205"
    csv.write_bytes(text.encode("utf-8"))
    ds = build_dataset("dyml-vehicle", dyml_vehicle, "train")
    assert [Path(p).name for p in ds.paths] == ["0.jpg", "1.jpg", "2.jpg"]
    assert ds.labels.tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0]]
    assert ds.report.header[str(csv)] == "glued" and ds.report.blank_lines == 1
    csv.write_bytes(b"fname, coarse_id, middle_id, fine_id0.jpg, 7, 30, \xff\n")
    with pytest.raises(InputError, match=r"label\.csv:1: not UTF-8 text: byte 0xff at column 51"):
        build_dataset("dyml-vehicle", dyml_vehicle, "train")


def test_benchmark_protocol_names_existing_splits(dyml_vehicle: Path, dyml_product: Path) -> None:
    triples = benchmark_protocol("vehicle")
    assert triples == [("fine", "query_fine", "gallery_fine"), ("middle", "query_middle", "gallery_middle"),
                       ("coarse", "query_coarse", "gallery_coarse")]
    splits = set(list_splits("dyml-vehicle", dyml_vehicle))
    for scale, query, gallery in triples:
        assert {query, gallery} <= splits
        assert build_dataset("dyml-vehicle", dyml_vehicle, query, check_files=False).scale_names == (scale,)
    assert benchmark_protocol("product") == [("all", "test", None)]
    assert "test" in list_splits("dyml-product", dyml_product)
    with pytest.raises(InputError, match="unknown DyML variant"):
        benchmark_protocol("plants")
