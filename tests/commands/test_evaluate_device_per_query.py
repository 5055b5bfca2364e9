"""`dynametric evaluate --device`, `--per-query` and extreme magnitudes through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.metrics import evaluate_embeddings


def _write(tmp, x, labels, stem="e"):
    np.save(tmp / f"{stem}.npy", x)
    lines = ["fine,coarse"] + [f"{a},{b}" for a, b in labels]
    (tmp / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return str(tmp / f"{stem}.npy"), str(tmp / f"{stem}.csv")


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(3)
    fine = rng.integers(0, 9, 36)
    fine[0] = 99  # a singleton: an empty query at the fine scale
    labels = np.stack([fine, fine % 2], 1)
    x = rng.standard_normal((36, 4)).astype(np.float32)
    return tmp_path, x, labels


def test_per_query_csv_matches_the_api(data, capsys):
    tmp, x, labels = data
    e, lab = _write(tmp, x, labels)
    out = tmp / "sub" / "pq.csv"
    rc = main(["evaluate", "--embeddings", e, "--labels", lab, "--metrics", "recall@1", "precision@K", "map",
               "--k", "2", "--per-query", str(out), "--device", "cpu", "--json", str(tmp / "r.json")])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 36 * 2 and list(rows[0]) == ["query", "scale", "num_relevant", "recall@1", "precision@2",
                                                      "map"]
    res, table = evaluate_embeddings(x, labels, metrics=["recall@1", "precision@K", "map"], k_values=(2,),
                                     scale_names=["fine", "coarse"], per_query=True)
    fine = [r for r in rows if r["scale"] == "fine"]
    assert fine[0]["num_relevant"] == "0" and fine[0]["map"] == ""  # the singleton: undefined, left empty
    empty = [r["map"] == "" for r in fine]
    assert empty == [r["num_relevant"] == "0" for r in fine] and sum(empty) == res["fine"]["excluded_queries"]
    got_map = np.array([float(r["map"]) for r in fine if r["map"]])
    assert np.array_equal(got_map, table["fine"]["map"][~np.isnan(table["fine"]["map"])])
    assert np.mean(got_map) == pytest.approx(res["fine"]["map"])  # the table's mean is the reported value
    assert json.loads((tmp / "r.json").read_text())["fine"]["precision@2"] == pytest.approx(res["fine"]["precision@2"])
    assert not list(tmp.glob("sub/.pq.csv.*"))  # no temporary left behind


def test_device_flag(data, capsys):
    tmp, x, labels = data
    e, lab = _write(tmp, x, labels)
    assert main(["evaluate", "--embeddings", e, "--labels", lab, "--device", "auto"]) == 0
    if not torch.cuda.is_available():
        assert main(["evaluate", "--embeddings", e, "--labels", lab, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no CUDA GPU is available" in err


@pytest.mark.parametrize("scale", [1e19, 1e-13])
def test_cli_cosine_extreme_magnitudes(data, capsys, scale):
    tmp, x, labels = data
    x = x * np.random.default_rng(0).uniform(0.5, 3.0, (36, 1)).astype(np.float32)  # unequal norms
    e, lab = _write(tmp, (x.astype(np.float64) * scale).astype(np.float32), labels, "big")
    assert main(["evaluate", "--embeddings", e, "--labels", lab, "--json", str(tmp / "r.json")]) == 0
    got = json.loads((tmp / "r.json").read_text())
    ref = evaluate_embeddings(x, labels, scale_names=["fine", "coarse"])  # the same directions at norm ~1
    for m in ("recall@1", "map@r", "map", "asi"):
        assert got["fine"][m] == pytest.approx(ref["fine"][m], abs=1e-12)
        assert got["coarse"][m] == pytest.approx(ref["coarse"][m], abs=1e-12)
