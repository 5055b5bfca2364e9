"""The ``csv`` format reads the labels of the rows of the split it reads (and, for ``query`` / ``gallery``, of the
pair), not of every row of the file: each split's read of a 300k-row file converted every label of the file. The
problems and records of every split stay as they were (a bad row is a problem of its own split)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.data import generic
from dynametric.data.generic import CSVFormat
from dynametric.data.inspect import inspect_dataset
from tests.data.conftest import write_image

ROWS = [("a/1.png", "train", "1", "10"), ("a/2.png", "train", "01", "10"), ("a/3.png", "train", "2", "x"),
        ("b/1.png", "val", "3", "11"), ("b/2.png", "val", "", "11"), ("b/3.png", "val", "3", "11"),
        ("c/1.png", "query", "4", "12"), ("c/2.png", "gallery", "4", "12"), ("c/3.png", "gallery", "5", "12"),
        ("d/1.png", "test", "6", "13"), ("d/2.png", "test", "6", "13")]


def _write(root: Path) -> Path:
    root.mkdir()
    for i, r in enumerate(ROWS):
        write_image(root / r[0], (i * 20, 0, 0))
    (root / "labels.csv").write_text("path,split,fine,coarse\n" + "".join(",".join(r) + "\n" for r in ROWS))
    return root


@pytest.mark.parametrize("split,converted", [("train", 3), ("val", 2), ("test", 2), ("query", 3), ("gallery", 3)])
def test_a_split_converts_only_its_own_rows_labels(tmp_path, monkeypatch, split, converted):
    root = _write(tmp_path / "d")
    calls: list[str] = []
    original = generic.label_cell

    def counted(text):
        calls.append(text)
        return original(text)

    monkeypatch.setattr(generic, "label_cell", counted)
    rec = CSVFormat().read(root, split)
    # two columns per good row of the split's group (query and gallery share their ids); the query's check that
    # each query has a gallery row reads the gallery's cells once more per column
    extra = 2 * 2 if split == "query" else 0
    assert len(calls) == 2 * converted + extra
    assert len(rec.paths) == {"train": 3, "val": 2, "test": 2, "query": 1, "gallery": 2}[split]


def test_records_and_problems_of_every_split_are_unchanged(tmp_path):
    root = _write(tmp_path / "d")
    train = CSVFormat().read(root, "train")
    assert train.raw_labels == [(1, 10), (1, 10), (2, "x")] and train.report.problems == []
    assert any("'01'" in n and "'1'" in n for n in train.report.notes)  # '01' and '1' are one class 1
    val = CSVFormat().read(root, "val")
    assert [(p.line, p.message) for p in val.report.problems] == [(6, "empty path or label in "
                                                                      "['b/2.png', 'val', '', '11']")]
    query, gallery = CSVFormat().read(root, "query"), CSVFormat().read(root, "gallery")
    assert query.raw_labels == [(4, 12)] and gallery.raw_labels == [(4, 12), (5, 12)]
    assert query.class_ids == gallery.class_ids and query.class_ids is not None
    doc = inspect_dataset("csv", root, verify_images=False)
    assert [(p["line"], p["splits"]) for p in doc["problems"]] == [(6, ["val"])]
