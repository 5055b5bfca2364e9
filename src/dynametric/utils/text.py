"""Plain-text tables padded by terminal columns.

A class name, id or category in Chinese, Japanese or Korean takes two columns a character in a terminal, so padding
with ``str.ljust`` (which counts characters) shifts every column after it. The text tables of ``search``,
``evaluate`` and the report are padded with :func:`text_table`, which counts columns with :func:`display_width`.
The progress bars of embedding are tqdm's, chosen for a terminal or a notebook by :func:`progress_bar`.
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


def progress_bar() -> type:
    """tqdm's class for the progress bars of embedding (``embed``, ``evaluate --checkpoint``, ``embed_dataset``):
    ``tqdm.auto``'s where ``ipywidgets`` is installed, so that a Jupyter notebook draws one widget that updates in
    place (``tqdm.auto`` is the terminal's bar outside a notebook), else the terminal's (``tqdm.auto`` in a notebook
    without ``ipywidgets`` warns ``IProgress not found`` and falls back to it), as Lightning chooses its bar."""
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm
