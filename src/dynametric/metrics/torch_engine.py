"""The exact ranking engine on a torch device (CUDA, or the CPU for tests): one sort per query row, every metric at
every scale from it.

Same problem, same answers as :mod:`dynametric.metrics.engine` (the CPU engine): candidates ranked by descending
score, ties by ascending gallery index; excluded candidates (the query itself in leave-one-out, items sharing the
query's id) are scored ``-inf``, so they rank after every real candidate and change no other rank; ``R_q`` counts
the relevant items that are not excluded. Per chunk of query rows:

* scores ``[C, Ng]`` are multiplied on the fixed 64-row grid of the CPU engine (so the chunk size never changes a
  score's bits) and ``-0.0`` is turned into ``+0.0`` (a radix sort would order them);
* **full path** (a metric that needs the full ranking requested, such as ``map``, or a cut-off above
  :data:`TOP_PATH_MAX_CAP`): one stable descending sort per row. The row is in gallery-index order, so a stable
  sort leaves equal scores in ascending index order: the sorted order *is* the ranking;
* **count method** of the full path (``DYNAMETRIC_TORCH_FULL_RANKING=count``, :func:`_count_ranks`): instead of
  sorting whole rows, sort each row's candidates (the query's class) as unique int64 ``(key, index)`` values and
  count, with one ``searchsorted`` and a histogram, how many of the row's items come before each one;
* **top path** (only ranks up to ``cap = max(R_q, k, ASI cut-off)`` matter): ``topk(cap + 1)`` per row, the kept
  ``cap`` items ordered by (descending score, ascending index) with two stable sorts. When the ``cap``-th and
  ``(cap+1)``-th scores differ, the kept items are exactly those scoring at least the ``cap``-th score, so their
  order is the exact top of the ranking; rows where they tie are redone with a full stable sort, in groups of
  rows sized from the budget (:func:`plan_resort_rows`).

Each scale then reads its relevant items' positions off the ranked gallery labels, and
:func:`metrics_from_rank_rows` turns them into per-query values (float64, one dense reduction per row, so the
result is deterministic on any device). On the full path a nested hierarchy needs one pass over each sorted row:
the coarsest scale's relevant items are found once and every scale whose label determines the coarsest label picks
its own from among them (:func:`scale_sources`); relevant and excluded counts are known on the host beforehand, so
the device is read only where ``nonzero`` needs a shape. The per-query values stay on the device until the end and
then go to the CPU engine's accumulators, so sums, exclusions and the empty-query policy are shared code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property

import numpy as np
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.evaluation_defaults import DEVICE_MEMORY_BUDGET
from dynametric.metrics.engine import (
    DEFAULT_MEMORY_BUDGET,
    SCORE_ROW_BLOCK,
    RankingProblem,
    ScaleAccumulator,
    _grid_product,
    label_determines,
)
from dynametric.metrics.products import GalleryProducts
from dynametric.metrics.ranking import (
    MetricSpec,
    RankMetric,
    RankRows,
    harmonic_numbers,
    max_rank_needed,
    needs_full_ranking,
    resolve_metrics,
)
from dynametric.utils.device import resolve_device as _resolve_device
from dynametric.utils.shared import SharedSetting

DEFAULT_DEVICE_MEMORY_BUDGET = DEVICE_MEMORY_BUDGET  # 7 * 2**29: dynametric.evaluation_defaults
"""Default working-memory budget on the device in bytes (score, sort and metric buffers of one chunk; the
embeddings and labels are extra). 3.5 GiB: measured on an H200 at 60,502 x 128 (docs/benchmarks.md), a device peak
of 2.84 GB and 0.77 s, against 1.59 GB and 1.09 s at 2 GiB; it leaves most of any training GPU to the model. The
torch engine on the CPU takes the CPU engine's default instead (``DEFAULT_MEMORY_BUDGET``, 768 MiB of host memory)."""

TOP_PATH_MAX_CAP = 1024
"""The top path is used when no metric needs ranks beyond this (and no metric that needs all ranks, such as
``map``, is asked)."""

