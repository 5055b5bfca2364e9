"""Plain-text tables padded by terminal columns.

A class name, id or category in Chinese, Japanese or Korean takes two columns a character in a terminal, so padding
with ``str.ljust`` (which counts characters) shifts every column after it. The text tables of ``search``,
``evaluate`` and the report are padded with :func:`text_table`, which counts columns with :func:`display_width`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def display_width(text: str) -> int:
    """The columns ``text`` takes in a terminal: a wide or full-width character (East Asian width ``W`` / ``F``:
    CJK ideographs, kana, hangul, full-width forms) takes two, a combining mark none, any other one."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad_right(text: str, width: int) -> str:
    """``text`` followed by the spaces that fill ``width`` terminal columns."""
    return text + " " * max(0, width - display_width(text))


def pad_left(text: str, width: int) -> str:
    """The spaces that fill ``width`` terminal columns, then ``text`` (numbers, right-aligned)."""
    return " " * max(0, width - display_width(text)) + text


def text_table(rows: Sequence[Sequence[str]], left: int = 1, sep: str = "  ") -> list[str]:
    """``rows`` (the header first, if any) as lines of aligned columns: the first ``left`` columns left-aligned,
    the others right-aligned, each as wide in terminal columns as its widest cell. Trailing spaces are kept off."""
    if not rows:
        return []
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [sep.join(pad_right(c, w) if i < left else pad_left(c, w) for i, (c, w) in enumerate(zip(r, widths)))
            .rstrip() for r in rows]
