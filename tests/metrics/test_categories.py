"""Retrieval metrics per query category (``evaluate_embeddings(query_categories=...)``, open-metric-learning's report
split): hand-computed values, the query-count-weighted mean of the categories equal to the overall value, each
category equal to an evaluation of its own queries alone, on both ranking engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings

RETRIEVAL = ["recall@1", "recall@2", "precision@2", "map@2", "r_precision", "map@r", "map", "asi"]


def _angles(degrees: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_per_category_values_by_hand(engine):
    # gallery g0..g3 (labels 0, 0, 1, 1) at 0, 100, 40, 170 degrees; five queries in two categories
    gallery, gallery_labels = _angles([0, 100, 40, 170]), torch.tensor([0, 0, 1, 1])
    queries, labels = _angles([10, 60, 45, 140, 210]), torch.tensor([0, 1, 0, 1, 0])
    categories = ["fish", "fish", "bird", "bird", "bird"]
    res = evaluate_embeddings(queries, labels, gallery, gallery_labels, metrics=["recall@1", "map"],
                              query_categories=categories, ranking_engine=engine, scale_names=["label"])
    # q0 (10): g0+ g2 g1+ g3 -> R@1 1, AP (1 + 2/3)/2;  q1 (60): g2+ g1 g0 g3+ -> 1, (1 + 2/4)/2
    # q2 (45): g2 g0+ g1+ g3 -> 0, (1/2 + 2/3)/2;  q3 (140): g3+ g1 g2+ g0 -> 1, (1 + 2/3)/2
    # q4 (210): g3 g1+ g0+ g2 -> 0, (1/2 + 2/3)/2
    fish, bird = res["by_category"]["fish"]["label"], res["by_category"]["bird"]["label"]
    assert list(res["by_category"]) == ["bird", "fish"]  # sorted, not in query order
    assert fish["recall@1"] == 1.0 and fish["map"] == pytest.approx(19 / 24, abs=1e-12)
    assert bird["recall@1"] == pytest.approx(1 / 3, abs=1e-12) and bird["map"] == pytest.approx(2 / 3, abs=1e-12)
    assert (fish["num_queries"], bird["num_queries"], fish["excluded_queries"]) == (2, 3, 0)
    assert res["label"]["recall@1"] == pytest.approx(3 / 5) and res["label"]["map"] == pytest.approx(43 / 60)
    assert res["by_category"]["bird"]["mean"] == {"recall@1": bird["recall@1"], "map": bird["map"]}


def _problem(seed: int, n: int = 90, scales: int = 2):
    rng = np.random.default_rng(seed)
    emb = torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32))
    fine = rng.integers(0, n // 3, n)
    labels = torch.from_numpy(np.stack([fine, fine // 4][:scales], 1))
    # ints and texts; the category of a query is unrelated to its label (OML allows a label in several)
    categories = rng.choice(np.array(["b", "a", "c", 3, 12], dtype=object), n).tolist()
    return emb, labels, categories


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("empty", ["exclude", "count_as_zero"])
def test_query_weighted_mean_of_the_categories_is_the_overall_value(engine, empty):
    emb, labels, categories = _problem(1)
    for gallery in (None, slice(30, None)):  # leave-one-out; query -> gallery (queries 0-29, gallery 30-89)
        if gallery is None:
            res = evaluate_embeddings(emb, labels, metrics=[*RETRIEVAL, "nmi", "fnmr@fmr=10"], k_values=(1, 2),
                                      query_categories=categories, empty_queries=empty, ranking_engine=engine)
        else:
            res = evaluate_embeddings(emb[:30], labels[:30], emb[gallery], labels[gallery], metrics=RETRIEVAL,
                                      query_categories=categories[:30], empty_queries=empty, ranking_engine=engine)
        by = res["by_category"]
        assert list(by) == [str(c) for c in (3, 12, "a", "b", "c") if c in (categories if gallery is None
                                                                              else categories[:30])]
        for scale in ("fine", "coarse"):
            counts = [by[c][scale]["num_queries"] for c in by]
            assert sum(counts) == res[scale]["num_queries"]
            assert sum(by[c][scale]["num_queries"] + by[c][scale]["excluded_queries"] for c in by) == len(
                emb if gallery is None else emb[:30])
            assert sum(by[c][scale]["empty_queries"] for c in by) == res[scale]["empty_queries"]
            for m in RETRIEVAL:
                weighted = math.fsum(e[scale][m] * e[scale]["num_queries"] for e in by.values()
                                     if e[scale]["num_queries"]) / res[scale]["num_queries"]
                assert weighted == pytest.approx(res[scale][m], abs=1e-12), (scale, m)
            # not means of per-query values: overall only
            assert "nmi" not in by[next(iter(by))][scale] and "fnmr@fmr=10" not in by[next(iter(by))][scale]
        if gallery is None:
            assert empty == "count_as_zero" or res["fine"]["excluded_queries"] > 0  # the policy is exercised


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_each_category_equals_an_evaluation_of_its_own_queries(engine):
    """A category's entry is the evaluation of its queries alone: query -> gallery with the same gallery, and
    leave-one-out as query -> everything with each query's own item excluded by id."""
    emb, labels, categories = _problem(2)
    loo = evaluate_embeddings(emb, labels, metrics=RETRIEVAL, k_values=(1, 2), query_categories=categories,
                              ranking_engine=engine)
    qg = evaluate_embeddings(emb[:40], labels[:40], emb[40:], labels[40:], metrics=RETRIEVAL,
                             query_categories=categories[:40], ranking_engine=engine)
    for name in loo["by_category"]:
        rows = [i for i, c in enumerate(categories) if str(c) == name]
        alone = evaluate_embeddings(emb[rows], labels[rows], emb, labels, metrics=RETRIEVAL, query_ids=rows,
                                    gallery_ids=list(range(len(emb))), ranking_engine=engine)
        for scale in ("fine", "coarse", "mean"):
            for m in RETRIEVAL:
                assert loo["by_category"][name][scale][m] == pytest.approx(alone[scale][m], abs=1e-12, nan_ok=True)
        assert loo["by_category"][name]["fine"]["num_queries"] == alone["fine"]["num_queries"]
        rows = [i for i in rows if i < 40]
        if not rows:
            assert name not in qg["by_category"]
            continue
        alone = evaluate_embeddings(emb[rows], labels[rows], emb[40:], labels[40:], metrics=RETRIEVAL,
                                    ranking_engine=engine)
        for m in RETRIEVAL:
            assert qg["by_category"][name]["fine"][m] == pytest.approx(alone["fine"][m], abs=1e-12, nan_ok=True)


