"""Hierarchy violations stay readable: scales given coarsest first are one line that says what to do, a class with
many parents names only its first few, and ``data inspect`` lists one problem per split for reversed scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynametric.data.base import REVERSED_SCALES, check_hierarchy
from dynametric.data.inspect import inspect_dataset
from dynametric.data.registry import build_dataset
from dynametric.errors import InputError
from tests.data.conftest import write_image


def _reversed_csv(root: Path, coarse: int = 3, middle_per: int = 3, fine_per: int = 4) -> Path:
    """A csv whose label columns are coarsest first: ``coarse * middle_per * fine_per`` fine classes, one row each."""
    lines = ["path,split,coarse,middle,fine"]
    i = 0
    for c in range(coarse):
        for m in range(middle_per):
            for _ in range(fine_per):
                write_image(root / f"{i}.png")
                lines.append(f"{i}.png,train,c{c},m{c * middle_per + m},f{i}")
                i += 1
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_reversed_scales_are_one_line_that_leads_with_what_to_do(tmp_path: Path) -> None:
    csv = _reversed_csv(tmp_path / "rev")
    with pytest.raises(InputError) as err:
        build_dataset("csv", tmp_path / "rev", "train")
    text = str(err.value)
    assert "\n" not in text  # was one line per violating class, each repeating the first
    assert text.startswith(f"{csv}:2: csv split 'train': {REVERSED_SCALES}: label columns go finest first, here e.g. "
                           "path,split,fine,middle,coarse (every fine class lies in a single coarse class and there "
                           "are more fine classes, 36 against 3); as given, 6 hierarchy violation(s): coarse class "
                           "'c0' has 3 middle parents: 'm0' (line 2), 'm1' (line 6), 'm2' (line 10); ")
    assert text.endswith("; and 3 more")  # 3 classes named of 6 (3 with middle parents, 3 with fine parents)
    assert text.count("has 3 middle parents") == 3 and "fine parents" not in text
    assert len(text) - len(str(csv)) < 600  # was over 1 KB on its first line alone for a small file


def test_reversed_scales_caps_the_parents_named_per_class(tmp_path: Path) -> None:
    csv = _reversed_csv(tmp_path / "rev", coarse=2, middle_per=1, fine_per=5)  # c0, c1: 5 fine parents each
    with pytest.raises(InputError) as err:
        build_dataset("csv", tmp_path / "rev", "train")
    assert str(err.value).endswith("2 hierarchy violation(s): coarse class 'c0' has 5 fine parents: 'f0' (line 2), "
                                   "'f1' (line 3), 'f2' (line 4), ...; coarse class 'c1' has 5 fine parents: 'f5' "
                                   "(line 7), 'f6' (line 8), 'f7' (line 9), ...")
    assert str(err.value).startswith(f"{csv}:2: ")


def test_inspect_lists_one_reversed_scales_problem_per_split(tmp_path: Path) -> None:
    _reversed_csv(tmp_path / "rev")
    result = inspect_dataset("csv", tmp_path / "rev", verify_images=False)
    hierarchy = [p for p in result["problems"] if p["kind"] == "hierarchy"]
    assert len(hierarchy) == 1 and hierarchy[0]["message"].startswith(REVERSED_SCALES)  # was one per class (6)
    assert hierarchy[0]["line"] == 2 and hierarchy[0]["splits"] == ["train"]


def test_a_class_with_many_parents_names_three_and_counts_the_rest() -> None:
    # fine class 0 under 6 coarse classes (rows 0..11, two each); fine classes 1..7 under coarse 0 and 1: not reversed
    fine = [0] * 12 + list(range(1, 8))
    coarse = [i // 2 for i in range(12)] + [0, 0, 0, 0, 1, 1, 1]
    labels = np.array([fine, coarse]).T
    locations = [("l.csv", i + 2) for i in range(len(fine))]
    problems, _ = check_hierarchy(labels, ["fine", "coarse"], [list(range(8)), list(range(6))], locations,
                                  max_lines=1)
    assert [p.message for p in problems] == [
        "hierarchy violation: fine class 0 has 6 coarse parents: coarse 0 (e.g. l.csv:2); coarse 1 (e.g. l.csv:4); "
        "coarse 2 (e.g. l.csv:6); and 3 more"]
    assert (problems[0].file, problems[0].line) == ("l.csv", 2)
    problems, _ = check_hierarchy(labels, ["fine", "coarse"], [list(range(8)), list(range(6))], locations)
    assert problems[0].message.startswith("hierarchy violation: fine class 0 has 6 coarse parents: coarse 0 (e.g. "
                                          "l.csv:2, l.csv:3); coarse 1 (e.g. l.csv:4, l.csv:5);")


def test_a_few_bad_rows_are_not_called_reversed_scales(tmp_path: Path) -> None:
    """Only when every finest class (2 or more) has several parents do the scales look reversed: one fine class
    under two middle classes (the only fine class, or one of two) is a plain violation naming its lines."""
    labels = np.array([[0, 0], [0, 1], [1, 2], [1, 2]])
    locations = [("l.csv", i + 2) for i in range(4)]
    problems, _ = check_hierarchy(labels, ["fine", "middle"], [["a", "b"], ["x", "y", "z"]], locations)
    assert [p.message for p in problems] == [
        "hierarchy violation: fine class 'a' has 2 middle parents: middle 'x' (e.g. l.csv:2); middle 'y' "
        "(e.g. l.csv:3)"]
    problems, _ = check_hierarchy(labels[:2], ["fine", "middle"], [["a"], ["x", "y"]], locations)
    assert not problems[0].message.startswith(REVERSED_SCALES)