_BYTES_PER_SCORE_FULL = 40  # scores 4, sorted values 4, int64 order 8, sort scratch ~16, gathered labels 4 + masks
_BYTES_PER_SCORE_COUNT = 32  # scores 4, int64 (key, index) 8, int64 bin 8 and its spilled copy 8, masks
_BYTES_PER_SCORE_TOP = 12  # scores 4, masks and top-k scratch
_BYTES_PER_SCORE_RESORT = 32  # a tied row redone on the top path: gathered scores 4, sorted values 4, int64 order 8,
# sort scratch ~16 (next to the chunk's scores, 4 per score of every row)
_BYTES_PER_SLOT = 64  # per relevant item in a row: positions, padded ranks, float64 metric temporaries
_BYTES_PER_COUNT_SLOT = 128  # per candidate of the count method: columns, keys, sorted keys, counts, ranks, masks

FULL_RANKING_ENV = "DYNAMETRIC_TORCH_FULL_RANKING"
"""How the torch engine ranks when every rank is needed (``map``, or cut-offs above :data:`TOP_PATH_MAX_CAP`):
``sort`` (default: one stable sort of every row) or ``count`` (sort only each row's candidate relevant items, then
count the items before each one; see :func:`_count_ranks`). Same values either way; which is faster depends on the
device (``benchmarks/gpu_suite.py`` times both). Read at each evaluation."""

_FULL_METHODS = ("sort", "count")


def full_ranking_method() -> str:
    """The torch engine's full-ranking method from :data:`FULL_RANKING_ENV` (``sort`` when unset)."""
    value = os.environ.get(FULL_RANKING_ENV, "").strip().lower() or "sort"
    if value not in _FULL_METHODS:
        raise ConfigError(f"expected one of {', '.join(_FULL_METHODS)}, got {value!r}", key=FULL_RANKING_ENV)
    return value


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """The ranking device: ``None`` / ``"cpu"`` -> None (the CPU engine); anything else as
    :func:`dynametric.utils.device.resolve_device` (``"auto"`` -> CUDA when available; an unavailable CUDA device
    is a one-line :class:`ConfigError`), with a CPU result mapped to None."""
    if device is None:
        return None
    dev = _resolve_device(device, key="device")
    return None if dev.type == "cpu" else dev


_FP32_PARENTS = (("generic", "all"), ("cuda", "all"), ("mkldnn", "all"))
"""The per-backend float32 precision settings above the matmul ones (torch >= 2.9's ``fp32_precision`` API):
``torch.backends.fp32_precision``, ``torch.backends.cudnn.fp32_precision`` (the CUDA backend's) and the oneDNN
backend's, parents first."""
_FP32_MATMULS = (("cuda", "matmul"), ("mkldnn", "matmul"))
"""``torch.backends.cuda.matmul.fp32_precision`` and ``torch.backends.mkldnn.matmul.fp32_precision``."""


def _stored_fp32_precisions() -> dict[tuple[str, str], str]:
    """Each setting of :data:`_FP32_PARENTS` and :data:`_FP32_MATMULS` as stored, ``"none"`` (inherit) included.

    A getter answers the parent's value where a setting holds ``"none"``, so each level is read while the levels
    above it are ``"none"``; they are set back before returning."""
    get, put = torch._C._get_fp32_precision_getter, torch._C._set_fp32_precision_setter
    stored: dict[tuple[str, str], str] = {}
    try:
        for level in (_FP32_PARENTS[:1], _FP32_PARENTS[1:], _FP32_MATMULS):
            for node in level:
                stored[node] = get(*node)
            for node in level:
                if node in _FP32_PARENTS:
                    put(*node, "none")
    finally:
        for node in reversed(_FP32_PARENTS):
            if node in stored:
                put(*node, stored[node])
    return stored


_FP32 = SharedSetting()
"""Full-precision float32 matmuls, shared by the evaluations that overlap (the settings are process-wide)."""


