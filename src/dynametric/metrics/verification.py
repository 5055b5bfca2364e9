"""FNMR@FMR (open-metric-learning's definition): a pooled verification metric, computed exactly in bounded memory.

Over every (query, candidate) pair that is not excluded (the query itself in leave-one-out, items sharing its id),
a pair is *positive* when the two share the label at the scale and *negative* otherwise; ``d`` is the Euclidean
distance between the embeddings as the evaluation compares them (L2-normalised for cosine, raw for euclidean;
for cosine ``d = sqrt(2 - 2 cos)``, so an all-zero row, whose cosine with anything is 0, is at ``sqrt(2)`` from every
item).
For a false match rate ``p`` (percent), the threshold ``T`` is the ``p``-th percentile of the negative distances with
linear interpolation (``numpy.percentile``'s default: position ``p/100 * (M - 1)`` in the sorted negatives), and
``fnmr@fmr=p`` is the fraction of positive distances ``>= T``. Only the name's ``p`` is in percent:
open-metric-learning takes the rate as a fraction in [0, 1] (``fmr_vals=(0.1,)`` is ``fnmr@fmr=10`` here) and, as
dynametric, returns the FNMR as a fraction.

The negatives are never held: the two order statistics that bracket the percentile are found by a radix select
over the pairs' order-preserving 32-bit keys (one pass for the high 16 bits, one for the low 16 bits of the
buckets that hold them), and a third pass counts the positives at or above ``T``. Each pass recomputes the scores
chunk by chunk (same fixed 64-row product grid as the ranking engines), on the CPU or a torch device.

Pairs at (near-)zero distance: a float32 product has an absolute rounding error of about ``D * 2**-24`` times the
rows' squared norms, which near ``d = 0`` is all of the value (exact duplicates came out at ``+-1e-7`` instead of 0,
and a cosine near 1 resolves ``d`` only to ``~3e-4``). So every pair whose float32 pair value lies within a rigorous
bound of zero (:func:`_near_limits`; one comparison per chunk finds that none does on ordinary data) gets its
squared distance recomputed in float64 from the two rows (a fixed pairwise sum of the squared differences, the
same bits on every device and for a pair and its mirror; exact duplicates give exactly 0), in sub-batches of
bounded size, and that value, rounded to float32, is the pair's value in all three passes (:func:`_encode_exact`).
Every pair at distance 0 is recomputed and every pair not recomputed is at a distance above 0, so ``d = 0`` is
never confused with a positive distance; the recomputed distances are float64 distances of the rows as compared
(cosine: the unit rows as ranked, float32, renormalised in float64), rounded once to float32 (7 digits).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from dynametric.metrics.engine import DEFAULT_MEMORY_BUDGET, SCORE_ROW_BLOCK, RankingProblem, _grid_product
from dynametric.metrics.products import GalleryProducts

_BYTES_PER_PAIR = 24
"""Bytes per (query, gallery) pair a chunk holds at its peak: the float32 pair values, the int32 keys, the kept and
one scale's class mask (bool), and an int32 bucket or one float64 distance per selected positive (measured on the
CPU: about 20)."""

_SPARE = 1 << 16  # the bincount bin that pairs not counted go to (keys hold 16 bits per pass)

_UNIT = 2.0 ** -24  # float32's unit roundoff
_F32_MAX = float(np.finfo(np.float32).max)
_TINY = float(np.finfo(np.float32).smallest_subnormal)
_RECOMPUTE_SHARE = 8
"""The sub-batches of recomputed pairs use at most ``1 / _RECOMPUTE_SHARE`` of the memory budget."""


class _Near:
    """Where a problem's pair values are too close to zero for their float32 rounding, and how the recomputed ones are
    encoded (:func:`_near_limits`).

    Euclidean (the pair value is the float32 squared distance ``fl(fl(|q|^2 + |g|^2) - 2<q, g>)``, clamped at 0): a
    pair is recomputed when its value is at most ``coef * fl(|q|^2 + |g|^2)``; a recomputed squared distance ``s``
    is stored as ``float32(s)`` (a positive ``s`` below float32's range as the smallest subnormal, never as 0).

    Cosine (the pair value is ``-cos``, float32): a pair is recomputed when its value is at most ``-1 + beta``
    (``beta`` a power of two, so the sum is exact); a recomputed ``s`` is stored as ``float32(s / 2 - 1)`` when
    ``s >= floor = 2 * beta`` (among the ordinary values, which are all above ``-1 + beta``) and as
    ``float32(-floor / s)`` below it (below -1, with float32's relative resolution; ``s = 0`` as ``-inf``), so the
    values keep the order of the distances and :func:`_distance` inverts them."""

    def __init__(self, cosine: bool, dim: int) -> None:
        n = dim + 2
        # gamma_n = n u / (1 - n u) bounds the relative error of any float32 dot product or sum of n terms (in any
        # order or blocking, with or without fused multiply-adds); past n u >= 1/2 every pair is recomputed
        gamma = n * _UNIT / (1.0 - n * _UNIT) if n * _UNIT < 0.5 else math.inf
        self.cosine = cosine
        # euclidean: |fl(s) - s| <= (2 gamma + u (1 + gamma)) (|q|^2 + |g|^2) (1 + u); twice that, so a pair at
        # distance 0 is always recomputed and a pair that is not is at a positive distance
        self.coef = min(4.0 * (gamma + _UNIT), _F32_MAX)
        # cosine: |fl(<q, g>) - cos| <= gamma (1 + u)^2 + 2u for unit rows rounded to float32
        self.beta = math.ldexp(1.0, math.frexp(4.0 * (gamma + 2.0 * _UNIT))[1]) if math.isfinite(gamma) else 4.0
        self.limit = -1.0 + self.beta
        self.floor = 2.0 * self.beta


def _near_limits(dim: int, cosine: bool) -> _Near:
    """The recomputation limits of a problem whose rows have ``dim`` coordinates."""
    return _Near(cosine, dim)


def _tree_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums of ``x`` (float64 ``[m, D]``) by a fixed pairwise tree of elementwise additions: the same bits on
    every device, whatever ``m`` is, so a pair's recomputed value does not depend on its sub-batch."""
    width = x.shape[1]
    if width == 0:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    padded = 1 << (width - 1).bit_length()
    if padded != width:
        x = torch.nn.functional.pad(x, (0, padded - width))
    while x.shape[1] > 1:
        half = x.shape[1] // 2
        x = x[:, :half] + x[:, half:]
    return x[:, 0]


def _exact_squared(a: torch.Tensor, b: torch.Tensor, cosine: bool) -> torch.Tensor:
    """float64 squared distances between the rows of ``a`` and ``b`` (float32 ``[m, D]``); cosine: between the rows
    renormalised in float64, and 2 where a row is all zero (cosine 0, as everywhere else)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    zero = None
    if cosine:
        for x in (a, b):
            norm = torch.sqrt(_tree_sum(x * x)).unsqueeze(1)
            zero = norm[:, 0] == 0 if zero is None else zero | (norm[:, 0] == 0)
            x.div_(torch.where(norm > 0, norm, torch.ones_like(norm)))
    s = _tree_sum(a.sub_(b).square_())
    return s if zero is None else s.masked_fill_(zero, 2.0)


def _encode_exact(s: torch.Tensor, near: _Near) -> torch.Tensor:
    """The float32 pair values of the recomputed squared distances ``s`` (float64), as :class:`_Near` describes."""
    if near.cosine:
        below = torch.where(s > 0, (-near.floor / s).clamp_min(-_F32_MAX), -math.inf)
        return torch.where(s >= near.floor, s * 0.5 - 1.0, below).to(torch.float32)
    v = s.to(torch.float32)
    return torch.where((s > 0) & (v == 0), _TINY, v)


def _recompute(v: torch.Tensor, near_pairs: torch.Tensor, q: torch.Tensor, g: torch.Tensor, start: int,
               near: _Near, per_batch: int) -> None:
    """Overwrite the pair values ``v`` (one chunk, query rows from ``start``) of the pairs of ``near_pairs`` with their
    exact values, at most ``per_batch`` pairs at a time (whole rows where they fit, else slices of one row)."""
    counts = near_pairs.sum(1).cpu().numpy()
    cum = np.cumsum(counts)
    rows, ng = near_pairs.shape
    r, done = 0, 0
    while r < rows:
        e = int(np.searchsorted(cum, done + per_batch, side="right"))
        if e > r:
            blocks = [(r, e, 0, ng)]
        else:  # row r alone holds more than a sub-batch: column slices of it
            e = r + 1
            blocks = [(r, e, c, min(ng, c + per_batch)) for c in range(0, ng, per_batch)]
        for r0, r1, c0, c1 in blocks:
            ij = torch.nonzero(near_pairs[r0:r1, c0:c1])
            if ij.shape[0] == 0:
                continue
            i, j = ij[:, 0] + r0, ij[:, 1] + c0
            del ij
            s = _exact_squared(q[i + start], g[j], near.cosine)
            v[i, j] = _encode_exact(s, near)
            del s, i, j
        done = int(cum[e - 1])
        r = e


def parse_fmr(name: str) -> float | None:
    """``1.0`` for ``"fnmr@fmr=1"``; None for any other metric name; ValueError for a bad percentage."""
    head, sep, tail = name.partition("=")
    if head != "fnmr@fmr" or not sep:
        return None
    try:
        value = float(tail)
    except ValueError:  # float()'s own "could not convert string to float" said nothing of what was expected
        value = math.nan
    if not (0.0 <= value <= 100.0) or math.isnan(value):
        raise ValueError(f"fnmr@fmr=<p> needs a percentage p in [0, 100], got {tail!r}")
    return value


class _Chunk:
    """One chunk of query rows against the gallery: ``v`` float32 ``[C, Ng]``, increasing with the distance
    (cosine: ``-cos``; euclidean: the squared distance; a pair near zero: its exact value, :class:`_Near`), the same
    bits for a pair and its mirror in leave-one-out (an excluded pair's value is meaningless);
    ``keep`` the pairs that are not excluded. :meth:`same` / :meth:`differ` are one scale's positive / negative pairs,
    built when asked (one bool mask per scale at a time, never all scales together)."""

    def __init__(self, v: torch.Tensor, keep: torch.Tensor, ql: torch.Tensor, gl: torch.Tensor) -> None:
        self.v, self.keep, self._ql, self._gl = v, keep, ql, gl

    def same(self, s: int) -> torch.Tensor:
        return torch.eq(self._gl[:, s].unsqueeze(0), self._ql[:, s].unsqueeze(1)).logical_and_(self.keep)

    def differ(self, s: int) -> torch.Tensor:
        return torch.ne(self._gl[:, s].unsqueeze(0), self._ql[:, s].unsqueeze(1)).logical_and_(self.keep)


def _chunks(problem: RankingProblem, device: torch.device, budget: int | None) -> Iterator[_Chunk]:
    """The problem's pairs, chunk by chunk: every chunk reuses one pair-value and one mask buffer, so no two chunks'
    tensors are alive together. The pairs near zero (:class:`_Near`) are recomputed before the chunk is yielded."""
    nq, ng = problem.query.shape[0], problem.gallery.shape[0]
    total = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    rows = max(1, total // (_BYTES_PER_PAIR * ng + 64))
    if rows >= SCORE_ROW_BLOCK:
        rows -= rows % SCORE_ROW_BLOCK
    rows = min(rows, nq)
    q = problem.query.to(device)
    g = q if problem.gallery is problem.query else problem.gallery.to(device)
    products = problem.products if g is problem.gallery else GalleryProducts(g)  # on the CPU: packed once
    sq_q, sq_g = (q * q).sum(1), (g * g).sum(1)
    cosine = problem.distance == "cosine"
    near = _near_limits(q.shape[1], cosine)
    # gathered float64 rows, their difference and the tree's first level, and the pair's indices
    per_batch = max(1, total // _RECOMPUTE_SHARE // (40 * max(1, q.shape[1]) + 64))
    sq_g_max = float(sq_g.max()) if ng else 0.0
    ql, gl = problem.query_labels.to(device), problem.gallery_labels.to(device)
    id_q = None if problem.query_codes is None else problem.query_codes.to(device)
    id_g = None if problem.gallery_codes is None else problem.gallery_codes.to(device)
    buf = torch.empty((rows, ng), dtype=torch.float32, device=device)
    keep_buf = torch.empty((rows, ng), dtype=torch.bool, device=device)
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        v, keep = buf[:stop - start], keep_buf[:stop - start]
        _grid_product(q, products, start, stop, v)
        if cosine:
            torch.neg(v, out=v)
            reach = near.limit
        else:  # (||q||^2 + ||g||^2) - 2<q, g>, clamped at 0: the sum first, so (i, j) and (j, i) round alike
            v.mul_(-2.0).add_(sq_q[start:stop].unsqueeze(1) + sq_g.unsqueeze(0)).clamp_(min=0.0)
            # no pair's own limit, coef * fl(|q|^2 + |g|^2), exceeds this
            reach = near.coef * (float(sq_q[start:stop].max()) + sq_g_max) * (1.0 + 4.0 * _UNIT)
        v.add_(0.0)  # one zero
        if id_q is not None:
            torch.ne(id_g.unsqueeze(0), id_q[start:stop].unsqueeze(1), out=keep)
        else:
            keep.fill_(True)
        if problem.leave_one_out:
            ar = torch.arange(stop - start, device=device)
            keep[ar, ar + start] = False
            v[ar, ar + start] = math.inf  # excluded (the query itself, always at 0): kept out of the check below
        if v.numel() and float(v.min()) <= reach:  # one comparison per chunk; on ordinary data no pair comes near zero
            if cosine:
                near_pairs = torch.le(v, near.limit)
            else:
                limit = torch.add(sq_q[start:stop].unsqueeze(1), sq_g.unsqueeze(0)).mul_(near.coef)
                near_pairs = torch.le(v, limit)
                del limit
            near_pairs.logical_and_(keep)
            if bool(near_pairs.any()):
                _recompute(v, near_pairs, q, g, start, near, per_batch)
            del near_pairs
        yield _Chunk(v, keep, ql[start:stop], gl)


def _keys(v: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of float32 values (signed order: the unsigned key is ``key + 2**31``, whose high
    16 bits are ``(key >> 16) + 2**15`` and low 16 bits ``key & 0xFFFF``)."""
    i = v.view(torch.int32)
    return (i >> 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(i)


def _count(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``bincount`` of ``values`` (int32 in ``[0, 2**16)``) over the pairs of ``where``, the others sent to a spare
    bin and dropped: no index list of the selected pairs is built."""
    return torch.bincount(torch.where(where, values, _SPARE).view(-1), minlength=_SPARE + 1)[:_SPARE]


def _from_key(key: int) -> float:
    """The float32 value of the unsigned key ``key`` (``_keys(v) + 2**31``)."""
    k = key - 2**31
    i = k ^ ((k >> 31) & 0x7FFFFFFF)
    return float(np.array([i], dtype=np.int32).view(np.float32)[0])


def _distance(v: torch.Tensor | float, cosine: bool, floor: float) -> torch.Tensor | float:
    """Euclidean distance (float64) from the pair value ``v``, non-decreasing in ``v``: euclidean ``sqrt(v)``;
    cosine ``sqrt(max(2 + 2 v, floor))`` for ``v >= -1`` and ``sqrt(-floor / v)`` below (a recomputed pair nearer
    than ``sqrt(floor)``, :class:`_Near`; ``-inf``: 0). Every value an ordinary cosine pair has is above
    ``-1 + floor / 2``, where this is ``sqrt(2 + 2 v)``."""
    if isinstance(v, float):
        if not cosine:
            return math.sqrt(max(0.0, v))
        return math.sqrt(-floor / v) if v < -1.0 else math.sqrt(max(floor, 2.0 + 2.0 * v))
    v = v.to(torch.float64)
    if not cosine:
        return torch.sqrt(v.clamp_min(0.0))
    return torch.where(v < -1.0, torch.sqrt((-floor / v).clamp_min(0.0)), torch.sqrt((2.0 + 2.0 * v).clamp_min(floor)))


def _pair_value_bound(t: float, cosine: bool, device: torch.device, floor: float) -> float:
    """The smallest float32 pair value ``v`` whose distance (:func:`_distance`, the same float64 computation on a
    tensor) is at least ``t``, so that ``d(v) >= t`` exactly when ``v >= bound`` (``d`` is non-decreasing in ``v``).
    Searched among the float32 values around the inverse of ``t`` (a window of order-preserving keys, widened until
    it holds the boundary); ``-inf`` for ``t <= 0`` (every pair), ``inf`` when no finite value reaches ``t`` (only
    an overflowed pair value, ``inf``, does)."""
    if t <= 0.0:
        return -math.inf
    big = float(np.finfo(np.float32).max)
    if cosine:
        guess = (-floor / (t * t) if t * t > 0.0 else -big) if t * t < floor else (t * t - 2.0) / 2.0
    else:
        guess = t * t
    guess = min(max(guess, -big), big)
    bits = int(np.array([guess], dtype=np.float32).view(np.int32)[0])
    center = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # the key: increasing with the value
    lowest, highest = _float_key(-big), _float_key(big)
    for half in (64, 4096, 1 << 22):
        keys = np.arange(max(center - half, lowest), min(center + half, highest) + 1, dtype=np.int64).astype(np.int32)
        values = (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(np.float32)
        d = _distance(torch.from_numpy(values.copy()).to(device), cosine, floor)
        assert isinstance(d, torch.Tensor)
        reach = (d >= t).cpu().numpy()
        if reach.all() and keys[0] > lowest:
            continue  # the boundary lies below the window
        if not reach.any():
            if keys[-1] < highest:
                continue  # above the window
            return math.inf
        return float(values[int(np.argmax(reach))])
    raise AssertionError(f"no float32 boundary found for the distance {t!r}")


def _float_key(value: float) -> int:
    """The order-preserving int32 key of a float32 value (as :func:`_keys`)."""
    bits = int(np.array([value], dtype=np.float32).view(np.int32)[0])
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def fnmr_at_fmr(problem: RankingProblem, fmr_values: list[float], device: torch.device | None = None,
                memory_budget_bytes: int | None = None) -> list[dict[str, float]]:
    """``[{"fnmr@fmr=<p>": value, ...} per scale]`` (fractions; NaN where a scale has no positive or no negative
    pair). ``fmr_values`` are percentages; the names use ``format(p, "g")``."""
    dev = torch.device("cpu") if device is None else device
    cosine = problem.distance == "cosine"
    floor = _near_limits(problem.query.shape[1], cosine).floor
    num_scales = problem.query_labels.shape[1]
    hist = [torch.zeros(1 << 16, dtype=torch.int64, device=dev) for _ in range(num_scales)]
    num_pos = [0] * num_scales
    with torch.no_grad():
        for chunk in _chunks(problem, dev, memory_budget_bytes):
            hi = _keys(chunk.v).bitwise_right_shift_(16).add_(1 << 15)
            for s in range(num_scales):
                neg = chunk.differ(s)
                hist[s] += _count(hi, neg)
                del neg
                num_pos[s] += int(torch.count_nonzero(chunk.same(s)))
            del hi, chunk
        # which order statistics (0-based ranks among the sorted negatives) each scale needs
        wanted: list[dict[int, int]] = []  # per scale: rank -> its high-16-bit bucket
        plans: list[list[tuple[float, int, int, float]]] = []  # per scale: (p, rank k, rank k + 1, fraction)
        starts = []
        for s in range(num_scales):
            cum = torch.cumsum(hist[s], 0).cpu().numpy()
            m = int(cum[-1])
            ranks: dict[int, int] = {}
            plan = []
            for p in fmr_values:
                if m == 0:
                    continue
                x = p / 100.0 * (m - 1)
                k = int(math.floor(x))
                frac = x - k
                plan.append((p, k, min(k + 1, m - 1), frac))
                for r in (k, min(k + 1, m - 1)):
                    ranks[r] = int(np.searchsorted(cum, r, side="right"))
            wanted.append(ranks)
            plans.append(plan)
            starts.append(np.concatenate(([0], cum[:-1])))
        buckets = [sorted(set(w.values())) for w in wanted]
        low = [{b: torch.zeros(1 << 16, dtype=torch.int64, device=dev) for b in bs} for bs in buckets]
        # every scale's buckets in one histogram per scale: a pair of a wanted bucket goes to bin
        # slot(bucket) * 2**16 + its low 16 bits, any other pair to the spare bin past them
        union = sorted({b for bs in buckets for b in bs})
        slot_of = torch.full((1 << 16,), -1, dtype=torch.int32, device=dev)
        slot_of[torch.tensor(union, dtype=torch.int64, device=dev)] = torch.arange(len(union), dtype=torch.int32,
                                                                                 device=dev)
        spare = len(union) << 16
        if union:
            for chunk in _chunks(problem, dev, memory_budget_bytes):
                keys = _keys(chunk.v)
                hi = (keys >> 16).add_(1 << 15)
                code = torch.index_select(slot_of, 0, hi.view(-1)).view_as(hi)
                del hi
                wanted_pair = code >= 0
                code.mul_(1 << 16).add_(keys.bitwise_and_(0xFFFF))
                del keys
                for s in range(num_scales):
                    if not buckets[s]:
                        continue
                    sel = chunk.differ(s).logical_and_(wanted_pair)
                    counts = torch.bincount(torch.where(sel, code, spare).view(-1), minlength=spare + 1)
                    del sel
                    for b in buckets[s]:
                        i = union.index(b)
                        low[s][b] += counts[i << 16:(i + 1) << 16]
                del code, wanted_pair, chunk
        # per fmr: (p, T, the pair value v of T where T is one negative's own distance, else None). Where it is, the
        # positives are compared with it in the pair values themselves (d is increasing in v), so a positive whose
        # pair value equals that negative's counts as d >= T exactly (two float64 square roots of one value need not
        # agree: torch's vectorised sqrt and math.sqrt may differ in the last bit)
        thresholds: list[list[tuple[float, float, float | None]]] = []
        for s in range(num_scales):
            value_at: dict[int, float] = {}
            pair_value_at: dict[int, float] = {}
            for r, b in wanted[s].items():
                cum = torch.cumsum(low[s][b], 0).cpu().numpy()
                lo = int(np.searchsorted(cum, r - int(starts[s][b]), side="right"))
                pair_value_at[r] = _from_key((b << 16) | lo)
                value_at[r] = _distance(pair_value_at[r], cosine, floor)
            thresholds.append([(p, value_at[k] + frac * (value_at[k2] - value_at[k]),
                                pair_value_at[k] if frac == 0.0 or pair_value_at[k] == pair_value_at[k2] else None)
                               for p, k, k2, frac in plans[s]])
        # each threshold as the smallest pair value at or above it (d is non-decreasing in v): a positive counts when
        # its pair value is at least that, one comparison over the chunk, the positives never gathered
        bounds = [[exact if exact is not None else _pair_value_bound(t, cosine, dev, floor)
                   for _p, t, exact in thresholds[s]] for s in range(num_scales)]
        above = [[0] * len(thresholds[s]) for s in range(num_scales)]
        if any(thresholds):
            for chunk in _chunks(problem, dev, memory_budget_bytes):
                for s in range(num_scales):
                    if not thresholds[s]:
                        continue
                    same = chunk.same(s)
                    for i, bound in enumerate(bounds[s]):
                        above[s][i] += int(torch.count_nonzero(torch.ge(chunk.v, bound).logical_and_(same)))
                    del same
                del chunk
    out = []
    for s in range(num_scales):
        res = {f"fnmr@fmr={format(p, 'g')}": float("nan") for p in fmr_values}
        if num_pos[s]:
            for (p, _t, _exact), count in zip(thresholds[s], above[s]):
                res[f"fnmr@fmr={format(p, 'g')}"] = count / num_pos[s]
        out.append(res)
    return out
