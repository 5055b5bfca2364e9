"""open-metric-learning's ``cmc@k`` / ``precision@k`` / ``map@k`` (docs/metrics.md, *Coming from ...
open-metric-learning*): a hand case, and a float64 brute force written from OML's documented formulas, on both
engines — query -> gallery with shared ids (OML's ``calc_mask_to_ignore``), integer embeddings with many exact ties
(the ranking is float64 distance, ties by gallery index: the one both sides score), ``k`` beyond the gallery,
per category, and queries without a relevant item under ``empty_queries="count_as_zero"``.

OML's map@k divides by ``n_k``, the number of relevant items in its top ``k`` (0 when there are none); versions of
dynametric before this test divided by ``min(k, R_q)``, which the hand case and the brute force both tell apart.
OML itself is not needed (it is not a dependency): its formulas are restated in :func:`_oml_row`."""

from __future__ import annotations

import numpy as np
import pytest

from dynametric.metrics import evaluate_embeddings

ENGINES = ["cpu", "torch"]
KS = (1, 2, 3, 5, 100)  # 100 is beyond every gallery below


@pytest.mark.parametrize("engine", ENGINES)
def test_map_at_k_divides_by_the_relevant_items_in_the_top_k(engine: str) -> None:
    """One query at 0, gallery at 1, 2, 3 with labels 0, 1, 0: the ranking is relevant, not, relevant (R_q = 2).
    map@2 = (1/1) * (1/1) = 1.0 (one relevant item in the top 2; dividing by min(2, R_q) = 2 gave 0.5);
    map@3 = (1/1 + 2/3) / 2; precision@2 = 1 / min(2, 2) = 0.5; cmc@2 = 1."""
    q = np.zeros((1, 1), np.float32)
    g = np.array([[1.0], [2.0], [3.0]], np.float32)
    got = evaluate_embeddings(q, np.array([0]), g, np.array([0, 1, 0]), distance="euclidean", k_values=(1, 2, 3),
                              metrics=["cmc@K", "precision@K", "map@K"], ranking_engine=engine)["fine"]
    assert got["map@2"] == 1.0
    assert got["precision@2"] == 0.5
    assert got["recall@2"] == 1.0
    assert got["map@1"] == 1.0 and got["precision@1"] == 1.0
    assert got["map@3"] == pytest.approx((1 + 2 / 3) / 2, rel=1e-15)
    assert got["precision@3"] == 1.0


@pytest.mark.parametrize("engine", ENGINES)
def test_map_at_k_is_zero_without_a_relevant_item_in_the_top_k(engine: str) -> None:
    """Ranking: not, not, relevant (R_q = 1): map@2 = 0 (n_k = 0 scores 0, not 0/0), map@3 = (1/3) / 1."""
    q = np.zeros((1, 1), np.float32)
    g = np.array([[1.0], [2.0], [3.0]], np.float32)
    got = evaluate_embeddings(q, np.array([0]), g, np.array([1, 2, 0]), distance="euclidean", k_values=(2, 3),
                              metrics=["map@K", "precision@K"], ranking_engine=engine)["fine"]
    assert got["map@2"] == 0.0 and got["precision@2"] == 0.0
    assert got["map@3"] == pytest.approx(1 / 3, rel=1e-15) and got["precision@3"] == 1.0


def _oml_row(rel: np.ndarray, k: int) -> dict[str, float]:
    """OML's per-query values from the relevance flags of a query's ranked candidates (float64), for a query with at
    least one candidate: cmc@k = 1[any relevant in the top k]; precision@k = (relevant in the top k) / min(k, R);
    map@k = (1/n_k) sum_{i<=k} rel(i) * n_i / i with n_i the relevant items in the top i, 0 when n_k = 0.
    The top k is the whole ranking when k exceeds it. precision@k is 0/0 (NaN in OML) when R = 0."""
    top = rel[:k]
    n_i = np.cumsum(top)
    n_k = n_i[-1]
    ap = float((top * n_i / np.arange(1, top.size + 1)).sum() / n_k) if n_k > 0 else 0.0
    r = rel.sum()
    return {"cmc": float(top.any()), "precision": n_k / min(k, r) if r > 0 else float("nan"), "map": ap}