def _set_full_fp32() -> Callable[[], None]:
    """Set float32 matmuls to full precision and answer a function that puts the previous settings back exactly.

    Both of torch's APIs are handled: the legacy ``torch.set_float32_matmul_precision`` and, where torch has it,
    the per-backend ``torch.backends.*.fp32_precision`` one. Mixing the two makes torch's legacy getter raise, so
    the per-backend matmul settings are read (as stored, :func:`_stored_fp32_precisions`) and set to ``"ieee"``
    before the legacy value is read; then the legacy value is ``"highest"`` and both matmul settings ``"ieee"``
    (a state both APIs read without complaint); the restore puts the legacy value, then the matmul settings back.
    Should setting fail half-way, what was changed is put back before the error propagates."""
    stored: dict[tuple[str, str], str] | None = None
    if hasattr(torch._C, "_get_fp32_precision_getter"):  # torch >= 2.9
        try:
            stored = _stored_fp32_precisions()
        except (RuntimeError, TypeError, ValueError):  # private API of another shape: the legacy route below
            stored = None
    if stored is None:  # torch < 2.9: only the legacy API
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        return lambda: torch.set_float32_matmul_precision(before)
    put = torch._C._set_fp32_precision_setter
    saved = stored

    def restore_matmuls() -> None:
        for node in _FP32_MATMULS:
            put(*node, saved[node])

    try:
        for node in _FP32_MATMULS:
            put(*node, "ieee")  # no legacy/new mismatch left, so the legacy getter answers
        legacy = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # also sets both matmul settings to "ieee"
    except BaseException:
        restore_matmuls()
        raise

    def restore() -> None:
        try:
            torch.set_float32_matmul_precision(legacy)
        finally:
            restore_matmuls()

    return restore


@contextlib.contextmanager
def full_fp32_matmul() -> Iterator[None]:
    """Scores must be true float32 products: float32 matmuls run in full precision while ranking (no TF32 on CUDA,
    no bf16 / TF32 in oneDNN on the CPU), whatever the user set for training, and the user's settings come back
    exactly after (also on an exception); how, :func:`_set_full_fp32`.

    The settings are process-wide, so blocks that overlap (evaluations from several threads, or nested) share them:
    the first one in saves the user's settings and sets full precision, later ones change nothing, and the last
    one out restores the saved settings. Every block thus ranks at full precision throughout, and other threads
    also see full precision while any block is open."""
    with _FP32.held(_set_full_fp32):
        yield


