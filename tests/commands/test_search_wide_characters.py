"""`search` tables pad by terminal columns: an id or class name in CJK (East Asian width W / F) takes two columns a
character, so the columns after it stay aligned."""

from __future__ import annotations

from dynametric.commands.search import format_results
from dynametric.utils.text import display_width


def test_display_width_counts_wide_characters_twice_and_combining_marks_not() -> None:
    assert display_width("abc") == 3
    assert display_width("商品一号") == 8
    assert display_width("ＡＢ") == 4  # full-width forms
    assert display_width("e\u0301") == 1  # e + a combining acute accent
    assert display_width("") == 0


def test_columns_after_a_wide_id_stay_aligned() -> None:
    entries = [{"query": "q", "mode": "items", "results": [
        {"rank": 1, "distance": 0.1, "id": "商品一号", "labels": {"fine": "鞋", "coarse": "c1"}},
        {"rank": 2, "distance": 0.2, "id": "item-ten", "labels": {"fine": "shoe", "coarse": "c2"}},
        {"rank": 3, "distance": 0.3, "id": "x", "labels": {"fine": "靴子", "coarse": "c3"}}]}]
    lines = format_results(entries, ["fine", "coarse"]).splitlines()
    header, rows = lines[1], lines[2:5]

    def column(line: str, text: str) -> int:  # the terminal column where text starts
        return display_width(line[:line.index(text)])

    for name in ("fine", "coarse"):
        start = column(header, name)
        cells = {"fine": ("鞋", "shoe", "靴子"), "coarse": ("c1", "c2", "c3")}[name]
        assert [column(row, cell) for row, cell in zip(rows, cells, strict=True)] == [start] * 3, name
    assert rows[0].startswith("  1     0.1000    商品一号  鞋    c1")


def test_a_query_without_results_prints_no_header() -> None:
    """A query with no results (an index of no items, a --same class the index lacks) prints "(no results)" alone,
    not a table header above it; one with results still has its header."""
    from dynametric.commands.search import format_results

    text = format_results([{"query": "q0", "mode": "items", "results": []}], ["fine"])
    assert text == "query q0\n  (no results)\n"
    hit = {"rank": 1, "distance": 0.25, "id": "a", "labels": {"fine": "x"}}
    lines = format_results([{"query": "q0", "mode": "items", "results": [hit]}], ["fine"]).splitlines()
    assert lines[0] == "query q0" and lines[1].split() == ["rank", "distance", "id", "fine"]
    assert lines[2].split() == ["1", "0.2500", "a", "x"]
