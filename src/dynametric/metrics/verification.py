"""FNMR@FMR (open-metric-learning's definition): a pooled verification metric, computed exactly in bounded memory.

Over every (query, candidate) pair that is not excluded (the query itself in leave-one-out, items sharing its id),
a pair is *positive* when the two share the label at the scale and *negative* otherwise; ``d`` is the Euclidean
distance between the embeddings as the evaluation compares them (L2-normalised for cosine, raw for euclidean;
for cosine ``d = sqrt(2 - 2 cos)``, so an all-zero row, whose cosine with anything is 0, is at ``sqrt(2)`` from every
item).
For a false match rate ``p`` (percent), the threshold ``T`` is the ``p``-th percentile of the negative distances with
linear interpolation (``numpy.percentile``'s default: position ``p/100 * (M - 1)`` in the sorted negatives), and
``fnmr@fmr=p`` is the fraction of positive distances ``>= T`` (open-metric-learning reports percent; dynametric
reports fractions like every other metric).

The negatives are never held: the two order statistics that bracket the percentile are found by a radix select
over the pairs' order-preserving 32-bit keys (one pass for the high 16 bits, one for the low 16 bits of the
buckets that hold them), and a third pass counts the positives at or above ``T``. Each pass recomputes the scores
chunk by chunk (same fixed 64-row product grid as the ranking engines), on the CPU or a torch device.
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


def parse_fmr(name: str) -> float | None:
    """``1.0`` for ``"fnmr@fmr=1"``; None for any other metric name; ValueError for a bad percentage."""
    head, sep, tail = name.partition("=")
    if head != "fnmr@fmr" or not sep:
        return None
    value = float(tail)
    if not (0.0 <= value <= 100.0) or math.isnan(value):
        raise ValueError(f"fnmr@fmr=<p> needs a percentage p in [0, 100], got {tail!r}")
    return value


class _Chunk:
    """One chunk of query rows against the gallery: ``v`` float32 ``[C, Ng]``, increasing with the distance
    (cosine: ``-cos``; euclidean: the squared distance), the same bits for a pair and its mirror in leave-one-out;
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
    tensors are alive together."""
    nq, ng = problem.query.shape[0], problem.gallery.shape[0]
    rows = max(1, (DEFAULT_MEMORY_BUDGET if budget is None else int(budget)) // (_BYTES_PER_PAIR * ng + 64))
    if rows >= SCORE_ROW_BLOCK:
        rows -= rows % SCORE_ROW_BLOCK
    rows = min(rows, nq)
    q = problem.query.to(device)
    g = q if problem.gallery is problem.query else problem.gallery.to(device)
    products = problem.products if g is problem.gallery else GalleryProducts(g)  # on the CPU: packed once
    sq_q, sq_g = (q * q).sum(1), (g * g).sum(1)
    ql, gl = problem.query_labels.to(device), problem.gallery_labels.to(device)
    id_q = None if problem.query_codes is None else problem.query_codes.to(device)
    id_g = None if problem.gallery_codes is None else problem.gallery_codes.to(device)
    buf = torch.empty((rows, ng), dtype=torch.float32, device=device)
    keep_buf = torch.empty((rows, ng), dtype=torch.bool, device=device)
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        v, keep = buf[:stop - start], keep_buf[:stop - start]
        _grid_product(q, products, start, stop, v)
        if problem.distance == "cosine":
            torch.neg(v, out=v)
        else:  # (||q||^2 + ||g||^2) - 2<q, g>, clamped at 0: the sum first, so (i, j) and (j, i) round alike
            v.mul_(-2.0).add_(sq_q[start:stop].unsqueeze(1) + sq_g.unsqueeze(0)).clamp_(min=0.0)
        v.add_(0.0)  # one zero
        if id_q is not None:
            torch.ne(id_g.unsqueeze(0), id_q[start:stop].unsqueeze(1), out=keep)
        else:
            keep.fill_(True)
        if problem.leave_one_out:
            ar = torch.arange(stop - start, device=device)
            keep[ar, ar + start] = False
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


def _distance(v: torch.Tensor | float, cosine: bool) -> torch.Tensor | float:
    """Euclidean distance (float64) from the pair value ``v``: ``sqrt(2 + 2 v)`` (cosine) or ``sqrt(v)``."""
    if isinstance(v, float):
        return math.sqrt(max(0.0, 2.0 + 2.0 * v)) if cosine else math.sqrt(max(0.0, v))
    v = v.to(torch.float64)
    return torch.sqrt((2.0 + 2.0 * v).clamp_min(0.0)) if cosine else torch.sqrt(v.clamp_min(0.0))


def _pair_value_bound(t: float, cosine: bool, device: torch.device) -> float:
    """The smallest float32 pair value ``v`` whose distance (:func:`_distance`, the same float64 computation on a
    tensor) is at least ``t``, so that ``d(v) >= t`` exactly when ``v >= bound`` (``d`` is non-decreasing in ``v``).
    Searched among the float32 values around the inverse of ``t`` (a window of order-preserving keys, widened until
    it holds the boundary); ``-inf`` for ``t <= 0`` (every pair), ``inf`` when no finite value reaches ``t`` (only
    an overflowed pair value, ``inf``, does)."""
    if t <= 0.0:
        return -math.inf
    big = float(np.finfo(np.float32).max)
    guess = min(max((t * t - 2.0) / 2.0 if cosine else t * t, -big), big)
    bits = int(np.array([guess], dtype=np.float32).view(np.int32)[0])
    center = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # the key: increasing with the value
    lowest, highest = _float_key(-big), _float_key(big)
    for half in (64, 4096, 1 << 22):
        keys = np.arange(max(center - half, lowest), min(center + half, highest) + 1, dtype=np.int64).astype(np.int32)
        values = (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(np.float32)
        d = _distance(torch.from_numpy(values.copy()).to(device), cosine)
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
                value_at[r] = _distance(pair_value_at[r], cosine)
            thresholds.append([(p, value_at[k] + frac * (value_at[k2] - value_at[k]),
                                pair_value_at[k] if frac == 0.0 or pair_value_at[k] == pair_value_at[k2] else None)
                               for p, k, k2, frac in plans[s]])
        # each threshold as the smallest pair value at or above it (d is non-decreasing in v): a positive counts when
        # its pair value is at least that, one comparison over the chunk, the positives never gathered
        bounds = [[exact if exact is not None else _pair_value_bound(t, cosine, dev) for _p, t, exact in thresholds[s]]
                  for s in range(num_scales)]
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
