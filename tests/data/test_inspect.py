"""``dynametric data inspect``: counts, every problem with file and line, exit status, JSON shape."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dynametric.commands import data as data_cmd
from dynametric.errors import DynametricError
from tests.data.conftest import write_corrupt, write_image


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], errs: list[str] | None = None) -> tuple[int, str]:
    """Parse and run like ``dynametric.cli.main`` does (DynametricError → exit 2); stderr goes to ``errs``."""
    parser = argparse.ArgumentParser(prog="dynametric")
    data_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except DynametricError as exc:
        print(f"error: {exc}")
        code = 2
    captured = capsys.readouterr()
    if errs is not None:
        errs.append(captured.err)
    return code, captured.out


def test_clean_dataset_counts_and_exit_zero(dyml_vehicle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["problems"] == []
    assert doc["splits"]["train"] == {"images": 5, "classes": {"fine": 4, "middle": 3, "coarse": 2}}
    assert doc["splits"]["query_fine"] == {"images": 2, "classes": {"fine": 2}}
    assert doc["splits"]["gallery_coarse"] == {"images": 2, "classes": {"coarse": 2}}
    assert len(doc["splits"]) == 7
    assert doc["details"]["train"]["header"] == {str(dyml_vehicle / "train" / "label.csv"): "glued"}
    assert doc["details"]["raw_id_overlap"]["fine"]["query_fine & gallery_fine"] == 2
    assert "each middle class has a single coarse parent: yes" in doc["details"]["train"]["notes"]
    # --help names every top-level key that --json prints (it listed three of the five)
    from dynametric.commands import data as data_command

    assert list(doc) == ["format", "root", "splits", "problems", "details"]
    assert all(f'"{key}":' in " ".join(data_command.__doc__.split()) for key in doc)
    code, text = _run(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle),
                       "--split", "train"], capsys)
    assert code == 0
    assert "train: 5 images; classes: fine=4, middle=3, coarse=2" in text and "no problems found" in text
    assert "query_fine" not in text


def test_every_problem_reported_with_file_and_line(dyml_vehicle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = dyml_vehicle / "train" / "label.csv"
    csv.write_text("fname, coarse_id, middle_id, fine_id0.jpg, 7, 30, 100\n"
                   "1.jpg, 7, 30, 101\n"
                   "2.jpg, 7, 31\n"  # line 3: malformed
                   "9.jpg, 7, 31, 205\n"  # line 4: image missing
                   "\n"
                   "3.jpg, 9, 40, 300\n"
                   "4.jpg, 9, 41, 300\n")  # line 7: fine 300 under middle 40 and 41
    bad = write_corrupt(dyml_vehicle / "train" / "imgs" / "1.jpg")
    (dyml_vehicle / "bmk_middle" / "query.csv").unlink()
    code, out = _run(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle), "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    got = {(p["file"], p["line"], p["kind"]) for p in doc["problems"]}
    assert got == {(str(csv), 3, "malformed_row"), (str(csv), 4, "missing_image"), (str(csv), 6, "hierarchy"),
                   (str(bad), None, "unreadable_image"),
                   (str(dyml_vehicle / "bmk_middle" / "query.csv"), None, "missing_file")}  # a test split is missing
    by_kind = {p["kind"]: p["message"] for p in doc["problems"]}
    assert "'2.jpg, 7, 31'" in by_kind["malformed_row"]
    assert f"listed at {csv}:2" in by_kind["unreadable_image"]
    assert f"middle 40 (e.g. {csv}:6)" in by_kind["hierarchy"] and f"middle 41 (e.g. {csv}:7)" in by_kind["hierarchy"]
    assert doc["splits"]["train"]["images"] == 4  # the glued first record is counted
    assert doc["details"]["train"]["blank_lines"] == 1
    assert set(doc["splits"]) == {"train", "query_fine", "gallery_fine", "gallery_middle", "query_coarse",
                                  "gallery_coarse"}  # query_middle is not listed when its csv is absent
    code, text = _run(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle),
                       "--split", "train", "query_middle"], capsys)
    assert code == 1
    assert f"{csv}:3: expected 4 comma-separated fields" in text
    assert f"{dyml_vehicle / 'bmk_middle' / 'query.csv'}: file not found" in text
    assert "5 problem(s):" in text


def test_no_verify_images_skips_decoding(dyml_vehicle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_corrupt(dyml_vehicle / "train" / "imgs" / "1.jpg")
    args = ["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle), "--split", "train"]
    assert _run(args, capsys)[0] == 1
    assert _run([*args, "--no-verify-images"], capsys)[0] == 0


def test_formats_options_and_usage_errors(csv_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["splits"]["gallery"] == {"images": 2, "classes": {"fine": 2, "middle": 2, "coarse": 2}}
    (csv_root / "other.csv").write_text("path,split,fine\nimgs/a.png,train,1\nimgs/zz.png,train,2\n")
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(csv_root), "-o", "csv_file=other.csv",
                      "--json"], capsys)
    assert code == 1
    assert [(p["line"], p["kind"]) for p in json.loads(out)["problems"]] == [(3, "missing_image")]
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write("imgs/a.png,query,x\n")  # line 9: read by all three splits, reported once
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--json"], capsys)
    assert code == 1
    assert [(p["line"], p["kind"]) for p in json.loads(out)["problems"]] == [(9, "malformed_row")]
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(tmp_path / "nope")], capsys)
    assert code == 2 and "key '--root': dataset root not found: " in out  # was key 'root' (the data layer's word)
    assert "(expected a CSV file with columns path, split, <scales...> or a folder holding it)" in out  # the reader's
    # own words, as train and evaluate --checkpoint say them (was `expected the csv dataset root`)
    code, out = _run(["data", "inspect", "--format", "sop", "--root", str(csv_root), "-o", "bogus=1"], capsys)
    assert code == 2 and "unknown option(s) ['bogus'] for format 'sop'" in out
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--split", "training"], capsys)
    assert code == 2 and "unknown split 'training' for csv" in out
    code, out = _run(["data", "inspect", "--format", "imagenet", "--root", str(csv_root)], capsys)
    assert code == 2 and "key '--format': unknown dataset format 'imagenet'; valid formats: cub200," in out
    assert "--import MODULE" in out  # a format a user's module registers: checked after --import (docs/extending.md)


def test_problems_are_listed_by_file_then_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The splits are read one after another, so a later line of the first split read (train, line 6) was listed
    before an earlier line of the next (test, line 4)."""
    root = tmp_path / "d"
    for name in ("a", "b", "c", "e"):
        write_image(root / f"{name}.png", (10, 20, 30))
    (root / "labels.csv").write_text("path,split,fine\na.png,train,0\nb.png,train,1\nc.png,test,2,9\n"
                                     "e.png,test,2\nmissing.png,train,3\n")
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(root), "--json"], capsys)
    assert code == 1
    assert [(Path(p["file"]).name, p["line"], p["splits"]) for p in json.loads(out)["problems"]] == [
        ("labels.csv", 4, ["test"]), ("labels.csv", 6, ["train"])]
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(root)], capsys)
    listed = [line for line in out.splitlines() if "labels.csv:" in line]
    assert len(listed) == 2 and "labels.csv:4: " in listed[0] and "labels.csv:6: " in listed[1]