def plan_device_rows(num_queries: int, num_gallery: int, max_slots: int, full: bool,
                     memory_budget_bytes: int | None, method: str = "sort") -> int:
    """Query rows per chunk so that one chunk's device buffers fit the budget (whole 64-row grid blocks).

    ``max_slots``: the most relevant items of a row (``sort`` and the top path) or the largest candidate set of a
    row (``count``: the query's class at the searched scale, excluded items included)."""
    budget = DEFAULT_DEVICE_MEMORY_BUDGET if memory_budget_bytes is None else int(memory_budget_bytes)
    if full and method == "count":
        per_row = _BYTES_PER_SCORE_COUNT * num_gallery + _BYTES_PER_COUNT_SLOT * (max_slots + 1) + 64
    else:
        per_row = (_BYTES_PER_SCORE_FULL if full else _BYTES_PER_SCORE_TOP) * num_gallery \
            + _BYTES_PER_SLOT * (max_slots + 1) + 64
    rows = max(1, budget // per_row)
    if rows >= SCORE_ROW_BLOCK:
        rows -= rows % SCORE_ROW_BLOCK
    return int(min(rows, max(1, num_queries), 1 << 16))


def plan_resort_rows(chunk_rows: int, num_gallery: int, memory_budget_bytes: int | None) -> int:
    """How many tied rows of a top-path chunk of ``chunk_rows`` rows are redone with one full sort at a time
    (:func:`_ranked_top`): what the budget leaves next to the chunk's scores, at least one row, at most the chunk.
    A chunk planned by :func:`plan_device_rows` can redo at least a quarter of its rows at once."""
    budget = DEFAULT_DEVICE_MEMORY_BUDGET if memory_budget_bytes is None else int(memory_budget_bytes)
    left = budget - 4 * chunk_rows * num_gallery
    return int(min(max(1, chunk_rows), max(1, left // (_BYTES_PER_SCORE_RESORT * max(1, num_gallery)))))


class PaddedRankRows(RankRows):
    """:class:`~dynametric.metrics.ranking.RankRows` over padded ``[C, U]`` device tensors (the torch engine): row
    ``r``'s first ``found[r]`` slots hold its relevant items' ranks in rank order; padding slots get a rank beyond
    every cut-off and ``prec = 0``, so each row reduction is one dense sum (deterministic on any device)."""

    def __init__(self, ranks: torch.Tensor, found: torch.Tensor, r_count: torch.Tensor, asi_cutoff: int | None,
                 harmonic: torch.Tensor) -> None:
        c, u = ranks.shape
        dev = ranks.device
        j = torch.arange(1, u + 1, device=dev, dtype=torch.int64).unsqueeze(0)
        valid = j <= found.unsqueeze(1)
        big = torch.iinfo(torch.int64).max
        self.rank = torch.where(valid, ranks, torch.full_like(ranks, big))
        self.r = r_count.unsqueeze(1)
        self.r_count = r_count
        self.denom = r_count.clamp_min(1).to(torch.float64)
        self.zero = torch.zeros((), dtype=torch.float64, device=dev)
        self.prec = torch.where(valid, j.to(torch.float64) / self.rank.clamp_max(2**52).to(torch.float64), self.zero)
        self.first = self.rank[:, 0] if u else torch.full((c,), big, dtype=torch.int64, device=dev)
        self.asi_cutoff = asi_cutoff
        self._h = harmonic

    @cached_property
    def in_r(self) -> torch.Tensor:  # type: ignore[override]
        return self.rank <= self.r

    def sum(self, values: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        return (values if where is None else torch.where(where, values, self.zero)).sum(1)

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.sum(1)

    def as_float(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(torch.float64)

    def full(self, value: int | float) -> torch.Tensor:
        return torch.full_like(self.r_count, value, dtype=torch.float64 if isinstance(value, float) else torch.int64)

    def denom_at(self, k: int) -> torch.Tensor:
        return self.r_count.clamp_max(k).clamp_min(1).to(torch.float64)

    def harmonic(self, n: torch.Tensor) -> torch.Tensor:
        return self._h[n]

    def harmonic_at(self, n: int) -> torch.Tensor:
        return self._h[n].expand_as(self.denom).clone() if n < self._h.numel() else super().harmonic_at(n)

    def harmonic_before(self, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, self._h[torch.where(mask, self.rank, torch.ones_like(self.rank)) - 1], self.zero)


def metrics_from_rank_rows(ranks: torch.Tensor, found: torch.Tensor, r_count: torch.Tensor, *,
                           k_values: tuple[int, ...], metrics: tuple[str | MetricSpec, ...], asi_cutoff: int | None,
                           harmonic: torch.Tensor,
                           table: Mapping[str, RankMetric] | None = None) -> dict[str, torch.Tensor]:
    """Per-query metrics from the ascending 1-based ranks of each query's first ``found`` relevant items.

    ``ranks``: ``[C, U]`` (row ``r``'s entries ``[:found[r]]`` are its relevant items' ranks in rank order, the rest
    padding); ``r_count``: ``R_q``. Every relevant item ranking within the metrics' cut-offs (and, for a
    full-ranking metric such as ``map``, every relevant item) must be among the found ones. Values are float64
    ``[C]``, 0 where ``R_q = 0``; the formulas are those of :data:`~dynametric.metrics.ranking.METRIC_TABLE`, as on
    the CPU engine (:func:`dynametric.metrics.ranking.metrics_from_flat_ranks`).
    """
    specs = resolve_metrics(k_values, metrics, table)
    v = PaddedRankRows(ranks, found, r_count, asi_cutoff, harmonic)
    return {s.name: torch.where(r_count > 0, s.metric.compute(v, s.k), v.zero) for s in specs}


def _compact_codes(query_col: torch.Tensor, gallery_col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Labels of one scale as int64 codes ``0..L-1`` shared by queries and gallery."""
    both = torch.cat([query_col, gallery_col]).numpy()
    uniq, inv = np.unique(both, return_inverse=True)  # single-threaded: not slowed down by busy cores
    codes = torch.from_numpy(inv.reshape(-1).astype(np.int64))
    return codes[:query_col.shape[0]], codes[query_col.shape[0]:], int(uniq.size)


def _gallery_matches(gallery_keys: torch.Tensor, query_keys: torch.Tensor) -> torch.Tensor:
    """For each query key, how many gallery keys equal it (``LongTensor`` on the CPU; numpy's single-threaded
    ``unique``, so not slowed down by busy cores)."""
    keys, counts = np.unique(gallery_keys.numpy(), return_counts=True)
    q = query_keys.numpy()
    if keys.size == 0:
        return torch.zeros(q.shape, dtype=torch.long)
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return torch.from_numpy(np.where(keys[pos] == q, counts[pos], 0).astype(np.int64))


def relevant_counts(problem: RankingProblem) -> torch.Tensor:
    """``R_q`` per query and scale (``LongTensor[Nq, S]``, on the CPU): gallery items sharing the query's label,
    minus the excluded ones (itself in leave-one-out; items with the query's id)."""
    ql, gl = problem.query_labels, problem.gallery_labels
    out = torch.zeros(ql.shape, dtype=torch.long)
    for s in range(ql.shape[1]):
        qc, gc, num = _compact_codes(ql[:, s], gl[:, s])
        counts = torch.bincount(gc, minlength=num)[qc]
        if problem.query_codes is not None:
            # items sharing both the id and the label are excluded relevant items (in leave-one-out: self too)
            counts = counts - _gallery_matches(problem.gallery_codes * num + gc, problem.query_codes * num + qc)
        elif problem.leave_one_out:
            counts = counts - 1
        out[:, s] = counts
    return out


def _raise_overflow() -> None:
    raise InputError("similarity scores overflowed to inf/NaN; embeddings are too large in magnitude",
                     key="embeddings")


def _ranked_top(scores: torch.Tensor, cap: int, resort_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, score)`` ``[C, cap]``: each row's best ``cap`` gallery indices, exactly ranked (see module doc).
    Rows whose ``cap``-th and ``(cap+1)``-th scores tie are redone with a full stable sort, ``resort_rows`` of them
    at a time (:func:`plan_resort_rows`: a sort needs ~32 bytes per score, and every row ties when the embeddings
    have collapsed)."""
    vals, idx = torch.topk(scores, cap + 1, dim=1)
    if bool((torch.isnan(vals[:, 0]) | torch.isposinf(vals[:, 0])).any()):
        _raise_overflow()
    o1 = torch.argsort(idx[:, :cap], dim=1)
    i1, v1 = idx[:, :cap].gather(1, o1), vals[:, :cap].gather(1, o1)
    v2, o2 = torch.sort(v1, dim=1, descending=True, stable=True)
    order = i1.gather(1, o2)
    tied = torch.isfinite(vals[:, cap - 1]) & (vals[:, cap - 1] == vals[:, cap])
    if bool(tied.any()):
        tied_rows = tied.nonzero().flatten()
        for a in range(0, tied_rows.shape[0], max(1, resort_rows)):
            rows = tied_rows[a:a + max(1, resort_rows)]
            fv, fo = torch.sort(scores[rows], dim=1, descending=True, stable=True)
            order[rows], v2[rows] = fo[:, :cap], fv[:, :cap]
            del fv, fo
    return order, v2


def excluded_counts(problem: RankingProblem) -> torch.Tensor:
    """Per query, how many gallery items are excluded (scored ``-inf``): itself in leave-one-out, every item sharing
    its id (its own included) when ids are given; ``LongTensor[Nq]`` on the CPU. On the full path they are exactly
    the last ones of the query's sorted row (no other score is ``-inf``: scores of finite embeddings are bounded
    after :func:`dynametric.metrics.engine.prepare_for_ranking`)."""
    nq = problem.query.shape[0]
    if problem.query_codes is None or problem.gallery_codes is None:  # ids come in pairs (evaluate_embeddings)
        return torch.full((nq,), int(problem.leave_one_out), dtype=torch.long)
    return _gallery_matches(problem.gallery_codes, problem.query_codes)


def scale_sources(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> list[int]:
    """For each scale, the scale whose relevant items are searched in the ranked rows: the coarsest scale for every
    scale whose label determines the coarsest label (a nested hierarchy: its relevant items are among the coarsest
    scale's, so one pass over each row finds them all), else the scale itself."""
    allrows = torch.cat([query_labels, gallery_labels])
    last = allrows.shape[1] - 1
    return [last if label_determines(allrows[:, s], allrows[:, last]) else s for s in range(last + 1)]


def _packed_ranks(rows: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None, found: torch.Tensor,
                  num_rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([C, width] ranks, [C] counts)``: the 1-based ranks ``pos + 1`` of the items ``(rows, pos)`` (row-major, as
    ``nonzero`` gives them) that ``keep`` selects (all for None), packed to the left of each row in rank order.

    ``found``: each row's expected count (on the device), which places the items without a host read; the counts
    actually seen are returned, so the caller can check them later."""
    dev = rows.device
    seen = torch.zeros(num_rows, dtype=torch.int64, device=dev)
    first = torch.cumsum(found, 0) - found
    ranks = torch.zeros((num_rows, width + 1), dtype=torch.int64, device=dev)
    if keep is None:
        seen.index_add_(0, rows, torch.ones_like(rows))
        slot = torch.arange(rows.numel(), device=dev) - first[rows]
        ranks[rows, slot.clamp(0, width)] = pos + 1
    else:
        seen.index_add_(0, rows, keep.to(torch.int64))
        slot = torch.cumsum(keep, 0) - 1 - first[rows]
        # items not kept go to a spare last column, dropped below
        ranks[rows, torch.where(keep, slot.clamp(0, width), width)] = pos + 1
    return ranks[:, :width], seen


def _class_ranges(query_codes: torch.Tensor, gallery_codes: torch.Tensor,
                  num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, lo, hi)`` on the host: the gallery in class order (ascending index within a class) and each query's
    class as ``order[lo[q]:hi[q]]`` (empty for a label no gallery item has); ``*_codes`` as :func:`_compact_codes`."""
    g = gallery_codes.numpy()
    sizes = np.bincount(g, minlength=num)
    q = query_codes.numpy()
    hi = np.cumsum(sizes)[q] if q.size else np.zeros(0, dtype=np.int64)
    return np.argsort(g, kind="stable").astype(np.int64), (hi - sizes[q]).astype(np.int64), hi.astype(np.int64)


_NEG_INF_KEY = 0x7F800000 << 32  # pair keys from here on belong to -inf scores (excluded items); finite ones are lower


def _pair_keys(scores: torch.Tensor) -> torch.Tensor:
    """int64 ``key * 2**32 + column`` per score, ascending in the ranking's order (descending score, then ascending
    gallery index) and unique in a row. ``key``: the order-preserving int32 of ``0.0 - score`` on its float32 bits,
    the CPU engine's keys (``-0.0`` and ``+0.0`` one key)."""
    bits = torch.neg(scores).add_(0.0).view(torch.int32)
    k = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    del bits
    keys = k.to(torch.int64).mul_(1 << 32)
    del k
    return keys.add_(torch.arange(scores.shape[1], device=scores.device))


def _count_ranks(keys: torch.Tensor, order: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates ``order[lo[r]:hi[r]]`` (at most ``width``) in rank order, and their ranks, without
    sorting the row: ``(sorted_keys, ranks)``, both ``[C, width]``.

    ``keys``: the rows' :func:`_pair_keys`. Only the candidates' keys are sorted; every item of the row then gets the
    number of candidates before it (one ``searchsorted``), and a candidate's 1-based rank is the number of items with
    at most its position there (a histogram and its running sum; the candidate itself included). Slots past a row's
    candidates hold int64 max (the largest key) and a meaningless rank."""
    c, ng = keys.shape
    dev = keys.device
    slot = torch.arange(width, device=dev)
    idx = lo.unsqueeze(1) + slot
    valid = idx < hi.unsqueeze(1)
    cand = keys.gather(1, order[idx.clamp_max(ng - 1)])
    sorted_keys = torch.sort(cand.masked_fill_(~valid, torch.iinfo(torch.int64).max), dim=1).values
    del cand, idx, valid
    bins = torch.searchsorted(sorted_keys, keys)
    # items after a row's last candidate count for none: spread them over 32 spare columns (fewer colliding atomic
    # additions on a GPU) instead of one
    spare = torch.arange(ng, device=dev).bitwise_and_(31).add_(width)
    bins = torch.where(bins < (hi - lo).unsqueeze(1), bins, spare)
    hist = torch.zeros((c, width + 32), dtype=torch.int64, device=dev)
    hist.scatter_add_(1, bins, torch.ones((), dtype=torch.int64, device=dev).expand_as(bins))
    del bins
    return sorted_keys, hist[:, :width].cumsum(1)


def _kept_ranks(ranks: torch.Tensor, keep: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([C, width] ranks, [C] counts)``: the ranks of the slots ``keep`` selects, packed to the left of each row
    (already in rank order)."""
    c = keep.shape[0]
    slot = keep.cumsum(1).sub_(1).clamp_max_(width)
    out = torch.zeros((c, width + 1), dtype=torch.int64, device=keep.device)
    out.scatter_(1, torch.where(keep, slot, width), ranks)  # slots not kept go to a spare last column
    return out[:, :width], keep.sum(1)


def run_ranking_torch(problem: RankingProblem, device: torch.device, *, k_values: tuple[int, ...],
                      metrics: tuple[str | MetricSpec, ...], asi_cutoff: int | None,
                      memory_budget_bytes: int | None,
                      table: Mapping[str, RankMetric] | None = None) -> list[ScaleAccumulator]:
    """The torch-device counterpart of :func:`dynametric.metrics.engine.run_ranking` (same inputs and outputs).

    The full path reads the device only where a shape needs it (one ``nonzero`` per searched scale and chunk):
    the relevant counts and exclusions are known on the host beforehand, the overflow and bookkeeping checks are
    collected on the device and read once at the end, and the per-query values stay on the device until then."""
    nq, ng = problem.query.shape[0], problem.gallery.shape[0]
    num_scales = problem.query_labels.shape[1]
    specs = resolve_metrics(k_values, metrics, table)
    r_all = relevant_counts(problem)
    excl = excluded_counts(problem)
    sources = scale_sources(problem.query_labels, problem.gallery_labels)
    accs = [ScaleAccumulator(nq) for _ in range(num_scales)]
    max_r = int(r_all.max()) if r_all.numel() else 0
    cap = max(max_r, max_rank_needed((), specs, asi_cutoff))
    full = needs_full_ranking(specs) or cap > TOP_PATH_MAX_CAP or cap + 1 > ng
    method = full_ranking_method()  # checked on every evaluation of the torch engine, used on the full path
    if not full:
        method = "sort"
    codes = [_compact_codes(problem.query_labels[:, s], problem.gallery_labels[:, s]) for s in range(num_scales)]
    # count method: each searched scale's classes as ranges of a gallery order (the candidates of a query's row)
    ranges = {src: _class_ranges(*codes[src]) for src in set(sources)} if method == "count" else {}
    slots = max((int((hi - lo).max()) for _, lo, hi in ranges.values() if lo.size), default=0) if ranges \
        else (max_r if full else cap)
    if memory_budget_bytes is None and torch.device(device).type == "cpu":  # host memory: the CPU engine's default
        memory_budget_bytes = DEFAULT_MEMORY_BUDGET
    rows = plan_device_rows(nq, ng, slots, full, memory_budget_bytes, method)
    resort_rows = plan_resort_rows(rows, ng, memory_budget_bytes)
    with torch.no_grad():
        q = problem.query.to(device)
        g = q if problem.gallery is problem.query else problem.gallery.to(device)
        products = problem.products if g is problem.gallery else GalleryProducts(g)  # on the CPU: packed once
        sq = (g * g).sum(1) if problem.distance == "euclidean" else None
        qcodes = [c[0].to(device=device, dtype=torch.int32 if c[2] < 2**31 else torch.int64) for c in codes]
        gcodes = [c[1].to(device=device, dtype=qc.dtype) for c, qc in zip(codes, qcodes)]
        id_q = None if problem.query_codes is None else problem.query_codes.to(device)
        id_g = None if problem.gallery_codes is None else problem.gallery_codes.to(device)
        r_dev = r_all.to(device)
        ranges_dev = {src: (torch.from_numpy(o).to(device), torch.from_numpy(lo).to(device),
                            torch.from_numpy(hi).to(device)) for src, (o, lo, hi) in ranges.items()}
        kept_dev = (ng - excl).to(device)
        harmonic = harmonic_numbers(max(ng, min(asi_cutoff or 0, ng + 1), 1)).to(device)  # H_N beyond: harmonic_at
        values = [{sp.name: torch.zeros(nq, dtype=torch.float64, device=device) for sp in specs}
                  for _ in range(num_scales)]
        overflow = torch.zeros((), dtype=torch.bool, device=device)
        miscount = torch.zeros((), dtype=torch.bool, device=device)
        buf = torch.empty((rows, ng), dtype=torch.float32, device=device)

        def scale_values(sc: int, start: int, ranks: torch.Tensor, found: torch.Tensor) -> None:
            stop = start + ranks.shape[0]
            vals_s = metrics_from_rank_rows(ranks, found, r_dev[start:stop, sc], k_values=(), metrics=specs,
                                            asi_cutoff=asi_cutoff, harmonic=harmonic)
            for name, v in vals_s.items():
                values[sc][name][start:stop] = v

        for start in range(0, nq, rows):
            stop = min(nq, start + rows)
            c = stop - start
            s = buf[:c]
            _grid_product(q, products, start, stop, s)
            if sq is not None:
                s.mul_(2.0).sub_(sq.unsqueeze(0))
            if problem.leave_one_out:
                ar = torch.arange(c, device=device)
                s[ar, ar + start] = float("-inf")
            if id_q is not None:
                s.masked_fill_(id_g.unsqueeze(0) == id_q[start:stop].unsqueeze(1), float("-inf"))
            s.add_(0.0)  # -0.0 + 0.0 = +0.0: one zero score

            if method == "count":
                overflow |= (torch.isnan(s) | torch.isposinf(s)).any()
                keys = _pair_keys(s)
                for src in sorted(set(sources)):
                    _, lo_h, hi_h = ranges[src]
                    width = int((hi_h[start:stop] - lo_h[start:stop]).max()) if c else 0
                    kept = r_dev[start:stop, src]
                    if width:
                        order_d, lo_d, hi_d = ranges_dev[src]
                        sorted_keys, ranks_all = _count_ranks(keys, order_d, lo_d[start:stop], hi_d[start:stop],
                                                              width)
                        finite = (sorted_keys < _NEG_INF_KEY).sum(1)
                        miscount |= (finite != kept).any()  # excluded candidates are exactly the -inf ones
                        first = torch.arange(width, device=device).unsqueeze(0) < kept.unsqueeze(1)
                        gidx = sorted_keys.bitwise_and(0xFFFFFFFF).clamp_max_(ng - 1)
                    for sc in range(num_scales):
                        if sources[sc] != src:
                            continue
                        found = r_dev[start:stop, sc]
                        w = int(r_all[start:stop, sc].max()) if c else 0
                        if not width:
                            scale_values(sc, start, torch.zeros((c, 0), dtype=torch.int64, device=device), found)
                            continue
                        keep = first if sc == src else first & (gcodes[sc][gidx] == qcodes[sc][start:stop].unsqueeze(1))
                        ranks, seen = _kept_ranks(ranks_all, keep, w)
                        miscount |= (seen != found).any()
                        scale_values(sc, start, ranks, found)
                del keys
            elif full:
                vals, order = torch.sort(s, dim=1, descending=True, stable=True)
                overflow |= (torch.isnan(vals[:, 0]) | torch.isposinf(vals[:, 0])).any()
                del vals
                most_excluded = int(excl[start:stop].max())
                for src in sorted(set(sources)):
                    rel = gcodes[src][order] == qcodes[src][start:stop].unsqueeze(1)
                    if most_excluded:  # excluded items sit at the end of each row, after its kept ones
                        tail = torch.arange(ng - most_excluded, ng, device=device)
                        rel[:, ng - most_excluded:] &= tail.unsqueeze(0) < kept_dev[start:stop].unsqueeze(1)
                    rr, pos = rel.nonzero(as_tuple=True)
                    del rel
                    if rr.numel() != int(r_all[start:stop, src].sum()):  # pragma: no cover - an exclusion bug
                        if bool(overflow):  # the likelier cause, with its own message
                            _raise_overflow()
                        raise RuntimeError("torch ranking engine: relevant counts disagree with the label counts")
                    gidx = order[rr, pos] if any(sources[sc] == src and sc != src for sc in range(num_scales)) \
                        else None
                    for sc in range(num_scales):
                        if sources[sc] != src:
                            continue
                        keep = None if sc == src else \
                            gcodes[sc][gidx] == qcodes[sc][start:stop][rr]
                        found = r_dev[start:stop, sc]
                        width = int(r_all[start:stop, sc].max()) if c else 0
                        ranks, seen = _packed_ranks(rr, pos, keep, found, c, width)
                        miscount |= (seen != found).any()
                        scale_values(sc, start, ranks, found)
                del order
            else:
                order, vals = _ranked_top(s, cap, resort_rows)
                kept = vals > float("-inf")
                del vals
                for sc in range(num_scales):
                    rel = (gcodes[sc][order] == qcodes[sc][start:stop].unsqueeze(1)) & kept
                    found = rel.sum(1)
                    width = int(found.max()) if c else 0
                    rr, pos = rel.nonzero(as_tuple=True)
                    del rel
                    ranks, _ = _packed_ranks(rr, pos, None, found, c, width)
                    scale_values(sc, start, ranks, found)
                del order, kept
        if bool(overflow):
            _raise_overflow()
        if bool(miscount):  # pragma: no cover - an exclusion bookkeeping bug
            raise RuntimeError("torch ranking engine: relevant counts disagree with the label counts")
        for sc in range(num_scales):
            accs[sc].add(0, r_all[:, sc], {name: v.cpu() for name, v in values[sc].items()})
    return accs
