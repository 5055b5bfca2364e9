"""Index tuples, what a miner hands to a loss: all pairs / all triplets from labels, and conversions between pairs
and triplets. Both :mod:`dynametric.miners` and :mod:`dynametric.losses` build on this module; it imports neither.

Conventions (pytorch-metric-learning compatible): pairs are ``(a1, p, a2, n)`` (positive pairs ``(a1[i], p[i])``,
negative pairs ``(a2[j], n[j])``); triplets are ``(a, p, n)``. Anchors index the query batch, ``p``/``n`` index the
reference set (the batch itself unless ``ref_labels`` is given). When the reference set *is* the batch an item is
never its own positive: as in pytorch-metric-learning, that is when ``ref_labels`` is ``None`` or the very object
``labels`` (``ref_labels is labels``; an equal copy is another set, whose item ``i`` pairs with batch item ``i``).

Everything is vectorised. Triplets are enumerated from positive pairs and per-anchor negative lists with
``repeat_interleave``/cumsum arithmetic in int64, chunked by anchor, so no ``B x B x B`` mask is ever built and
indices never overflow int32.
"""

from __future__ import annotations

import torch

from dynametric.distances import Distance
from dynametric.errors import InputError

IndicesTuple = tuple[torch.Tensor, ...]
"""A miner's output, as the losses take it (``indices_tuple=``): triplets ``(anchor, positive, negative)`` or pairs
``(anchor1, positive, anchor2, negative)``, 1-D ``LongTensor`` s of equal length per role; anchors index the batch,
positives and negatives the reference set (the batch itself without ``ref_emb``)."""

#: Triplets produced per chunk while enumerating (bounds the temporary int64 buffers to a few hundred MB).
TRIPLETS_PER_CHUNK = 1 << 23


def _empty(device: torch.device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.long, device=device)


