"""Leave-one-out top-k from the symmetric score matrix: every pair's score is computed once.

In leave-one-out evaluation the gallery is the query set, so ``S = E E^T`` (cosine; Euclidean scores
``2<q, g> - ||g||^2`` derive from the same inner products). The engine's row path computes every ``<q, g>`` twice
(once for row ``q``, once for row ``g``); here the matrix is cut into fixed ``TILE x TILE`` tiles and only the tiles
on and above the diagonal are multiplied. Each tile updates a running top-``(k+1)`` list of the rows on both sides:
its rows directly, its columns through the transposed view.

Running top lists. Row ``q`` keeps the ``k + 1`` best ``(score, index)`` pairs seen so far (by score; which one of
equal scores is kept does not matter, see below). A new tile only touches entries that beat the row's current
``(k+1)``-th score, found with one comparison pass; after the first tiles almost nothing does, so the cost per
score is the comparison, not a top-k selection. Dense tiles (a row's first) use ``torch.topk``.

Exactness. Let ``t`` be the final ``k``-th and ``u`` the ``(k+1)``-th kept score of a row. If ``u < t`` the kept
``k`` best are exactly the items scoring ``>= t`` (an item scoring ``>= t`` that was dropped would have left ``k + 1``
kept items scoring ``>= t``, so ``u >= t``), so sorting them by (descending score, ascending index) gives their
exact ranks and every other item ranks below ``k``. If ``u == t`` (a tie straddles the boundary, e.g. exact
duplicates) the row is recomputed on its own with the row path, which counts ties against the whole row.
"""

from __future__ import annotations

import torch

from dynametric.metrics.products import GalleryProducts

TILE = 2048
"""Tile edge. Fixed (not derived from the memory budget) so that every score is produced by the same matrix
product whatever the budget, and results are bit-identical for any budget."""

STATE_ALWAYS_OK_BYTES = 64 * 2**20
"""Running top lists of at most this size are used whatever the memory budget."""


def state_bytes(num_items: int, k: int) -> int:
    """Bytes of the running top-``(k+1)`` lists (float32 score + int64 index per entry)."""
    return num_items * (k + 1) * 12


def scores_cannot_overflow(x: torch.Tensor, euclidean: bool) -> bool:
    """Cauchy-Schwarz bound: every partial sum of ``<q, g>`` is at most ``max ||x||^2``, far below float32's max."""
    if x.numel() == 0:
        return True
    top = float((x.double() * x.double()).sum(1).max())
    return top * (4.0 if euclidean else 1.0) < 1e37


class _TopLists:
    """Per-row running top-``k1`` lists, kept sorted by descending score; ``thr`` is each row's ``k1``-th score."""

    def __init__(self, n: int, k1: int) -> None:
        self.k1 = k1
        self.vals = torch.full((n, k1), float("-inf"), dtype=torch.float32)
        self.idx = torch.full((n, k1), -1, dtype=torch.long)

    def thr(self, r0: int, r1: int) -> torch.Tensor:
        return self.vals[r0:r1, self.k1 - 1]

    def merge_dense(self, r0: int, block: torch.Tensor, col0: int) -> None:
        """Rows ``r0 .. r0 + len(block)`` see every score of ``block`` (columns are gallery ``col0 + j``)."""
        r1 = r0 + block.shape[0]
        kk = min(self.k1, block.shape[1])
        nv, ni = torch.topk(block, kk, dim=1)
        cv = torch.cat([self.vals[r0:r1], nv], 1)
        ci = torch.cat([self.idx[r0:r1], ni + col0], 1)
        tv, tp = torch.topk(cv, self.k1, dim=1)
        self.vals[r0:r1] = tv
        self.idx[r0:r1] = ci.gather(1, tp)

    def merge_sparse(self, rows: torch.Tensor, cands: torch.Tensor, values: torch.Tensor) -> None:
        """Offer ``(row, candidate, score)`` triples (rows in any order, each pair at most once overall)."""
        if rows.numel() == 0:
            return
        order = torch.argsort(rows, stable=True)
        rows, cands, values = rows[order], cands[order], values[order]
        uniq, counts = torch.unique_consecutive(rows, return_counts=True)
        start = torch.cumsum(counts, 0) - counts
        owner = torch.repeat_interleave(torch.arange(uniq.numel()), counts)
        slot = torch.arange(rows.numel()) - start[owner]
        width = int(counts.max())
        pv = torch.full((uniq.numel(), width), float("-inf"), dtype=torch.float32)
        pi = torch.full((uniq.numel(), width), -1, dtype=torch.long)
        pv[owner, slot] = values
        pi[owner, slot] = cands
        cv = torch.cat([self.vals[uniq], pv], 1)
        ci = torch.cat([self.idx[uniq], pi], 1)
        tv, tp = torch.topk(cv, self.k1, dim=1)
        self.vals[uniq] = tv
        self.idx[uniq] = ci.gather(1, tp)


