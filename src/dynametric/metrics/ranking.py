"""Retrieval metrics as functions of the ranks of a query's relevant items: the one table of them.

For a query ``q`` with candidate set ``G_q`` ranked best first, let ``rank_1 < rank_2 < ... < rank_R`` be the
1-based ranks of its ``R = R_q`` relevant items. Every retrieval metric of dynametric is a function of these ranks:

* ``recall@K``  = 1[rank_1 <= K]                                         (hit rate, DML "Recall@K")
* ``r_precision`` = |{j : rank_j <= R}| / R                              (P@R)
* ``map@r``     = (1/R) * sum_{j : rank_j <= R} j / rank_j                (MAP@R, Musgrave et al., ECCV 2020)
* ``map``       = (1/R) * sum_j j / rank_j                                (AP over the full ranking)
* ``asi``       = (1/N) * sum_{n <= N} hits(n) / n  with N = R (default) or a fixed int
                = (1/N) * sum_{j : rank_j <= N} (H_N - H_{rank_j - 1})    (H = harmonic numbers)
* ``precision@k`` = |{j : rank_j <= k}| / min(k, R)                       (open-metric-learning's precision@k)
* ``map@k``     = (1/n_k) * sum_{j : rank_j <= k} j / rank_j                (open-metric-learning's map@k)
                with n_k = |{j : rank_j <= k}|, the relevant items in the top k (0 when n_k = 0; earlier versions
                divided by min(k, R))

because ``hits(n) = |{j : rank_j <= n}|`` and ``sum_{n=r}^{N} 1/n = H_N - H_{r-1}``.

:data:`METRIC_TABLE` maps each name to a :class:`RankMetric`: the formula, written once against the small
:class:`RankRows` interface, and whether it needs the full ranking (every relevant item's rank, not only the ranks
up to ``max(R_q, k, ASI cut-off)``). Both ranking engines read the table: the CPU engine evaluates a formula on
flat numpy rank arrays (:class:`FlatRankRows`), the torch engine on padded device tensors
(``torch_engine.PaddedRankRows``); the engines' rank cap and the names ``evaluate_embeddings`` accepts come from it
too, so a new retrieval metric is one entry here.

The functions here take *unordered* padded rank rows plus per-scale relevance flags, as the chunked engine
produces them, and return per-query values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

__all__ = [
    "METRIC_ALIASES",
    "METRIC_TABLE",
    "FlatRankRows",
    "MetricSpec",
    "RankMetric",
    "RankRows",
    "canonical_metric_name",
    "harmonic_numbers",
    "max_rank_needed",
    "metrics_from_flat_ranks",
    "metrics_from_sorted_ranks",
    "needs_full_ranking",
    "resolve_metrics",
]


class RankRows:
    """What a metric formula may read, for a block of queries (rows), on either engine.

    Per relevant item (arrays/tensors that broadcast against each other): :attr:`rank` (1-based, ascending within a
    row; padding slots hold a rank beyond every cut-off), :attr:`prec` (``j / rank_j``, 0 on padding), :attr:`r`
    (the row's ``R_q``), :attr:`in_r` (``rank_j <= R_q``). Per row: :attr:`r_count` (``R_q``, int64),
    :attr:`first` (``rank_1``, beyond every cut-off when ``R_q = 0``), :attr:`denom` (``max(R_q, 1)``, float64).
    Reductions :meth:`sum` (float per item -> float64 per row, optionally only ``where`` a mask holds) and
    :meth:`count` (bool per item -> int64 per row); per-row helpers :meth:`full` (a constant per row: int64 for an
    int, float64 for a float; e.g. ``v.full(1.0) / v.first``), :meth:`as_float` (a per-row bool as 0 / 1),
    :meth:`denom_at` (``max(min(R_q, k), 1)``) and :meth:`harmonic`;
    and :attr:`asi_cutoff` (``None``: ``N = R_q``). A formula returns float64 values per row; rows with ``R_q = 0``
    are excluded (or counted as zero) by the caller, whatever the formula gives there.
    """

    rank: Any
    prec: Any
    r: Any
    in_r: Any
    r_count: Any
    first: Any
    denom: Any
    asi_cutoff: int | None

    def sum(self, values: Any, where: Any = None) -> Any:
        raise NotImplementedError

    def count(self, mask: Any) -> Any:
        raise NotImplementedError

    def as_float(self, mask: Any) -> Any:
        """A per-row bool as float64 (0 / 1)."""
        raise NotImplementedError

    def full(self, value: int | float) -> Any:
        """A per-row constant (int64 for an int, float64 for a float)."""
        raise NotImplementedError

    def denom_at(self, k: int) -> Any:
        """``max(min(R_q, k), 1)`` per row, float64."""
        raise NotImplementedError

    def harmonic(self, n: Any) -> Any:
        """Harmonic numbers ``H_n`` (float64) for a per-row int64 ``n``."""
        raise NotImplementedError

    def harmonic_before(self, mask: Any) -> Any:
        """``H_{rank_j - 1}`` per item where ``mask``, else 0 (float64)."""
        raise NotImplementedError

    def harmonic_at(self, n: int) -> Any:
        """``H_n`` for one int ``n`` as a per-row float64 constant; ``n`` may exceed the gallery (a fixed ASI cut-off
        of any size: :func:`harmonic_number`)."""
        return self.full(harmonic_number(n))


@dataclass(frozen=True)
class RankMetric:
    """One retrieval metric of :data:`METRIC_TABLE`.

    Args:
        compute: ``compute(rows, k) -> float64 per row``; ``rows`` a :class:`RankRows`, ``k`` the cut-off of an
            ``@k`` metric (``None`` otherwise).
        full_ranking: reads the rank of every relevant item (``map``); otherwise only ranks up to
            ``max(R_q, k, ASI cut-off)`` are read, which lets the engines take their top-k paths.
        at_k: the name is ``<family>@k`` and takes a cut-off: ``<family>@<int>``, or ``<family>@K`` for every
            entry of ``k_values``; the rank cap then includes ``k``.
        default: part of the default metric set (``metrics=None``).
    """

    compute: Callable[[Any, int | None], Any]
    full_ranking: bool = False
    at_k: bool = False
    default: bool = True


@dataclass(frozen=True)
class MetricSpec:
    """One metric as computed: its output name (``recall@4``, ``map``), its table entry and its cut-off."""

    name: str
    metric: RankMetric
    k: int | None = None


def _cut(k: int | None) -> int:
    """An ``@k`` metric's ``k``, at most :data:`_RANK_BOUND`: a ``k`` past every rank and every ``R_q`` gives the
    same value (``rank_j <= k`` for every item, ``min(k, R_q) = R_q``, ``n_k = R_q``) and the comparison stays within
    int64."""
    assert k is not None
    return min(k, _RANK_BOUND)


def _recall_at_k(v: RankRows, k: int | None) -> Any:
    return v.as_float(v.first <= _cut(k))


def _precision_at_k(v: RankRows, k: int | None) -> Any:
    k = _cut(k)
    return v.count(v.rank <= k) / v.denom_at(k)


def _map_at_k(v: RankRows, k: int | None) -> Any:
    # open-metric-learning's map@k: divided by n_k, the relevant items in the top k (earlier versions divided by
    # min(k, R_q)); a query with none there scores 0 (n_k = 0 is divided as 1)
    k = _cut(k)
    inside = v.rank <= k
    hits = v.count(inside)
    return v.sum(v.prec, where=inside) / (hits + (hits == 0))


def _r_precision(v: RankRows, k: int | None) -> Any:
    return v.count(v.in_r) / v.denom


def _map_at_r(v: RankRows, k: int | None) -> Any:
    return v.sum(v.prec, where=v.in_r) / v.denom


def _average_precision(v: RankRows, k: int | None) -> Any:
    return v.sum(v.prec) / v.denom


def _asi(v: RankRows, k: int | None) -> Any:
    # sum_{rank_j <= N} (H_N - H_{rank_j - 1}) = |{j : rank_j <= N}| * H_N - sum_{rank_j <= N} H_{rank_j - 1}
    # a fixed N beyond the gallery: every relevant item is inside and H_N comes from harmonic_number (no table of N)
    n = v.asi_cutoff
    inside = v.in_r if n is None else v.rank <= min(n, _RANK_BOUND)
    h_n = v.harmonic(v.r_count) if n is None else v.harmonic_at(n)
    sums = v.count(inside) * h_n - v.sum(v.harmonic_before(inside))
    return sums / (v.denom if n is None else v.full(float(n)))


METRIC_TABLE: dict[str, RankMetric] = {
    "recall@k": RankMetric(_recall_at_k, at_k=True),
    "precision@k": RankMetric(_precision_at_k, at_k=True, default=False),
    "map@k": RankMetric(_map_at_k, at_k=True, default=False),
    "r_precision": RankMetric(_r_precision),
    "map@r": RankMetric(_map_at_r),
    "map": RankMetric(_average_precision, full_ranking=True),
    "asi": RankMetric(_asi),
}
"""Every retrieval metric: ``{name: RankMetric(formula, needs full ranking, ...)}``; a name ending ``@k`` takes a
cut-off (``recall@4``, ``map@10``). The order is the order of the results' keys."""

METRIC_ALIASES: dict[str, str] = {"cmc": "recall"}
"""Other libraries' names of an ``@k`` family of the table: open-metric-learning's ``cmc@k`` (its CMC at ``k``, the hit
rate ``1[rank_1 <= k]``) is ``recall@k``. An alias is accepted wherever a metric is named and reported under the
table's name."""


def canonical_metric_name(name: str) -> str:
    """The table's name of a metric named by an alias (:data:`METRIC_ALIASES`): ``cmc@5`` -> ``recall@5``,
    ``cmc@K`` -> ``recall@K``; any other name unchanged."""
    family, sep, tail = name.partition("@")
    alias = METRIC_ALIASES.get(family.lower()) if sep else None
    return name if alias is None else f"{alias}@{tail}"


RETRIEVAL_METRICS = tuple(name for name, m in METRIC_TABLE.items() if not m.at_k)
"""The table's metrics without a cut-off (``r_precision``, ``map@r``, ``map``, ``asi``)."""
AT_K_FAMILIES = tuple(name[:-2] for name, m in METRIC_TABLE.items() if m.at_k and name != "recall@k")
"""Metrics with a cut-off ``k`` in their name (``precision@5``, ``map@10``), besides ``recall@k``."""


def at_k(name: str, table: Mapping[str, RankMetric] | None = None) -> tuple[str, int] | None:
    """``("precision", 5)`` for ``"precision@5"``, ``("map", 10)`` for ``"map@10"``; None for any other name
    (``recall@k`` is not counted here: the engines take its cut-offs as ``k_values``)."""
    table = METRIC_TABLE if table is None else table
    family, _, tail = name.partition("@")
    entry = table.get(f"{family}@k")
    if family != "recall" and entry is not None and entry.at_k and tail.isascii() and tail.isdigit() and int(tail) >= 1:
        return family, int(tail)
    return None


def resolve_metrics(k_values: Iterable[int] = (), metrics: Iterable[str | MetricSpec] = RETRIEVAL_METRICS,
                    table: Mapping[str, RankMetric] | None = None) -> tuple[MetricSpec, ...]:
    """The :class:`MetricSpec` of each requested metric: ``recall@<k>`` for every ``k_values`` entry, then
    ``metrics`` (table names, ``<family>@<int>`` for the ``@k`` entries, an alias of :data:`METRIC_ALIASES`, or specs
    already resolved). Unknown names raise ``ValueError`` (:func:`dynametric.metrics.evaluate_embeddings` checks
    names first)."""
    table = METRIC_TABLE if table is None else table
    out = [MetricSpec(f"recall@{k}", table["recall@k"], k) for k in k_values]
    for name in metrics:
        if isinstance(name, MetricSpec):
            out.append(name)
            continue
        name = canonical_metric_name(name)
        entry = table.get(name)
        if entry is not None and not entry.at_k:
            out.append(MetricSpec(name, entry))
            continue
        family, _, tail = name.partition("@")
        entry = table.get(f"{family}@k")
        if entry is None or not entry.at_k or not (tail.isascii() and tail.isdigit()) or int(tail) < 1:
            raise ValueError(f"unknown retrieval metric {name!r}")
        out.append(MetricSpec(name, entry, int(tail)))
    return tuple(out)


def needs_full_ranking(specs: Iterable[MetricSpec]) -> bool:
    """Whether a requested metric reads every relevant item's rank (the engines' rank cap is then off)."""
    return any(s.metric.full_ranking for s in specs)


def max_rank_needed(k_values: tuple[int, ...], metrics: Iterable[str | MetricSpec], asi_cutoff: int | None,
                    table: Mapping[str, RankMetric] | None = None) -> int:
    """The largest rank a cut-off metric reads besides ``R_q``: max of the recall ks, the ``@k`` metrics' ks and the
    fixed ASI cut-off (at least 1)."""
    ks = [s.k for s in resolve_metrics(k_values, metrics, table) if s.k is not None]
    return max([1, asi_cutoff or 0, *ks])


_RANK_BOUND = 2**62
"""Above every rank of a relevant item (ranks are at most the gallery size), below the padding rank (int64 max)."""

_HARMONIC_EXACT_MAX = 2**20


def harmonic_number(n: int) -> float:
    """``H_n`` in float64 for one int ``n >= 0`` of any size: summed as :func:`harmonic_numbers` sums it up to
    2**20, beyond by the asymptotic expansion ``ln n + gamma + 1/(2n) - 1/(12n^2) + 1/(120n^4) - 1/(252n^6)``
    (its error is below ``1/(240 n^8)``, far under float64 resolution there)."""
    if n <= _HARMONIC_EXACT_MAX:
        return float(harmonic_numbers(n)[n])
    x = float(n)
    inv2 = 1.0 / (x * x)
    return math.log(n) + _EULER_GAMMA + 0.5 / x - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 / 252))


