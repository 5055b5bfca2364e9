"""The torch-device ranking engine (run here on the CPU) equals the CPU engine; device selection and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynametric.errors import ConfigError
from dynametric.metrics import evaluate_embeddings
from dynametric.metrics.torch_engine import plan_device_rows, resolve_device

ALL_RANK = ["recall@K", "precision@K", "map@K", "r_precision", "map@r", "map", "asi"]


def _data(seed: int, n: int, dim: int, nested: bool, levels: int = 4):
    """Embeddings on a coarse integer grid (heavy exact score ties, duplicates) and 3-scale labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-levels, levels + 1, (n, dim)).astype(np.float32)
    x[5:9] = x[0]  # exact duplicates
    fine = rng.integers(0, n // 4, n)
    if nested:
        mid = fine % 7
        coarse = mid % 3
    else:
        mid = rng.integers(0, 6, n)
        coarse = rng.integers(0, 3, n)
    return x, np.stack([fine, mid, coarse], 1)


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for scale in a:
        assert list(a[scale]) == list(b[scale]), scale
        for key, va in a[scale].items():
            vb = b[scale][key]
            if isinstance(va, float) and math.isnan(va):
                assert math.isnan(vb), (scale, key)
            else:
                assert va == pytest.approx(vb, rel=1e-12, abs=1e-14), (scale, key, va, vb)


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", ["loo", "loo_ids", "qg", "qg_ids"])
def test_torch_engine_equals_cpu_engine(nested, distance, protocol):
    x, lab = _data(len(protocol) + 10 * nested + 100 * (distance == "cosine"), 200, 3, nested)
    kw = dict(metrics=ALL_RANK, k_values=(1, 3, 10), distance=distance,
              empty_queries="count_as_zero" if protocol.endswith("ids") else "exclude")
    rng = np.random.default_rng(1)
    if protocol.startswith("loo"):
        args = (x, lab)
        if protocol == "loo_ids":
            kw["query_ids"] = list(rng.integers(0, 80, len(x)))
    else:
        args = (x[:80], lab[:80], x[80:], lab[80:])
        if protocol == "qg_ids":
            kw["query_ids"] = list(rng.integers(0, 40, 80))
            kw["gallery_ids"] = list(rng.integers(0, 40, 120))
    want, want_pq = evaluate_embeddings(*args, **kw, per_query=True)
    for budget in (None, 900_000):  # everything in one chunk; 64-row chunks and a partial last one
        got, got_pq = evaluate_embeddings(*args, **kw, memory_budget_bytes=budget, ranking_engine="torch",
                                          per_query=True)
        _same(want, got)
        for scale in want_pq:
            assert np.array_equal(want_pq[scale]["num_relevant"], got_pq[scale]["num_relevant"])
            for m, arr in want_pq[scale].items():
                np.testing.assert_allclose(got_pq[scale][m], arr, rtol=1e-12, atol=1e-14, equal_nan=True)


def test_torch_engine_one_row_chunks():
    x, lab = _data(7, 40, 2, False)
    want = evaluate_embeddings(x, lab, metrics=ALL_RANK, k_values=(1, 3), distance="euclidean")
    _same(want, evaluate_embeddings(x, lab, metrics=ALL_RANK, k_values=(1, 3), distance="euclidean",
                                    ranking_engine="torch", memory_budget_bytes=1))


@pytest.mark.parametrize("metrics", [["recall@K", "r_precision", "map@r", "asi"], ["recall@K", "precision@K"]])
def test_torch_top_path_with_ties_equals_cpu(metrics):
    # no `map`: the top-k path; duplicates and a coarse grid make the cap-th and (cap+1)-th scores tie often
    x, lab = _data(3, 100, 2, True, levels=2)
    lab = lab[:, :1]  # small classes: a small cap
    for k in [(1, 2), (1, 7, 40)]:
        want = evaluate_embeddings(x, lab, metrics=metrics, k_values=k)
        got = evaluate_embeddings(x, lab, metrics=metrics, k_values=k, ranking_engine="torch",
                                  memory_budget_bytes=400_000)
        _same(want, got)


@pytest.mark.parametrize("protocol", ["loo", "qg"])
def test_top_path_redoes_tied_rows_in_groups_the_budget_holds(monkeypatch, protocol):
    """Collapsed embeddings (early training): every row's cap-th and (cap+1)-th scores tie, so the top path redoes
    every row with a full sort (~32 bytes per score next to the chunk's 4). Those sorts are split so that they fit
    the budget (one sort of all a chunk's tied rows took 2.6x the budget), and the values still equal the CPU
    engine's (tie rule: score, then gallery index)."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((6, 3)).astype(np.float32)
    x = np.repeat(base, 100, axis=0)  # 600 items, 100 identical copies of each of 6 embeddings
    perm = rng.permutation(len(x))
    x = x[perm]
    lab = np.stack([np.arange(len(x)) // 4, np.arange(len(x)) // 40], 1)[perm]
    kw = dict(metrics=["recall@K", "precision@K", "r_precision", "map@r"], k_values=(1, 2, 4, 8))
    args = (x, lab) if protocol == "loo" else (x[:150], lab[:150], x[150:], lab[150:])
    nq, ng = args[0].shape[0], args[-2].shape[0]
    want, want_pq = evaluate_embeddings(*args, **kw, per_query=True)
    budget = 400_000
    cap = 39 if protocol == "loo" else 40  # the largest R_q (coarse classes of 40): the top path
    chunk = plan_device_rows(nq, ng, cap, False, budget)
    sorted_rows: list[int] = []
    real_sort = torch.sort

    def sort_spy(t, *a, **k):
        if t.dim() == 2 and t.shape[1] == ng:  # a whole row's sort: the tied-row redo
            sorted_rows.append(t.shape[0])
        return real_sort(t, *a, **k)

    monkeypatch.setattr(torch, "sort", sort_spy)
    got, got_pq = evaluate_embeddings(*args, **kw, per_query=True, ranking_engine="torch", memory_budget_bytes=budget)
    monkeypatch.undo()
    _same(want, got)
    for scale in want_pq:
        for m, arr in want_pq[scale].items():
            np.testing.assert_allclose(got_pq[scale][m], arr, rtol=1e-12, atol=1e-14, equal_nan=True)
    assert sum(sorted_rows) == nq  # every row tied (99 or more copies score the same)
    assert 4 * chunk * ng + 32 * max(sorted_rows) * ng <= budget, (chunk, max(sorted_rows))
    assert len(sorted_rows) > -(-nq // chunk)  # more sorts than chunks: the tied rows of a chunk were split


def test_resort_plan_fits_the_budget_next_to_the_chunk():
    from dynametric.metrics.torch_engine import plan_resort_rows

    for ng, budget, slots in ((600, 400_000, 40), (60502, None, 7000), (10**5, 64 * 2**20, 8)):
        chunk = plan_device_rows(ng, ng, slots, False, budget)
        t = plan_resort_rows(chunk, ng, budget)
        full = 7 * 2**29 if budget is None else budget
        assert 4 * chunk * ng + 32 * t * ng <= full < 4 * chunk * ng + 32 * (t + 1) * ng or t == chunk
        assert 4 * t >= chunk  # at least a quarter of a chunk at once
    assert plan_resort_rows(64, 10**6, 1) == 1  # a budget below one row: one row at a time
    assert plan_resort_rows(5, 100, 10**9) == 5  # never more than the chunk


def test_torch_engine_tie_rule_by_hand():
    # distances 1,1,1,2,3 from the query -> ranking g0, g1, g2, g3, g4 by index; relevant at ranks 1, 4, 5
    q = np.array([[0.0]], dtype=np.float32)
    g = np.array([[1.0], [-1.0], [1.0], [-2.0], [3.0]], dtype=np.float32)
    gl = np.array([5, 6, 6, 5, 5])
    for engine in ("cpu", "torch"):
        out = evaluate_embeddings(q, np.array([5]), g, gl, distance="euclidean", k_values=(1, 2, 4),
                                  metrics=["recall@K", "precision@K", "map@K", "map"], ranking_engine=engine)["fine"]
        assert out["recall@1"] == 1.0 and out["recall@4"] == 1.0
        assert out["precision@2"] == 0.5 and out["precision@4"] == pytest.approx(2 / 3)  # 2 hits / min(4, R=3)
        assert out["map@2"] == 1.0  # (1/1) * (1/1): one relevant item in the top 2 (open-metric-learning's map@k)
        assert out["map@4"] == pytest.approx((1 + 2 / 4) / 2)  # two relevant items in the top 4
        assert out["map"] == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)


def test_zero_scores_tie_by_index():
    # several candidates score exactly 0 (+0.0 or -0.0, as the BLAS sums them): one score, ties by gallery index.
    # The products are exact in float32 under any summation order (0.6 * 0.8 - 0.8 * 0.6 is not: a BLAS that
    # fuses the multiply-add returns +-7e-9 for it, and whether it does depends on the BLAS and the product's shape)
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.0, 1.0], [-0.0, -0.0], [-0.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    gl = np.array([0, 1, 1, 2])
    for engine in ("cpu", "torch"):
        out = evaluate_embeddings(q, np.array([1]), g, gl, metrics=["map"], ranking_engine=engine)["fine"]
        assert out["map"] == pytest.approx((1 / 3 + 2 / 4) / 2), engine  # ranks: g3, g0, g1, g2


def test_device_resolution():
    assert resolve_device(None) is None and resolve_device("cpu") is None
    assert resolve_device(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert resolve_device("auto") is None
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            resolve_device("cuda")
        with pytest.raises(ConfigError, match="key 'device': .*no CUDA GPU is available.*; use device='cpu' or "
                                              "'auto'$"):  # the library's argument, not the CLI's --device
            evaluate_embeddings(np.eye(3, dtype=np.float32), [0, 0, 1], device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu7")
    with pytest.raises(ConfigError, match="ranking_engine"):
        evaluate_embeddings(np.eye(3, dtype=np.float32), [0, 0, 1], ranking_engine="faiss")


def test_device_plan_fits_budget():
    from dynametric.metrics import DEFAULT_DEVICE_MEMORY_BUDGET

    assert DEFAULT_DEVICE_MEMORY_BUDGET <= 4 * 10**9  # the #13 device-peak target (4 GB) bounds the default
    rows = plan_device_rows(60502, 60502, 7000, True, None)
    per_row = 40 * 60502 + 64 * 7001 + 64
    assert rows % 64 == 0 and rows * per_row <= DEFAULT_DEVICE_MEMORY_BUDGET < (rows + 64) * per_row
    assert plan_device_rows(10, 10**6, 50, False, 1) == 1


def _brute_metrics(q, ql, g, gl, distance, k_values=(1, 4)):
    """Float64 brute force on the raw embeddings (one scale): recall@k, map@r, map, precision@k, map@k."""
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    if distance == "cosine":
        q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
        g64 /= np.linalg.norm(g64, axis=1, keepdims=True)
        score = q64 @ g64.T
    else:
        score = -((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)
    out: dict[str, list[float]] = {}
    for i in range(len(q)):
        order = np.lexsort((np.arange(len(g)), -score[i]))
        rel = (gl[order] == ql[i]).astype(np.float64)
        r = rel.sum()
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        vals = {"map@r": (rel[:int(r)] * prec[:int(r)]).sum() / r, "map": (rel * prec).sum() / r}
        for k in k_values:
            vals[f"recall@{k}"] = float(rel[:k].any())
            vals[f"precision@{k}"] = rel[:k].sum() / min(k, r)
            vals[f"map@{k}"] = (rel[:k] * prec[:k]).sum() / max(rel[:k].sum(), 1)
        for key, v in vals.items():
            out.setdefault(key, []).append(v)
    return {key: float(np.mean(v)) for key, v in out.items()}


@pytest.mark.parametrize("offset", [10.0, 100.0, 1000.0])
def test_euclidean_far_from_origin_matches_float64(offset):
    rng = np.random.default_rng(int(offset))
    centres = rng.standard_normal((12, 8))
    fine = rng.integers(0, 12, 240)
    x = (offset + centres[fine] + 0.7 * rng.standard_normal((240, 8))).astype(np.float32)
    q, g, ql, gl = x[:80], x[80:], fine[:80], fine[80:]
    want = _brute_metrics(q, ql, g, gl, "euclidean")
    metrics = ["recall@K", "precision@K", "map@K", "map@r", "map"]
    for engine in ("cpu", "torch"):
        got = evaluate_embeddings(q, ql, g, gl, distance="euclidean", metrics=metrics, k_values=(1, 4),
                                  ranking_engine=engine)["fine"]
        for key, v in want.items():
            assert got[key] == pytest.approx(v, abs=1e-12), (engine, key)
    if offset == 1000.0:  # the test can fail: float32 2<q,g> - ||g||^2 on the raw embeddings misorders here
        s = 2.0 * (q @ g.T) - (g * g).sum(1)[None, :]
        rank1 = np.lexsort((np.broadcast_to(np.arange(len(g)), s.shape), -s), axis=1)[:, 0]
        assert float((gl[rank1] == ql).mean()) != want["recall@1"]


@pytest.mark.parametrize("scale", [1e19, 1e-13, 1e-30])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_extreme_magnitudes_are_exact(scale, distance):
    rng = np.random.default_rng(5)
    fine = rng.integers(0, 10, 160)
    base = (rng.standard_normal((10, 6))[fine] + 0.5 * rng.standard_normal((160, 6)))
    base *= rng.uniform(0.2, 5.0, (160, 1))  # different norms: cosine must really normalise
    x = (base * scale).astype(np.float32)
    assert np.isfinite(x).all() and (np.abs(x) > 0).all()
    q, g, ql, gl = x[:60], x[60:], fine[:60], fine[60:]
    want = _brute_metrics(q, ql, g, gl, distance)
    for engine in ("cpu", "torch"):
        got = evaluate_embeddings(q, ql, g, gl, distance=distance, metrics=["recall@K", "map@r", "map"],
                                  k_values=(1, 4), ranking_engine=engine)["fine"]
        for key in ("recall@1", "recall@4", "map@r", "map"):
            assert got[key] == pytest.approx(want[key], abs=1e-12), (engine, key)


def test_engines_on_the_cpu_rank_the_same_products_at_512_dimensions():
    # 512-d embeddings: two BLAS libraries round some products of this length differently (MKL and OpenBLAS did on
    # the machine that wrote this), which flips near-tied rankings (values 4.6e-8 apart on this data when the CPU
    # engine multiplied with numpy's OpenBLAS for a while); every CPU path multiplies with torch's, so they agree
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 512)).astype(np.float32)
    fine = rng.integers(0, 150, 1500)
    labels = np.stack([fine, fine // 10, fine // 50], 1)
    want, want_pq = evaluate_embeddings(x, labels, metrics=ALL_RANK, per_query=True, ranking_engine="cpu")
    got, got_pq = evaluate_embeddings(x, labels, metrics=ALL_RANK, per_query=True, ranking_engine="torch")
    _same(want, got)
    for scale in want_pq:
        for m, arr in want_pq[scale].items():
            np.testing.assert_allclose(got_pq[scale][m], arr, rtol=1e-12, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("loo", [False, True])
def test_cosine_in_a_narrow_cone_matches_float64(loo):
    """Directions in a narrow cone (offset 1,000, spread 0.01): float32 cosines of near neighbours round to the same
    values next to 1; the engine ranks the centred unit rows by Euclidean distance instead (the same ranking)."""
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((12, 8))
    fine = rng.integers(0, 12, 240)
    x = (1000.0 + 0.01 * (centres[fine] + 0.7 * rng.standard_normal((240, 8)))).astype(np.float32)
    metrics = ["recall@K", "precision@K", "map@K", "map@r", "map"]
    if loo:
        q64 = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        score = q64 @ q64.T
        np.fill_diagonal(score, -np.inf)
        want = {}
        for k in (1, 4):  # leave-one-out recall@k from the float64 ranking (self last, ties by index)
            order = np.lexsort((np.broadcast_to(np.arange(len(x)), score.shape), -score), axis=1)
            want[f"recall@{k}"] = float((fine[order[:, :k]] == fine[:, None]).any(1).mean())
        args: tuple = (x, fine)
    else:
        q, g, ql, gl = x[:80], x[80:], fine[:80], fine[80:]
        want = _brute_metrics(q, ql, g, gl, "cosine")
        args = (q, ql, g, gl)
    for engine in ("cpu", "torch"):
        got = evaluate_embeddings(*args, distance="cosine", metrics=metrics, k_values=(1, 4),
                                  ranking_engine=engine)["fine"]
        for key, v in want.items():
            assert got[key] == pytest.approx(v, abs=1e-12), (engine, key)
    # the test can fail: ranked by float32 cosines of the unit rows, recall@1 is far off
    from dynametric.metrics.engine import prepare_for_ranking

    qn, gn, scoring = prepare_for_ranking("cosine", torch.from_numpy(x[:80]), torch.from_numpy(x[80:]),
                                          narrow_cone=False)
    assert scoring == "cosine"
    s = (qn @ gn.T).numpy()
    rank1 = np.lexsort((np.broadcast_to(np.arange(160), s.shape), -s), axis=1)[:, 0]
    assert abs(float((fine[80:][rank1] == fine[:80]).mean()) - _brute_metrics(
        x[:80], fine[:80], x[80:], fine[80:], "cosine")["recall@1"]) > 0.05


def test_narrow_cone_switch_only_where_needed():
    from dynametric.metrics.engine import NARROW_CONE_SPREAD, _cone_spread, _unit_rows, prepare_for_ranking

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
    q, g, scoring = prepare_for_ranking("cosine", x)
    assert scoring == "cosine" and q is g and torch.equal(q, _unit_rows(x))  # ordinary data: unchanged
    narrow = 100.0 + 0.01 * x
    q, g, scoring = prepare_for_ranking("cosine", narrow)
    assert scoring == "euclidean" and q is g
    u = narrow.double() / narrow.double().norm(dim=1, keepdim=True)
    spread = float((u - u.mean(0)).norm(dim=1).pow(2).mean().sqrt())
    assert spread < NARROW_CONE_SPREAD and float(q.abs().max()) >= 0.5  # centred, scaled
    assert _cone_spread(_unit_rows(narrow)) < NARROW_CONE_SPREAD / 10  # float32 column sums: coarse next to 0
    for width in (0.5, 1.0, 2.0):  # but accurate to a few percent near the threshold
        near = (3.0 + width * NARROW_CONE_SPREAD * torch.randn(300, 16)).double()
        un = near / near.norm(dim=1, keepdim=True)
        exact = float((un - un.mean(0)).norm(dim=1).pow(2).mean().sqrt())
        assert _cone_spread(_unit_rows(near.float())) == pytest.approx(exact, rel=0.03)
    assert _cone_spread(_unit_rows(x)) == pytest.approx(float((_unit_rows(x).double() - _unit_rows(x).double().mean(0))
                                                              .norm(dim=1).pow(2).mean().sqrt()), rel=1e-5)
    assert prepare_for_ranking("cosine", torch.cat([narrow, torch.zeros(1, 16)]))[2] == "cosine"  # a zero row
    assert prepare_for_ranking("cosine", narrow, narrow[:50])[2] == "euclidean"
    assert prepare_for_ranking("cosine", narrow, narrow[:50], narrow_cone=False)[2] == "cosine"


def test_fnmr_in_a_narrow_cone_reports_the_unit_rows_distances():
    rng = np.random.default_rng(4)
    fine = rng.integers(0, 6, 120)
    x = (50.0 + 0.01 * (rng.standard_normal((6, 8))[fine] + rng.standard_normal((120, 8)))).astype(np.float32)
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((u[:, None, :] - u[None, :, :]) ** 2).sum(-1), 0))
    same = fine[:, None] == fine[None, :]
    off = ~np.eye(len(x), dtype=bool)
    for p in (1, 10, 50):  # float32 cosines (all next to 1) gave 1.0 at every p here
        thr = np.percentile(d[~same & off], p)
        want = float((d[same & off] >= thr).mean())
        for engine in ("cpu", "torch"):
            got = evaluate_embeddings(x, fine, distance="cosine", metrics=[f"fnmr@fmr={p}"],
                                      ranking_engine=engine)["fine"][f"fnmr@fmr={p}"]
            assert got == pytest.approx(want, abs=1e-12), (p, engine)


def test_scale_sources_and_excluded_counts_by_hand():
    from dynametric.metrics.engine import RankingProblem
    from dynametric.metrics.torch_engine import excluded_counts, scale_sources

    # fine determines coarse; middle does not (middle 0 holds coarse 0 and 1)
    ql = torch.tensor([[0, 0, 0], [1, 0, 1]])
    gl = torch.tensor([[0, 0, 0], [2, 1, 1], [1, 0, 1], [3, 1, 0]])
    assert scale_sources(ql, gl) == [2, 1, 2]
    assert scale_sources(ql[:, [0, 2]], gl[:, [0, 2]]) == [1, 1]
    x = torch.zeros((4, 2))
    loo = RankingProblem(x, x, gl, gl, leave_one_out=True)
    assert excluded_counts(loo).tolist() == [1, 1, 1, 1]
    ids = torch.tensor([7, 3, 7, 7])
    loo_ids = RankingProblem(x, x, gl, gl, leave_one_out=True, query_codes=ids, gallery_codes=ids)
    assert excluded_counts(loo_ids).tolist() == [3, 1, 3, 3]
    qg = RankingProblem(x[:2], x, ql, gl, query_codes=torch.tensor([3, 5]), gallery_codes=ids)
    assert excluded_counts(qg).tolist() == [1, 0]
    assert excluded_counts(RankingProblem(x[:2], x, ql, gl)).tolist() == [0, 0]


@pytest.mark.parametrize("protocol", ["loo", "loo_ids", "qg_ids"])
def test_partly_nested_four_scales_equal_cpu_engine(protocol):
    # scales 0 and 2 determine the coarsest label, scale 1 does not: the torch engine searches the coarsest scale
    # once for scales 0, 2 and 3, and scale 1 on its own
    rng = np.random.default_rng(11)
    n = 180
    x = rng.integers(-3, 4, (n, 3)).astype(np.float32)
    fine = rng.integers(0, 40, n)
    coarse = fine % 3
    lab = np.stack([fine, rng.integers(0, 5, n), fine % 6, coarse], 1)
    kw = dict(metrics=ALL_RANK, k_values=(1, 5), empty_queries="count_as_zero")
    if protocol == "loo":
        args = (x, lab)
    elif protocol == "loo_ids":
        args = (x, lab)
        kw["query_ids"] = list(rng.integers(0, 50, n))
    else:
        args = (x[:60], lab[:60], x[60:], lab[60:])
        kw["query_ids"] = list(rng.integers(0, 30, 60))
        kw["gallery_ids"] = list(rng.integers(0, 30, n - 60))
    want = evaluate_embeddings(*args, **kw)
    for budget in (None, 700_000):
        _same(want, evaluate_embeddings(*args, **kw, ranking_engine="torch", memory_budget_bytes=budget))


# ------------------------------------------------------------------ the count method (DYNAMETRIC_TORCH_FULL_RANKING)
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("protocol", ["loo", "loo_ids", "qg", "qg_ids"])
def test_count_method_equals_sort_method_and_cpu_engine(monkeypatch, nested, protocol):
    # heavy exact ties and duplicates (integer grid), excluded items inside the query's class (self, shared ids),
    # labels of the queries that no gallery item has (qg), chunks of every size down to one row
    from dynametric.metrics.torch_engine import FULL_RANKING_ENV

    x, lab = _data(7 + len(protocol) + 10 * nested, 160, 3, nested, levels=2)
    distance = "euclidean" if protocol in ("loo_ids", "qg") else "cosine"
    kw = dict(metrics=ALL_RANK, k_values=(1, 3, 10), distance=distance, empty_queries="count_as_zero")
    rng = np.random.default_rng(2)
    if protocol.startswith("loo"):
        args = (x, lab)
        if protocol == "loo_ids":
            kw["query_ids"] = list(rng.integers(0, 50, len(x)))
    else:
        lab_q = lab[:60].copy()
        lab_q[:3, 0] = 10**6  # a fine label no gallery item has
        args = (x[:60], lab_q, x[60:], lab[60:])
        if protocol == "qg_ids":
            kw["query_ids"] = list(rng.integers(0, 30, 60))
            kw["gallery_ids"] = list(rng.integers(0, 30, 100))
    want, want_pq = evaluate_embeddings(*args, **kw, per_query=True)
    monkeypatch.setenv(FULL_RANKING_ENV, "sort")
    sort = evaluate_embeddings(*args, **kw, ranking_engine="torch", per_query=True)
    monkeypatch.setenv(FULL_RANKING_ENV, "count")
    for budget in (None, 900_000, 1):
        got, got_pq = evaluate_embeddings(*args, **kw, memory_budget_bytes=budget, ranking_engine="torch",
                                          per_query=True)
        _same(want, got)
        for scale in want_pq:
            for m, arr in want_pq[scale].items():
                # same ranks; the float64 row sums may differ in the last bit (other chunk rows: other alignment)
                np.testing.assert_allclose(got_pq[scale][m], sort[1][scale][m], rtol=1e-13, atol=1e-15,
                                           equal_nan=True, err_msg=f"{scale} {m}")
                np.testing.assert_allclose(got_pq[scale][m], arr, rtol=1e-12, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("protocol", ["loo", "loo_ids", "qg_ids"])
def test_count_method_partly_nested_four_scales(monkeypatch, protocol):
    from dynametric.metrics.torch_engine import FULL_RANKING_ENV

    monkeypatch.setenv(FULL_RANKING_ENV, "count")
    test_partly_nested_four_scales_equal_cpu_engine(protocol)


def test_pair_keys_order_by_hand():
    from dynametric.metrics.torch_engine import _NEG_INF_KEY, _pair_keys

    # descending score, ties by ascending index; +0.0 and -0.0 are one score; -inf (excluded) last
    s = torch.tensor([[0.5, -0.0, 0.0, float("-inf"), 0.5, -1.0, 2.0**-140]])
    keys = _pair_keys(s.clone())
    assert torch.argsort(keys[0]).tolist() == [0, 4, 6, 1, 2, 5, 3]
    assert (keys[0] % 2**32).tolist() == list(range(7))  # the column in the low bits
    assert keys[0, 1] // 2**32 == keys[0, 2] // 2**32  # one key for both zeros
    assert (keys[0] >= _NEG_INF_KEY).tolist() == [False, False, False, True, False, False, False]


def test_count_ranks_by_hand():
    from dynametric.metrics.torch_engine import _count_ranks, _pair_keys

    # two rows over 6 items; each row's candidates are a range of `order` (items 1, 3, 4 / item 5 / none)
    s = torch.tensor([[0.9, 0.2, 0.9, 0.2, 0.95, 0.1],
                      [0.0, 0.3, 0.3, 0.3, 0.3, 0.3]])
    keys = _pair_keys(s.clone())
    order = torch.tensor([1, 3, 4, 5, 0, 2])
    lo, hi = torch.tensor([0, 3]), torch.tensor([3, 4])
    sorted_keys, ranks = _count_ranks(keys, order, lo, hi, 3)
    # row 0 ranking: 4 (0.95), 0, 2 (0.9), 1, 3 (0.2), 5 -> candidates 4, 1, 3 at ranks 1, 4, 5
    assert (sorted_keys[0] % 2**32).tolist() == [4, 1, 3] and ranks[0].tolist() == [1, 4, 5]
    # row 1 ranking: 1, 2, 3, 4, 5 (0.3, by index), 0 -> candidate 5 at rank 5; two padding slots
    assert (sorted_keys[1, 0] % 2**32).item() == 5 and ranks[1, 0].item() == 5
    assert (sorted_keys[1, 1:] == torch.iinfo(torch.int64).max).all()


def test_full_ranking_method_from_the_environment(monkeypatch):
    from dynametric.metrics.torch_engine import FULL_RANKING_ENV, full_ranking_method

    monkeypatch.delenv(FULL_RANKING_ENV, raising=False)
    assert full_ranking_method() == "sort"
    monkeypatch.setenv(FULL_RANKING_ENV, " Count ")
    assert full_ranking_method() == "count"
    monkeypatch.setenv(FULL_RANKING_ENV, "radix")
    with pytest.raises(ConfigError, match=f"key '{FULL_RANKING_ENV}': expected one of sort, count, got 'radix'"):
        evaluate_embeddings(np.eye(3, dtype=np.float32), [0, 0, 1], metrics=["recall@K"], ranking_engine="torch")


def test_device_plan_of_the_count_method_fits_budget():
    rows = plan_device_rows(60502, 60502, 7000, True, None, "count")
    per_row = 32 * 60502 + 128 * 7001 + 64
    from dynametric.metrics import DEFAULT_DEVICE_MEMORY_BUDGET

    assert rows % 64 == 0 and rows * per_row <= DEFAULT_DEVICE_MEMORY_BUDGET < (rows + 64) * per_row


def test_the_torch_engine_on_the_cpu_defaults_to_the_cpu_engine_s_host_budget(monkeypatch):
    """With no budget, the torch engine run on the CPU planned its chunks for the GPU default (3.5 GiB of host
    memory: a 1.67 GB peak at 15,000 items); it now takes the CPU engine's 768 MiB. A given budget is kept."""
    import dynametric.metrics.torch_engine as te
    from dynametric.metrics.engine import DEFAULT_MEMORY_BUDGET

    seen = []
    plan = te.plan_device_rows
    monkeypatch.setattr(te, "plan_device_rows", lambda *a: seen.append(a[4]) or plan(*a))
    rng = np.random.default_rng(3)
    emb, labels = torch.from_numpy(rng.standard_normal((40, 4)).astype(np.float32)), torch.arange(40) // 4
    evaluate_embeddings(emb, labels, ranking_engine="torch")
    evaluate_embeddings(emb, labels, ranking_engine="torch", memory_budget_bytes=12345)
    assert seen == [DEFAULT_MEMORY_BUDGET, 12345]
    assert DEFAULT_MEMORY_BUDGET == 768 * 2**20 < te.DEFAULT_DEVICE_MEMORY_BUDGET
