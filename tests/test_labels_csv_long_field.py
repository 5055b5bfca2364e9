"""A labels CSV with a field longer than the csv module's limit (a quote left open swallows the rest of the file):
``evaluate --labels`` said ``malformed CSV (field larger than field limit (131072))`` without a line; it now says
what ``embed --csv`` and ``data inspect`` say, at the record's first line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.utils.readers import load_labels_csv

LIMIT = csv.field_size_limit()


def test_a_long_field_is_named_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("fine,coarse\n0,0\n1," + "1" * (LIMIT + 10) + "\n2,0\n")
    with pytest.raises(InputError) as err:
        load_labels_csv(path)
    assert str(err.value) == (f"{path}:3: a field longer than {LIMIT} characters on line 3; is a quote left "
                              "open?")


def test_a_quote_left_open_names_the_lines_it_swallowed(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    rows = "".join(f"{i},{i % 3}\n" for i in range(LIMIT // 4))  # more than LIMIT characters after the quote
    path.write_text('fine,coarse\n0,0\n1,"1\n' + rows)
    with pytest.raises(InputError) as err:
        load_labels_csv(path)
    assert err.value.line == 3 and err.value.file == str(path)
    assert f"a field longer than {LIMIT} characters on lines 3-" in err.value.message
    assert err.value.message.endswith("; is a quote left open?")


def test_evaluate_says_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "e.npy", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    path = tmp_path / "labels.csv"
    path.write_text("fine\n0\n" + "1" * (LIMIT + 1) + "\n1\n")
    capsys.readouterr()
    assert main(["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{path}:3: a field longer than {LIMIT} characters on line 3; is a quote left open?" in err, err
