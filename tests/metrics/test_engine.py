"""The ranking engine's two exact paths, tie-break, chunk planning and memory-budget invariance."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings, plan_chunk_rows
from dynametric.metrics.engine import rank_candidates
from dynametric.metrics.products import GalleryProducts


def _brute_ranks(scores, cols):
    out = np.zeros(cols.shape, dtype=np.int64)
    n = scores.shape[1]
    for r in range(scores.shape[0]):
        order = np.lexsort((np.arange(n), -scores[r].astype(np.float64)))
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(1, n + 1)
        out[r] = pos[cols[r]]
    return out


@pytest.mark.parametrize("path", ["merge", "auto"])
def test_rank_paths_are_exact_with_many_ties(path):
    rng = np.random.default_rng(0)
    scores = (rng.integers(-4, 5, (13, 50)) / 4.0).astype(np.float32)  # heavy ties, incl. -0.0 below
    scores[0, :5] = -0.0
    scores[1, 3] = -np.inf  # an excluded item
    cols = np.stack([rng.permutation(50)[:20] for _ in range(13)])
    valid = rng.random((13, 20)) < 0.9
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path=path)
    want = _brute_ranks(scores + 0.0, cols)  # +0.0: -0.0 and 0.0 are the same score
    assert np.array_equal(got.numpy(), np.where(valid, want, 0))


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("nan")])
def test_overflowing_scores_raise(bad):
    scores = torch.tensor([[1.0, 0.25, 0.5], [0.0, bad, 0.5]])  # NaN of either sign: one end of the merge sort
    for path in ("merge", "top"):
        with pytest.raises(InputError, match="overflow"):
            rank_candidates(scores, torch.tensor([[0], [0]]), torch.tensor([[True], [True]]), path=path, rank_cap=2)


@pytest.mark.parametrize("seed", range(12))
def test_merge_path_equals_brute_force_on_random_tie_patterns(seed, monkeypatch):
    # random sizes, tie densities (a few distinct values up to none), signed zeros, -inf exclusions, candidate
    # fractions and group sizes; every route of the merge path against a float64 lexsort
    import dynametric.metrics.engine as engine

    rng = np.random.default_rng(100 + seed)
    c, n = int(rng.integers(1, 30)), int(rng.integers(1, 400))
    levels = [3, 17, 1000, 0][seed % 4]
    scores = (rng.integers(-levels, levels + 1, (c, n)) / 7.0 if levels else rng.standard_normal((c, n)))
    scores = scores.astype(np.float32)
    scores[rng.random((c, n)) < 0.05] = -0.0
    scores[rng.random((c, n)) < 0.05] = -np.inf
    u = int(rng.integers(1, n + 1))
    cols = np.stack([rng.permutation(n)[:u] for _ in range(c)])
    valid = rng.random((c, u)) < rng.uniform(0.3, 1.0)
    valid &= np.take_along_axis(scores, cols, 1) > -np.inf  # excluded items are never candidates
    monkeypatch.setattr(engine, "_GROUP_KEY_BYTES", int(rng.integers(1, 64)) * 4 * n)
    monkeypatch.setattr(engine, "_TIE_SCANS", int(rng.integers(0, 20)))
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path="merge")
    assert np.array_equal(got.numpy(), np.where(valid, _brute_ranks(scores + 0.0, cols), 0))


def test_excluded_items_at_minus_infinity_do_not_raise():
    scores = torch.tensor([[1.0, -float("inf"), 0.5, -float("inf")]])
    for path in ("merge", "top"):
        got = rank_candidates(scores, torch.tensor([[2, 0]]), torch.tensor([[True, True]]), path=path, rank_cap=3)
        assert got.tolist() == [[2, 1]]


def test_score_keys_order_exactly_and_decode_back():
    import dynametric.metrics.engine as engine

    rng = np.random.default_rng(3)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0], np.float32)
    s = np.concatenate([specials, rng.standard_normal(500).astype(np.float32),
                        rng.integers(-3, 4, 90).astype(np.float32)])[None, :]
    keys = engine._score_keys(s, np.empty(s.shape, np.float32), np.empty(s.shape, np.int32))[0].copy()
    f = s[0].astype(np.float64) + 0.0
    i, j = rng.integers(0, s.shape[1], (2, 20000))
    assert np.array_equal(keys[i] < keys[j], f[i] > f[j])  # ascending key = descending score
    assert np.array_equal(keys[i] == keys[j], f[i] == f[j])  # -0.0 and +0.0 are one key
    assert np.array_equal(engine._key_scores(keys), s[0] + np.float32(0.0))


@pytest.mark.parametrize("scans,packed_bits", [(0, 24), (16, 24), (10**6, 24), (16, 4)])
def test_merge_path_counts_ties_with_other_items_by_index(scans, packed_bits, monkeypatch):
    # candidates tied with non-candidates on both sides in index, both ways of counting ties: a scan per tied
    # candidate, one int64 sort of a row (scans 0, or rows with more than 16 tied candidates); candidates sorted as
    # packed keys of a whole group, or row by row (packed_bits too small for the gallery)
    import dynametric.metrics.engine as engine

    monkeypatch.setattr(engine, "_TIE_SCANS", scans)
    monkeypatch.setattr(engine, "_PACKED_INDEX_BITS", packed_bits)
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((40, 300)).astype(np.float32)
    scores[:, 100:160] = 0.5  # one long run of equal scores, candidates and not
    scores[::3, 200:230] = rng.integers(-3, 4, (14, 30)) / 8  # a few short runs in some rows
    scores[5] = 0.0  # a row of one score
    cols = np.stack([rng.permutation(300)[:80] for _ in range(40)])
    valid = rng.random((40, 80)) < 0.95
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path="merge")
    assert np.array_equal(got.numpy(), np.where(valid, _brute_ranks(scores, cols), 0))


def test_plan_chunk_rows_respects_budget():
    assert plan_chunk_rows(60502, 60502) * 10 * 60502 <= 768 * 2**20
    assert plan_chunk_rows(60502, 60502, max_candidates=16) % 64 == 0  # whole score-grid blocks
    assert plan_chunk_rows(100, 60502, memory_budget_bytes=1) == 1
    assert plan_chunk_rows(5, 10, memory_budget_bytes=10**9) == 5
    big_u = plan_chunk_rows(60502, 60502, max_candidates=7000, num_scales=3)
    assert big_u < plan_chunk_rows(60502, 60502, max_candidates=10, num_scales=3)


@pytest.mark.parametrize("metrics", [None, ["recall@K", "r_precision", "map@r", "asi"]])
def test_budget_never_changes_a_score_bit(metrics):
    # 700 x 2 embeddings: many near-ties, so a score computed with other bits (BLAS kernels differ for products of
    # a few rows) would flip rankings; scores come from a fixed 64-row grid whatever the chunk size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 2)).astype(np.float32)
    fine = rng.integers(0, 100, 700)
    labels = np.stack([fine, fine % 7, fine % 3], 1)
    ref = evaluate_embeddings(x, labels, metrics=metrics)
    for budget in (1, 3000, 100_000, 10**6):
        assert evaluate_embeddings(x, labels, metrics=metrics, memory_budget_bytes=budget) == ref
    ref_qg = evaluate_embeddings(x[:90], labels[:90], x, labels, metrics=metrics)
    for budget in (1, 50_000):
        got = evaluate_embeddings(x[:90], labels[:90], x, labels, metrics=metrics, memory_budget_bytes=budget)
        assert got == ref_qg


def test_memory_budget_does_not_change_results():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 4)).astype(np.float32)
    x[10] = x[20]  # exact duplicates
    fine = rng.integers(0, 30, 150)
    labels = np.stack([fine, fine % 5, fine % 2], 1)
    ref = evaluate_embeddings(x, labels)
    for budget in (1, 5000, 123457, 10**8):
        out = evaluate_embeddings(x, labels, memory_budget_bytes=budget)
        assert out == ref  # bit-identical: per-query values are summed exactly (math.fsum)


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_top_path_is_exact_up_to_the_cap_with_many_ties(cap):
    rng = np.random.default_rng(cap)
    scores = (rng.integers(-4, 5, (13, 50)) / 4.0).astype(np.float32)  # heavy ties at the top-k boundary
    scores[1, 3] = -np.inf
    cols = np.stack([rng.permutation(50)[:20] for _ in range(13)])
    valid = rng.random((13, 20)) < 0.9
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path="top",
                          rank_cap=cap)
    want = np.minimum(_brute_ranks(scores + 0.0, cols), cap + 1)
    assert np.array_equal(got.numpy(), np.where(valid, want, 0))


def test_metrics_without_full_map_use_the_top_path_and_agree():
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((120, 4)), 1).astype(np.float32)  # rounded: tied scores
    labels = np.stack([rng.integers(0, 40, 120), rng.integers(0, 40, 120) // 10], 1)
    fast_metrics = ["recall@1", "recall@4", "r_precision", "map@r", "asi"]
    fast = evaluate_embeddings(x, labels, metrics=fast_metrics + [], k_values=(1, 4))
    full = evaluate_embeddings(x, labels, metrics=fast_metrics + ["map"], k_values=(1, 4))
    for scale in ("fine", "coarse", "mean"):
        for m in fast_metrics:
            assert fast[scale][m] == full[scale][m], (scale, m)


def test_range_candidates_of_a_group_leave_out_the_query_itself():
    import dynametric.metrics.engine as engine

    order = np.array([3, 0, 4, 1, 2])  # gallery sorted by class: class A = {3, 0}, class B = {4, 1, 2}
    cands = engine._RangeCandidates(order, np.array([0, 2, 2, 0]), np.array([2, 5, 5, 2]), np.array([1, 3, -1, 0]))
    assert cands.counts().tolist() == [1, 2, 3, 1]
    assert cands.group(0, 4).tolist() == [3, 4, 2, 4, 1, 2, 0]
    assert cands.group(1, 3).tolist() == [4, 2, 4, 1, 2]


def test_range_and_column_candidates_agree_with_brute_force(monkeypatch):
    import dynametric.metrics.engine as engine
    from tests.metrics.reference import brute_force

    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal((120, 3)), 1).astype(np.float32)  # ties
    fine = rng.integers(0, 30, 120)
    labels = np.stack([fine, fine % 6, fine % 3], 1)
    calls = []
    real = engine._merged_ranks
    monkeypatch.setattr(engine, "_merged_ranks", lambda *a, **k: calls.append(type(a[1]).__name__) or real(*a, **k))
    from_ranges = evaluate_embeddings(x, labels)
    assert set(calls) == {"_RangeCandidates"}
    calls.clear()
    ids = [f"i{i}" for i in range(120)]  # ids that exclude only the query itself: columns instead of ranges
    from_columns = evaluate_embeddings(x, labels, query_ids=ids)
    assert set(calls) == {"_ColumnCandidates"}
    xt = engine.normalize_for("cosine", torch.from_numpy(x))
    scores = torch.empty(120, 120)
    engine._grid_product(xt, GalleryProducts(xt), 0, 120, scores)  # the engine's own float32 scores: exact
    ref = brute_force(x, labels, score=scores.numpy())
    for s, name in enumerate(["fine", "middle", "coarse"]):
        for m in ("map", "map@r", "r_precision", "recall@1", "asi"):
            assert from_ranges[name][m] == from_columns[name][m] == pytest.approx(ref[s][m], abs=1e-12), (name, m)


@pytest.mark.parametrize("distance,nested,with_ids,fast", [("cosine", True, False, False),
                                                         ("euclidean", False, True, True),
                                                         ("cosine", False, False, True)])
def test_exact_for_the_engines_own_float32_scores_on_near_tied_data(distance, nested, with_ids, fast):
    # low-dimensional data: many float32 near-ties; the reference ranks the engine's own float32 scores (same
    # 64-row product grid) by brute force, so any difference would be a ranking or metric error, not rounding
    from dynametric.metrics.engine import _grid_product, normalize_for
    from tests.metrics.reference import brute_force

    rng = np.random.default_rng(17)
    n = 450
    x = rng.standard_normal((n, 2)).astype(np.float32)
    fine = rng.integers(0, 60, n)
    labels = np.stack([fine, fine % 7, fine % 3], 1) if nested else np.stack(
        [fine, rng.integers(0, 5, n), rng.integers(0, 2, n)], 1)
    ids = [f"o{i % 300}" for i in range(n)] if with_ids else None
    xt = normalize_for(distance, torch.from_numpy(x))
    scores = torch.empty(n, n)
    _grid_product(xt, GalleryProducts(xt), 0, n, scores)
    if distance == "euclidean":
        scores.mul_(2.0).sub_((xt * xt).sum(1).unsqueeze(0))
    ref = brute_force(x, labels, distance=distance, query_ids=ids, score=scores.numpy())
    metrics = ["recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "asi"] + ([] if fast
                                                                                              else ["map"])
    out = evaluate_embeddings(x, labels, metrics=metrics, distance=distance, query_ids=ids)
    for s, name in enumerate(["fine", "middle", "coarse"]):
        for m in metrics:
            assert out[name][m] == pytest.approx(ref[s][m], abs=1e-12), (name, m)


def test_query_classes_absent_from_the_gallery_with_range_candidates():
    # query coarse class 0 is absent from the gallery: its empty range starts where class 1's range starts, and the
    # first query belongs to it (a pattern keyed by range start must not be the empty one)
    from tests.metrics.reference import brute_force

    rng = np.random.default_rng(0)
    g = rng.standard_normal((200, 4)).astype(np.float32)
    gc = rng.integers(1, 3, 200)
    gl = np.stack([gc * 10 + rng.integers(0, 5, 200), gc], 1)
    q = rng.standard_normal((30, 4)).astype(np.float32)
    qc = np.where(np.arange(30) < 5, 0, rng.integers(1, 3, 30))
    ql = np.stack([qc * 10 + rng.integers(0, 5, 30), qc], 1)
    out = evaluate_embeddings(q, ql, g, gl)
    ref = brute_force(q, ql, g, gl)
    for s, name in enumerate(["fine", "coarse"]):
        assert out[name]["map"] == pytest.approx(ref[s]["map"], abs=1e-9)
        assert out[name]["empty_queries"] == ref[s]["empty"] >= 5


@pytest.mark.parametrize("group_bytes", [1, 3 * 4 * 97, 64 * 2**20])
def test_merge_rows_in_any_group_size_give_the_same_results(group_bytes, monkeypatch):
    # groups of 2 (the minimum), 3 and 8 rows over 97 rows: partial last groups, every row ranked once
    import dynametric.metrics.engine as engine

    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (97, 6)).astype(np.float32)  # heavy ties
    fine = rng.integers(0, 20, 97)
    labels = np.stack([fine, fine % 5, fine % 2], 1)
    metrics = ["recall@K", "r_precision", "map@r", "map", "asi"]
    want = evaluate_embeddings(x, labels, metrics=metrics)
    monkeypatch.setattr(engine, "_GROUP_KEY_BYTES", group_bytes)
    calls = []
    real = engine._merged_ranks
    monkeypatch.setattr(engine, "_merged_ranks", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert engine._group_rows(97) == {1: 2, 3 * 4 * 97: 3, 64 * 2**20: 8}[group_bytes]
    assert evaluate_embeddings(x, labels, metrics=metrics) == want
    assert calls  # the merge path ran


def _count_in_a_new_thread() -> int:
    """torch's thread count as a thread started now sees it (its first torch call)."""
    import threading

    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_row_sorter_choice(monkeypatch):
    from dynametric.metrics import engine

    monkeypatch.setattr(engine, "numpy_sort_is_slow", lambda: True)
    monkeypatch.setattr(engine, "_torch_has_radix_sort", lambda: True)
    assert engine._row_sorter(19_999) == "numpy" and engine._row_sorter(20_000) == "torch"
    monkeypatch.setattr(engine, "_torch_has_radix_sort", lambda: False)  # torch would compare: slower than numpy
    assert engine._row_sorter(20_000) == "numpy"
    monkeypatch.setattr(engine, "_torch_has_radix_sort", lambda: True)
    monkeypatch.setattr(engine, "numpy_sort_is_slow", lambda: False)
    assert engine._row_sorter(20_000) == "numpy" and engine._row_sorter(10**6) == "numpy"


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_row_sorter_ranks_exactly_like_numpy(monkeypatch, threads):
    # the radix-sort route of slow-numpy CPUs (forced here at any size) must give the same sorted keys, hence the same
    # metrics per query, on heavily tied data (integer embeddings), and give torch its thread count back
    from dynametric.metrics import engine

    rng = np.random.default_rng(4)
    x = rng.integers(-3, 4, size=(900, 6)).astype(np.float32)
    fine = rng.integers(0, 60, 900)
    labels = np.stack([fine, fine // 6, fine // 20], 1)
    metrics = ("recall@1", "recall@4", "map@r", "map", "asi", "r_precision")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        want = {}
        for sorter in ("numpy", "torch"):
            monkeypatch.setattr(engine, "_row_sorter", lambda n, s=sorter: s)
            for distance in ("cosine", "euclidean"):
                got = evaluate_embeddings(x, labels, metrics=metrics, distance=distance, per_query=True)
                assert torch.get_num_threads() == threads and _count_in_a_new_thread() == threads
                if sorter == "numpy":
                    want[distance] = got
                    continue
                assert got[0] == want[distance][0]
                for scale, values in want[distance][1].items():
                    for m, arr in values.items():
                        np.testing.assert_array_equal(got[1][scale][m], arr)
    finally:
        torch.set_num_threads(before)


def test_torch_row_sorter_gives_the_thread_count_back_when_a_ranking_thread_fails(monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from dynametric.metrics import engine

    started = []
    real_sorter = engine._TorchRowSorter

    class SlowSecondSorter(real_sorter):  # the second ranking thread sets torch's count late
        def __init__(self, n):
            with lock:
                started.append(n)
                late = len(started) == 2
            if late:
                time.sleep(0.3)
            super().__init__(n)

    def failing_merge(*args, **kwargs):
        raise RuntimeError("ranking thread failed")

    lock = threading.Lock()
    monkeypatch.setattr(engine, "_row_sorter", lambda n: "torch")
    monkeypatch.setattr(engine, "_TorchRowSorter", SlowSecondSorter)
    monkeypatch.setattr(engine, "_merge_group", failing_merge)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((16, 50)).astype(np.float32)
    cands = engine._ColumnCandidates(np.tile(np.arange(5), (16, 1)), np.ones((16, 5), dtype=bool))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with ThreadPoolExecutor(2) as pool, pytest.raises(RuntimeError, match="ranking thread failed"):
            engine._merged_ranks(scores, cands, cands.counts(), pool, 2)
        assert len(started) == 2 and torch.get_num_threads() == 2
        assert _count_in_a_new_thread() == 2  # a thread started later does not inherit the ranking threads' 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pool_threads", [0, 2])
def test_torch_row_sorter_leaves_other_threads_counts_alone(monkeypatch, pool_threads):
    # the ranking threads sort with one torch thread, but a thread the caller starts while they rank (a service's
    # worker, say) begins with the caller's count, not 1 (torch.set_num_threads(1) in a ranking thread would set the
    # count every new thread starts from); the ranking thread itself (here also the caller's, without a pool) gets its
    # count back
    from concurrent.futures import ThreadPoolExecutor

    from dynametric.metrics import engine

    seen: list[tuple[int, int]] = []  # (the sorting thread's count, a thread started during the sort)
    real_call = engine._TorchRowSorter.__call__

    def call(self, keys, out):
        seen.append((torch.get_num_threads(), _count_in_a_new_thread()))
        real_call(self, keys, out)

    monkeypatch.setattr(engine, "_row_sorter", lambda n: "torch")
    monkeypatch.setattr(engine._TorchRowSorter, "__call__", call)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((16, 50)).astype(np.float32)
    cands = engine._ColumnCandidates(np.tile(np.arange(5), (16, 1)), np.ones((16, 5), dtype=bool))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        if pool_threads:
            with ThreadPoolExecutor(pool_threads) as pool:
                engine._merged_ranks(scores, cands, cands.counts(), pool, pool_threads)
        else:
            engine._merged_ranks(scores, cands, cands.counts(), None, 1)
        assert seen and all(s == (1, 2) for s in seen), seen
        assert torch.get_num_threads() == 2 and _count_in_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)


def test_own_thread_count_falls_back_where_no_openmp_runtime_is_found(monkeypatch):
    # without torch's OpenMP runtime the sorter falls back to torch.set_num_threads(1) and the caller's count is set
    # again afterwards (the older behaviour; a thread started during the sort then sees 1)
    from dynametric.metrics import engine

    monkeypatch.setattr(engine, "_torch_omp_setter", lambda: None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not engine._set_own_torch_threads(1) and torch.get_num_threads() == 2
        assert engine._set_own_torch_threads(2)  # nothing to change
        sorter = engine._TorchRowSorter(40)
        assert sorter.shared and torch.get_num_threads() == 1
        sorter.restore()  # the shared count is the caller's to set again
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.undo()
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        assert engine._torch_omp_setter() is not None  # torch's Linux wheels link OpenMP: the real route is taken


def test_label_determines_matches_brute_force():
    from dynametric.metrics.engine import label_determines

    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(0, 30))
        fine = rng.integers(-3, 8, n)
        coarse = rng.integers(0, 3, n) if trial % 2 else (fine * 7) % 4
        if trial % 5 == 0 and n:
            coarse[rng.integers(0, n)] += 1  # one item breaks a nesting
        want = all(len({int(c) for f2, c in zip(fine, coarse) if f2 == f}) == 1 for f in set(fine.tolist()))
        got = label_determines(torch.from_numpy(fine), torch.from_numpy(coarse))
        assert got == want, (fine.tolist(), coarse.tolist())


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("protocol", ["loo", "qg", "loo_ids"])
def test_every_scale_determines_the_coarsest_but_not_the_next(engine, protocol):
    # fine and middle each determine the coarsest label, but fine does not determine middle: a scale's relevant set
    # is not a subset of the next coarser scale's (the CPU engine filtered it from that set and lost relevant items)
    rng = np.random.default_rng(3)
    n = 150
    x = rng.integers(-2, 3, (n, 3)).astype(np.float32)
    fine = rng.integers(0, 30, n)
    coarse = fine % 3
    middle = 3 * rng.integers(0, 4, n) + coarse
    lab = np.stack([fine, middle, coarse], 1)
    kw = dict(metrics=["recall@K", "precision@K", "r_precision", "map@r", "map", "asi"], k_values=(1, 4),
              ranking_engine=engine)
    if protocol == "qg":
        args, cols = (x[:50], lab[:50], x[50:], lab[50:]), lambda s: (x[:50], lab[:50, s], x[50:], lab[50:, s])
    else:
        args, cols = (x, lab), lambda s: (x, lab[:, s])
    if protocol == "loo_ids":
        kw["query_ids"] = list(rng.integers(0, 60, n))
    both, per_query = evaluate_embeddings(*args, **kw, per_query=True)
    for s, name in enumerate(["fine", "middle", "coarse"]):
        alone, alone_pq = evaluate_embeddings(*cols(s), **kw, per_query=True)  # one scale: no chaining
        assert np.array_equal(per_query[name]["num_relevant"], alone_pq["fine"]["num_relevant"]), name
        for metric, value in alone["fine"].items():
            assert both[name][metric] == pytest.approx(value, rel=1e-12, abs=1e-14, nan_ok=True), (name, metric)
