"""Retrieval metrics split by the query's category (open-metric-learning's per-category report).

A category is not a label: it only says which part of the report a query counts towards. Each retrieval metric of
:func:`dynametric.metrics.evaluate_embeddings` is a mean of per-query values, so a category's value is the mean of
the values of its own queries, under the same empty-query policy as the overall value. The grouping works on the
per-query arrays the ranking engines already fill (one ``np.bincount`` per scale and metric, no loop over queries
or categories). The overall value is then the mean of the category values weighted by their ``num_queries``.

Metrics that are not a mean of per-query values (``nmi``, ``f1``: one clustering of every item; ``fnmr@fmr``: one
threshold over every pair) have no per-category value and are left out of the categories' entries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dynametric.errors import InputError

__all__ = ["CategoryCodes", "category_codes", "category_count", "category_results"]


class CategoryCodes:
    """The categories of the queries as codes: ``codes`` (int64 ``[Nq]``, ``0..C-1``) index ``names`` (the category
    ids as text, sorted: integers by value first, then the others by their text)."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes = codes
        self.names = names

    def __len__(self) -> int:
        return len(self.names)


def category_count(count: int) -> str:
    """``"1 category"``, ``"2 categories"``: a count of categories in a title or a note."""
    return f"{count} categor{'y' if count == 1 else 'ies'}"


def _sort_key(value: Hashable) -> tuple[int, Any, str]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (0, int(value), "")
    return (1, 0, str(value))


def category_codes(categories: Sequence[Any] | np.ndarray | torch.Tensor,
                   num_queries: int) -> CategoryCodes:
    """Validate one category id per query (ints or text; never empty) and turn them into :class:`CategoryCodes`.
    Two ids with the same text (``7`` and ``"7"``) would be one entry of the report: refused."""
    if isinstance(categories, (str, bytes)):
        raise InputError("expected one category per query, not a string", key="query_categories")
    values = [v.item() if isinstance(v, (np.generic, torch.Tensor)) else v for v in categories]
    if len(values) != num_queries:
        raise InputError(f"expected {num_queries} query categories (one per query), got {len(values)}",
                         key="query_categories")
    table: dict[Hashable, int] = {}
    try:
        raw = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64, count=len(values))
    except TypeError:
        bad = next(v for v in values if not isinstance(v, Hashable))
        raise InputError(f"a category must be an int or a text, got {bad!r}", key="query_categories") from None
    for value in table:
        if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, float):
            row = next(i for i, v in enumerate(values) if v is value or v == value)
            raise InputError(f"the category of query {row} is {value!r}; expected an int or a non-empty text",
                             key="query_categories")
    order = sorted(table, key=_sort_key)
    names = [str(v) for v in order]
    if len(set(names)) != len(names):
        same = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two categories read {same!r} (an int and a text); give each category one spelling",
                         key="query_categories")
    rank = np.empty(len(order), dtype=np.int64)
    rank[[table[v] for v in order]] = np.arange(len(order))
    return CategoryCodes(rank[raw], names)


def category_results(categories: CategoryCodes, scale_names: Sequence[str], metric_names: Sequence[str],
                     per_scale: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray]]],
                     count_empty_as_zero: bool) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{category: {scale: {metric: value, ..., "num_queries", "excluded_queries", "empty_queries"}, ...,
    "mean": {metric: value}}}``, one entry per category (in :class:`CategoryCodes` order), shaped as an overall
    result.

    ``per_scale[s]`` is ``(r_count, values)`` of scale ``s``: ``R_q`` (int64 ``[Nq]``) and the per-query values of
    each metric (float64 ``[Nq]``; a query with ``R_q = 0`` is left out of the means, ``excluded_queries``, or scores
    0 with ``count_empty_as_zero``). A category none of whose queries counts has NaN values, as an overall result
    without a defined query. ``"mean"``: the plain mean over the scales, as the overall ``"mean"``."""
    codes, size = categories.codes, len(categories)
    out: dict[str, dict[str, dict[str, float | int]]] = {name: {} for name in categories.names}
    for scale, (r_count, values) in zip(scale_names, per_scale):
        defined = r_count > 0
        empty = np.bincount(codes[~defined], minlength=size)
        counted = codes if count_empty_as_zero else codes[defined]
        num = np.bincount(counted, minlength=size)
        sums = {m: np.bincount(codes, weights=np.where(defined, values[m], 0.0), minlength=size)
                if m in values else np.zeros(size) for m in metric_names}
        with np.errstate(invalid="ignore", divide="ignore"):
            means = {m: np.where(num > 0, s / np.maximum(num, 1), np.nan) for m, s in sums.items()}
        for c, name in enumerate(categories.names):
            entry: dict[str, float | int] = {m: float(means[m][c]) for m in metric_names}
            entry["num_queries"] = int(num[c])
            entry["excluded_queries"] = 0 if count_empty_as_zero else int(empty[c])
            entry["empty_queries"] = int(empty[c])
            out[name][scale] = entry
    for result in out.values():
        result["mean"] = {m: math.fsum(float(result[s][m]) for s in scale_names) / len(scale_names)
                          for m in metric_names}
    return out
