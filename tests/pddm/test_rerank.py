"""PDDM re-ranking of the Euclidean top-k and the ranking-based Recall@K."""

from __future__ import annotations

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models.pddm import PDDM
from dynametric.retrieval.pddm_rerank import euclidean_topk, pddm_rerank, recall_at_k_from_ranking
from tests.pddm.helpers import points, position_unit


def test_rerank_reorders_topk_by_pddm_score() -> None:
    unit = position_unit()  # S grows with the pair's mid-point x
    query = points([1.0])
    gallery = points([0.9, 1.3, -3.0, 1.25])  # Euclidean order from x=1: 0 (0.1), 3 (0.25), 1 (0.3), 2
    res = pddm_rerank(unit, query, gallery, k=3, normalize_embeddings=False)
    assert res.euclidean_indices.tolist() == [[0, 3, 1]]
    assert res.indices.tolist() == [[1, 3, 0]]  # mid-points 1.15 > 1.125 > 0.95
    assert torch.all(res.scores[:, :-1] >= res.scores[:, 1:])
    q_labels, g_labels = torch.tensor([5]), torch.tensor([7, 5, 5, 7])
    assert recall_at_k_from_ranking(res.euclidean_indices, q_labels, g_labels, (1, 2, 3)) == {
        "recall@1": 0.0, "recall@2": 0.0, "recall@3": 1.0}
    assert recall_at_k_from_ranking(res.indices, q_labels, g_labels, (1, 2, 3))["recall@1"] == 1.0


def test_rerank_leave_one_out_matches_brute_force() -> None:
    torch.manual_seed(0)
    unit = PDDM(5, hidden_dim=7, dropout=0.3)
    unit.train()  # re-ranking must switch dropout off by itself
    emb = torch.randn(9, 5)
    res = pddm_rerank(unit, emb, k=4)
    f = torch.nn.functional.normalize(emb, dim=1)
    d = torch.cdist(f, f)
    d.fill_diagonal_(float("inf"))
    assert torch.equal(res.euclidean_indices, d.argsort(dim=1, stable=True)[:, :4])
    assert not (res.euclidean_indices == torch.arange(9)[:, None]).any()
    with torch.no_grad():
        for a in range(9):
            cand = res.euclidean_indices[a]
            s = unit.score_pairs(f[a].expand(4, -1), f[cand], deterministic=True)
            order = s.argsort(descending=True, stable=True)
            assert res.indices[a].tolist() == cand[order].tolist()
            torch.testing.assert_close(res.scores[a], s[order], atol=1e-5, rtol=1e-5)


def test_euclidean_topk_chunks_and_ties() -> None:
    q = torch.tensor([[0.0], [1.0], [5.0]])
    g = torch.tensor([[1.0], [-1.0], [0.0], [5.0]])
    # query 0: distances 1, 1, 0, 5 -> [2, 0, 1]; ties keep the lower index
    got = euclidean_topk(q, g, 3, rows_per_chunk=2)
    assert got.tolist() == [[2, 0, 1], [0, 2, 1], [3, 0, 2]]
    with pytest.raises(InputError, match="k must be"):
        euclidean_topk(q, g, 5)
    with pytest.raises(InputError, match="k must be"):
        euclidean_topk(g, g, 4, exclude_self=True)


def test_recall_from_ranking_validation() -> None:
    with pytest.raises(InputError, match="ranking depth"):
        recall_at_k_from_ranking(torch.zeros(2, 2, dtype=torch.long), torch.tensor([0, 1]), k_values=(4,))


@pytest.mark.parametrize("query, gallery, key, words", [
    ((5, 8), (6, 7), "gallery_emb", "query_emb and gallery_emb must have the same width D, got 8 and 7"),
    ((5, 8), (6,), "gallery_emb", "gallery_emb must be [M, D], got shape (6,)"),
    ((5, 7), (6, 7), "query_emb", "query_emb has width 7 but the PDDM unit was built for 8"),
])
def test_mismatched_widths_are_one_line_errors_naming_the_argument(query, gallery, key, words) -> None:
    with pytest.raises(InputError) as info:
        pddm_rerank(PDDM(8), torch.randn(*query), torch.randn(*gallery), k=3)
    assert info.value.key == key and words in str(info.value) and "\n" not in str(info.value)


def test_a_gallery_without_any_candidate_is_named_as_such():
    """Leave-one-out over one row used to say 'k must be in [1, 0] for a gallery of 1 rows'."""
    unit = PDDM(4)
    with pytest.raises(InputError) as err:
        pddm_rerank(unit, torch.randn(1, 4), k=1)
    assert err.value.key == "query_emb" and err.value.message == (
        "a gallery of 1 row(s) has no candidate for a query (leave-one-out excludes the query itself: give at least "
        "2 rows)")
    with pytest.raises(InputError) as err:
        pddm_rerank(unit, torch.randn(2, 4), torch.zeros(0, 4), k=1)
    assert err.value.key == "gallery_emb" and err.value.message == "a gallery of 0 row(s) has no candidate for a query"
    assert pddm_rerank(unit, torch.randn(2, 4), k=1).indices.tolist() == [[1], [0]]
