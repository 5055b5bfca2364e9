"""The files the metrics are written to: the per-query CSV of ``evaluate_embeddings(..., per_query=True)`` and the
tests that recognise an earlier output of ``dynametric evaluate`` (its ``--json`` results, its ``--per-query`` CSV),
which is the only kind of existing file the command replaces."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.errors import ConfigError, InputError

__all__ = ["CATEGORY_COLUMN", "PER_QUERY_HEADER", "is_per_query_csv", "is_results_json", "write_per_query_csv"]

PER_QUERY_HEADER = ("query", "scale", "num_relevant")
"""The first columns of a per-query CSV (:func:`write_per_query_csv`); the metrics follow."""
CATEGORY_COLUMN = "category"
"""The last column of a per-query CSV whose queries carry categories (after the metrics)."""


def write_per_query_csv(path: str | Path, table: dict[str, dict[str, np.ndarray]], *,
                        key: str | None = None, categories: Sequence[Any] | None = None) -> None:
    """One row per (query, scale): ``query`` (0-based row), ``scale``, ``num_relevant`` (R_q), then each retrieval
    metric (empty where undefined, i.e. R_q = 0 under ``--empty-queries exclude``), then, with ``categories`` (one
    per query, as ``evaluate_embeddings(query_categories=...)``), a last column ``category`` (the query's category
    as text). Written atomically.

    ``table``: the per-query table of ``evaluate_embeddings(..., per_query=True)``; ``key``: the option named in a
    write error."""
    from dynametric.utils.io import atomic_open

    if not table:
        raise ConfigError("--per-query needs at least one retrieval metric", key="--per-query")
    scales = list(table)
    metrics = [m for m in table[scales[0]] if m != "num_relevant"]
    n = len(table[scales[0]]["num_relevant"])
    if categories is not None and len(categories) != n:
        raise InputError(f"{n} queries but {len(categories)} categories", key="query_categories")
    tail = [] if categories is None else [CATEGORY_COLUMN]
    with atomic_open(path, "w", newline="", encoding="utf-8", key=key) as fh:
        w = csv.writer(fh)
        w.writerow([*PER_QUERY_HEADER, *metrics, *tail])
        cols = {s: [table[s][m].tolist() for m in metrics] for s in scales}
        for i in range(n):
            category = [] if categories is None else [str(categories[i])]
            for s in scales:
                vals = ["" if math.isnan(c[i]) else repr(c[i]) for c in cols[s]]
                w.writerow([i, s, int(table[s]["num_relevant"][i]), *vals, *category])


def is_results_json(path: Path) -> bool:
    """Whether ``path`` is a results file ``evaluate --json`` wrote: a JSON object of objects with a ``mean``
    entry (the metrics averaged over the scales, always present)."""
    try:
        if path.stat().st_size > 64 * 2**20:
            return False
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("mean"), dict) and all(isinstance(v, dict)
                                                                                for v in obj.values())


def is_per_query_csv(path: Path) -> bool:
    """Whether ``path`` is a CSV ``evaluate --per-query`` wrote: its header starts ``query,scale,num_relevant``."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = fh.readline(4096)
    except (OSError, ValueError):
        return False
    return tuple(header.rstrip("\r\n").split(",")[:3]) == PER_QUERY_HEADER
