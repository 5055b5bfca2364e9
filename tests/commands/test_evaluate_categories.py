"""`dynametric evaluate` and `dynametric train` with OML's per-category report and sequences: the category table
and the ``by_category`` JSON block (``--query-categories`` for embeddings from files, the data's category column
with ``--checkpoint``, ``eval.per_category`` to switch it off), and a leave-one-out test of a split with sequence
ids, the same in training and in ``evaluate --checkpoint``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynametric.cli import main
from dynametric.metrics.io import is_per_query_csv


def _angles(degrees: list[float]) -> np.ndarray:
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees], np.float32)


def _five_queries(tmp_path: Path) -> list[str]:
    """Five 2-d query embeddings (labels 0 1 0 1 0) and four gallery ones (0 0 1 1) as .npy files in ``tmp_path``:
    the ``dynametric evaluate`` arguments that read them (query -> gallery)."""
    np.save(tmp_path / "g.npy", _angles([0, 100, 40, 170]))
    np.save(tmp_path / "gl.npy", np.array([0, 0, 1, 1]))
    np.save(tmp_path / "q.npy", _angles([10, 60, 45, 140, 210]))
    np.save(tmp_path / "ql.npy", np.array([0, 1, 0, 1, 0]))
    return ["evaluate", "--embeddings", str(tmp_path / "q.npy"), "--labels", str(tmp_path / "ql.npy"),
            "--gallery-embeddings", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "gl.npy")]


def test_query_categories_file_prints_and_writes_the_split(tmp_path: Path, capsys):
    base = _five_queries(tmp_path)
    (tmp_path / "cat.txt").write_text("fish\nfish\nbird\nbird\nbird\n")
    args = [*base, "--metrics", "recall@1", "map", "nmi", "--device", "cpu"]
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt"), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("by query category (2 categories; each value the mean over the category's queries; nmi: overall "
                   "only):")
    assert out[at + 1].split() == ["category", "scale", "recall@1", "map", "queries", "num_queries",
                                   "excluded_queries"]
    assert out[at + 2].split() == ["bird", "fine", "0.3333", "0.6667", "3", "3", "0"]  # by hand: test_oml_report
    assert out[at + 3].split() == ["fish", "fine", "1.0000", f"{19 / 24:.4f}", "2", "2", "0"]
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res) == ["fine", "mean", "by_category"]
    assert res["by_category"]["bird"]["fine"]["map"] == pytest.approx(2 / 3)
    assert "nmi" in res["fine"] and "nmi" not in res["by_category"]["bird"]["fine"]
    # without the file: the output as before
    assert main([*args, "--json", str(tmp_path / "r.json")]) == 0
    assert "by query category" not in capsys.readouterr().out
    assert list(json.loads((tmp_path / "r.json").read_text())) == ["fine", "mean"]
    (tmp_path / "cat.txt").write_text("fish\n\nbird\nbird\nbird\n")
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cat.txt'}:2 key '--query-categories': line 2 is empty" in err
    (tmp_path / "cat.txt").write_text("fish\nbird\n")  # was "cat.txt: expected 5 ids (one per line), got 2"
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 2
    assert (f"{tmp_path / 'cat.txt'} key '--query-categories': expected 5 categories (one per line), got 2"
            in capsys.readouterr().err)
    (tmp_path / "gid.txt").write_text("a\nb\nc\nd\n")  # the gallery's ids: query -> gallery takes both files
    assert main([*args, "--query-ids", str(tmp_path / "cat.txt"), "--gallery-ids", str(tmp_path / "gid.txt")]) == 2
    assert (f"{tmp_path / 'cat.txt'} key '--query-ids': expected 5 ids (one per line), got 2"
            in capsys.readouterr().err)
    (tmp_path / "cat.txt").write_text("fish\n" * 5)  # one category: the title says so (was "1 categories")
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 0
    assert "by query category (1 category; each value" in capsys.readouterr().out


def test_id_and_category_files_saved_with_a_byte_order_mark(tmp_path: Path, capsys):
    """A ``--query-categories`` / ``--query-ids`` / ``--gallery-ids`` file an editor saved with a UTF-8 byte order
    mark (or with CR line ends) reads as without: the mark used to stay on the first line, a phantom category
    ``\ufeffbird`` of one query; bytes that are not UTF-8 are one error naming the line."""
    args = [*_five_queries(tmp_path), "--metrics", "recall@1", "map", "--device", "cpu"]
    results = []
    for name, data in (("plain", "bird\nfish\nbird\nbird\nfish\n"), ("bom", "\ufeffbird\nfish\nbird\nbird\nfish\n"),
                       ("cr", "\ufeffbird\rfish\rbird\rbird\rfish\r")):
        (tmp_path / f"{name}.txt").write_bytes(data.encode("utf-8"))
        assert main([*args, "--query-categories", str(tmp_path / f"{name}.txt"),
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        results.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert list(results[0]["by_category"]) == ["bird", "fish"] and results[1] == results[0] == results[2]
    from dynametric.errors import InputError
    from dynametric.utils.readers import load_ids

    (tmp_path / "ids.txt").write_bytes("\ufeffq0\r\nq1\r\n".encode("utf-8"))
    assert load_ids(tmp_path / "ids.txt", 2) == ["q0", "q1"]
    (tmp_path / "ids.txt").write_bytes(b"q0\nq\xe91\n")
    with pytest.raises(InputError) as err:
        load_ids(tmp_path / "ids.txt", 2)
    assert err.value.line == 2 and "byte 0xe9 at column 2 cannot be decoded" in str(err.value)


def test_an_id_file_takes_blank_lines_at_its_end_only(tmp_path: Path):
    """Blank lines at the end of an id file are ignored (any number, with spaces or ``\r\n``); a blank line before
    the last id is an error at its line. It used to be read as the id "", one id shared by every such row, so those
    rows excluded each other from their rankings; and a second trailing blank line was counted as an id."""
    from dynametric.errors import InputError
    from dynametric.utils.readers import load_ids

    (tmp_path / "ids.txt").write_bytes(b"a\r\nb\r\n\r\n  \r\n\n")
    assert load_ids(tmp_path / "ids.txt", 2) == ["a", "b"]
    (tmp_path / "ids.txt").write_text("a\n\nb\n \nc\n")
    with pytest.raises(InputError) as err:
        load_ids(tmp_path / "ids.txt", 5, "ids of split 'test'", key="--query-ids")
    assert err.value.line == 2 and str(err.value) == (
        f"{tmp_path / 'ids.txt'}:2 key '--query-ids': line 2 is empty; expected 5 ids of split 'test', one per line "
        "(blank lines only at the end of the file)")


@pytest.mark.parametrize("option", ["--query-categories", "--query-ids", "--gallery-ids"])
def test_an_id_file_not_utf8_or_missing_names_its_option(tmp_path: Path, capsys, option: str):
    """A file of bytes that are not UTF-8, or no file, is one line naming the file, the line and the option, as a
    file of the wrong length is (it was `bad.txt:1: not UTF-8 text: ...`, which of the three files was given by
    which option left to the reader)."""
    np.save(tmp_path / "e.npy", _angles([0, 100, 40, 170]))
    np.save(tmp_path / "l.npy", np.array([0, 0, 1, 1]))
    (tmp_path / "good.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "bad.txt").write_bytes(b"a\nb\xffc\nc\nd\n")
    files = {o: str(tmp_path / "good.txt") for o in ("--query-ids", "--gallery-ids")}
    args = ["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.npy"),
            "--gallery-embeddings", str(tmp_path / "e.npy"), "--gallery-labels", str(tmp_path / "l.npy"),
            "--metrics", "recall@1", "--device", "cpu"]
    for name, message in (("bad.txt", ":2 key '{o}': not UTF-8 text: byte 0xff at column 2 cannot be decoded (save "
                                      "the file as UTF-8)"),
                          ("none.txt", " key '{o}': file not found")):
        given = files | {option: str(tmp_path / name)}
        assert main([*args, *(x for pair in given.items() for x in pair)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"dynametric evaluate: error: {tmp_path / name}" + message.format(o=option))


def test_id_and_category_file_lines_end_at_lf_crlf_and_cr_only(tmp_path: Path, capsys):
    """A line of an id / category file ends at ``\n``, ``\r\n`` or ``\r``, nothing else: a form feed, vertical
    tab, file separator or U+2028 inside a line is part of its id (``str.splitlines`` ends a line at each of them:
    one id became two, and the file had the wrong number of lines); whitespace at either end is dropped."""
    from dynametric.utils.readers import load_ids

    (tmp_path / "ids.txt").write_bytes("a\fb\r\nc\vd\re\x1cf\ng\u2028h\n \fi\x0c\n".encode("utf-8"))
    assert load_ids(tmp_path / "ids.txt", 5) == ["a\fb", "c\vd", "e\x1cf", "g\u2028h", "i"]
    np.save(tmp_path / "q.npy", _angles([10, 60, 45, 140]))
    np.save(tmp_path / "ql.npy", np.array([0, 1, 0, 1]))
    (tmp_path / "cat.txt").write_bytes("x\fy\nx\fy\nz\u2028w\nz\u2028w\n".encode("utf-8"))
    assert main(["evaluate", "--embeddings", str(tmp_path / "q.npy"), "--labels", str(tmp_path / "ql.npy"),
                 "--query-categories", str(tmp_path / "cat.txt"), "--metrics", "recall@1", "--device", "cpu",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert list(json.loads((tmp_path / "r.json").read_text())["by_category"]) == ["x\fy", "z\u2028w"]


def test_categories_from_a_file_are_read_and_ordered_as_an_oml_csv_s(tmp_path: Path, capsys):
    """A ``--query-categories`` line that is an integer is an int, as an OML ``category`` cell: ``2`` sorts before
    ``10`` (both before the texts), as in a run on an OML CSV (it used to be text, ``10`` before ``2``); ``007`` and
    ``7`` are one category 7, as an OML CSV reads them, with a note saying so."""
    args = [*_five_queries(tmp_path), "--metrics", "recall@1", "--device", "cpu", "--json", str(tmp_path / "r.json")]
    (tmp_path / "cat.txt").write_text("10\nbird\n2\n-1\nbird\n")
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 0
    assert list(json.loads((tmp_path / "r.json").read_text())["by_category"]) == ["-1", "2", "10", "bird"]
    assert "note:" not in capsys.readouterr().err
    from dynametric.data import build_dataset
    from dynametric.engine.protocols import query_categories

    rows = ["label,path,split,is_query,is_gallery,category"]  # the same categories from an OML CSV: the same order
    for i, c in enumerate(["10", "bird", "2", "-1", "bird"]):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"0,{i}.png,validation,True,True,{c}")
    (tmp_path / "df.csv").write_text("\n".join(rows) + "\n")
    from dynametric.metrics.categories import category_codes

    from_csv = query_categories(build_dataset("oml", tmp_path, "query"), 5)
    assert category_codes(from_csv, 5).names == ["-1", "2", "10", "bird"]
    (tmp_path / "cat.txt").write_text("007\nbird\n7\n7\nbird\n")
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 0
    by_category = json.loads((tmp_path / "r.json").read_text())["by_category"]
    assert list(by_category) == ["7", "bird"] and by_category["7"]["fine"]["num_queries"] == 3
    assert (f"note: --query-categories {tmp_path / 'cat.txt'}: lines '007' (line 1) and '7' (line 3) are one "
            "category 7 (a line that is an integer is read by its value") in capsys.readouterr().err


def test_a_category_line_too_long_for_int64_is_text(tmp_path: Path, capsys):
    """A ``--query-categories`` line of 5000 digits is a category named by its text, as the same OML ``category``
    cell (it was ``ValueError: Exceeds the limit (4300 digits) for integer string conversion``); a number past
    int64 is text too, so it sorts after the ints, and ``0`` + the same digits is another category."""
    np.save(tmp_path / "q.npy", _angles([10, 60, 45, 140]))
    np.save(tmp_path / "ql.npy", np.array([0, 1, 0, 1]))
    big = "9" * 5000
    (tmp_path / "cat.txt").write_text(f"{big}\n0{big}\n{2**63}\n{2**63 - 1}\n")
    assert main(["evaluate", "--embeddings", str(tmp_path / "q.npy"), "--labels", str(tmp_path / "ql.npy"),
                 "--query-categories", str(tmp_path / "cat.txt"), "--metrics", "recall@1", "--device", "cpu",
                 "--json", str(tmp_path / "r.json")]) == 0
    by_category = json.loads((tmp_path / "r.json").read_text())["by_category"]
    assert list(by_category) == [str(2**63 - 1), "0" + big, str(2**63), big]
    assert "note:" not in capsys.readouterr().err


def write_class_image(root: Path, c: int, i: int, rng: np.random.Generator) -> None:
    """``root/img/<c>_<i>.png``: a 12x12 image whose left half is class ``c``'s colour, the right half random."""
    path = root / f"img/{c}_{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((12, 12, 3), np.uint8)
    arr[:, :6] = ((c * 41) % 256, (c * 83) % 256, (c * 17) % 256)
    arr[:, 6:] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path)


