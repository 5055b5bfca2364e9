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

_BYTES_PER_PAIR = 32  # scores, keys (int64), per-scale masks and selections


def parse_fmr(name: str) -> float | None:
    """``1.0`` for ``"fnmr@fmr=1"``; None for any other metric name; ValueError for a bad percentage."""
    head, sep, tail = name.partition("=")
    if head != "fnmr@fmr" or not sep:
        return None
    value = float(tail)
    if not (0.0 <= value <= 100.0) or math.isnan(value):
        raise ValueError(f"fnmr@fmr=<p> needs a percentage p in [0, 100], got {tail!r}")
    return value


def _pairs(problem: RankingProblem, device: torch.device, budget: int | None
           ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
    """Per chunk: ``(v, negatives per scale, positives per scale)``; ``v`` is float32 ``[C, Ng]``, increasing with the
    distance (cosine: ``-cos``; euclidean: the squared distance), the masks leave out excluded pairs."""
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
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        v = buf[:stop - start]
        _grid_product(q, products, start, stop, v)
        if problem.distance == "cosine":
            torch.neg(v, out=v)
        else:  # ||q||^2 + ||g||^2 - 2<q, g>, clamped at 0
            v.mul_(-2.0).add_(sq_g.unsqueeze(0)).add_(sq_q[start:stop].unsqueeze(1)).clamp_(min=0.0)
        v.add_(0.0)  # one zero
        keep = torch.ones(v.shape, dtype=torch.bool, device=device)
        if problem.leave_one_out:
            ar = torch.arange(stop - start, device=device)
            keep[ar, ar + start] = False
        if id_q is not None:
            keep &= id_g.unsqueeze(0) != id_q[start:stop].unsqueeze(1)
        pos = [(gl[:, s].unsqueeze(0) == ql[start:stop, s].unsqueeze(1)) & keep for s in range(ql.shape[1])]
        neg = [keep & ~p for p in pos]
        yield v, neg, pos


def _keys(v: torch.Tensor) -> torch.Tensor:
    """Order-preserving keys in ``[0, 2**32)`` (int64) of float32 values."""
    i = v.view(torch.int32)
    k = (i ^ ((i >> 31) & 0x7FFFFFFF)).to(torch.int64)
    return k + 2**31


def _from_key(key: int) -> float:
    k = key - 2**31
    i = k ^ ((k >> 31) & 0x7FFFFFFF)
    return float(np.array([i], dtype=np.int32).view(np.float32)[0])


def _distance(v: torch.Tensor | float, cosine: bool) -> torch.Tensor | float:
    """Euclidean distance (float64) from the pair value ``v``: ``sqrt(2 + 2 v)`` (cosine) or ``sqrt(v)``."""
    if isinstance(v, float):
        return math.sqrt(max(0.0, 2.0 + 2.0 * v)) if cosine else math.sqrt(max(0.0, v))
    v = v.to(torch.float64)
    return torch.sqrt((2.0 + 2.0 * v).clamp_min(0.0)) if cosine else torch.sqrt(v.clamp_min(0.0))


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
        for v, neg, pos in _pairs(problem, dev, memory_budget_bytes):
            hi = _keys(v) >> 16
            for s in range(num_scales):
                hist[s] += torch.bincount(hi[neg[s]], minlength=1 << 16)
                num_pos[s] += int(pos[s].sum())
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
        if any(buckets):
            for v, neg, _pos in _pairs(problem, dev, memory_budget_bytes):
                keys = _keys(v)
                for s in range(num_scales):
                    if not buckets[s]:
                        continue
                    ks = keys[neg[s]]
                    his = ks >> 16
                    for b in buckets[s]:
                        low[s][b] += torch.bincount(ks[his == b] & 0xFFFF, minlength=1 << 16)
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
        above = [[0] * len(thresholds[s]) for s in range(num_scales)]
        if any(thresholds):
            for v, _neg, pos in _pairs(problem, dev, memory_budget_bytes):
                for s in range(num_scales):
                    if not thresholds[s]:
                        continue
                    vp = v[pos[s]]
                    d = _distance(vp, cosine) if any(exact is None for _p, _t, exact in thresholds[s]) else None
                    for i, (_p, t, exact) in enumerate(thresholds[s]):
                        above[s][i] += int((vp >= exact).sum()) if exact is not None else int((d >= t).sum())
    out = []
    for s in range(num_scales):
        res = {f"fnmr@fmr={format(p, 'g')}": float("nan") for p in fmr_values}
        if num_pos[s]:
            for (p, _t, _exact), count in zip(thresholds[s], above[s]):
                res[f"fnmr@fmr={format(p, 'g')}"] = count / num_pos[s]
        out.append(res)
    return out
