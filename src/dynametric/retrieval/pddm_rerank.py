"""Optional PDDM re-ranking at test time (Huang et al., NIPS 2016), chosen by
``euclidean`` | ``pddm_rerank``.

Retrieval uses the Euclidean distance on the embedding; with re-ranking, each query's top-``k`` Euclidean
neighbours are re-ordered by the PDDM score ``S(q, g)`` (higher first; ties keep the Euclidean order).
Neighbours beyond ``k`` are not touched, so Recall@K for ``K <= k`` is what re-ranking can change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dynametric.distances import euclidean_matrix
from dynametric.errors import InputError
from dynametric.labels import as_label_matrix
from dynametric.models.pddm import PDDM

__all__ = ["RerankResult", "euclidean_topk", "pddm_rerank", "recall_at_k_from_ranking"]


@dataclass(frozen=True)
class RerankResult:
    """``indices``: gallery indices ``[nq, k]`` after re-ranking; ``scores``: their PDDM scores;
    ``euclidean_indices``: the Euclidean top-``k`` before re-ranking (nearest first)."""

    indices: torch.Tensor
    scores: torch.Tensor
    euclidean_indices: torch.Tensor


def euclidean_topk(
    query: torch.Tensor, gallery: torch.Tensor, k: int, *, exclude_self: bool = False, rows_per_chunk: int = 1024
) -> torch.Tensor:
    """Indices ``[nq, k]`` of each query's ``k`` nearest gallery rows by Euclidean distance, nearest first
    (ties to the lower index). ``exclude_self`` drops gallery row ``a`` for query ``a`` (leave-one-out)."""
    nq, ng = query.shape[0], gallery.shape[0]
    avail = ng - 1 if exclude_self else ng
    if avail < 1:
        raise InputError(f"a gallery of {ng} row(s) has no candidate for a query"
                         + (" (leave-one-out excludes the query itself: give at least 2 rows)" if exclude_self else ""),
                         key="gallery_emb" if not exclude_self else "query_emb")
    if not 1 <= k <= avail:
        raise InputError(f"k must be in [1, {avail}] for a gallery of {ng} rows, got {k}", key="k")
    out = []
    for start in range(0, nq, rows_per_chunk):
        q = query[start:start + rows_per_chunk]
        d = euclidean_matrix(q.float(), gallery.float())  # near pairs exact on the CPU (docs/losses.md)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=q.device)
            d[rows, rows + start] = float("inf")
        out.append(torch.sort(d, dim=1, stable=True).indices[:, :k])
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=query.device)


def pddm_rerank(
    unit: PDDM,
    query_emb: torch.Tensor,
    gallery_emb: torch.Tensor | None = None,
    *,
    k: int = 10,
    normalize_embeddings: bool = True,
) -> RerankResult:
    """Re-rank each query's top-``k`` Euclidean neighbours by PDDM score (leave-one-out if no gallery).

    ``normalize_embeddings`` must match how the unit was trained (``PDDMLoss`` normalises by default).
    Runs without gradient and with dropout off.
    """
    if query_emb.dim() != 2:
        raise InputError(f"query_emb must be [N, D], got shape {tuple(query_emb.shape)}", key="query_emb")
    if query_emb.shape[1] != unit.embedding_dim:
        raise InputError(f"query_emb has width {query_emb.shape[1]} but the PDDM unit was built for "
                         f"{unit.embedding_dim}", key="query_emb")
    if gallery_emb is not None:
        if gallery_emb.dim() != 2:
            raise InputError(f"gallery_emb must be [M, D], got shape {tuple(gallery_emb.shape)}", key="gallery_emb")
        if gallery_emb.shape[1] != query_emb.shape[1]:
            raise InputError(f"query_emb and gallery_emb must have the same width D, got {query_emb.shape[1]} and "
                             f"{gallery_emb.shape[1]}", key="gallery_emb")
    exclude_self = gallery_emb is None
    gallery = query_emb if gallery_emb is None else gallery_emb
    with torch.no_grad():
        q = F.normalize(query_emb, dim=-1, eps=1e-12) if normalize_embeddings else query_emb
        g = F.normalize(gallery, dim=-1, eps=1e-12) if normalize_embeddings else gallery
        eu = euclidean_topk(q, g, k, exclude_self=exclude_self)
        scores = unit.score_candidates(q, g, eu, deterministic=True)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        return RerankResult(
            indices=eu.gather(1, order), scores=scores.gather(1, order), euclidean_indices=eu
        )


def recall_at_k_from_ranking(
    ranking: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor | None = None,
    k_values: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """Recall@K as a hit rate from a ranking ``[nq, k]`` of gallery indices (docs/metrics.md): the fraction of queries
    with a same-label item among their first ``K``. Labels ``[N]`` or ``[N, 1]`` (one scale)."""
    ql = as_label_matrix(query_labels, name="query_labels", num_rows=ranking.shape[0])[:, 0]
    gl = ql if gallery_labels is None else as_label_matrix(gallery_labels, name="gallery_labels")[:, 0]
    hits = gl.to(ranking.device)[ranking] == ql.to(ranking.device)[:, None]
    out = {}
    for kv in k_values:
        if not 1 <= kv <= ranking.shape[1]:
            raise InputError(f"K={kv} exceeds the ranking depth {ranking.shape[1]}", key="k_values")
        out[f"recall@{kv}"] = float(hits[:, :kv].any(dim=1).float().mean()) if ranking.shape[0] else 0.0
    return out