def test_synthetic_inspect(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["data", "inspect", "--format", "synthetic", "-o", "images_per_class=1", "-o", "image_size=16",
                      "--split", "train", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["splits"]["train"]["classes"]["coarse"] == 3 and doc["splits"]["train"]["classes"]["middle"] == 9
    assert doc["splits"]["train"]["images"] == doc["splits"]["train"]["classes"]["fine"]  # one image per class


def test_sample_grid_honours_swap_rb(dyml_vehicle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(5):
        write_image(dyml_vehicle / "train" / "imgs" / f"{i}.jpg", (250, 0, 0), size=8)
    for swap, expect_red in ((False, True), (True, False)):
        grid = tmp_path / f"grid_{swap}.png"
        errs: list[str] = []
        code, _ = _run(["data", "inspect", "--format", "dyml-vehicle", "--root", str(dyml_vehicle), "--split",
                        "train", "--grid", str(grid), "-o", f"swap_rb={str(swap).lower()}"], capsys, errs)
        assert code == 0
        assert f"wrote {grid}: a grid of 5 image(s) of split 'train'" in errs[0]  # said, not silent
        with Image.open(grid) as im:
            assert im.size == (3 * 96, 2 * 96)  # 5 images → 3 columns, 2 rows
            r, _, b = im.convert("RGB").getpixel((48, 48))
        assert (r > 200 and b < 50) if expect_red else (b > 200 and r < 50)


def _grid(root: Path, grid: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    return _run(["data", "inspect", "--format", "csv", "--root", str(root), "--grid", str(grid), *extra], capsys)


def test_grid_never_replaces_a_file_it_did_not_write(csv_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`--grid` wrote over any file, the dataset's own labels.csv and images included; it writes a new file or
    replaces a grid an earlier `--grid` wrote (its PNG text Software = 'dynametric data inspect'), and refuses
    anything else before any work, in one line naming the file, which stays as it was."""
    from PIL.PngImagePlugin import PngInfo

    (tmp_path / "mine.txt").write_text("my notes\n")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "photo.png")  # a PNG, but no grid
    text = PngInfo()
    text.add_text("Software", "GIMP 2.10")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "gimp.png", pnginfo=text)
    targets = [csv_root / "labels.csv", csv_root / "imgs" / "a.png", tmp_path / "mine.txt", tmp_path / "photo.png",
               tmp_path / "gimp.png"]
    before = {t: t.read_bytes() for t in targets}
    for target in targets:
        code, out = _grid(csv_root, target, capsys, "--split", "train")
        assert (code, out) == (2, f"error: {target} key '--grid': exists and is not a sample grid an earlier data "
                                  "inspect --grid wrote (a PNG whose Software text is 'dynametric data inspect'); it "
                                  "is not overwritten: choose another --grid, or remove the file yourself\n")
        assert target.read_bytes() == before[target]
    grid = tmp_path / "grid.png"
    errs: list[str] = []
    for count in ("4", "1"):  # an earlier grid is replaced
        assert _run(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--split", "train", "--grid",
                     str(grid), "--grid-count", count], capsys, errs)[0] == 0
    assert f"wrote {grid}: a grid of 1 image(s) of split 'train'" in errs[-1]
    from dynametric.data.inspect import GRID_SOFTWARE

    with Image.open(grid) as im:
        assert im.size == (96, 96) and im.info["Software"] == GRID_SOFTWARE == "dynametric data inspect"
    link = tmp_path / "link.png"
    link.symlink_to(grid)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    kept = grid.read_bytes()
    assert _grid(csv_root, link, capsys) == (2, f"error: {link} key '--grid': is a symbolic link; --grid names a PNG "
                                                "file to write\n")
    assert _grid(csv_root, folder, capsys) == (2, f"error: {folder} key '--grid': is a folder; expected the path of "
                                                  "a PNG file to write\n")
    assert grid.read_bytes() == kept and list(folder.iterdir()) == []


def test_grid_never_replaces_a_file_of_the_dataset(csv_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Not even a grid of an earlier `--grid` that the dataset lists as an image (a copy, or a hard link in another
    split than the one drawn)."""
    from dynametric.data.inspect import write_sample_grid

    grid = tmp_path / "grid.png"
    assert _grid(csv_root, grid, capsys, "--split", "train")[0] == 0
    kept = grid.read_bytes()
    (csv_root / "imgs" / "z.png").write_bytes(kept)  # an earlier grid, now an image of split 'train'
    os.link(grid, csv_root / "imgs" / "h.png")  # the grid itself, also an image of split 'query'
    with open(csv_root / "labels.csv", "a") as fh:
        fh.write("imgs/z.png,train,robin,thrush,bird\nimgs/h.png,query,grizzly,bear,mammal\n"
                 "imgs/gone.png,gallery,wren,wren_family,bird\n")
    refused = " key '--grid': is one of the dataset's own files (an index file or an image it lists); it is never " \
              "overwritten: choose another --grid\n"
    for target in (csv_root / "imgs" / "z.png", grid):
        code, out = _grid(csv_root, target, capsys, "--no-verify-images")
        assert (code, out) == (2, f"error: {target}{refused}")
    assert (csv_root / "imgs" / "z.png").read_bytes() == grid.read_bytes() == kept
    with pytest.raises(DynametricError, match="is one of the dataset's own files"):  # the library: the split drawn
        write_sample_grid("csv", csv_root, "train", csv_root / "imgs" / "z.png", options={"mode": "lenient"})
    assert _grid(csv_root, tmp_path / "new.png", capsys, "--no-verify-images")[0] == 1  # gone.png: a problem


def test_a_grid_removes_what_a_killed_write_of_it_left(csv_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    stale = [tmp_path / ".grid.png.ab12cd34.tmp", tmp_path / ".grid.png.x_y_z_09.tmp"]
    kept = [tmp_path / ".grid.png.AB12CD34.tmp", tmp_path / ".other.png.ab12cd34.tmp",
            tmp_path / ".grid.png.ab12cd3.tmp", tmp_path / "grid.png.ab12cd34.tmp"]
    for p in stale + kept:
        p.write_text("x")
    assert _grid(csv_root, tmp_path / "grid.png", capsys, "--split", "train")[0] == 0
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)


def test_through_the_real_cli(csv_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dynametric.cli import main

    assert main(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--split", "train"]) == 0
    assert "train: 4 images; classes: fine=3, middle=2, coarse=2" in capsys.readouterr().out
    assert main(["data", "inspect", "--format", "cub200", "--root", str(tmp_path / "none")]) == 2
    assert "dynametric data inspect: error:" in capsys.readouterr().err


def test_classes_or_files_shared_by_training_and_held_out_splits_are_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.data.conftest import write_csv_dataset

    rows = [("imgs/a.png", "train", "bear", "mammal"), ("imgs/b.png", "train", "owl", "bird"),
            ("imgs/c.png", "val", "bear", "mammal"), ("imgs/d.png", "test", "bear", "mammal"),
            ("imgs/e.png", "test", "wolf", "mammal"), ("imgs/b.png", "query", "owl", "bird"),
            ("imgs/f.png", "gallery", "wolf", "mammal")]
    root = write_csv_dataset(tmp_path / "csv", [(*r[:3], r[2], r[3]) for r in rows])
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(root), "--json", "--no-verify-images"],
                     capsys)
    doc = json.loads(out)
    found = {(p["kind"], tuple(p["splits"])): p["message"] for p in doc["problems"]}
    assert code == 1 and set(found) == {
        ("class_overlap", ("train", "val")), ("class_overlap", ("train", "test")),
        ("class_overlap", ("val", "test")), ("class_overlap", ("train", "query")),
        ("shared_file", ("train", "query"))}  # test & query, query & gallery: the test set's own business
    assert found[("class_overlap", ("train", "test"))].startswith("splits 'train' and 'test' share 1 fine class(es) "
                                                                  "('bear')")
    assert found[("shared_file", ("train", "query"))].startswith(
        f"splits 'train' and 'query' list 1 of the same image file(s), e.g. {(root / 'imgs' / 'b.png').resolve()}")
    code, out = _run(["data", "inspect", "--format", "csv", "--root", str(root), "--no-verify-images"], capsys)
    assert code == 1 and "no problems found" not in out and "5 problem(s):" in out


@pytest.mark.parametrize("fixture, fmt", [("sop_root", "sop"), ("inshop_root", "inshop"), ("cub_root", "cub200"),
                                          ("dyml_vehicle", "dyml-vehicle"), ("csv_root", "csv")])
def test_class_disjoint_benchmarks_have_no_shared_class_problem(request: pytest.FixtureRequest, fixture: str, fmt: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    # SOP shares its categories, DyML numbers its benchmark files on its own: neither is a problem
    code, out = _run(["data", "inspect", "--format", fmt, "--root", str(request.getfixturevalue(fixture)), "--json"],
                     capsys)
    assert code == 0 and json.loads(out)["problems"] == []


@pytest.mark.parametrize("variant, remove, missing", [
    ("product", ["mini-bmk_all_in_one"], [("test", "mini-bmk_all_in_one/label.csv")]),
    ("vehicle", ["bmk_middle", "bmk_coarse/gallery.csv"],
     [("gallery_coarse", "bmk_coarse/gallery.csv"), ("gallery_middle", "bmk_middle/gallery.csv"),
      ("query_middle", "bmk_middle/query.csv")]),  # listed by file
])
def test_missing_dyml_test_splits_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str,
                                               remove: list[str], missing: list[tuple[str, str]]) -> None:
    import shutil

    from tests.data.conftest import write_dyml

    root = write_dyml(tmp_path / variant, variant)
    for rel in remove:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    code, out = _run(["data", "inspect", "--format", f"dyml-{variant}", "--root", str(root), "--json"], capsys)
    doc = json.loads(out)
    assert code == 1 and [(p["splits"], p["file"], p["kind"], p["message"]) for p in doc["problems"]] == [
        ([split], str(root / rel), "missing_file",
         f"not found: split {split!r} of the dyml-{variant} release is missing (its test protocol evaluates it)")
        for split, rel in missing]
    code, out = _run(["data", "inspect", "--format", f"dyml-{variant}", "--root", str(root)], capsys)
    assert code == 1 and f"{root / missing[0][1]}: not found: split {missing[0][0]!r}" in out
    # asking for the splits that are there: nothing is missing from what was asked
    code, _ = _run(["data", "inspect", "--format", f"dyml-{variant}", "--root", str(root), "--split", "train"], capsys)
    assert code == 0


def write_damaged_jpeg(path: Path, seed: int = 0) -> None:
    """A JPEG whose compressed data is cut in half, the end-of-image marker put back: Pillow decodes it without an
    error (grey below the cut); libjpeg warns 'Corrupt JPEG data: premature end of data segment'."""
    import io

    import numpy as np

    buf = io.BytesIO()
    noise = np.random.default_rng(seed).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    start = data.index(b"\xff\xda")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:start + (len(data) - start) // 2] + b"\xff\xd9")


def test_a_jpeg_with_damaged_data_that_pillow_decodes_is_a_problem(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """'no problems found' was printed for it; training and embed take it as Pillow decodes it."""
    root = tmp_path / "d"
    for name in ("a", "b", "c"):
        write_image(root / "x" / f"{name}.png", (10, 20, 30))
    write_damaged_jpeg(root / "y" / "cut.jpg")
    write_image(root / "y" / "ok.jpg", (200, 100, 50))
    with Image.open(root / "y" / "cut.jpg") as img:
        img.load()  # Pillow: no error
    code, out = _run(["data", "inspect", "--format", "folder", "--root", str(root), "--json"], capsys)
    assert code == 1
    assert [(p["file"], p["kind"], p["message"]) for p in json.loads(out)["problems"]] == [
        (str(root / "y" / "cut.jpg"), "damaged_image",
         "damaged JPEG data (libjpeg: Corrupt JPEG data: premature end of data segment): Pillow decodes it without "
         "an error, grey where the data is damaged, and training and embed take it so")]


def test_inspect_options_are_read_as_config_overrides_are() -> None:
    """``--option K=V`` read with PyYAML's YAML 1.1 rules (``012`` was 10, ``1:30`` 90, ``yes`` true) while a
    ``data.options.K=V`` override reads YAML 1.2: now the same reading, and a plain yes/no refused as there."""
    parsed = data_cmd._parse_options(["a=012", "b=1:30", "c=true", "d=[1, 2]", "e=pics", "f=1e-3"])
    assert parsed == {"a": 12, "b": "1:30", "c": True, "d": [1, 2], "e": "pics", "f": 1e-3}
    with pytest.raises(DynametricError, match=r"key '--option with_category': yes is ambiguous: .* write true for a "
                                              r"boolean, or 'yes' in quotes for the string"):
        data_cmd._parse_options(["with_category=yes"])
    assert data_cmd._parse_options(["x='yes'"]) == {"x": "yes"}
