"""pytorch-metric-learning's AccuracyCalculator names and k values given to evaluate_embeddings /
``dynametric evaluate``: one line saying what each is here (docs/metrics.md, *Coming from pytorch-metric-learning*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.errors import ConfigError
from dynametric.metrics import evaluate_embeddings

# the reference implementation (the dev extra installs it); the module is skipped without it
AccuracyCalculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator").AccuracyCalculator


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, 8, n)


def _message(**kwargs) -> str:
    x, y = _data()
    with pytest.raises(ConfigError) as err:
        evaluate_embeddings(x, y, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name, expected", [
    ("precision_at_1", "pytorch-metric-learning's precision_at_1 is recall@1 here"),
    ("mean_average_precision_at_r", "pytorch-metric-learning's mean_average_precision_at_r is map@r here"),
    ("mean_average_precision", "pytorch-metric-learning's mean_average_precision is map here when its k covers "
                               "every reference (k=None); with an integer k it divides by R, which no metric here "
                               "does (map@<int> divides by the relevant items in the top k, as "
                               "open-metric-learning's map@k)"),
    ("mean_reciprocal_rank", "pytorch-metric-learning's mean_reciprocal_rank has no equivalent here (recall@K and "
                             "map are the nearest)"),
    ("AMI", "pytorch-metric-learning's AMI (adjusted mutual information) has no equivalent here; nmi is its NMI"),
])
def test_a_pml_metric_name_says_what_it_is_here(name, expected):
    assert _message(metrics=[name]) == f"key 'metrics': unknown metric {name!r}: {expected}"


@pytest.mark.parametrize("name, meant", [("recall_at_1", "recall@1"), ("precision_at_5", "precision@5"),
                                         ("map_at_k", "map@K")])
def test_family_at_k_with_an_underscore_asks_for_the_at_sign(name, meant):
    assert _message(metrics=[name]) == f"key 'metrics': unknown metric {name!r}; did you mean {meant}?"


def test_the_names_the_message_gives_are_pml_s_values():
    """precision_at_1 -> recall@1, mean_average_precision_at_r -> map@r, mean_average_precision (k=None) -> map,
    and PML's own names r_precision / NMI, on unit vectors (PML's Euclidean kNN ranks as the cosine)."""
    x, y = _data(1, 200)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                              k="max_bin_count", device=torch.device("cpu"))
    full = AccuracyCalculator(include=("mean_average_precision",), k=None, device=torch.device("cpu"))
    for args in ((x, y), (x[:80], y[:80], x[80:], y[80:])):
        ours = evaluate_embeddings(*args, metrics=["recall@1", "map@r", "r_precision", "map"], k_values=())["fine"]
        theirs = {**calc.get_accuracy(*args), **full.get_accuracy(*args)}
        assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
        assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
        assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
        assert ours["map"] == pytest.approx(theirs["mean_average_precision"], abs=1e-6)
    assert "nmi" in evaluate_embeddings(x, y, metrics=["NMI"], k_values=())["fine"]


@pytest.mark.parametrize("k_values, expected", [
    ("max_bin_count", "k_values must be a list of positive integers (the recall@k cut-offs), got the string "
                      "'max_bin_count' (pytorch-metric-learning's k='max_bin_count' sets how many neighbours its "
                      "map@r and r_precision see; here r_precision and map@r always rank to each query's R, so "
                      "nothing replaces it)"),
    ("1248", "k_values must be a list of positive integers (the recall@k cut-offs), got the string '1248'"),
    (None, "k_values must be a list of positive integers (the recall@k cut-offs; default (1, 2, 4, 8), () for "
           "none), got None"),
    (5, "k_values must be a list of positive integers (the recall@k cut-offs; default (1, 2, 4, 8), () for none), "
        "got 5 (int)"),
    ((1, 0), "k_values must be positive integers, got 0"),
])
def test_k_values_that_are_not_a_list_of_positive_integers_are_one_line(k_values, expected):
    assert _message(k_values=k_values) == f"key 'k_values': {expected}"


def test_dynametric_evaluate_says_it_too(tmp_path, capsys):
    x, y = _data()
    np.save(tmp_path / "e.npy", x)
    (tmp_path / "l.csv").write_text("fine\n" + "\n".join(str(v) for v in y) + "\n")
    assert main(["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "l.csv"),
                 "--metrics", "precision_at_1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric evaluate: error: key 'metrics': unknown metric 'precision_at_1': pytorch-metric-learning's "
        "precision_at_1 is recall@1 here")