def _oml_run_data(root: Path) -> None:
    """8 training classes of 4 images; 4 validation classes of 3 images: image 0 query and gallery, images 0 and 1
    one sequence, image 2 another; categories cold / warm by class."""
    rng = np.random.default_rng(0)
    rows = ["label,path,split,is_query,is_gallery,category,sequence"]
    for c in range(12):
        for i in range(4 if c < 8 else 3):
            write_class_image(root, c, i, rng)
            category = "warm" if c % 2 else "cold"
            if c < 8:
                rows.append(f"{c},img/{c}_{i}.png,train,,,{category},")
            else:
                flags = "True,True" if i == 0 else "False,True"
                rows.append(f"{c},img/{c}_{i}.png,validation,{flags},{category},s{c}{'a' if i < 2 else 'b'}")
    (root / "df.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def oml_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data root, run folder)``: a one-epoch run on :func:`_oml_run_data`, tested by leave-one-out on OML's
    validation rows."""
    tmp = tmp_path_factory.mktemp("oml_run")
    root = tmp / "oml"
    _oml_run_data(root)
    out = tmp / "run"
    assert main(["train", "--out", str(out), "data.format=oml", f"data.root={root}", "data.image_size=8",
                 "data.batch_size=8", "data.m=2", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}",
                 "trainer.max_epochs=1", "trainer.progress_bar=false", "run.report=false",
                 "data.test_split=validation"]) == 0  # leave-one-out on OML's validation rows
    return root, out


def test_oml_run_reports_categories_and_excludes_sequences_in_leave_one_out(oml_run, tmp_path: Path, capsys):
    root, out = oml_run
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    # the training module's leave-one-out test: each item's sequence excluded, reported per category
    assert test["protocol"] == {"name": "leave_one_out", "split": "validation", "queries": 12,
                                "same_sequence_excluded": True, "excluded_pairs": 8}
    assert list(test["by_category"]) == ["cold", "warm"]
    assert [test["by_category"][c]["label"]["num_queries"] for c in ("cold", "warm")] == [6, 6]
    assert (test["by_category"]["cold"]["label"]["map"] + test["by_category"]["warm"]["label"]["map"]) / 2 == \
        pytest.approx(test["label"]["map"])
    for entry in metrics["validation"]:  # the carved validation classes (training rows) carry their categories
        assert "by_category" in entry and "protocol" not in entry
    # evaluate --checkpoint reruns it, the same numbers
    ckpt = str(out / "best.ckpt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--json", str(tmp_path / "loo.json")]) == 0
    assert "by query category (2 categories" in capsys.readouterr().out
    loo = json.loads((tmp_path / "loo.json").read_text())
    assert loo["protocol"] == test["protocol"]
    for c in ("cold", "warm"):
        for m in ("recall@1", "map@r", "map"):
            assert loo["by_category"][c]["label"][m] == pytest.approx(test["by_category"][c]["label"][m], abs=1e-6)
    # the query -> gallery test of the same checkpoint: OML's own protocol, reported per category
    qg_args = ["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--set", "eval.protocol=query_gallery",
               "--set", "eval.query_in_gallery=true"]
    assert main([*qg_args, "--json", str(tmp_path / "qg.json")]) == 0
    qg = json.loads((tmp_path / "qg.json").read_text())
    assert qg["protocol"]["excluded_pairs"] == 8 and qg["label"]["num_queries"] == 4
    assert [qg["by_category"][c]["label"]["num_queries"] for c in ("cold", "warm")] == [2, 2]
    # switched off: no block, no table; a bad value: one line naming the key
    capsys.readouterr()
    assert main([*qg_args, "--set", "eval.per_category=false", "--json", str(tmp_path / "off.json")]) == 0
    assert "by query category" not in capsys.readouterr().out
    off = json.loads((tmp_path / "off.json").read_text())
    assert "by_category" not in off and off["label"] == qg["label"]
    assert main([*qg_args, "--set", "eval.per_category=maybe"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'eval.per_category': expected bool, got 'maybe'" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--checkpoint", ckpt, "--query-categories", str(root / "df.csv")]) == 2
    assert "key '--query-categories': applies to embeddings from files" in capsys.readouterr().err


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.open(newline="", encoding="utf-8")))


def test_per_query_csv_has_a_last_category_column_when_the_queries_have_categories(tmp_path: Path):
    """``--per-query`` with ``--query-categories``: the columns of the CSV without categories, then ``category``
    (each query's, on each of its rows); an earlier CSV of either shape is replaced, a new one is still recognised."""
    np.save(tmp_path / "g.npy", _angles([0, 100, 40, 170]))
    np.save(tmp_path / "gl.npy", np.array([[0, 0], [0, 0], [1, 0], [1, 0]]))
    np.save(tmp_path / "q.npy", _angles([10, 60, 45]))
    np.save(tmp_path / "ql.npy", np.array([[0, 0], [1, 0], [0, 0]]))
    (tmp_path / "cat.txt").write_text("fish\nbird\nbird\n")
    args = ["evaluate", "--embeddings", str(tmp_path / "q.npy"), "--labels", str(tmp_path / "ql.npy"),
            "--gallery-embeddings", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "gl.npy"),
            "--metrics", "recall@1", "map", "--device", "cpu", "--per-query", str(tmp_path / "pq.csv")]
    assert main(args) == 0
    plain = _rows(tmp_path / "pq.csv")
    assert plain[0] == ["query", "scale", "num_relevant", "recall@1", "map"]
    assert main([*args, "--query-categories", str(tmp_path / "cat.txt")]) == 0  # replaces the earlier CSV
    rows = _rows(tmp_path / "pq.csv")
    assert rows[0] == ["query", "scale", "num_relevant", "recall@1", "map", "category"]
    assert [r[:-1] for r in rows] == plain  # every other column as before
    assert [(r[0], r[1], r[-1]) for r in rows[1:]] == [("0", "fine", "fish"), ("0", "coarse", "fish"),
                                                       ("1", "fine", "bird"), ("1", "coarse", "bird"),
                                                       ("2", "fine", "bird"), ("2", "coarse", "bird")]
    assert is_per_query_csv(tmp_path / "pq.csv")
    assert main(args) == 0  # and back
    assert _rows(tmp_path / "pq.csv") == plain


def test_per_query_csv_of_a_checkpoint_carries_the_data_categories(oml_run, tmp_path: Path):
    """``--checkpoint`` on OML data with a category column: the per-query CSV ends with each query's category (the
    validation rows in file order), unless ``eval.per_category=false`` leaves the categories out."""
    _, out = oml_run
    args = ["evaluate", "--checkpoint", str(out / "best.ckpt"), "--device", "cpu", "--per-query",
            str(tmp_path / "pq.csv")]
    assert main(args) == 0
    rows = _rows(tmp_path / "pq.csv")
    assert rows[0][:3] == ["query", "scale", "num_relevant"] and rows[0][-1] == "category"
    assert [r[-1] for r in rows[1:]] == ["cold"] * 3 + ["warm"] * 3 + ["cold"] * 3 + ["warm"] * 3
    assert main([*args, "--set", "eval.per_category=false"]) == 0
    off = _rows(tmp_path / "pq.csv")
    assert "category" not in off[0] and [r[:-1] for r in rows] == off


def test_checkpoint_says_why_its_queries_have_no_per_category_report(oml_run, tmp_path: Path, capsys):
    """``evaluate --checkpoint`` on data whose category column is empty on one of the queries' rows: no
    ``by_category``, and the load report's note saying why on stderr (it was left out without a word). A gallery
    row without a category drops nothing in a query -> gallery test, and is not noted."""
    root, out = oml_run
    rows = (root / "df.csv").read_text().splitlines()
    assert rows[33].startswith("8,img/8_0.png,validation,True,True,cold") and ",False,True,cold," in rows[34]
    base = ["evaluate", "--checkpoint", str(out / "best.ckpt"), "--device", "cpu", "--set", f"data.root={tmp_path}",
            "--set", f"data.options.image_root={root}"]
    qg = ["--set", "eval.protocol=query_gallery", "--set", "eval.query_in_gallery=true"]
    for line in (35, 34):  # a gallery-only row, then a query row
        edited = [*rows]
        edited[line - 1] = edited[line - 1].replace(",cold,", ",,")
        (tmp_path / "df.csv").write_text("\n".join(edited) + "\n")
        capsys.readouterr()
        assert main([*base, "--split", "validation"]) == 0  # leave-one-out: every validation item is a query
        std = capsys.readouterr()
        assert "by query category" not in std.out
        assert (f"note: column 'category' of df.csv is empty on 1 of the 12 records of split 'validation' (first at "
                f"line {line}): no per-category metrics for it") in std.err
        assert main([*base, *qg]) == 0
        std = capsys.readouterr()
        if line == 35:  # the gallery's categories are not read: the report is whole, nothing to say
            assert "by query category (2 categories" in std.out and "note: column 'category'" not in std.err
        else:
            assert "by query category" not in std.out
            assert ("note: column 'category' of df.csv is empty on 1 of the 4 records of split 'query' (first at "
                    "line 34): no per-category metrics for it") in std.err
        assert main([*base, "--split", "validation", "--set", "eval.per_category=false"]) == 0
        assert "note: column 'category'" not in capsys.readouterr().err  # not asked for: nothing dropped


def test_id_files_never_replace_the_protocol_s_own_exclusions(oml_run, tmp_path: Path, capsys, monkeypatch):
    """`--query-ids` / `--gallery-ids` with `--checkpoint` where the test protocol excludes by ids of its own (the
    split's sequence ids; each query's own gallery item with `eval.query_in_gallery`): one line naming the option,
    before anything is embedded. The files' ids replaced the protocol's while its block still said
    `same_sequence_excluded: true`. The advice is a files-mode command that works: query -> gallery files need
    `--gallery-embeddings` and both id files (it named only the options given, `... with --gallery-ids`, which
    files mode refuses too); `--gallery-ids` on the leave-one-out split says it does not apply there."""
    import dynametric.engine.inference as inference

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the check")

    monkeypatch.setattr(inference, "embed_dataset", no_embedding)
    _, out = oml_run
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in range(12)))
    ids = str(tmp_path / "ids.txt")
    base = ["evaluate", "--checkpoint", str(out / "best.ckpt"), "--device", "cpu"]
    assert main([*base, "--query-ids", ids]) == 2  # leave-one-out on the validation rows, which carry sequences
    err = capsys.readouterr().err.strip()
    assert err == ("dynametric evaluate: error: key '--query-ids': cannot replace the sequence ids of split "
                   "'validation' (the data's sequence column), by which the test protocol excludes the items of each "
                   "query's own sequence; to exclude by your own ids, embed the split (dynametric embed) and evaluate "
                   "the file: --embeddings EMB --query-ids FILE")
    assert main([*base, "--gallery-ids", ids]) == 2  # leave-one-out with sequences: --gallery-ids is not for it
    assert capsys.readouterr().err.strip() == (
        "dynametric evaluate: error: key '--gallery-ids': does not apply to leave-one-out (the run's eval.protocol is "
        "leave_one_out on split 'validation'), which has no gallery: it is for a query -> gallery evaluation; "
        "leave-one-out takes --query-ids alone (each query's ranking then leaves out every item sharing its id)")
    files = ("to exclude by your own ids, embed both splits (dynametric embed) and evaluate the files: --embeddings "
             "QUERY --gallery-embeddings GALLERY --query-ids FILE --gallery-ids FILE")
    qg = [*base, "--set", "eval.protocol=query_gallery", "--query-ids", ids, "--gallery-ids", ids]
    assert main(qg) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric evaluate: error: key '--query-ids': cannot replace the sequence ids of split 'query' (the data's "
        f"sequence column), by which the test protocol excludes the items of each query's own sequence; {files}")
    assert main([*qg, "--set", "eval.query_in_gallery=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynametric evaluate: error: key '--query-ids': cannot replace the ids by which the test "
                          "protocol excludes each query's own gallery item (eval.query_in_gallery is true)")
    assert len(err.splitlines()) == 1
    qig = [*base, "--set", "eval.protocol=query_gallery", "--set", "eval.query_in_gallery=true"]
    assert main([*qig, "--gallery-ids", ids]) == 2  # one file alone: the advice still names every option it needs
    assert capsys.readouterr().err.strip() == (
        "dynametric evaluate: error: key '--gallery-ids': cannot replace the ids by which the test protocol excludes "
        f"each query's own gallery item (eval.query_in_gallery is true); {files}")