def test_a_category_without_a_defined_query_is_nan_and_per_query_output_is_unchanged():
    emb = _angles([0, 10, 50, 90])
    labels = torch.tensor([0, 0, 1, 2])  # items 2 and 3 are alone in their class: no relevant item
    res, table = evaluate_embeddings(emb, labels, metrics=["recall@1", "map"], per_query=True,
                                     query_categories=[1, 1, 2, 2])
    assert math.isnan(res["by_category"]["2"]["fine"]["map"])
    assert res["by_category"]["2"]["fine"]["excluded_queries"] == 2
    assert res["by_category"]["1"]["fine"]["map"] == 1.0
    assert list(table["fine"]) == ["num_relevant", "recall@1", "map"]
    # only metrics that are not per-query means: no category split at all
    assert "by_category" not in evaluate_embeddings(emb, labels, metrics=["nmi"], query_categories=[1, 1, 2, 2])
    assert "by_category" not in evaluate_embeddings(emb, labels, metrics=["map"])


@pytest.mark.parametrize("categories,message", [
    (["a", "b"], r"expected 4 query categories \(one per query\), got 2"),
    (["a", None, "b", "b"], "the category of query 1 is None"),
    (["a", " ", "b", "b"], "the category of query 1 is ' '"),
    ([7, "7", 1, 1], "two categories read '7'"),
    ("abcd", "not a string"),
])
def test_bad_query_categories_are_refused(categories, message):
    with pytest.raises(InputError, match=message) as err:
        evaluate_embeddings(_angles([0, 10, 50, 90]), torch.tensor([0, 0, 1, 1]), query_categories=categories)
    assert err.value.key == "query_categories"