def _data(seed: int, grid: bool):
    rng = np.random.default_rng(seed)
    n_q, n_g = 40, 30
    if grid:  # integer embeddings: exact float32 Euclidean scores, many exact ties
        q, g = rng.integers(0, 3, (n_q, 3)), rng.integers(0, 3, (n_g, 3))
    else:
        q, g = rng.standard_normal((n_q, 8)), rng.standard_normal((n_g, 8))
    q_lab = rng.integers(0, 6, n_q)  # label 5 is in no gallery: those queries have no relevant item
    g_lab = np.concatenate([np.arange(5), rng.integers(0, 5, n_g - 5)])
    q_ids, g_ids = rng.integers(0, 60, n_q), rng.integers(0, 60, n_g)  # a shared id excludes the pair
    return q.astype(np.float32), g.astype(np.float32), q_lab, g_lab, q_ids, g_ids


def _ranked_relevance(q, g, q_lab, g_lab, q_ids, g_ids, distance: str) -> list[np.ndarray]:
    """Per query: relevance of its candidates (gallery minus shared ids), ascending float64 distance, ties by
    gallery index."""
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    if distance == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        g64 = g64 / np.linalg.norm(g64, axis=1, keepdims=True)
    d = ((q64[:, None, :] - g64[None]) ** 2).sum(-1)
    out = []
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), d[i]))
        order = order[g_ids[order] != q_ids[i]]
        out.append((g_lab[order] == q_lab[i]).astype(np.float64))
    return out


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("grid, distance", [(True, "euclidean"), (False, "euclidean"), (False, "cosine")])
def test_cmc_precision_map_at_k_equal_oml_s_formulas(engine: str, seed: int, grid: bool, distance: str) -> None:
    q, g, q_lab, g_lab, q_ids, g_ids = _data(seed, grid)
    rels = _ranked_relevance(q, g, q_lab, g_lab, q_ids, g_ids, distance)
    assert all(r.size for r in rels)  # every query keeps a candidate (OML scores an empty ranking 1.0)
    has = np.array([r.sum() > 0 for r in rels])
    assert 0 < has.sum() < len(rels)  # both kinds of query are there
    want = {(f, k): np.array([_oml_row(r, k)[f] for r in rels]) for f in ("cmc", "precision", "map") for k in KS}
    cats = np.array(["bird", "fish", "tree"])[np.arange(len(q)) % 3]
    names = [f"{f}@{k}" for f in ("cmc", "precision", "map") for k in KS]
    for policy in ("exclude", "count_as_zero"):
        res, table = evaluate_embeddings(q, q_lab, g, g_lab, metrics=names, k_values=(), distance=distance,
                                         query_ids=q_ids, gallery_ids=g_ids, query_categories=cats.tolist(),
                                         per_query=True, empty_queries=policy, ranking_engine=engine)
        for f, ours in (("cmc", "recall"), ("precision", "precision"), ("map", "map")):
            for k in KS:
                name = f"{ours}@{k}"
                np.testing.assert_allclose(table["fine"][name][has], want[f, k][has], rtol=0, atol=1e-12,
                                           err_msg=f"{policy} {name}")
                # the mean over the queries with a relevant item (exclude), or over all of them with the others
                # at 0 (count_as_zero): OML's value too for cmc and map; OML's precision there is NaN
                m = has if policy == "exclude" else np.ones_like(has)
                if policy == "count_as_zero" and f != "precision":
                    assert (want[f, k][~has] == 0).all()
                expect = np.where(has, want[f, k], 0.0)
                assert res["fine"][name] == pytest.approx(expect[m].mean(), abs=1e-12), (policy, name)
                for c in ("bird", "fish", "tree"):
                    mc = m & (cats == c)
                    got = res["by_category"][c]["fine"][name]
                    assert got == pytest.approx(expect[mc].mean(), abs=1e-12), (policy, name, c)
        if policy == "exclude":
            assert res["fine"]["excluded_queries"] == int((~has).sum())
