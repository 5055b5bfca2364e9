"""The chunked, exact ranking engine: one similarity pass serves every retrieval metric at every scale.

Every metric is a function of the ranks of each query's relevant items, so the engine finds, exactly, the ranks
of each query's *candidate relevant set* (the union over scales of the gallery items sharing a label with it; in a
nested hierarchy the query's coarsest class, a contiguous range of the gallery sorted by coarsest label) and hands
them to :func:`dynametric.metrics.ranking.metrics_from_flat_ranks`, per scale. Ranking paths, all exact under the
ranking of docs/metrics.md (descending score, ties by ascending gallery index):

* merge (the full ranking, any candidate set): one sort of each row's scores as int32 keys, the candidates,
  sorted by (score, index), located in it by a monotone binary search, ties counted (:func:`_merged_ranks`);
* top (only ranks up to a small cap matter): one ``topk`` per row;
* symmetric (the top case in leave-one-out): each pair's score computed once, running top lists
  (:mod:`dynametric.metrics.symmetric`).

No ``[Nq, Ng]`` matrix is ever held: the chunk size is chosen from a memory budget (:func:`plan_chunk_rows`), and
the budget never changes a computed score, so results are identical for any budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from dynametric.cpu_kernels import numpy_sort_is_slow, outside_package_level, warn_if_slow_sort
from dynametric.evaluation_defaults import CPU_MEMORY_BUDGET
from dynametric.metrics.products import GalleryProducts
from dynametric.metrics.ranking import (
    MetricSpec,
    RankMetric,
    harmonic_numbers,
    max_rank_needed,
    metrics_from_flat_ranks,
    needs_full_ranking,
    resolve_metrics,
)
from dynametric.metrics.symmetric import (
    STATE_ALWAYS_OK_BYTES,
    exact_top_ranks,
    scores_cannot_overflow,
    state_bytes,
    symmetric_top_lists,
)

DEFAULT_MEMORY_BUDGET = CPU_MEMORY_BUDGET  # 768 MiB: dynametric.evaluation_defaults, which the CLI reads
"""Default working-memory budget of the engine in bytes (chunk buffers; the embeddings themselves are extra)."""

SCORE_ROW_BLOCK = 64
"""Query rows per matrix product. BLAS picks different kernels (and summation orders) for products with few rows,
so scores are always computed in blocks of this many rows aligned to a global grid: a score's bits never depend on
the chunk it was computed in, and results are identical for any memory budget."""


_BYTES_PER_SCORE_TOP = 4 + 4 + 2  # top path: score block, top-k values and indices, slack for masks/temporaries
_BYTES_PER_SCORE_MERGE = 4 + 1  # merge path: the score block (keys live in small per-thread buffers)
_BYTES_PER_CANDIDATE = 136  # columns, flags, flat ranks/indices/rows, per-scale gathers, float64 metric temporaries


def plan_chunk_rows(num_queries: int, num_gallery: int, memory_budget_bytes: int | None = None,
                    num_scales: int = 1, max_candidates: int | None = None) -> int:
    """Number of query rows per chunk so that the chunk's buffers fit ``memory_budget_bytes``.

    Per query row the engine holds about ``5 * Ng`` bytes on the merge path (``10 * Ng`` where the top path may be
    taken: candidate sets of at most ``TOPK_PATH_MAX_CAP`` items) plus ``~136 * U`` bytes for the ``U`` candidate
    relevant items (``U`` = largest candidate set, at most ``Ng``; scales are processed one after the other). At
    least one row is always processed.
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget_bytes is None else int(memory_budget_bytes)
    cand = num_gallery if max_candidates is None else max_candidates
    per_score = _BYTES_PER_SCORE_TOP if cand <= TOPK_PATH_MAX_CAP else _BYTES_PER_SCORE_MERGE
    per_row = per_score * num_gallery + _BYTES_PER_CANDIDATE * (cand + 1) + 64
    rows = max(1, budget // per_row)
    if rows >= SCORE_ROW_BLOCK:  # whole grid blocks per chunk: no block is computed twice
        rows -= rows % SCORE_ROW_BLOCK
    return int(min(rows, max(1, num_queries), 4096))


@dataclass
class RankingProblem:
    """Everything the engine needs; built (and validated) by :func:`dynametric.metrics.evaluate_embeddings`."""

    query: torch.Tensor  # [Nq, D] float32, already normalised for cosine
    gallery: torch.Tensor  # [Ng, D]
    query_labels: torch.Tensor  # [Nq, S] long
    gallery_labels: torch.Tensor  # [Ng, S] long
    distance: str = "cosine"  # "cosine" or "euclidean"
    leave_one_out: bool = False  # query i is gallery item i (excluded by index)
    query_codes: torch.Tensor | None = None  # [Nq] long id codes; gallery items with the same code are excluded
    gallery_codes: torch.Tensor | None = None
    gallery_sq_norms: torch.Tensor | None = field(default=None, repr=False)

    @cached_property
    def products(self) -> GalleryProducts:
        """The gallery's score products (on the CPU: packed once for oneDNN, :mod:`dynametric.metrics.products`)."""
        return GalleryProducts(self.gallery)


def _ordered_threads() -> int:
    return max(1, min(torch.get_num_threads(), 8))


def _grid_product(query: torch.Tensor, products: GalleryProducts, start: int, stop: int, out: torch.Tensor) -> None:
    """``out[:] = query[start:stop] @ gallery.T``, computed block by block on the global ``SCORE_ROW_BLOCK`` grid.

    Every CPU product of the engines goes through :class:`~dynametric.metrics.products.GalleryProducts` (oneDNN or
    torch's BLAS, one library per process), the symmetric path's tiles too, so the same pair gets the same score on
    every path. The grid keeps BLAS's small-row kernels (another summation order) out of the scores."""
    b = SCORE_ROW_BLOCK
    nq = query.shape[0]
    for b0 in range(start - start % b, stop, b):
        b1 = min(b0 + b, nq)
        if b0 >= start and b1 <= stop:
            products(query[b0:b1], out=out[b0 - start:b1 - start])
        else:  # a grid block only partly inside [start, stop): compute it whole, keep the overlap
            lo, hi = max(b0, start), min(b1, stop)
            out[lo - start:hi - start] = products(query[b0:b1])[lo - b0:hi - b0]


def scores_block(problem: RankingProblem, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Scores ``[stop-start, Ng]`` (float32, higher = closer) with excluded candidates set to ``-inf``.

    Cosine: ``<q, g>`` of L2-normalised rows. Euclidean: ``2<q, g> - ||g||^2``, which orders candidates exactly as
    ``-||q - g||^2`` does (the dropped ``||q||^2`` is constant along a row). ``out``: a reusable ``[>= C, Ng]``
    float32 buffer (its first ``C`` rows are written and returned); reusing one buffer for every chunk avoids
    faulting in a fresh block of pages per chunk, which costs about half as much as the product itself.
    """
    s = torch.empty((stop - start, problem.gallery.shape[0]), dtype=torch.float32) if out is None \
        else out[:stop - start]
    _grid_product(problem.query, problem.products, start, stop, s)
    if problem.distance == "euclidean":
        s.mul_(2.0).sub_(problem.gallery_sq_norms.unsqueeze(0))
    if problem.leave_one_out:
        rows = torch.arange(stop - start)
        s[rows, rows + start] = float("-inf")
    if problem.query_codes is not None:
        same = problem.gallery_codes.unsqueeze(0) == problem.query_codes[start:stop].unsqueeze(1)
        s.masked_fill_(same, float("-inf"))
    return s


@dataclass
class CandidateSets:
    """How to find each query's candidate relevant set (the union over scales of same-label gallery items)."""

    nested: bool
    order: torch.Tensor | None = None  # gallery indices sorted by coarsest label (nested case)
    lo: torch.Tensor | None = None  # [Nq] start of the query's coarsest class in ``order``
    hi: torch.Tensor | None = None
    max_size: int = 0
    #: nested case: per scale, the nearest coarser scale that its label determines (the coarsest scale: itself), so
    #: its relevant items are among that scale's; None when not nested
    parents: tuple[int, ...] | None = None


def label_determines(labels: torch.Tensor, coarse: torch.Tensor) -> bool:
    """Whether every label value of ``labels`` (1-D) comes with one value of ``coarse`` (same length): the
    hierarchy is nested between the two columns. One sort of ``labels`` (to number its values) and two gathers."""
    if labels.numel() == 0:
        return True
    # numpy's unique: single-threaded, so its time does not depend on how busy the other cores are
    _, code = np.unique(labels.numpy(), return_inverse=True)
    big = coarse.numpy()
    rep = np.empty(int(code.max()) + 1, dtype=big.dtype)
    rep[code] = big  # one of each value's coarse labels (whichever is written last)
    return bool((rep[code] == big).all())


def build_candidate_sets(query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> CandidateSets:
    """Use contiguous coarsest-class ranges when every scale's label determines the coarsest label."""
    allrows = torch.cat([query_labels, gallery_labels])
    last = allrows.shape[1] - 1
    nested = all(label_determines(allrows[:, s], allrows[:, last]) for s in range(last))
    parents = tuple(next(t for t in range(s + 1, last + 1) if t == last or label_determines(allrows[:, s],
                                                                                            allrows[:, t]))
                    for s in range(last)) + (last,) if nested else None
    if not nested:
        # Upper bound of the union size: sum over scales of the largest class (capped by Ng).
        bound = 0
        for s in range(gallery_labels.shape[1]):
            _, counts = torch.unique(gallery_labels[:, s], return_counts=True)
            bound += int(counts.max()) if counts.numel() else 0
        return CandidateSets(nested=False, max_size=min(bound, gallery_labels.shape[0]))
    coarse = gallery_labels[:, -1]
    order = torch.argsort(coarse, stable=True)
    sorted_coarse = coarse[order].contiguous()
    q = query_labels[:, -1].contiguous()
    lo = torch.searchsorted(sorted_coarse, q, right=False)
    hi = torch.searchsorted(sorted_coarse, q, right=True)
    size = int((hi - lo).max()) if len(q) else 0
    return CandidateSets(nested=True, order=order, lo=lo, hi=hi, max_size=size, parents=parents)


def _candidates_for_chunk(cs: CandidateSets, problem: RankingProblem, start: int,
                          stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cols [C, U], valid [C, U])``: gallery indices of each query's candidate relevant items."""
    if cs.nested:
        lo, hi = cs.lo[start:stop].numpy(), cs.hi[start:stop].numpy()
        u = int((hi - lo).max()) if stop > start else 0
        pos = lo[:, None] + np.arange(u, dtype=np.int64)[None, :]
        valid = pos < hi[:, None]
        np.minimum(pos, max(cs.order.shape[0] - 1, 0), out=pos)
        if cs.order.numel() == 0:
            return torch.zeros((stop - start, 0), dtype=torch.long), torch.zeros((stop - start, 0), dtype=torch.bool)
        return torch.from_numpy(cs.order.numpy()[pos]), torch.from_numpy(valid)
    mask = torch.zeros((stop - start, problem.gallery.shape[0]), dtype=torch.bool)
    ql = problem.query_labels[start:stop]
    for s in range(ql.shape[1]):
        mask |= problem.gallery_labels[:, s].unsqueeze(0) == ql[:, s].unsqueeze(1)
    counts = mask.sum(1)
    u = int(counts.max()) if counts.numel() else 0
    rows, cols = mask.nonzero(as_tuple=True)
    row_start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.shape[0]) - row_start[rows]
    out = torch.zeros((stop - start, u), dtype=torch.long)
    valid = torch.zeros((stop - start, u), dtype=torch.bool)
    out[rows, slot] = cols
    valid[rows, slot] = True
    return out, valid


def _drop_excluded(problem: RankingProblem, cols: torch.Tensor, valid: torch.Tensor, start: int, stop: int) -> None:
    """Clear ``valid`` (in place) where the candidate is the query itself (leave-one-out) or shares its id."""
    c, v = cols.numpy(), valid.numpy()
    if problem.leave_one_out:
        v &= c != np.arange(start, stop, dtype=np.int64)[:, None]
    if problem.query_codes is not None:
        v &= problem.gallery_codes.numpy()[c] != problem.query_codes[start:stop].numpy()[:, None]


_GROUP_KEY_BYTES = 2 * 2**20  # int32 keys built and sorted together per thread (2..8 rows)

_RADIX_MIN_KEYS = 20_000
"""Rows of at least this many keys are sorted with torch's radix sort where numpy's sort is its slow AVX-512 kernel
(:func:`_row_sorter`): on an AMD Zen 4 machine, per row, 227 against 320 us at 20,000 keys, 277 against 529 at 30,251,
477 against 1,214 at 60,502; numpy won below (319 against 243 us at 16,000: a row is padded to 32,768 keys)."""
_RADIX_PAD = 32_768  # torch sorts 1-D integer tensors of at least this many elements with fbgemm's radix sort


def _torch_has_radix_sort() -> bool:
    """Whether torch was built with what its radix sort needs (fbgemm and OpenMP; torch's x86 wheels are); without
    them ``torch.sort`` compares, slower than numpy's sort."""
    return "fbgemm" in torch.backends.quantized.supported_engines and torch.backends.openmp.is_available()


def _row_sorter(n: int) -> str:
    """How the merge path sorts rows of ``n`` int32 keys: ``"numpy"`` (``ndarray.sort``), or ``"torch"`` (torch's
    radix sort, one row at a time, padded to 32,768 keys) for long rows where numpy's sort is the slow AVX-512 kernel
    of a Zen 4 CPU (:func:`dynametric.cpu_kernels.numpy_sort_is_slow`) and torch has its radix sort. Either gives the
    same sorted keys."""
    return "torch" if n >= _RADIX_MIN_KEYS and numpy_sort_is_slow() and _torch_has_radix_sort() else "numpy"


@lru_cache(maxsize=1)
def _torch_omp_setter() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` of the OpenMP runtime torch's CPU library is linked with, or None.

    Looked up through that library (``dlsym`` on its handle searches it and the libraries it depends on), so the
    function called is torch's runtime's even when the process holds another one (faiss bundles its own libgomp)."""
    import ctypes

    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        if (lib_dir / name).is_file():
            try:
                setter = ctypes.CDLL(str(lib_dir / name)).omp_set_num_threads
            except (OSError, AttributeError):
                return None
            setter.argtypes = [ctypes.c_int]
            setter.restype = None
            return cast(Callable[[int], None], setter)
    return None


def _set_own_torch_threads(n: int) -> bool:
    """Set the calling thread's torch intra-op thread count to ``n`` and no other thread's; False where that cannot
    be done (torch not on OpenMP, or its runtime not found), and nothing was changed then.

    ``torch.set_num_threads`` would also set the count that every thread started later begins with (torch reads
    that shared value in each thread's first call), so a thread that the caller starts while the engine ranks would
    run torch on one thread for its whole life. OpenMP keeps its thread count per thread: this sets the calling
    thread's alone, after torch's own first-call initialisation of the thread (which would overwrite it), and checks
    that torch sees it."""
    before = torch.get_num_threads()  # also torch's first-call initialisation of this thread, done before ours
    if before == n:
        return True
    setter = _torch_omp_setter()
    if setter is None:
        return False
    setter(n)
    if torch.get_num_threads() == n:
        return True
    setter(before)  # pragma: no cover - the call reached a runtime torch does not read: undo it
    return False


class _TorchRowSorter:
    """Sorts rows of int32 keys one at a time with torch's radix sort (a reusable padded buffer per thread).

    torch sorts a 1-D integer tensor of at least 32,768 elements with fbgemm's radix sort, which runs OpenMP threads
    of its own: each ranking thread therefore runs torch on one thread while it sorts (:func:`_set_own_torch_threads`:
    that thread's count alone; :meth:`restore` gives it back). Where the count cannot be set for one thread alone,
    ``torch.set_num_threads(1)`` is the fallback (``shared`` is then True), and the caller sets its count again
    afterwards, which is also the count that threads started later begin with."""

    def __init__(self, n: int) -> None:
        self.before = torch.get_num_threads()
        self.shared = not _set_own_torch_threads(1)
        if self.shared:
            torch.set_num_threads(1)
        self.n = n
        self.pad = np.full(max(n, _RADIX_PAD), np.iinfo(np.int32).max, dtype=np.int32)  # the padding sorts last
        self._pad_t = torch.from_numpy(self.pad)
        self._values = torch.empty(self.pad.shape[0], dtype=torch.int32)
        self._indices = torch.empty(self.pad.shape[0], dtype=torch.int64)

    def __call__(self, keys: np.ndarray, out: np.ndarray) -> None:
        values = self._values.numpy()
        for i in range(keys.shape[0]):
            self.pad[:self.n] = keys[i]
            torch.sort(self._pad_t, out=(self._values, self._indices))
            out[i] = values[:self.n]

    def restore(self) -> None:
        """This thread's torch thread count as it was before (the fallback's shared count is the caller's to set)."""
        if not self.shared:
            _set_own_torch_threads(self.before)


def _group_rows(n: int) -> int:
    """Rows per group on the merge path: up to 8 rows of ``n`` int32 keys in ``_GROUP_KEY_BYTES`` (at least 2).

    A group's keys are built and sorted in one numpy call each (fewer calls, fewer GIL hand-overs between the
    ranking threads) and stay in cache until its rows' candidates are located."""
    return max(2, min(8, _GROUP_KEY_BYTES // (4 * max(1, n))))


@dataclass
class _ColumnCandidates:
    """Candidates given as padded columns: ``cols``/``valid`` ``[C, U]`` (unique per row)."""

    cols: np.ndarray
    valid: np.ndarray

    def counts(self) -> np.ndarray:
        return self.valid.sum(1).astype(np.int64)

    def group(self, r0: int, r1: int) -> np.ndarray:
        """The candidates of rows ``r0..r1``, flat, grouped by row."""
        return self.cols[r0:r1][self.valid[r0:r1]]


@dataclass
class _RangeCandidates:
    """Candidates given as ranges of a gallery order (a query's coarsest class, nested hierarchies): row ``r``'s
    candidates are ``order[lo[r]:hi[r]]`` without ``order[skip_at[r]]`` (the query itself in leave-one-out, at that
    position of ``order``, inside the range; ``-1`` for none), so no padded ``[C, U]`` array is ever built."""

    order: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    skip_at: np.ndarray

    def counts(self) -> np.ndarray:
        return (self.hi - self.lo - (self.skip_at >= 0)).astype(np.int64)

    def group(self, r0: int, r1: int) -> np.ndarray:
        """The candidates of rows ``r0..r1``, flat, grouped by row: copies of slices of ``order`` (numpy's
        ``concatenate`` and ``repeat`` hold the GIL while they copy; a slice assignment does not)."""
        spans = []
        for a, b, s in zip(self.lo[r0:r1].tolist(), self.hi[r0:r1].tolist(), self.skip_at[r0:r1].tolist()):
            spans += [(a, b)] if s < 0 else [(a, s), (s + 1, b)]
        out = np.empty(sum(b - a for a, b in spans), dtype=self.order.dtype)
        p = 0
        for a, b in spans:
            out[p:p + b - a] = self.order[a:b]
            p += b - a
        return out


def _score_keys(scores: np.ndarray, fbuf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int32 keys, ascending in the ranking's order: ``order(0.0 - score)`` with ``order(i) = i ^ ((i >> 31) &
    0x7FFFFFFF)`` on the float32 bits (order-preserving; ``0.0 - score`` makes ``-0.0`` and ``+0.0`` one key).
    Equal keys are exactly equal scores. NaN keys sort to one end or the other, never between finite scores."""
    m = scores.shape[0]
    f = fbuf[:m]
    np.subtract(0.0, scores, out=f)
    bits = f.view(np.int32)
    k = out[:m]
    np.right_shift(bits, 31, out=k)
    k &= 0x7FFFFFFF
    k ^= bits
    return k


def _key_scores(keys: np.ndarray) -> np.ndarray:
    """The scores of int32 keys of :func:`_score_keys` (``order`` is its own inverse)."""
    bits = keys ^ ((keys >> 31) & 0x7FFFFFFF)
    return 0.0 - bits.astype(np.int32).view(np.float32)


_PACKED_INDEX_BITS = 24  # galleries up to 2**24 items: a group's candidates are sorted as one array of packed keys


def _key_index_pairs(keys: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Unique int64 ``key << 32 | index`` values: ascending in the ranking's order (score, then index)."""
    pairs = np.left_shift(keys, 32, dtype=np.int64)
    pairs |= index
    return pairs


def _sorted_candidates(keys: np.ndarray, cand: np.ndarray, rows: np.ndarray,
                       bounds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A group's candidates sorted by (row, key, index): their int32 keys and gallery indices, flat.

    ``keys``: the group's ``[m, n]`` keys; ``cand``: the candidates' gallery indices, grouped by row; ``rows``: each
    one's row; ``bounds``: where each row's candidates start and end. With ``n <= 2**_PACKED_INDEX_BITS`` (and at
    most 128 rows) one sort of ``row << 56 | (key + 2**31) << 24 | index`` orders every row at once; else one sort
    of ``key << 32 | index`` per row."""
    m, n = keys.shape
    ck = keys.reshape(-1)[rows * n + cand]
    b = _PACKED_INDEX_BITS
    if n <= 2**b and m <= 2**(31 - b):
        packed = ck.astype(np.int64)
        packed += 2**31
        packed <<= b
        packed |= rows << (32 + b)
        packed |= cand
        packed.sort()
        idx = packed & (2**b - 1)
        packed >>= b
        packed &= 0xFFFFFFFF
        packed -= 2**31
        return packed.astype(np.int32), idx
    pairs = _key_index_pairs(ck, cand)
    for a, z in zip(bounds[:-1], bounds[1:]):
        pairs[a:z].sort()
    return (pairs >> 32).astype(np.int32), pairs & 0xFFFFFFFF


_TIE_SCANS = 16  # a row with more tied candidates is ranked by one int64 sort instead of a scan per candidate


def _rank_by_full_sort(keys: np.ndarray, ck: np.ndarray, idx: np.ndarray, out_rank: np.ndarray) -> None:
    """One row's candidate ranks from one sort of unique int64 (key, index) pairs of the whole row."""
    full = _key_index_pairs(keys, np.arange(keys.shape[0], dtype=np.int64))
    full.sort()
    np.add(np.searchsorted(full, _key_index_pairs(ck, idx)), 1, out=out_rank)


def _add_tie_counts(keys: np.ndarray, rows: np.ndarray, bounds: list[int], ck: np.ndarray, idx: np.ndarray,
                    tied: np.ndarray, out_rank: np.ndarray) -> None:
    """Add to the ranks of a group's tied candidates the number of items with the same key and a smaller index.

    ``keys``: the group's ``[m, n]`` keys; ``rows``/``ck``/``idx``: each candidate's row, key and index, ``bounds``
    each row's span; ``tied``: candidates whose key occurs more than once in their row. Each tied candidate counts
    the equal keys before its index in its row (one comparison of that prefix); a row with more than
    ``_TIE_SCANS`` tied candidates (heavily tied scores) is ranked by :func:`_rank_by_full_sort` instead."""
    t = np.flatnonzero(tied)
    per_row = np.bincount(rows[t], minlength=keys.shape[0])
    heavy = per_row > _TIE_SCANS
    if heavy.any():
        for i in np.flatnonzero(heavy).tolist():
            a, z = bounds[i], bounds[i + 1]
            _rank_by_full_sort(keys[i], ck[a:z], idx[a:z], out_rank[a:z])
        t = t[~heavy[rows[t]]]
    for j, r, k, x in zip(t.tolist(), rows[t].tolist(), ck[t].tolist(), idx[t].tolist()):
        out_rank[j] += np.count_nonzero(keys[r, :x] == k)


def _merge_group(keys: np.ndarray, sorted_keys: np.ndarray, cand: np.ndarray, sizes: np.ndarray,
                 out_rank: np.ndarray, out_index: np.ndarray) -> None:
    """Ranks (ascending within each row) and gallery indices of a group of rows' candidates.

    ``keys``: the rows' keys (:func:`_score_keys`), ``sorted_keys`` the same sorted along each row; ``cand``: the
    candidates' gallery indices, ``sizes[i]`` of them for row ``i``, grouped by row. The candidates are sorted by
    (key, index), the ranking's order (:func:`_sorted_candidates`), and each one's rank is ``#{keys < its key} +
    #{equal keys with a smaller index} + 1``: the first term is one binary search per candidate in its sorted row
    (needles ascending, so each search starts where the last one ended), the second is non-zero only for a key
    that occurs more than once in the row (:func:`_add_tie_counts`)."""
    m, n = keys.shape
    bounds = [0, *np.cumsum(sizes).tolist()]
    rows = np.empty(bounds[-1], dtype=np.int64)  # filled slice by slice: np.repeat holds the GIL while it copies
    for i in range(m):
        rows[bounds[i]:bounds[i + 1]] = i
    ck, idx = _sorted_candidates(keys, cand, rows, bounds)
    out_index[:] = idx
    before = out_rank  # written in place: #{keys < key} first
    for i in range(m):
        before[bounds[i]:bounds[i + 1]] = np.searchsorted(sorted_keys[i], ck[bounds[i]:bounds[i + 1]])
    nxt = before + 1
    tied = sorted_keys.reshape(-1)[rows * n + np.minimum(nxt, n - 1)] == ck  # the key's run is longer than one
    tied &= nxt < n
    out_rank += 1
    if tied.any():
        _add_tie_counts(keys, rows, bounds, ck, idx, tied, out_rank)


def _merged_ranks(scores: np.ndarray, cands: _ColumnCandidates | _RangeCandidates, counts: np.ndarray,
                  pool: ThreadPoolExecutor | None, threads: int,
                  on_block: Callable[[int, int, np.ndarray, np.ndarray], Any] | None = None,
                  block_rows: int = 32) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, Any]]]:
    """Ranks of each row's candidates from one int32 sort of the row's scores (the merge path).

    ``scores``: float32 ``[C, Ng]``; ``cands``: each row's candidates; ``counts`` = ``cands.counts()``. Each row's
    scores become order-preserving int32 keys (:func:`_score_keys`), sorted a group of rows at a time
    (:func:`_group_rows`); the candidates are then located in the sorted rows (:func:`_merge_group`). Sorting 32-bit
    keys instead of 64-bit (score, index) pairs halves the sort, by far the largest cost here. Returns ``(ranks,
    gallery_index, block_results)``: ranks and indices flat, grouped by row and ascending in rank within a row;
    with ``on_block``, each thread calls ``on_block(lo, hi, ranks, gallery_index)`` as soon as rows ``[lo, hi)``
    (about ``block_rows`` of them) are ranked, while their output is still in cache, and ``block_results`` collects
    ``(lo, hi, result)`` in row order. Raises if a row's scores reach NaN or ``+inf``.
    """
    c, n = scores.shape
    if n >= 2**31:
        raise ValueError(f"the merge ranking path supports up to 2**31 - 1 gallery items, got {n}")
    starts = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    ranks = np.empty(int(starts[-1]), dtype=np.int64)
    gidx = np.empty(int(starts[-1]), dtype=np.int64)
    ends = np.empty((c, 2), dtype=np.int32)  # each row's smallest and largest key
    block_results: list[tuple[int, int, Any]] = []

    sorter = _row_sorter(n)
    shared_count_set: list[bool] = []  # a ranking thread used the torch sorter's fallback (list.append is atomic)

    def work(x: int, y: int) -> None:
        g = _group_rows(n)
        fbuf = np.empty((g, n), dtype=np.float32)
        kbuf = np.empty((g, n), dtype=np.int32)
        sbuf = np.empty((g, n), dtype=np.int32)
        sort_torch = _TorchRowSorter(n) if sorter == "torch" else None
        if sort_torch is not None and sort_torch.shared:
            shared_count_set.append(True)
        try:
            rank_rows(x, y, g, fbuf, kbuf, sbuf, sort_torch)
        finally:
            if sort_torch is not None:
                sort_torch.restore()

    def rank_rows(x: int, y: int, g: int, fbuf: np.ndarray, kbuf: np.ndarray, sbuf: np.ndarray,
                  sort_torch: _TorchRowSorter | None) -> None:
        block_start = x
        for r0 in range(x, y, g):
            r1 = min(y, r0 + g)
            keys = _score_keys(scores[r0:r1], fbuf, kbuf)
            srt = sbuf[:r1 - r0]
            if sort_torch is None:
                np.copyto(srt, keys)
                srt.sort(axis=1)
            else:
                sort_torch(keys, srt)
            ends[r0:r1, 0] = srt[:, 0]
            ends[r0:r1, 1] = srt[:, -1]
            a, z = int(starts[r0]), int(starts[r1])
            if z > a:
                cand = cands.group(r0, r1)
                if cand.shape[0] != z - a:  # pragma: no cover - a duplicate or missing candidate: a caller bug
                    raise RuntimeError("merge ranking: candidate lists do not match their counts")
                _merge_group(keys, srt, cand, counts[r0:r1], ranks[a:z], gidx[a:z])
            if on_block is not None and (r1 - block_start >= block_rows or r1 == y):
                block_results.append((block_start, r1, on_block(block_start, r1, ranks, gidx)))
                block_start = r1

    parts = max(1, min(threads, c))
    torch_threads = torch.get_num_threads()  # the torch sorter's fallback sets one shared torch thread count
    futures = []
    try:
        if pool is None or parts < 2:
            work(0, c)
        else:
            bounds = np.linspace(0, c, parts + 1).astype(int)
            futures = [pool.submit(work, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            for fut in futures:
                fut.result()
    finally:
        wait(futures)  # every ranking thread has finished (even when one failed) before torch's count is restored
        if shared_count_set:
            # the fallback: torch keeps a thread count per thread, and a thread's first torch call starts from the
            # count set last by any thread: the ranking threads set 1, so set this thread's count again (threads
            # started later start from it)
            torch.set_num_threads(torch_threads)
    extremes = _key_scores(ends)  # [:, 0] the best score of each row, [:, 1] the worst
    if np.isnan(extremes).any() or np.isposinf(extremes[:, 0]).any():
        _raise_overflow()
    block_results.sort(key=lambda item: item[0])
    return ranks, gidx, block_results


TOPK_PATH_MAX_CAP = 64
_METRIC_BLOCK_ITEMS = 1 << 18  # candidates per metric block (row blocks run in the thread pool, in cache)
_SORT_HINT_PAIRS = 10**8  # query x gallery pairs from which the sort kernel hint is given (seconds of sorting)


def _ranks_within_top(scores: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor, cap: int) -> torch.Tensor:
    """Exact ranks of candidates that rank within the best ``cap`` items; ``cap + 1`` for every other one.

    One linear ``topk`` per row instead of a sort. Items scoring above the k-th best value ``t`` are all in the
    top-k set, so their ranks (ties by gallery index) are counted inside it; a candidate scoring below ``t`` has
    more than ``cap`` better items; a candidate tied with ``t`` is counted against its whole row.
    """
    c, n = scores.shape
    k = min(cap, n)
    vals, idx = torch.topk(scores, k, dim=1)
    if bool(torch.isnan(vals).any()) or bool(torch.isposinf(vals[:, 0]).any()):
        _raise_overflow()
    t = vals[:, -1:]
    v = scores.gather(1, cols)
    better = (vals.unsqueeze(1) > v.unsqueeze(2)).sum(2)
    better += ((vals.unsqueeze(1) == v.unsqueeze(2)) & (idx.unsqueeze(1) < cols.unsqueeze(2))).sum(2)
    ranks = better + 1
    ranks = torch.where(v < t, torch.full_like(ranks, cap + 1), ranks)
    boundary = valid & (v == t)
    if bool(boundary.any()):
        r, j = boundary.nonzero(as_tuple=True)
        positions = torch.arange(n)
        for a in range(0, r.numel(), 256):
            rr, jj = r[a:a + 256], j[a:a + 256]
            row, vv, cc = scores[rr], v[rr, jj].unsqueeze(1), cols[rr, jj].unsqueeze(1)
            exact = (row > vv).sum(1) + ((row == vv) & (positions.unsqueeze(0) < cc)).sum(1) + 1
            ranks[rr, jj] = exact.clamp_max(cap + 1)
    return torch.where(valid, ranks, torch.zeros_like(ranks))


def auto_path(u: int, n: int, rank_cap: int | None) -> str:
    """The ranking path for candidate sets of up to ``u`` items in a gallery of ``n``: ``"top"`` when only ranks up
    to a small cap matter, else ``"merge"`` (the full ranking)."""
    if rank_cap is not None and rank_cap <= TOPK_PATH_MAX_CAP and u <= TOPK_PATH_MAX_CAP and rank_cap < n:
        return "top"
    return "merge"


def rank_candidates_flat(scores: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                         pool: ThreadPoolExecutor | None = None, threads: int = 1, path: str = "auto",
                         rank_cap: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of each row's valid candidates as flat arrays ``(counts[C], ranks[M], gallery_index[M])``.

    Row ``r``'s entries are ``ranks[starts[r]:starts[r+1]]`` (``starts`` = cumulative ``counts``), ascending in rank,
    with the candidates' gallery indices alongside. Ranks are 1-based: descending score, ties by ascending gallery
    index, exact: ``rank = #{s > v} + #{s == v and index < col} + 1``. Paths (``path="auto"`` picks):

    * ``"top"``: when only ranks up to ``rank_cap`` matter and the cap and candidate sets are small, one linear
      ``topk`` per row; ranks above the cap are reported as ``rank_cap + 1``;
    * ``"merge"``: the full ranking, any candidate set; one sort of each row's scores as int32 keys, the
      candidates located in it in rank order (:func:`_merged_ranks`).
    """
    if path not in ("auto", "merge", "top"):
        raise ValueError(f"unknown ranking path {path!r}")
    c, n = scores.shape
    valid_np = valid.numpy()
    counts = valid_np.sum(1).astype(np.int64)
    if cols.shape[1] == 0 or not counts.any():
        return counts, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if path == "auto":
        path = auto_path(cols.shape[1], n, rank_cap)
    if path == "merge":
        ranks, gidx, _ = _merged_ranks(scores.numpy(), _ColumnCandidates(cols.numpy(), valid_np), counts, pool,
                                       threads)
        return counts, ranks, gidx
    if rank_cap is None:
        raise ValueError("the 'top' ranking path needs rank_cap")
    return _flatten_ranks(_ranks_within_top(scores, cols, valid, rank_cap), cols, valid, n)


def _flatten_ranks(padded: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                   n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded ``[C, U]`` ranks -> ``(counts, ranks, gallery_index)`` grouped by row, ascending in rank."""
    valid_np = valid.numpy()
    counts = valid_np.sum(1).astype(np.int64)
    rows = np.repeat(np.arange(valid_np.shape[0], dtype=np.int64), counts)
    rk = padded.numpy()[valid_np]
    g = cols.numpy()[valid_np]
    order = np.argsort(rows * (n + 2) + rk, kind="stable")
    return counts, rk[order], g[order]


def rank_candidates(scores: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                    pool: ThreadPoolExecutor | None = None, threads: int = 1, path: str = "auto",
                    rank_cap: int | None = None) -> torch.Tensor:
    """Padded form of :func:`rank_candidates_flat`: ``LongTensor[C, U]`` ranks of ``cols``, 0 where not ``valid``."""
    counts, ranks, gidx = rank_candidates_flat(scores, cols, valid, pool, threads, path, rank_cap)
    c, n = scores.shape
    valid_np = valid.numpy()
    out = np.zeros(cols.shape, dtype=np.int64)
    if ranks.size:
        rows = np.repeat(np.arange(c, dtype=np.int64), counts)
        slot_keys = (np.arange(c, dtype=np.int64)[:, None] * n + cols.numpy())
        flat_slots = np.flatnonzero(valid_np)
        order = np.argsort(slot_keys.reshape(-1)[flat_slots], kind="stable")
        found = np.searchsorted(slot_keys.reshape(-1)[flat_slots][order], rows * n + gidx)
        out.reshape(-1)[flat_slots[order[found]]] = ranks
    return torch.from_numpy(out)


def _raise_overflow() -> None:
    from dynametric.errors import InputError

    raise InputError("similarity scores overflowed to inf/NaN; embeddings are too large in magnitude",
                     key="embeddings")


class ScaleAccumulator:
    """Per-query metric values of one scale (filled chunk by chunk; sums are exactly rounded, so the result does
    not depend on the chunking)."""

    def __init__(self, num_queries: int) -> None:
        self.r_count = np.zeros(num_queries, dtype=np.int64)
        self.values: dict[str, np.ndarray] = {}

    def add(self, start: int, r_count: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        stop = start + r_count.shape[0]
        self.r_count[start:stop] = r_count.numpy()
        for name, vals in values.items():
            arr = self.values.setdefault(name, np.zeros(self.r_count.shape[0], dtype=np.float64))
            arr[start:stop] = vals.numpy()

    @property
    def num_defined(self) -> int:
        return int((self.r_count > 0).sum())

    @property
    def num_empty(self) -> int:
        return int((self.r_count == 0).sum())

    @property
    def sums(self) -> dict[str, float]:
        defined = self.r_count > 0
        return {name: math.fsum(arr[defined].tolist()) for name, arr in self.values.items()}


@dataclass
class _ChunkMetrics:
    """Every scale's metrics for a block of a chunk's rows, from the flat ranks (blocks are small, so their arrays
    stay in cache, and independent, so they run in the thread pool)."""

    counts: np.ndarray  # [C] candidates per row
    starts: np.ndarray  # [C + 1] cumulative counts
    query_labels: np.ndarray  # [C, S]
    gallery_labels: list[np.ndarray]  # S arrays [Ng]
    parents: tuple[int, ...] | None  # CandidateSets.parents: None when not nested
    metrics: tuple[MetricSpec, ...]
    asi_cutoff: int | None
    harmonic: torch.Tensor

    def __call__(self, lo: int, hi: int, ranks: np.ndarray,
                 gidx: np.ndarray) -> list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]:
        """Rows ``[lo, hi)``; ``ranks``/``gidx``: the chunk's flat ranks (per row ascending) and gallery indices."""
        a, z = int(self.starts[lo]), int(self.starts[hi])
        rows = np.repeat(np.arange(hi - lo, dtype=np.int64), self.counts[lo:hi])
        everything = (rows, ranks[a:z], gidx[a:z])
        num_scales = len(self.gallery_labels)
        sets: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        out = []
        # coarsest first: in a nested hierarchy a scale's relevant set is a subset of that of each coarser scale its
        # label determines (its parent), so it is filtered from that (smaller) set instead of from every candidate
        for s in reversed(range(num_scales)):
            if self.parents is not None and s == num_scales - 1:  # the candidates are exactly the coarsest class
                subset = everything
            else:
                base = everything if self.parents is None else sets[self.parents[s]]
                r_all, k_all, g_all = base
                q_lab = self.query_labels[lo:hi, s]
                q_lab = np.repeat(q_lab, self.counts[lo:hi]) if base is everything else q_lab[r_all]
                keep = np.flatnonzero(self.gallery_labels[s][g_all] == q_lab)  # one index, three cheap takes
                subset = (r_all[keep], k_all[keep], g_all[keep])
            sets[s] = subset
            r_count, vals = metrics_from_flat_ranks(subset[0], subset[1], hi - lo, metrics=self.metrics,
                                                    asi_cutoff=self.asi_cutoff,
                                                    harmonic=self.harmonic)
            out.append((s, r_count, vals))
        return out

    @classmethod
    def for_chunk(cls, counts: np.ndarray, query_labels: np.ndarray, gallery_labels: list[np.ndarray],
                  parents: tuple[int, ...] | None, metrics: tuple[MetricSpec, ...], asi_cutoff: int | None,
                  harmonic: torch.Tensor) -> _ChunkMetrics:
        starts = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        return cls(counts, starts, query_labels, gallery_labels, parents, metrics, asi_cutoff, harmonic)

    def block_rows(self) -> int:
        """Rows per block: about ``_METRIC_BLOCK_ITEMS`` candidates, so a block's arrays stay in cache."""
        return max(1, _METRIC_BLOCK_ITEMS // max(1, int(self.counts.max()) if self.counts.size else 1))

    @staticmethod
    def add_to(accs: list[ScaleAccumulator], start: int,
               blocks: list[tuple[int, int, list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]]]]) -> None:
        for lo, _hi, res in blocks:
            for s, r_count, vals in res:
                accs[s].add(start + lo, r_count, vals)


def use_symmetric_path(problem: RankingProblem, metrics: tuple[str | MetricSpec, ...], cap: int,
                       memory_budget_bytes: int | None) -> bool:
    """Leave-one-out with only small-cap metrics (none that needs the full ranking, such as ``map``): compute each
    pair's score once (:mod:`dynametric.metrics.symmetric`), when its running top lists fit the budget and scores
    cannot overflow."""
    n = problem.gallery.shape[0]
    if not problem.leave_one_out or needs_full_ranking(resolve_metrics((), metrics)) or cap > TOPK_PATH_MAX_CAP \
            or cap >= n - 1:
        return False
    budget = DEFAULT_MEMORY_BUDGET if memory_budget_bytes is None else int(memory_budget_bytes)
    need = state_bytes(n, cap)
    if need > max(budget // 2, STATE_ALWAYS_OK_BYTES):
        return False
    return scores_cannot_overflow(problem.gallery, problem.distance == "euclidean")


def _ranks_from_top_lists(problem: RankingProblem, top_lists: tuple[torch.Tensor, torch.Tensor], cap: int,
                          cols: torch.Tensor, valid: torch.Tensor, start: int,
                          stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ranks of a chunk's candidates from the symmetric path's top lists; rows whose ``cap``-th and
    ``(cap+1)``-th scores tie are recomputed alone on the row path (exact tie counting over the whole row)."""
    n = problem.gallery.shape[0]
    if cols.shape[1] == 0:
        return _flatten_ranks(torch.zeros(cols.shape, dtype=torch.long), cols, valid, n)
    vals, idx = top_lists
    ranks, tied = exact_top_ranks(vals[start:stop], idx[start:stop], cols, valid, cap)
    for r in tied.nonzero().flatten().tolist():  # rare (ties straddling the cap); one row at a time, same product
        with torch.no_grad():
            row_scores = scores_block(problem, start + r, start + r + 1)
            ranks[r] = _ranks_within_top(row_scores, cols[r:r + 1], valid[r:r + 1], cap)[0]
    return _flatten_ranks(ranks, cols, valid, n)


def _accumulate_chunk(accs: list[ScaleAccumulator], start: int, counts: np.ndarray, ranks: np.ndarray,
                      gidx: np.ndarray, problem: RankingProblem, gallery_labels: list[np.ndarray],
                      parents: tuple[int, ...] | None, metrics: tuple[MetricSpec, ...], asi_cutoff: int | None,
                      harmonic: torch.Tensor, pool: ThreadPoolExecutor | None) -> None:
    """Every scale's metrics for one chunk's flat ranks, per block of rows (in the thread pool), into ``accs``."""
    c = counts.shape[0]
    job = _ChunkMetrics.for_chunk(counts, problem.query_labels[start:start + c].numpy(), gallery_labels, parents,
                                  metrics, asi_cutoff, harmonic)
    step = job.block_rows()
    blocks = [(lo, min(c, lo + step)) for lo in range(0, c, step)]
    if pool is None or len(blocks) < 2:
        results = [job(lo, hi, ranks, gidx) for lo, hi in blocks]
    else:
        results = [f.result() for f in [pool.submit(job, lo, hi, ranks, gidx) for lo, hi in blocks]]
    job.add_to(accs, start, [(lo, hi, res) for (lo, hi), res in zip(blocks, results)])


def _chunk_takes_merge_path(cs: CandidateSets, start: int, stop: int, ng: int,
                            metrics: tuple[MetricSpec, ...], asi_cutoff: int | None) -> bool:
    """Whether :func:`rank_candidates_flat` (``path="auto"``) would pick the merge path for this chunk."""
    u = int((cs.hi[start:stop] - cs.lo[start:stop]).max()) if stop > start else 0
    return auto_path(u, ng, _rank_cap(u, metrics, asi_cutoff)) == "merge"


def _rank_cap(u: int, metrics: tuple[MetricSpec, ...], asi_cutoff: int | None) -> int | None:
    """Metrics that do not need the full ranking (every one but ``map`` today) only read ranks up to
    ``max(R_q, K, asi cut-off)`` (None: all ranks)."""
    return None if needs_full_ranking(metrics) else max(u, max_rank_needed((), metrics, asi_cutoff))


def run_ranking(problem: RankingProblem, *, k_values: tuple[int, ...], metrics: tuple[str | MetricSpec, ...],
                asi_cutoff: int | None, memory_budget_bytes: int | None,
                progress: Callable[[int, int], None] | None = None,
                table: Mapping[str, RankMetric] | None = None) -> list[ScaleAccumulator]:
    """Chunk over queries, rank once, and accumulate every requested metric at every scale.

    ``metrics``: names of ``table`` (default :data:`~dynametric.metrics.ranking.METRIC_TABLE`) or resolved
    :class:`~dynametric.metrics.ranking.MetricSpec`; ``recall@k`` for every ``k_values`` entry as well."""
    specs = resolve_metrics(k_values, metrics, table)
    nq, ng = problem.query.shape[0], problem.gallery.shape[0]
    num_scales = problem.query_labels.shape[1]
    if problem.distance == "euclidean" and problem.gallery_sq_norms is None:
        problem.gallery_sq_norms = (problem.gallery * problem.gallery).sum(1)
    cs = build_candidate_sets(problem.query_labels, problem.gallery_labels)
    chunk_rows = plan_chunk_rows(nq, ng, memory_budget_bytes, num_scales, cs.max_size)
    harmonic = harmonic_numbers(max(ng, min(asi_cutoff or 0, ng + 1), 1))  # H_N beyond the gallery: harmonic_at
    accs = [ScaleAccumulator(nq) for _ in range(num_scales)]
    gallery_labels = [problem.gallery_labels[:, s].contiguous().numpy() for s in range(num_scales)]
    threads = _ordered_threads()
    global_cap = max(cs.max_size, max_rank_needed((), specs, asi_cutoff))  # _rank_cap without full ranking
    top_lists = None
    if use_symmetric_path(problem, specs, global_cap, memory_budget_bytes):
        top_lists = symmetric_top_lists(problem.query, global_cap + 1, euclidean=problem.distance == "euclidean",
                                        sq_norms=problem.gallery_sq_norms, codes=problem.query_codes)
        best = top_lists[0][:, 0]
        if bool(torch.isnan(top_lists[0]).any()) or bool(torch.isposinf(best).any()):
            _raise_overflow()
    if top_lists is None and nq * ng >= _SORT_HINT_PAIRS:  # rows are sorted: is numpy's sort the slow one?
        warn_if_slow_sort(stacklevel=outside_package_level())  # names the user's line that asked for it
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    # nested candidate sets with no shared-id exclusions are read straight from the coarsest-class ranges
    use_ranges = top_lists is None and cs.nested and problem.query_codes is None
    order_position = np.empty(0, dtype=np.int64)  # leave-one-out: each gallery item's position in `cs.order`
    if use_ranges and problem.leave_one_out:
        order_position = np.empty(ng, dtype=np.int64)
        order_position[cs.order.numpy()] = np.arange(ng, dtype=np.int64)
    buffer: list[torch.Tensor] = []  # one [chunk_rows, Ng] score buffer, reused by every chunk

    def chunk_scores(start: int, stop: int) -> torch.Tensor:
        if not buffer:
            buffer.append(torch.empty((chunk_rows, ng), dtype=torch.float32))
        with torch.no_grad():
            return scores_block(problem, start, stop, out=buffer[0])

    def rank_chunk(start: int, stop: int) -> None:
        if use_ranges and _chunk_takes_merge_path(cs, start, stop, ng, specs, asi_cutoff):
            lo, hi = cs.lo[start:stop].numpy(), cs.hi[start:stop].numpy()
            if problem.leave_one_out:  # the query is gallery item `start + r`, inside its own class's range
                skip_at = order_position[start:stop]
                if not ((lo <= skip_at) & (skip_at < hi)).all():  # pragma: no cover - labels differ from gallery's
                    raise RuntimeError("leave-one-out query outside its own class range")
            else:
                skip_at = np.full(stop - start, -1, dtype=np.int64)
            cands = _RangeCandidates(cs.order.numpy(), lo, hi, skip_at)
            counts = cands.counts()
            # metrics run inside the ranking threads, block by block, while the block's ranks are in cache
            job = _ChunkMetrics.for_chunk(counts, problem.query_labels[start:stop].numpy(), gallery_labels,
                                          cs.parents, specs, asi_cutoff, harmonic)
            _, _, blocks = _merged_ranks(chunk_scores(start, stop).numpy(), cands, counts, pool, threads,
                                         on_block=job, block_rows=job.block_rows())
            job.add_to(accs, start, blocks)
            return
        cols, valid = _candidates_for_chunk(cs, problem, start, stop)
        _drop_excluded(problem, cols, valid, start, stop)
        if top_lists is not None:
            counts, ranks, gidx = _ranks_from_top_lists(problem, top_lists, global_cap, cols, valid, start, stop)
        else:
            cap = _rank_cap(cols.shape[1], specs, asi_cutoff)
            counts, ranks, gidx = rank_candidates_flat(chunk_scores(start, stop), cols, valid, pool, threads,
                                                       rank_cap=cap)
        _accumulate_chunk(accs, start, counts, ranks, gidx, problem, gallery_labels, cs.parents, specs, asi_cutoff,
                          harmonic, pool)

    try:
        for start in range(0, nq, chunk_rows):
            stop = min(nq, start + chunk_rows)
            rank_chunk(start, stop)
            if progress is not None:
                progress(stop, nq)
    finally:
        if pool is not None:
            pool.shutdown()
    return accs


_PREP_ROWS = 1 << 16  # rows per float64 block when preparing embeddings (bounded extra memory)


def _float64_rows(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _unit_rows64(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows in float64, computed after dividing each row by its largest absolute value: exact for every
    finite float32 row (a squared norm of ``1e19``-scaled rows would overflow float32, and rows below
    ``F.normalize``'s epsilon would not be normalised). All-zero rows stay zero. Works on a copy: ``x`` may be the
    caller's own float64 array (:func:`~dynametric.metrics.evaluate._as_embeddings` passes it on uncopied)."""
    y = x.to(torch.float64, copy=True)
    peak = y.abs().amax(1, keepdim=True)
    y /= torch.where(peak > 0, peak, torch.ones_like(peak))
    y /= torch.where(peak > 0, torch.linalg.vector_norm(y, dim=1, keepdim=True), torch.ones_like(peak))
    return y


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """:func:`_unit_rows64` rounded to float32, in blocks of ``_PREP_ROWS`` rows (bounded extra memory)."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for a in range(0, x.shape[0], _PREP_ROWS):
        out[a:a + _PREP_ROWS] = _unit_rows64(x[a:a + _PREP_ROWS])
    return out


TINY_ROW_NORM = 2.0 ** -48
"""A non-zero row whose norm, after :func:`_centred_scaled`'s centring and scaling, is below this (``2^-48`` of the
largest absolute coordinate, which the scaling puts in ``[0.5, 1)``) has float32 scores with other such rows
(products of ``2^-96`` and below) that sink towards float32's subnormal range and 0: their order among themselves
may be wrong, and :func:`_centred_scaled` warns (one line)."""


def _warn_tiny_rows(counts: list[int], firsts: list[int], names: tuple[str, ...]) -> None:
    """One :class:`RuntimeWarning` line naming how many rows of each set are below :data:`TINY_ROW_NORM`."""
    import warnings

    parts = [f"{n} row(s) of {name} (first: row {f})" for n, f, name in zip(counts, firsts, names) if n]
    if parts:
        warnings.warn(f"{' and '.join(parts)} lie more than 2^48 times closer to the embeddings' centre than the "
                      f"largest coordinate lies from it: float32 scores between such rows underflow, so their order "
                      f"among themselves (and their k-means clusters) may differ from exact arithmetic; evaluate "
                      f"them apart from the far larger rows", RuntimeWarning, stacklevel=outside_package_level())


def _centred_scaled(sets: list[torch.Tensor], centre_of: torch.Tensor,
                    rows: Callable[[torch.Tensor], torch.Tensor] = _float64_rows,
                    names: tuple[str, ...] = ("query", "gallery")) -> list[torch.Tensor]:
    """Euclidean inputs: every set (as float64 ``rows(block)``) translated by a centre ``c`` and multiplied by a power
    of two, as float32 (``names``: the sets' names in the :data:`TINY_ROW_NORM` warning).

    Neither changes any Euclidean ranking. ``c`` is the float64 mean of ``rows(centre_of)`` rounded to a multiple of
    ``Q = 2**floor(log2(spread))`` (``spread``: the largest per-dimension standard deviation), so the offset left
    is below ``Q / 2`` and ``x - c`` is exact for every coordinate within about ``|x|`` of ``c`` (``c`` has no bits
    below ``Q``); integer-valued embeddings with a spread of 1 or more stay integers (their exact score ties stay
    exact). The power of two brings the largest absolute coordinate into ``[0.5, 1)`` (exact), ruling out overflow
    of the squared norms and products; underflow only for rows whose norm is then at least :data:`TINY_ROW_NORM`
    (a warning names the others). Without centring, the float32 score ``2<q, g> - ||g||^2`` of embeddings far
    from the origin loses the distance differences in the cancellation and misorders candidates."""
    n, dim = centre_of.shape
    dev = centre_of.device
    total = torch.zeros(dim, dtype=torch.float64, device=dev)
    for a in range(0, n, _PREP_ROWS):
        total += rows(centre_of[a:a + _PREP_ROWS]).sum(0)
    mean = total / max(1, n)
    sq = torch.zeros(dim, dtype=torch.float64, device=dev)
    for a in range(0, n, _PREP_ROWS):
        sq += ((rows(centre_of[a:a + _PREP_ROWS]) - mean) ** 2).sum(0)
    spread = math.sqrt(float(sq.max()) / max(1, n))
    if spread > 0.0 and math.isfinite(spread):
        quantum = math.ldexp(1.0, math.frexp(spread)[1] - 1)  # 2**floor(log2(spread))
        centre = torch.round(mean / quantum) * quantum
    else:
        centre = torch.zeros(dim, dtype=torch.float64, device=dev)
    peak = 0.0
    for x in sets:
        for a in range(0, x.shape[0], _PREP_ROWS):
            peak = max(peak, float((rows(x[a:a + _PREP_ROWS]) - centre).abs().max()))
    factor = 1.0 if peak == 0.0 else math.ldexp(1.0, -math.frexp(peak)[1])
    outs: list[torch.Tensor] = []
    counts: list[int] = []
    firsts: list[int] = []
    for x in sets:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        count, first = 0, -1
        for a in range(0, x.shape[0], _PREP_ROWS):
            block = (rows(x[a:a + _PREP_ROWS]) - centre) * factor
            sq = (block * block).sum(1)
            tiny = (sq > 0) & (sq < TINY_ROW_NORM ** 2)
            n_tiny = int(tiny.sum())
            if n_tiny:
                first = first if count else a + int(tiny.nonzero()[0])
                count += n_tiny
            out[a:a + _PREP_ROWS] = block
        outs.append(out)
        counts.append(count)
        firsts.append(first)
    _warn_tiny_rows(counts, firsts, names)
    return outs


NARROW_CONE_SPREAD = 2.0 ** -7
"""Cosine inputs whose unit rows spread less than this (root mean square distance from their mean) are ranked by the
Euclidean distance of their centred unit rows (:func:`prepare_for_ranking`): in so narrow a cone, float32 cosines
of near neighbours round to the same few values next to 1 and tie (vectors at an offset of 1,000 with a spread of
0.01 lost half their recall@1 that way)."""


def _cone_spread(unit: torch.Tensor) -> float:
    """The root mean square distance of unit rows from their mean, ``sqrt(1 - ||mean||^2)`` (rows of norm 1; an
    all-zero row makes it an overestimate, and such inputs are never switched anyway): one column sum."""
    mean = unit.sum(0, dtype=torch.float32).double() / max(1, unit.shape[0])
    return math.sqrt(max(0.0, 1.0 - float((mean * mean).sum())))


def _has_zero_row(x: torch.Tensor) -> bool:
    return any(bool((x[a:a + _PREP_ROWS] == 0).all(1).any()) for a in range(0, x.shape[0], _PREP_ROWS))


def prepare_for_ranking(distance: str, query: torch.Tensor, gallery: torch.Tensor | None = None, *,
                        narrow_cone: bool = True,
                        device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(query, gallery, scoring)`` as the engine scores them (``gallery=None``: leave-one-out, the same tensor
    twice); ``scoring`` is the distance the engine computes, which ranks exactly as ``distance`` does.

    Cosine: rows L2-normalised exactly (:func:`_unit_rows`). When the gallery's unit rows lie in a narrow cone
    (:func:`_cone_spread` below :data:`NARROW_CONE_SPREAD`, no all-zero row; ``narrow_cone=False`` turns this off),
    they are instead centred
    and scaled in float64 as Euclidean inputs and ranked by Euclidean distance (``scoring = "euclidean"``): for unit
    vectors ``||q - g||^2 = 2 - 2 cos``, the same ranking, and the centred coordinates keep the differences that
    float32 cosines near 1 round away. Euclidean: both sets centred on the gallery mean and scaled by a power of two
    (:func:`_centred_scaled`); neither changes the exact ranking, both keep float32 scores accurate whatever the
    embeddings' offset and magnitude. ``device``: where the float64 work is done and the results live (default
    the CPU; the torch engine passes its device, so embeddings already there never make a round trip through the
    host)."""
    dev = torch.device("cpu") if device is None else device
    query = query.detach().to(dev)
    gallery = None if gallery is None else gallery.detach().to(dev)
    if distance == "cosine":
        q = _unit_rows(query)
        g = q if gallery is None else _unit_rows(gallery)
        if narrow_cone and g.shape[0] > 1 and _cone_spread(g) < NARROW_CONE_SPREAD \
                and not _has_zero_row(q) and (gallery is None or not _has_zero_row(g)):
            centre_of = query if gallery is None else gallery
            out = _centred_scaled([query] if gallery is None else [query, gallery], centre_of, _unit_rows64,
                                  names=("the embeddings",) if gallery is None else ("query", "gallery"))
            return out[0], out[-1], "euclidean"
        return q, g, "cosine"
    if gallery is None:
        (q,) = _centred_scaled([query], query, names=("the embeddings",))
        return q, q, distance
    q, g = _centred_scaled([query, gallery], gallery)
    return q, g, distance


def normalize_for(distance: str, x: torch.Tensor) -> torch.Tensor:
    """Embeddings of one set as plain float32 scores see them: L2-normalised (exactly, :func:`_unit_rows`) for
    cosine, unchanged float32 for euclidean (the clustering metrics use :func:`prepare_for_clustering`)."""
    x = x.detach().cpu()
    return _unit_rows(x) if distance == "cosine" else x.to(torch.float32).contiguous()


def prepare_for_clustering(distance: str, x: torch.Tensor) -> torch.Tensor:
    """Embeddings of one set (any float dtype, any device) as the clustering metrics' k-means uses them: float32 on
    the CPU, translated and scaled by a power of two in float64 (:func:`_centred_scaled`); for cosine the rows are
    first L2-normalised exactly in float64 (:func:`_unit_rows64`; an all-zero row stays zero, a point at the
    origin).

    k-means, its k-means++ seeding included, depends only on differences of points and on ratios of squared
    distances, so neither step changes its assignments in exact arithmetic; both keep float32 accurate: rows of
    magnitude ``1e19`` (squared distances overflow float32) or ``1e-30`` (they underflow), and rows far from the
    origin (an offset of ``1e4`` with a spread of ``0.1``: float32 distances lose the spread) are clustered as the
    same points near the origin at unit scale."""
    x = x.detach()
    rows = _unit_rows64 if distance == "cosine" else _float64_rows
    (out,) = _centred_scaled([x], x, rows, names=("the embeddings",))
    return out.cpu()