def match_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``[B, R]`` masks ``(positives, negatives)``; with ``ref_labels=None`` or ``ref_labels is labels``
    (the same object, pytorch-metric-learning's test) the diagonal is no positive."""
    same_set = ref_labels is None or ref_labels is labels
    ref = labels if ref_labels is None else ref_labels
    pos = labels.unsqueeze(1) == ref.unsqueeze(0)
    neg = ~pos
    if same_set:
        pos.fill_diagonal_(False)
    return pos, neg


def get_all_pairs_indices(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> IndicesTuple:
    """All positive and negative pairs ``(a1, p, a2, n)`` in row-major order."""
    pos, neg = match_masks(labels, ref_labels)
    a1, p = torch.nonzero(pos, as_tuple=True)
    a2, n = torch.nonzero(neg, as_tuple=True)
    return a1, p, a2, n


def _grouped_product(
    a: torch.Tensor, p: torch.Tensor, neg_offsets: torch.Tensor, neg_counts: torch.Tensor, neg_list: torch.Tensor,
    total: int | None = None,
) -> IndicesTuple:
    """For each pair ``(a[k], p[k])`` emit one triplet per negative of anchor ``a[k]`` (``neg_list`` grouped by
    anchor, group of anchor ``i`` at ``neg_offsets[i] : neg_offsets[i] + neg_counts[i]``). ``total``: the number of
    triplets when the caller knows it already (else it is read from the device: a shape)."""
    counts = neg_counts[a]
    if total is None:
        total = int(counts.sum())
    if total == 0:
        dev = a.device
        return _empty(dev), _empty(dev), _empty(dev)
    pair_of = torch.repeat_interleave(torch.arange(a.numel(), device=a.device), counts, output_size=total)
    block_start = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=a.device) - block_start[pair_of]
    anchors = a[pair_of]
    negatives = neg_list[neg_offsets[anchors] + within]
    return anchors, p[pair_of], negatives


def get_all_triplets_indices(
    labels: torch.Tensor, ref_labels: torch.Tensor | None = None, *, triplets_per_chunk: int = TRIPLETS_PER_CHUNK
) -> IndicesTuple:
    """All triplets ``(a, p, n)`` with ``y_a == y_p != y_n`` (``p != a`` when the reference set is the batch).

    Ordered by anchor, then positive, then negative (the order of ``torch.where`` on the ``B x R x R`` mask, which
    is never built). Memory is ``O(B R)`` plus the output plus a chunk of at most ``triplets_per_chunk`` temporaries.
    """
    pos, neg = match_masks(labels, ref_labels)
    device = labels.device
    num_pos = pos.sum(1)
    num_neg = neg.sum(1)
    per_anchor = num_pos * num_neg  # int64
    # The one host read of the common case: the number of triplets is the output's shape. Only when it exceeds
    # triplets_per_chunk are the chunk boundaries and their totals read too (a second read).
    cum = torch.cumsum(per_anchor, 0)
    total = int(cum[-1]) if cum.numel() else 0
    if total == 0:
        return _empty(device), _empty(device), _empty(device)
    size = labels.numel()
    if total <= triplets_per_chunk:
        bounds, before = [0, size], [0, total]
    else:
        # Chunk boundaries over anchors so that each chunk yields about triplets_per_chunk triplets.
        targets = torch.arange(1, total // max(triplets_per_chunk, 1) + 2, device=device) * triplets_per_chunk
        cuts = torch.searchsorted(cum, targets, right=True).clamp(max=size)
        zero = torch.zeros(1, dtype=cum.dtype, device=device)
        cum0 = torch.cat([zero, cum])  # cum0[i]: triplets of the anchors before i
        cut_list, at_cut = torch.stack([cuts, cum0[cuts]]).tolist()
        known = dict(zip(cut_list, at_cut, strict=True))
        known.update({0: 0, size: total})
        bounds = sorted(known)
        before = [known[b] for b in bounds]
    out_a, out_p, out_n = [], [], []
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        chunk_total = before[k + 1] - before[k]
        if start >= stop or chunk_total == 0:
            continue
        a, p = torch.nonzero(pos[start:stop], as_tuple=True)
        _, n_list = torch.nonzero(neg[start:stop], as_tuple=True)
        counts = num_neg[start:stop]
        offsets = torch.cumsum(counts, 0) - counts
        ta, tp, tn = _grouped_product(a, p, offsets, counts, n_list, total=chunk_total)
        out_a.append(ta + start if start else ta)
        out_p.append(tp)
        out_n.append(tn)
    if len(out_a) == 1:
        return out_a[0], out_p[0], out_n[0]
    return torch.cat(out_a), torch.cat(out_p), torch.cat(out_n)


def pairs_to_triplets(indices_tuple: IndicesTuple) -> IndicesTuple:
    """Pairs ``(a1, p, a2, n)`` -> triplets: every positive pair with every negative pair sharing its anchor.

    Same set and order as pytorch-metric-learning's ``torch.where(a1[:, None] == a2)`` without the ``P x N`` mask.
    """
    a1, p, a2, n = indices_tuple
    device = a1.device
    if a1.numel() == 0 or a2.numel() == 0:
        return _empty(device), _empty(device), _empty(device)
    order = torch.argsort(a2, stable=True)
    a2_sorted, n_sorted = a2[order], n[order]
    size = int(max(int(a1.max()), int(a2.max()))) + 1
    counts = torch.bincount(a2_sorted, minlength=size)
    offsets = torch.cumsum(counts, 0) - counts
    return _grouped_product(a1, p, offsets, counts, n_sorted)


def triplets_to_pairs(indices_tuple: IndicesTuple) -> IndicesTuple:
    """Triplets ``(a, p, n)`` -> pairs ``(a, p, a, n)`` (duplicates kept, as in pytorch-metric-learning)."""
    a, p, n = indices_tuple
    return a, p, a, n


class _MinedBy:
    """The mark a dynametric miner leaves on the index tensors of one output (:func:`mark_mined`)."""

    __slots__ = ("ids", "num_queries", "num_refs")

    def __init__(self, ids: tuple[int, ...], num_queries: int, num_refs: int) -> None:
        self.ids, self.num_queries, self.num_refs = ids, num_queries, num_refs


_MINED_ATTR = "_dynametric_mined_by"


def mark_mined(indices_tuple: IndicesTuple, num_queries: int, num_refs: int) -> IndicesTuple:
    """Record on the tensors of ``indices_tuple`` that one of dynametric's own miners built it for ``num_queries``
    batch rows and ``num_refs`` reference rows: its entries are then in range and its positive and negative pairs
    disjoint by construction, so :func:`check_indices_tuple` and :func:`pair_masks` need not read them back to the
    host (a synchronisation on an accelerator) to check that. The mark holds only while the tuple is handed on as
    the miner returned it (or as its pair form ``(a, p, a, n)``) and no tensor of it was changed in place (torch's
    version counter); anything else (a tuple a user built, edited, reordered or mixed) is checked as before."""
    mark = _MinedBy(tuple(id(t) for t in indices_tuple), num_queries, num_refs)
    for t in indices_tuple:
        setattr(t, _MINED_ATTR, (mark, t._version))
    return indices_tuple


def is_mined(indices_tuple: IndicesTuple, num_queries: int, num_refs: int) -> bool:
    """Whether ``indices_tuple`` is, unchanged, the output of one dynametric miner call (:func:`mark_mined`) for at
    most ``num_queries`` batch and ``num_refs`` reference rows (triplets also in their pair form ``(a, p, a, n)``)."""
    if not isinstance(indices_tuple, tuple | list) or len(indices_tuple) not in (3, 4) or not all(
            isinstance(t, torch.Tensor) for t in indices_tuple):
        return False
    first = getattr(indices_tuple[0], _MINED_ATTR, None)
    if first is None:
        return False
    mark = first[0]
    for t in indices_tuple:
        got = getattr(t, _MINED_ATTR, None)
        if got is None or got[0] is not mark or got[1] != t._version:
            return False
    ids = tuple(id(t) for t in indices_tuple)
    same_layout = ids == mark.ids or (len(mark.ids) == 3 and ids == (mark.ids[0], mark.ids[1], mark.ids[0],
                                                                      mark.ids[2]))
    return same_layout and mark.num_queries <= num_queries and mark.num_refs <= num_refs


def check_indices_tuple(
    indices_tuple: IndicesTuple, num_queries: int, num_refs: int, name: str = "indices_tuple"
) -> IndicesTuple:
    """Validate a miner output: 3 or 4 one-dimensional integer tensors of matching lengths and in range.

    The range is read back to the host (two reads per tensor) only for a tuple that is not, unchanged, the output
    of one of dynametric's miners (:func:`is_mined`): those are in range by construction."""
    mined = is_mined(indices_tuple, num_queries, num_refs)
    if not isinstance(indices_tuple, tuple | list) or len(indices_tuple) not in (3, 4):
        raise InputError("expected a tuple of 3 (a, p, n) or 4 (a1, p, a2, n) index tensors", key=name)
    out = []
    for i, t in enumerate(indices_tuple):
        t = torch.as_tensor(t)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise InputError(f"entry {i} must be a 1-D integer tensor, got {t.dtype} {tuple(t.shape)}", key=name)
        t = t.long()
        limit = num_queries if (i == 0 or (len(indices_tuple) == 4 and i == 2)) else num_refs
        if not mined and t.numel() and (int(t.min()) < 0 or int(t.max()) >= limit):
            raise InputError(f"entry {i} has indices outside [0, {limit})", key=name)
        out.append(t)
    if len(out) == 3 and not out[0].numel() == out[1].numel() == out[2].numel():
        raise InputError("triplet index tensors must have equal lengths", key=name)
    if len(out) == 4 and (out[0].numel() != out[1].numel() or out[2].numel() != out[3].numel()):
        raise InputError("pair index tensors (a1, p) and (a2, n) must have equal lengths", key=name)
    return tuple(out)


def check_miner_output(
    indices_tuple: IndicesTuple | None, embeddings: torch.Tensor, ref_emb: torch.Tensor | None
) -> tuple[IndicesTuple | None, int]:
    """``(validated indices_tuple or None, number of reference rows)``: the common start of a tuple loss."""
    num_refs = embeddings.shape[0] if ref_emb is None else ref_emb.shape[0]
    if indices_tuple is None:
        return None, num_refs
    return check_indices_tuple(indices_tuple, embeddings.shape[0], num_refs), num_refs


def convert_to_pairs(
    indices_tuple: IndicesTuple | None, labels: torch.Tensor, ref_labels: torch.Tensor | None = None
) -> IndicesTuple:
    """Any indices tuple (or ``None`` = all pairs from labels) -> ``(a1, p, a2, n)``."""
    if indices_tuple is None:
        return get_all_pairs_indices(labels, ref_labels)
    if len(indices_tuple) == 4:
        return tuple(indices_tuple)
    return triplets_to_pairs(indices_tuple)


def random_triplets(
    labels: torch.Tensor,
    ref_labels: torch.Tensor | None = None,
    triplets_per_anchor: int | None = None,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> IndicesTuple:
    """Sample triplets: per anchor with a positive and a negative, ``triplets_per_anchor`` triplets (default: the
    size of its class in the reference set, as pytorch-metric-learning), positives uniform, negatives uniform or
    proportional to ``weights[a, n]`` (rows whose negative weights sum to zero are skipped)."""
    pos, neg = match_masks(labels, ref_labels)
    ref = labels if ref_labels is None else ref_labels
    neg_w = neg.float() if weights is None else weights.float() * neg
    valid = pos.any(1) & (neg_w.sum(1) > 0)
    anchors = torch.nonzero(valid).flatten()
    if anchors.numel() == 0:
        dev = labels.device
        return _empty(dev), _empty(dev), _empty(dev)
    if triplets_per_anchor is None:
        class_size = (labels[anchors].unsqueeze(1) == ref.unsqueeze(0)).sum(1)
    else:
        class_size = torch.full_like(anchors, int(triplets_per_anchor))
    k = int(class_size.max())
    p = torch.multinomial(pos[anchors].float(), k, replacement=True, generator=generator)
    n = torch.multinomial(neg_w[anchors], k, replacement=True, generator=generator)
    keep = torch.arange(k, device=labels.device).unsqueeze(0) < class_size.unsqueeze(1)
    a = anchors.unsqueeze(1).expand(-1, k)
    return a[keep], p[keep], n[keep]


def convert_to_triplets(
    indices_tuple: IndicesTuple | None,
    labels: torch.Tensor,
    ref_labels: torch.Tensor | None = None,
    triplets_per_anchor: int | str = "all",
) -> IndicesTuple:
    """Any indices tuple (or ``None``: all triplets, or ``triplets_per_anchor`` random ones) -> ``(a, p, n)``."""
    if indices_tuple is None:
        if triplets_per_anchor == "all":
            return get_all_triplets_indices(labels, ref_labels)
        return random_triplets(labels, ref_labels, triplets_per_anchor=int(triplets_per_anchor))
    if len(indices_tuple) == 3:
        return tuple(indices_tuple)
    return pairs_to_triplets(indices_tuple)


def first_positive_pair_per_label(
    indices_tuple: IndicesTuple | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive pair per anchor label: the first (in tuple order) pair of each label, ordered by label value
    (pytorch-metric-learning's ``convert_to_pos_pairs_with_unique_labels``)."""
    if indices_tuple is None:
        if labels.numel() == 0:  # an empty batch: argmax over its empty rows would raise
            return _empty(labels.device), _empty(labels.device)
        pos, _ = match_masks(labels)
        a = torch.nonzero(pos.any(1)).flatten()
        p = pos[a].to(torch.uint8).argmax(1)  # first positive of each anchor (argmax returns the first maximum)
    else:
        a, p, _, _ = convert_to_pairs(indices_tuple, labels)
    if a.numel() == 0:
        return a, p
    lab = labels[a]
    order = torch.argsort(lab, stable=True)
    lab_sorted = lab[order]
    first = torch.ones_like(lab_sorted, dtype=torch.bool)
    first[1:] = lab_sorted[1:] != lab_sorted[:-1]
    pick = order[first]
    return a[pick], p[pick]


HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(embeddings: torch.Tensor, ref_emb: torch.Tensor | None = None) -> torch.dtype:
    """The dtype a loss or miner computes distances in: the promotion of the embeddings' and ``ref_emb``'s dtypes
    (``torch.promote_types``: float64 with float32 gives float64), float16/bfloat16 (and their mix) as float32."""
    dtype = embeddings.dtype if ref_emb is None else torch.promote_types(embeddings.dtype, ref_emb.dtype)
    return torch.float32 if dtype in HALF_DTYPES else dtype


def distance_matrix(distance: Distance, embeddings: torch.Tensor, ref_emb: torch.Tensor | None) -> torch.Tensor:
    """``distance(embeddings, ref_emb)`` computed and returned in :func:`compute_dtype`: half-precision embeddings
    are converted to float32 *before* the distance (autocast off, so a matmul is not run in half precision either),
    so the matrix is that of the same values in float32, never rounded to half precision; the gradient flows back
    through the conversion to the embeddings in their own dtype. Embeddings and ``ref_emb`` of different dtypes
    are both converted to their common dtype."""
    dtype = compute_dtype(embeddings, ref_emb)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        mat = distance(embeddings.to(dtype), None if ref_emb is None else ref_emb.to(dtype))
    return mat.float() if mat.dtype in HALF_DTYPES else mat  # a foreign distance may still return half precision


def pair_masks(
    indices_tuple: IndicesTuple | None,
    labels: torch.Tensor,
    ref_labels: torch.Tensor | None,
    num_refs: int,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Dense boolean ``[B, R]`` masks of the positive and negative pairs of an indices tuple (``None`` = all pairs
    from labels), plus the numbers of positive and negative pairs listed (duplicates counted).

    The counts of all pairs from labels are read from the device (two host reads; :func:`few_pairs` answers the
    losses' question without them); a tuple's counts are its lengths. The check that no pair is listed both as
    positive and as negative reads one value, except for a dynametric miner's own output (:func:`is_mined`:
    disjoint by construction)."""
    if indices_tuple is None:
        pos, neg = match_masks(labels, ref_labels)
        return pos, neg, int(pos.sum()), int(neg.sum())
    mined = is_mined(indices_tuple, labels.numel(), num_refs)
    a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)
    pos = torch.zeros(labels.numel(), num_refs, dtype=torch.bool, device=labels.device)
    neg = torch.zeros_like(pos)
    pos[a1, p] = True
    neg[a2, n] = True
    if not mined and bool((pos & neg).any()):
        raise InputError("a pair is listed both as positive and as negative", key="indices_tuple")
    return pos, neg, a1.numel(), a2.numel()


def few_pairs(pos: torch.Tensor, neg: torch.Tensor) -> bool:
    """Whether the masks of all pairs from labels (:func:`match_masks`) hold at most one positive and at most one
    negative pair (pytorch-metric-learning's "too few pairs" rule). Read from the device only for a batch of at most
    two pairs: with more, at least two are positive or two negative (pairs within one set come in symmetric twos; a
    reference set of ``R`` rows gives ``B R`` pairs, each positive or negative)."""
    return pos.numel() <= 2 and int(pos.sum()) <= 1 and int(neg.sum()) <= 1


def padded_positives(pos_mask: torch.Tensor, most: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the column indices of its positives, left-aligned in ``[B, P_max]`` (``P_max`` = most positives of
    any row), and a validity mask of the same shape. Lets "all triplets" losses work on dense ``[B, P_max, R]``
    blocks (exactly the triplet count plus padding on the positive axis) instead of enumerating indices.

    ``most``: the most positives of any row when the caller has already read it to the host (the one host
    synchronisation this needs on an accelerator: ``P_max`` is a shape)."""
    counts = pos_mask.sum(1)
    if most is None:
        most = int(counts.max()) if counts.numel() else 0
    p_max = max(most, 1)
    order = torch.sort(pos_mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :p_max]
    valid = torch.arange(p_max, device=pos_mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def anchor_chunks(num_anchors: int, elements_per_anchor: int, budget: int = 1 << 24) -> list[tuple[int, int]]:
    """``(start, stop)`` anchor ranges such that ``rows * elements_per_anchor`` stays within ``budget``."""
    step = max(1, budget // max(elements_per_anchor, 1))
    return [(s, min(s + step, num_anchors)) for s in range(0, num_anchors, step)]
