"""The retrieval metric table: every entry, on both engines, equals a float64 brute force per query; a metric of
one's own is one table entry (passed in, the built-in table untouched), and its ``full_ranking`` flag is what the
engines' rank cap obeys."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from dynametric.errors import ConfigError
from dynametric.metrics import ALL_METRICS, DEFAULT_METRICS, evaluate_embeddings
from dynametric.metrics.ranking import METRIC_TABLE, RankMetric, at_k, resolve_metrics


def _recall(rel, hits, r, k):
    return float(rel[:k].any())


def _precision_at(rel, hits, r, k):
    return rel[:k].sum() / min(k, r)


def _map_at(rel, hits, r, k):
    """open-metric-learning's map@k: divided by the number of relevant items in the top k (0 when there are none)."""
    i = np.arange(min(k, len(rel)))
    return (rel[i] * hits[i] / (i + 1)).sum() / max(rel[i].sum(), 1)


def _r_precision(rel, hits, r, k):
    return rel[:r].sum() / r


def _map_at_r(rel, hits, r, k):
    i = np.arange(r)
    return (rel[i] * hits[i] / (i + 1)).sum() / r


def _map(rel, hits, r, k):
    i = np.arange(len(rel))
    return (rel * hits / (i + 1)).sum() / r


def _asi(rel, hits, r, k, cutoff=None):
    n = r if cutoff is None else cutoff
    ns = np.arange(1, n + 1)
    return (hits[np.minimum(ns, len(rel)) - 1] / ns).sum() / n


BRUTE = {"recall@k": _recall, "precision@k": _precision_at, "map@k": _map_at, "r_precision": _r_precision,
         "map@r": _map_at_r, "map": _map, "asi": _asi}
"""Each table entry straight from its definition, on the relevance flags of a full float64 ranking."""