_EULER_GAMMA = 0.57721566490153286060651209


def harmonic_numbers(n: int) -> torch.Tensor:
    """``H[0..n]`` in float64 with ``H[0] = 0`` and ``H[k] = sum_{i<=k} 1/i``."""
    h = torch.zeros(n + 1, dtype=torch.float64)
    if n > 0:
        h[1:] = torch.cumsum(1.0 / torch.arange(1, n + 1, dtype=torch.float64), 0)
    return h


class FlatRankRows(RankRows):
    """:class:`RankRows` over flat numpy arrays (the CPU engine): one entry per relevant item, grouped by row and
    ascending in rank within a row; row reductions are segment sums (``np.add.reduceat``), no per-query loop."""

    def __init__(self, rows: np.ndarray, ranks: np.ndarray, num_rows: int, asi_cutoff: int | None,
                 harmonic: torch.Tensor | None) -> None:
        self.rank = ranks
        self.num_rows = num_rows
        self.asi_cutoff = asi_cutoff
        self._harmonic_in = harmonic
        self.r_count = np.bincount(rows, minlength=num_rows)
        self.start = np.cumsum(self.r_count) - self.r_count
        self.has = self.r_count > 0
        self.first = np.full(num_rows, np.iinfo(np.int64).max, dtype=np.int64)
        self.first[self.has] = ranks[self.start[self.has]]

    @cached_property
    def _seg(self) -> np.ndarray:
        return self.start[self.has]

    @cached_property
    def denom(self) -> np.ndarray:  # type: ignore[override]
        return np.maximum(self.r_count, 1).astype(np.float64)

    @cached_property
    def r(self) -> np.ndarray:  # type: ignore[override]
        return np.repeat(self.r_count, self.r_count)

    @cached_property
    def in_r(self) -> np.ndarray:  # type: ignore[override]
        return self.rank <= self.r  # a prefix of each row: ranks ascend and rank_j >= j

    @cached_property
    def prec(self) -> np.ndarray:  # type: ignore[override]
        j = np.arange(1, self.rank.size + 1, dtype=np.int64)
        j -= np.repeat(self.start, self.r_count)
        return j / self.rank

    @cached_property
    def _h(self) -> np.ndarray:
        rk, r_count, cut = self.rank, self.r_count, self.asi_cutoff
        top = max(int(rk.max()) if rk.size else 0, min(cut or 0, _HARMONIC_EXACT_MAX),
                  int(r_count.max()) if self.num_rows else 0, 1)
        h = self._harmonic_in
        return h.numpy() if h is not None and h.numel() > top else harmonic_numbers(top).numpy()

    def sum(self, values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        # segment sums over each row's contiguous run (a row's sum never depends on the other rows)
        if where is not None:
            values = values * where
        total = np.zeros(self.num_rows, dtype=np.float64)
        if values.size:
            total[self.has] = np.add.reduceat(values, self._seg)
        return total

    def count(self, mask: np.ndarray) -> np.ndarray:
        total = np.zeros(self.num_rows, dtype=np.int64)
        if mask.size:
            total[self.has] = np.add.reduceat(mask.view(np.int8), self._seg, dtype=np.int64)
        return total

    def as_float(self, mask: np.ndarray) -> np.ndarray:
        return mask.astype(np.float64)

    def full(self, value: int | float) -> np.ndarray:
        return np.full(self.num_rows, value, dtype=np.float64 if isinstance(value, float) else np.int64)

    def denom_at(self, k: int) -> np.ndarray:
        return np.maximum(np.minimum(self.r_count, k), 1).astype(np.float64)

    def harmonic(self, n: np.ndarray) -> np.ndarray:
        return self._h[n]

    def harmonic_at(self, n: int) -> np.ndarray:
        return self.full(float(self._h[n])) if n < self._h.size else super().harmonic_at(n)

    def harmonic_before(self, mask: np.ndarray) -> np.ndarray:
        h_prev = np.concatenate(([0.0], self._h[:-1]))  # h_prev[r] = H_{r-1}
        return h_prev[self.rank] * mask


def metrics_from_flat_ranks(
    rows: torch.Tensor | np.ndarray,
    ranks: torch.Tensor | np.ndarray,
    num_rows: int,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str | MetricSpec, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
    table: Mapping[str, RankMetric] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query metric values from the relevant items' ranks, flattened and sorted by ``(row, rank)``.

    ``rows``/``ranks``: ``int64[M]``, one entry per relevant item, grouped by query row (ascending) and, within a
    row, by ascending 1-based rank. Returns ``(R[num_rows], {name: float64[num_rows]})`` as tensors; values are 0
    where ``R == 0`` (undefined there; the caller excludes such queries or counts them as zero).
    ``asi_cutoff=None`` means ``N = R_q``. ``metrics``: names of ``table`` (default :data:`METRIC_TABLE`) or
    resolved :class:`MetricSpec`; ``recall@k`` for every ``k_values`` entry comes first.
    """
    specs = resolve_metrics(k_values, metrics, table)
    v = FlatRankRows(np.asarray(rows, dtype=np.int64), np.asarray(ranks, dtype=np.int64), num_rows, asi_cutoff,
                     harmonic)
    out = {s.name: torch.from_numpy(np.asarray(s.metric.compute(v, s.k), dtype=np.float64)) for s in specs}
    return torch.from_numpy(v.r_count), out


def metrics_from_sorted_ranks(
    ranks: torch.Tensor,
    relevant: torch.Tensor,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Padded form of :func:`metrics_from_flat_ranks`.

    ``ranks``: ``LongTensor[Q, U]`` of 1-based candidate ranks; ``relevant``: ``BoolTensor[Q, U]`` marking the
    relevant ones (padding and non-relevant slots False). Entries need not be sorted. Returns, as
    :func:`metrics_from_flat_ranks` does, ``(R[Q], {name: float64[Q]})``: each query's number of relevant items
    ``R_q`` (int64) and one value per query for each metric of ``metrics`` and each ``recall@k`` of ``k_values``
    (0 for a query with ``R_q = 0``, where the metrics are undefined: the caller excludes it or counts it as zero).
    """
    q, _ = ranks.shape
    rows, pos = relevant.nonzero(as_tuple=True)
    rk = ranks[rows, pos]
    if rk.numel():
        base = int(rk.max()) + 1
        key = torch.sort(rows * base + rk).values
        rows, rk = key // base, key % base
    return metrics_from_flat_ranks(rows, rk, q, k_values=k_values, metrics=metrics, asi_cutoff=asi_cutoff,
                                   harmonic=harmonic)
