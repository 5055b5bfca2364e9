"""Option values of ``evaluate_embeddings`` / ``kmeans_assign`` that numpy gives (``np.arange`` cut-offs, numpy
integer seeds and cut-offs) work as the Python ints; k-means counts that cannot be meant (``iters`` or ``restarts``
< 1) and non-integral seeds are one-line ``ConfigError`` s keyed by the argument (faiss and the torch k-means used to
give different NMI for them, or a raw SWIG / torch ``TypeError``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dynametric.errors import ConfigError
from dynametric.metrics import evaluate_embeddings, kmeans_assign

BACKENDS = ["torch"] + (["faiss"] if importlib.util.find_spec("faiss") is not None else [])


def _data(n: int = 48):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    fine = rng.integers(0, 6, n)
    return x, np.stack([fine, fine % 2], 1)


def test_numpy_k_values_give_the_int_k_values_result():
    x, y = _data()
    ours = evaluate_embeddings(x, y, metrics=["recall@K"], k_values=np.arange(1, 5))
    ints = evaluate_embeddings(x, y, metrics=["recall@K"], k_values=(1, 2, 3, 4))
    assert ours == ints
    assert list(ours["fine"])[:4] == ["recall@1", "recall@2", "recall@3", "recall@4"]
    assert ours["fine"]["recall@4"] >= ours["fine"]["recall@1"] > 0


def test_numpy_k_values_still_refuse_what_is_not_a_positive_integer():
    x, y = _data()
    with pytest.raises(ConfigError) as info:
        evaluate_embeddings(x, y, metrics=["recall@K"], k_values=np.array([1, 0]))
    assert str(info.value) == "key 'k_values': k_values must be positive integers, got 0"
    with pytest.raises(ConfigError) as info:
        evaluate_embeddings(x, y, metrics=["recall@K"], k_values=np.array([1.0, 2.0]))
    assert info.value.key == "k_values" and "(float64)" in str(info.value)


def test_a_numpy_asi_cutoff_is_the_int_cutoff():
    x, y = _data()
    ours = evaluate_embeddings(x, y, metrics=["asi"], asi_cutoff=np.int64(3))
    assert ours == evaluate_embeddings(x, y, metrics=["asi"], asi_cutoff=3)
    assert ours["fine"]["asi"] != evaluate_embeddings(x, y, metrics=["asi"])["fine"]["asi"]  # not R_q


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_numpy_kmeans_seed_gives_the_int_seed_result(backend):
    x, y = _data()
    kw = {"metrics": ["nmi", "f1"], "kmeans_backend": backend, "kmeans_restarts": 2}
    ours = evaluate_embeddings(x, y, kmeans_seed=np.int64(1), **kw)
    ints = evaluate_embeddings(x, y, kmeans_seed=1, **kw)
    assert ours == ints
    assert type(ours["fine"]["kmeans_seed"]) is int and ours["fine"]["kmeans_seed"] == 1
    a, used = kmeans_assign(x, 4, seed=np.int32(3), iters=np.int64(5), restarts=np.int64(2), backend=backend)
    b, _ = kmeans_assign(x, 4, seed=3, iters=5, restarts=2, backend=backend)
    assert used == backend and np.array_equal(a, b)


@pytest.mark.parametrize("arg, value, message", [
    ("kmeans_iters", 0, "kmeans_iters must be a positive integer, got 0"),
    ("kmeans_iters", -3, "kmeans_iters must be a positive integer, got -3"),
    ("kmeans_restarts", -2, "kmeans_restarts must be a positive integer, got -2"),
    ("kmeans_restarts", 0, "kmeans_restarts must be a positive integer, got 0"),
    ("kmeans_restarts", 1.0, "kmeans_restarts must be an integer, got 1.0 (float)"),
    ("kmeans_seed", 1.5, "kmeans_seed must be an integer, got 1.5 (float)"),
    ("kmeans_seed", True, "kmeans_seed must be an integer, got True (bool)"),
    ("kmeans_seed", "1", "kmeans_seed must be an integer, got '1' (str)"),
    # faiss: a raw OverflowError beyond a C int, and a negative seed is a new random start in every run
    ("kmeans_seed", 2**31, "kmeans_seed must be an integer from 0 to 2147483647 (a negative seed is a new random "
                           "start in every run, a larger one no C int), got 2147483648"),
    ("kmeans_seed", -1, "kmeans_seed must be an integer from 0 to 2147483647 (a negative seed is a new random "
                        "start in every run, a larger one no C int), got -1"),
])
def test_kmeans_options_that_cannot_be_meant_are_one_line(arg, value, message):
    x, y = _data()
    with pytest.raises(ConfigError) as info:
        evaluate_embeddings(x, y, metrics=["nmi"], **{arg: value})
    assert info.value.key == arg and str(info.value) == f"key '{arg}': {message}"
    # kmeans_assign's own arguments are seed / iters / restarts
    own = arg.removeprefix("kmeans_")
    with pytest.raises(ConfigError) as info:
        kmeans_assign(x, 4, **{own: value})
    assert str(info.value) == f"key '{own}': {message.removeprefix('kmeans_')}"


def test_the_largest_seed_is_reproducible_and_the_command_line_bounds_it_alike(capsys):
    from dynametric.cli import main
    from dynametric.commands import seed_int
    from dynametric.metrics.clustering import KMEANS_SEED_MAX

    x, y = _data()
    first = evaluate_embeddings(x, y, metrics=["nmi"], kmeans_seed=KMEANS_SEED_MAX)
    assert evaluate_embeddings(x, y, metrics=["nmi"], kmeans_seed=np.int64(KMEANS_SEED_MAX)) == first
    assert seed_int(str(KMEANS_SEED_MAX)) == KMEANS_SEED_MAX and seed_int("0") == 0
    for text in (str(KMEANS_SEED_MAX + 1), "-1"):
        assert main(["evaluate", "--kmeans-seed", text, "--embeddings", "x.npy"]) == 2
        assert f"argument --kmeans-seed: expected an integer from 0 to 2147483647, got '{text}'" in \
            capsys.readouterr().err