def _offer(lists: _TopLists, view: torch.Tensor, row0: int, col0: int, transposed: bool) -> None:
    """Offer a tile's scores to its rows: ``view[i, j]`` is row ``row0 + i``'s score of gallery ``col0 + j``, or,
    with ``transposed``, row ``row0 + j``'s score of gallery ``col0 + i``."""
    nrows = view.shape[1] if transposed else view.shape[0]
    thr = lists.thr(row0, row0 + nrows)
    if bool(torch.isneginf(thr).any()):  # a row's first tile (its list is not full yet): one top-k per row
        lists.merge_dense(row0, view.t().contiguous() if transposed else view, col0)
        return
    mask = view > (thr.unsqueeze(0) if transposed else thr.unsqueeze(1))
    i, j = mask.nonzero(as_tuple=True)
    values = view[i, j]
    if transposed:
        lists.merge_sparse(j + row0, i + col0, values)
    else:
        lists.merge_sparse(i + row0, j + col0, values)


def symmetric_top_lists(x: torch.Tensor, k1: int, *, euclidean: bool = False, sq_norms: torch.Tensor | None = None,
                        codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``k1`` best ``(score, gallery index)`` in leave-one-out over ``x`` (self and same-``codes`` items
    excluded), sorted by descending score; ``-inf``/``-1`` pad rows with fewer items. Scores: ``<x_q, x_g>``, or
    ``2<x_q, x_g> - ||x_g||^2`` with ``euclidean``. See the module docstring for which ties are resolved here."""
    n = x.shape[0]
    lists = _TopLists(n, k1)
    if euclidean and sq_norms is None:
        sq_norms = (x * x).sum(1)
    # two reusable tile buffers (a fresh block per tile would fault in its pages every time)
    buf = torch.empty((min(n, TILE), min(n, TILE)), dtype=torch.float32)
    buf2 = torch.empty_like(buf) if euclidean else None
    with torch.no_grad():
        for a0 in range(0, n, TILE):
            a1 = min(n, a0 + TILE)
            xa = x[a0:a1]
            for b0 in range(a0, n, TILE):
                b1 = min(n, b0 + TILE)
                # the engine's one product library (the row path's scores of a pair are these bits); oneDNN
                # returns its own block (copying it into the buffer would cost more than the fresh block)
                prods = GalleryProducts(x[b0:b1])
                g = prods(xa) if prods.library == "onednn" else prods(xa, out=buf[:a1 - a0, :b1 - b0])
                if a0 == b0:
                    g.diagonal().fill_(float("-inf"))
                if codes is not None:
                    g.masked_fill_(codes[a0:a1].unsqueeze(1) == codes[b0:b1].unsqueeze(0), float("-inf"))
                if euclidean:
                    row_view = torch.mul(g, 2.0, out=buf2[:a1 - a0, :b1 - b0]).sub_(sq_norms[b0:b1].unsqueeze(0))
                    _offer(lists, row_view, a0, b0, transposed=False)
                    del row_view
                    if b0 != a0:
                        _offer(lists, g.mul_(2.0).sub_(sq_norms[a0:a1].unsqueeze(1)), b0, a0, transposed=True)
                else:
                    _offer(lists, g, a0, b0, transposed=False)
                    if b0 != a0:
                        _offer(lists, g, b0, a0, transposed=True)
                del g
    return lists.vals, lists.idx


def exact_top_ranks(vals: torch.Tensor, idx: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor,
                    cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks (``<= cap`` exact, else ``cap + 1``; 0 where not ``valid``) of ``cols`` from top lists of width
    ``cap + 1``, and a flag per row whose ``cap``-th and ``(cap+1)``-th scores tie (those rows must be recomputed)."""
    top_v, top_i = vals[:, :cap], idx[:, :cap]
    # order the kept items by (descending score, ascending index): stable sort by index, then by score
    o1 = torch.argsort(top_i, dim=1, stable=True)
    v1, i1 = top_v.gather(1, o1), top_i.gather(1, o1)
    o2 = torch.argsort(v1, dim=1, descending=True, stable=True)
    ordered = i1.gather(1, o2)
    match = ordered.unsqueeze(1) == cols.unsqueeze(2)  # [C, U, cap]
    found = match.any(2)
    pos = match.to(torch.uint8).argmax(2) + 1
    ranks = torch.where(found, pos, torch.full_like(pos, cap + 1))
    ranks = torch.where(valid, ranks, torch.zeros_like(ranks))
    t, u = vals[:, cap - 1], vals[:, cap]
    tied = torch.isfinite(t) & (u == t)
    return ranks, tied
