"""Text tables pad by terminal columns (``utils.text``): a CJK class, id or category name takes two columns a
character, so the columns after it stay aligned in `evaluate`'s tables and the end-of-run category summary."""

from __future__ import annotations

from dynametric.commands.evaluate import format_category_table, format_table
from dynametric.pipeline.report import category_summary
from dynametric.utils.text import display_width, pad_left, pad_right, text_table


def _ends(line: str) -> list[int]:
    """The terminal column where each whitespace-separated cell of ``line`` ends."""
    ends, col, inside = [], 0, False
    for ch in line + " ":
        if ch == " ":
            if inside:
                ends.append(col)
            inside = False
            col += 1
        else:
            inside = True
            col += display_width(ch)
    return ends


def _starts(line: str) -> list[int]:
    starts, col, prev = [], 0, " "
    for ch in line:
        if ch != " " and prev == " ":
            starts.append(col)
        col += display_width(ch)
        prev = ch
    return starts


def test_pads_count_terminal_columns() -> None:
    assert pad_right("鞋", 4) == "鞋  " and pad_left("鞋", 4) == "  鞋"
    assert pad_right("abcdef", 3) == "abcdef"  # never cut
    assert text_table([]) == []
    lines = text_table([["name", "n"], ["商品一号", "7"], ["x", "1234"]])
    assert lines == ["name         n", "商品一号     7", "x         1234"]
    assert len({display_width(line) for line in lines}) == 1


def test_evaluate_category_table_aligns_after_wide_names() -> None:
    entry = {"fine": {"recall@1": 0.5, "num_queries": 3, "excluded_queries": 0},
             "coarse": {"recall@1": 0.25, "num_queries": 3, "excluded_queries": 1},
             "mean": {"recall@1": 0.375}}
    by = {"运动鞋": entry, "shoes-and-boots": entry, "靴": entry}
    lines = format_category_table(by, []).splitlines()[1:]
    # the first two columns start where the header's do, the numbers end where the header's do
    header = lines[0]
    for line in lines[1:]:
        assert _starts(line)[:2] == _starts(header)[:2], line
        assert _ends(line)[-1] == _ends(header)[-1] or line.split()[1] == "mean", line
    assert {_ends(line)[2] for line in lines} == {_ends(header)[2]}


def test_evaluate_table_aligns_wide_scale_names() -> None:
    result = {"细": {"recall@1": 0.5}, "coarse": {"recall@1": 0.25}, "mean": {"recall@1": 0.375}}
    lines = format_table(result).splitlines()
    assert {_ends(line)[-1] for line in lines} == {_ends(lines[0])[-1]}


def test_category_summary_aligns_and_shortens_by_columns() -> None:
    entry = {"fine": {"recall@1": 0.5, "map@r": 0.25, "num_queries": 4, "excluded_queries": 0}}
    long = "长" * 40  # 80 columns: shortened to at most 32
    lines = category_summary({"鞋": entry, "boots": entry, long: entry}, ["fine"], "fine/map@r")
    header, rows = lines[1], lines[2:]
    assert {_ends(row)[-1] for row in rows} == {_ends(header)[-1]}
    assert {_ends(row)[1] for row in rows} == {_ends(header)[1]}
    shown = rows[2].split()[0]
    assert shown.endswith("...") and display_width(shown) <= 32 and shown.startswith("长" * 14)


def test_the_embedding_progress_bar_is_a_notebook_widget_only_where_ipywidgets_is_there(monkeypatch) -> None:
    """Embedding's bars were tqdm's terminal bar everywhere: in a Jupyter notebook, text redrawn with carriage
    returns. With ipywidgets they are tqdm.auto's (a widget in a notebook, the terminal's bar elsewhere), as
    Lightning's training bar; without it the terminal's (tqdm.auto would warn 'IProgress not found')."""
    import importlib.util

    import tqdm
    import tqdm.auto

    from dynametric.utils.text import progress_bar

    real = importlib.util.find_spec
    for present in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, present=present: (
            (real("json") if present else None) if name == "ipywidgets" else real(name, *a)))
        assert progress_bar() is (tqdm.auto.tqdm if present else tqdm.tqdm)


def test_embed_dataset_draws_its_bar_with_that_class(monkeypatch) -> None:
    import torch
    import tqdm

    import dynametric.utils.text as text
    from dynametric.engine.inference import embed_dataset

    made = []

    class Seen(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(text, "progress_bar", lambda: Seen)
    data = torch.utils.data.TensorDataset(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    emb, _ = embed_dataset(torch.nn.Linear(4, 3), data, batch_size=4, progress=True)
    assert made == ["embedding"] and emb.shape == (6, 3)