def _data(seed: int = 0, n: int = 150, per_class: int = 5):
    """Integer embeddings (Euclidean scores are exact in float32 and float64, with many exact ties) and two
    nested label scales."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, 4)).astype(np.float32)
    fine = rng.permutation(np.arange(n) // per_class)
    return x, np.stack([fine, fine // 4], 1)


def _ranked_relevance(q, ql, g, gl, loo):
    """Per query and scale: the relevance flags in rank order (ascending float64 distance, ties by index)."""
    d = ((q.astype(np.float64)[:, None, :] - g.astype(np.float64)[None, :, :]) ** 2).sum(-1)
    out = []
    for i in range(len(q)):
        cand = np.delete(np.arange(len(g)), i) if loo else np.arange(len(g))
        ranked = cand[np.lexsort((cand, d[i, cand]))]
        out.append([(gl[ranked, s] == ql[i, s]).astype(np.float64) for s in range(ql.shape[1])])
    return out


def _brute(flags, fn, k=None, **kw):
    """``[Nq, S]`` per-query values (NaN where the query has no relevant item)."""
    vals = np.full((len(flags), len(flags[0])), np.nan)
    for i, per_scale in enumerate(flags):
        for s, rel in enumerate(per_scale):
            r = int(rel.sum())
            if r:
                vals[i, s] = fn(rel, np.cumsum(rel), r, k, **kw)
    return vals


def _engine(q, ql, g, gl, names, engine, **kw):
    res, table = evaluate_embeddings(q, ql, g, gl, metrics=names, k_values=(), distance="euclidean",
                                     ranking_engine=engine, per_query=True, scale_names=["fine", "coarse"], **kw)
    return res, {m: np.stack([table["fine"][m], table["coarse"][m]], 1) for m in table["fine"]}


def test_every_table_entry_has_a_brute_force():
    assert set(BRUTE) == set(METRIC_TABLE)


@functools.cache
def _problem(protocol: str):
    x, labels = _data()
    if protocol == "leave_one_out":
        return (x, labels, None, None), _ranked_relevance(x, labels, x, labels, True)
    q, ql, g, gl = x[:40], labels[:40], x[40:], labels[40:]
    return (q, ql, g, gl), _ranked_relevance(q, ql, g, gl, False)


@pytest.mark.parametrize("protocol", ["leave_one_out", "query_gallery"])
@pytest.mark.parametrize("entry", list(METRIC_TABLE))
def test_every_table_entry_on_both_engines_equals_the_float64_brute_force(entry, protocol):
    (q, ql, g, gl), flags = _problem(protocol)
    ks = (1, 3, 50) if METRIC_TABLE[entry].at_k else (None,)
    names = [entry[:-1] + str(k) if k else entry for k in ks]
    for engine in ("cpu", "torch"):
        _, got = _engine(q, ql, g, gl, names, engine)
        for name, k in zip(names, ks):
            want = _brute(flags, BRUTE[entry], k)
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-12, err_msg=f"{name} {engine}")
    if entry == "asi":  # the fixed cut-off N
        want = _brute(flags, _asi, cutoff=7)
        for engine in ("cpu", "torch"):
            _, got = _engine(q, ql, g, gl, ["asi"], engine, asi_cutoff=7)
            np.testing.assert_allclose(got["asi"], want, rtol=0, atol=1e-12, err_msg=engine)


def _mrr(v, k):
    return v.full(1.0) / v.first  # 1 / rank_1: reads a rank that may lie beyond every cut-off


def _hits(v, k):
    return v.count(v.rank <= k) / v.full(float(k))  # relevant items among the first k, over k


def test_a_metric_of_ones_own_is_one_table_entry_passed_in():
    table = {**METRIC_TABLE, "mrr": RankMetric(_mrr, full_ranking=True, default=False),
             "hits@k": RankMetric(_hits, at_k=True, default=False)}
    x, labels = _data(1)
    flags = _ranked_relevance(x, labels, x, labels, True)
    want = {"mrr": _brute(flags, lambda rel, hits, r, k: 1.0 / (np.flatnonzero(rel)[0] + 1)),
            "hits@2": _brute(flags, lambda rel, hits, r, k: rel[:k].sum() / k, 2),
            "map@r": _brute(flags, _map_at_r)}
    for engine in ("cpu", "torch"):
        res, got = _engine(x, labels, None, None, ["hits@2", "mrr", "map@r"], engine, metric_table=table)
        assert list(res["mean"]) == ["map@r", "mrr", "hits@2"]  # table order
        for name, values in want.items():
            np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-12, err_msg=f"{name} {engine}")
            fine = values[:, 0]
            assert res["fine"][name] == pytest.approx(math.fsum(fine[~np.isnan(fine)]) / (~np.isnan(fine)).sum())
    # `@K` expands over k_values, `all` includes the new entries, the default set leaves them out
    res = evaluate_embeddings(x, labels, metrics=["hits@K", "all"], k_values=(2, 5), metric_table=table,
                              ranking_engine="cpu")
    assert {"hits@2", "hits@5", "mrr", "nmi", "f1"} <= set(res["mean"])
    assert "mrr" not in evaluate_embeddings(x, labels, metric_table=table)["mean"]
    # the built-in table is untouched: without the table the name is unknown
    assert "mrr" not in METRIC_TABLE and "mrr" not in ALL_METRICS and "mrr" not in DEFAULT_METRICS
    with pytest.raises(ConfigError, match="unknown metric 'mrr'"):
        evaluate_embeddings(x, labels, metrics=["mrr"])


def test_cmc_is_open_metric_learnings_name_of_recall():
    """``cmc@k`` (OML) is ``recall@k``, named so in the results: query 0's relevant items rank 2 and 3, query 1's
    first one rank 1 (cosine: q0 ranks g0 0.99, g1 0.8, g2 0.6, g3 0; q1 ranks g3 1.0 first)."""
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[0.9, 0.1], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    ql, gl = [0, 1], [1, 0, 0, 1]
    for engine in ("cpu", "torch"):
        res = evaluate_embeddings(q, ql, g, gl, metrics=["cmc@1", "CMC@K", "recall@3"], k_values=(2,),
                                  ranking_engine=engine)
        assert list(res["fine"])[:3] == ["recall@1", "recall@2", "recall@3"]  # one entry each, table names
        assert (res["fine"]["recall@1"], res["fine"]["recall@2"], res["fine"]["recall@3"]) == (0.5, 1.0, 1.0)
    assert resolve_metrics((), ("cmc@4",)) == resolve_metrics((), ("recall@4",))
    assert [s.name for s in resolve_metrics((), ("cmc@4",))] == ["recall@4"]
    with pytest.raises(ConfigError, match="expected recall@K or recall@<positive int>"):
        evaluate_embeddings(q, ql, g, gl, metrics=["cmc@x"])


def test_the_rank_cap_follows_the_full_ranking_flag():
    """Marked as reading only capped ranks, 1 / rank_1 goes wrong on both engines (ranks beyond the cap are not
    computed exactly): the engines take the cap from the table entry, not from a list of names."""
    x, labels = _data(2, n=120, per_class=3)
    flags = _ranked_relevance(x, labels[:, :1], x, labels[:, :1], True)
    want = _brute(flags, lambda rel, hits, r, k: 1.0 / (np.flatnonzero(rel)[0] + 1))[:, 0]
    assert np.nanmax(1.0 / want) > 8  # some first relevant item ranks beyond the cap max(R_q, k) = 2
    for full, engine in [(f, e) for f in (True, False) for e in ("cpu", "torch")]:
        table = {**METRIC_TABLE, "mrr": RankMetric(_mrr, full_ranking=full)}
        _, table_q = evaluate_embeddings(x, labels[:, :1], metrics=["mrr"], k_values=(), distance="euclidean",
                                         ranking_engine=engine, per_query=True, metric_table=table)
        close = np.allclose(table_q["fine"]["mrr"], want, rtol=0, atol=1e-12, equal_nan=True)
        assert close == full, (full, engine)


@pytest.mark.parametrize("tail", ["²", "٣", "1٣"])
def test_ranking_reads_a_cut_off_of_ascii_digits_only(tail):
    """``at_k`` and ``resolve_metrics`` themselves (``evaluate_embeddings`` refuses these names before it reaches
    them): ``str.isdigit`` accepts '²', which ``int`` refuses (a ValueError traceback), and Arabic-Indic '٣', which
    ``int`` reads as 3 (``precision@٣`` would be precision@3). Neither is a cut-off."""
    assert at_k("map@10") == ("map", 10) and at_k("precision@3") == ("precision", 3)  # the ASCII spelling is
    assert [s.name for s in resolve_metrics(metrics=["precision@3"])] == ["precision@3"]  # one
    for family in ("map", "precision"):
        assert at_k(f"{family}@{tail}") is None
        with pytest.raises(ValueError, match=f"^unknown retrieval metric '{family}@{tail}'$"):
            resolve_metrics(metrics=[f"{family}@{tail}"])


@pytest.mark.parametrize("name", ["recall@²", "map@²", "precision@٣"])
def test_a_cut_off_in_non_ascii_digits_is_a_bad_metric_not_a_crash(name):
    """``str.isdigit`` accepts '²' and Arabic-Indic digits, which ``int`` refuses (a ValueError traceback): the
    cut-off must be ASCII digits, one ConfigError naming the metric."""
    q = np.eye(2)
    with pytest.raises(ConfigError, match=f"bad metric '{name}'|unknown retrieval metric '{name}'"):
        evaluate_embeddings(q, [0, 1], metrics=[name])
