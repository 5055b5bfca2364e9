"""An ivf index trained on fewer vectors than faiss's k-means wants per cell: one Python warning (faiss printed its
own line straight to the process's stderr, which no warning filter can see or silence), and a train_size below the
cell count is a one-line error instead of faiss's C++ exception text."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("faiss")

from dynametric.errors import ConfigError  # noqa: E402
from dynametric.retrieval.faiss_ops import IndexBuildWarning, build_faiss_index, default_nlist  # noqa: E402


def _x(n: int = 500) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)


def test_few_training_vectors_per_cell_is_one_python_warning_and_nothing_from_faiss(capfd):
    with pytest.warns(IndexBuildWarning, match=r"50 cells trained on 500 vectors.*1950.*nlist <= 12") as record:
        index, params = build_faiss_index(_x(), "ivf", "l2", nlist=50)
    assert len(record) == 1 and record[0].filename == __file__  # names the caller's line
    assert params == {"nlist": 50, "nprobe": 8, "train_size": 500} and index.ntotal == 500
    out, err = capfd.readouterr()
    assert "WARNING clustering" not in err + out  # faiss's own stderr line


def test_enough_training_vectors_warn_nothing(capfd):
    x = _x(2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_faiss_index(x, "ivf", "l2", nlist=default_nlist(2000))  # 51 cells <= 2000 / 39
        build_faiss_index(x, "ivf", "l2", nlist=50)
    assert "WARNING" not in capfd.readouterr().err


def test_train_size_below_the_cell_count_is_one_line():
    with pytest.raises(ConfigError, match=r"key 'train_size': train_size must be at least nlist \(50"):
        build_faiss_index(_x(), "ivf", "l2", nlist=50, train_size=10)


def test_a_small_train_size_is_named_in_the_advice():
    with pytest.warns(IndexBuildWarning, match=r"20 cells trained on 100 vectors.*nlist <= 2\) or a larger "
                                               r"train_size train better"):
        build_faiss_index(_x(2000), "ivf", "l2", nlist=20, train_size=100)
    with pytest.warns(IndexBuildWarning) as record:  # all 500 vectors trained on: no train_size to suggest
        build_faiss_index(_x(), "ivf", "l2", nlist=50)
    assert "train_size" not in str(record[0].message)


def test_index_build_says_it_in_one_note_line(tmp_path, capsys):
    from dynametric.cli import main

    np.save(tmp_path / "e.npy", _x())
    assert main(["index", "build", "--embeddings", str(tmp_path / "e.npy"), "--kind", "ivf", "--nlist", "50",
                 "--out", str(tmp_path / "ix")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: ivf: 50 cells trained on 500 vectors")
    assert "nlist <= 12" in err
