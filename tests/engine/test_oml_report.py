"""OML's evaluation details in the generic protocols: the report split by the query's category (``by_category``,
``eval.per_category``) and a leave-one-out evaluation that, like query -> gallery, never ranks an item of the
query's own sequence (checked by hand and against a brute-force float64 reference)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.data import build_dataset
from dynametric.engine.protocols import EmbeddedSet, LeaveOneOut, QueryGallery
from dynametric.metrics import evaluate_embeddings


def _oml(root: Path, header: str, rows: list[str], degrees: list[float]) -> dict[str, torch.Tensor]:
    """Write an OML CSV of validation ``rows`` (``label,path,is_query,is_gallery,...``) with a tiny image per path;
    returns each file name's embedding, ``[cos, sin]`` of its angle."""
    lines = [f"label,path,split,is_query,is_gallery,{header}"]
    for r in rows:
        label, path, *rest = r.split(",")
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / path)
        lines.append(",".join([label, path, "validation", *rest]))
    (root / "df.csv").write_text("\n".join(lines) + "\n")
    return {Path(r.split(",")[1]).name: torch.tensor([math.cos(math.radians(d)), math.sin(math.radians(d))])
            for r, d in zip(rows, degrees)}


def _embedded(root: Path, split: str, emb: dict[str, torch.Tensor]) -> EmbeddedSet:
    ds = build_dataset("oml", root, split)
    return EmbeddedSet(ds, torch.stack([emb[Path(p).name] for p in ds.paths]), ds.labels)


# gallery g0..g3 (labels 0, 0, 1, 1) at 0, 100, 40, 170 degrees; queries q0, q1 of category fish, q2..q4 of bird
CATEGORY_ROWS = ["0,g0.png,False,True,", "0,g1.png,False,True,", "1,g2.png,False,True,", "1,g3.png,False,True,",
                 "0,q0.png,True,False,fish", "1,q1.png,True,False,fish", "0,q2.png,True,False,bird",
                 "1,q3.png,True,False,bird", "0,q4.png,True,False,bird"]
CATEGORY_DEGREES = [0, 100, 40, 170, 10, 60, 45, 140, 210]


def test_the_oml_report_split_by_query_category_by_hand(tmp_path: Path):
    emb = _oml(tmp_path, "category", CATEGORY_ROWS, CATEGORY_DEGREES)
    sets = {split: _embedded(tmp_path, split, emb) for split in ("query", "gallery")}
    assert sets["gallery"].dataset.category_ids is None  # gallery rows without a category: only queries' count
    res = QueryGallery("query", "gallery").evaluate(sets)
    # q0 (10): g0+ g2 g1+ g3 -> R@1 1, AP (1 + 2/3)/2;  q1 (60): g2+ g1 g0 g3+ -> 1, (1 + 2/4)/2
    # q2 (45): g2 g0+ g1+ g3 -> 0, (1/2 + 2/3)/2;  q3 (140): g3+ g1 g2+ g0 -> 1, (1 + 2/3)/2
    # q4 (210): g3 g1+ g0+ g2 -> 0, (1/2 + 2/3)/2
    by = res["by_category"]
    assert list(by) == ["bird", "fish"]
    assert by["fish"]["label"]["recall@1"] == 1.0 and by["fish"]["label"]["map"] == pytest.approx(19 / 24)
    bird = by["bird"]["label"]
    assert bird["recall@1"] == pytest.approx(1 / 3) and bird["map"] == pytest.approx(2 / 3)
    assert by["bird"]["label"]["num_queries"] == 3 and by["fish"]["label"]["num_queries"] == 2
    assert res["label"]["recall@1"] == pytest.approx(3 / 5) and res["label"]["map"] == pytest.approx(43 / 60)
    for m in ("recall@1", "recall@2", "map@r", "map", "asi"):  # OVERALL: the query-weighted mean of the categories
        assert (3 * by["bird"]["label"][m] + 2 * by["fish"]["label"][m]) / 5 == pytest.approx(res["label"][m])
    # eval.per_category: false leaves the split out, nothing else changes
    off = QueryGallery("query", "gallery", per_category=False).evaluate(sets)
    assert "by_category" not in off and off == {k: v for k, v in res.items() if k != "by_category"}


def test_leave_one_out_reports_per_category_when_the_split_has_categories(tmp_path: Path):
    rows = [",".join([*r.split(",")[:4], "y" if i % 2 else "x"]) for i, r in enumerate(CATEGORY_ROWS)]
    emb = _oml(tmp_path, "category", rows, CATEGORY_DEGREES)
    s = _embedded(tmp_path, "validation", emb)
    assert s.dataset.category_ids == ["x", "y", "x", "y", "x", "y", "x", "y", "x"]
    res = LeaveOneOut("validation").evaluate({"validation": s})
    assert "protocol" not in res  # nothing excluded but each query itself: the result's shape as before
    plain = evaluate_embeddings(s.emb, s.labels, scale_names=["label"])
    assert {k: v for k, v in res.items() if k != "by_category"} == plain
    for name, rows in (("x", [0, 2, 4, 6, 8]), ("y", [1, 3, 5, 7])):
        alone = evaluate_embeddings(s.emb[rows], s.labels[rows], s.emb, s.labels, query_ids=rows,
                                    gallery_ids=list(range(9)), scale_names=["label"])
        for m in ("recall@1", "map@r", "map"):
            assert res["by_category"][name]["label"][m] == pytest.approx(alone["label"][m], abs=1e-12)
    assert "by_category" not in LeaveOneOut("validation", per_category=False).evaluate({"validation": s})


# a0, a1: one sequence (near-duplicate frames); with the sequence excluded no query finds its class at rank 1
SEQUENCE_ROWS = ["0,a0.png,True,True,s1,x", "0,a1.png,True,True,s1,x", "0,a2.png,True,True,s2,y",
                 "1,b0.png,True,True,s3,x", "1,b1.png,True,True,s4,y"]
SEQUENCE_DEGREES = [0, 5, 90, 30, 65]


def test_leave_one_out_excludes_the_query_sequence_by_hand(tmp_path: Path):
    emb = _oml(tmp_path, "sequence,category", SEQUENCE_ROWS, SEQUENCE_DEGREES)
    s = _embedded(tmp_path, "validation", emb)
    assert s.dataset.sequence_ids == ["s1", "s1", "s2", "s3", "s4"]
    res = LeaveOneOut("validation").evaluate({"validation": s})
    # a0 (0):  a0, a1 excluded; b0 30, b1 65, a2+ 90 -> rank 3 of R 1: AP 1/3
    # a1 (5):  a1, a0 excluded; b0, b1, a2+ -> 1/3
    # a2 (90): b1 25, b0 60, a1+ 85, a0+ 90 -> ranks 3, 4: AP (1/3 + 2/4)/2 = 5/12
    # b0 (30): a1 25, a0 30, b1+ 35, a2 60 -> 1/3;   b1 (65): a2 25, b0+ 35, ... -> 1/2
    assert res["label"]["recall@1"] == 0.0 and res["label"]["recall@4"] == 1.0
    assert res["label"]["map"] == pytest.approx((1 / 3 + 1 / 3 + 5 / 12 + 1 / 3 + 1 / 2) / 5)
    assert res["protocol"] == {"name": "leave_one_out", "split": "validation", "queries": 5,
                               "same_sequence_excluded": True, "excluded_pairs": 2}  # (a0, a1), (a1, a0)
    assert res["by_category"]["x"]["label"]["map"] == pytest.approx(1 / 3)
    assert res["by_category"]["y"]["label"]["map"] == pytest.approx((5 / 12 + 1 / 2) / 2)
    # without the sequences a0 and a1 find each other at rank 1
    plain = evaluate_embeddings(s.emb, s.labels, scale_names=["label"])
    assert plain["label"]["recall@1"] == pytest.approx(2 / 5)


def _reference(emb: np.ndarray, labels: np.ndarray, sequences: np.ndarray, k_values: tuple[int, ...]
               ) -> dict[str, dict[str, float]]:
    """Leave-one-out with every item of the query's sequence (itself included) excluded, brute force in float64:
    cosine similarity, ties by index; per scale recall@k, r_precision, map@r and map over queries with R > 0."""
    x = emb.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    out: dict[str, dict[str, float]] = {}
    for s in range(labels.shape[1]):
        values: dict[str, list[float]] = {}
        for q in range(len(x)):
            keep = [j for j in range(len(x)) if sequences[j] != sequences[q]]
            order = sorted(keep, key=lambda j: (-sim[q, j], j))
            rel = np.array([labels[j, s] == labels[q, s] for j in order])
            r = int(rel.sum())
            if r == 0:
                continue
            ranks = np.flatnonzero(rel) + 1
            prec = np.arange(1, r + 1) / ranks
            row = {f"recall@{k}": float(ranks[0] <= k) for k in k_values}
            row |= {"r_precision": float((ranks <= r).sum()) / r, "map@r": float(prec[ranks <= r].sum()) / r,
                    "map": float(prec.sum()) / r}
            for m, v in row.items():
                values.setdefault(m, []).append(v)
        out[str(s)] = {m: float(np.mean(v)) for m, v in values.items()} | {"num_queries": len(values["map"])}
    return out


class _Split:
    """An in-memory split that carries sequence ids, as an OML validation split does."""

    def __init__(self, labels: torch.Tensor, sequence_ids: list[object]) -> None:
        self.labels, self.sequence_ids = labels, sequence_ids
        self.scale_names = ("fine", "coarse")

    def __len__(self) -> int:
        return len(self.labels)


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_leave_one_out_with_sequences_matches_a_brute_force_reference(engine, seed):
    rng = np.random.default_rng(seed)
    n = 70
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    fine = rng.integers(0, 12, n)
    labels = np.stack([fine, fine // 4], 1)
    # sequences of 1-6 consecutive items; frames of one sequence are close and mostly of one class, so leaving
    # them out changes the rankings (and empties some queries)
    sequences = np.repeat(np.arange(n), rng.integers(1, 7, n))[:n]
    for seq in np.unique(sequences):
        rows = np.flatnonzero(sequences == seq)
        emb[rows[1:]] = emb[rows[0]] + 0.05 * rng.normal(size=(len(rows) - 1, 5)).astype(np.float32)
        labels[rows[1:][rng.random(len(rows) - 1) < 0.8]] = labels[rows[0]]
    ids = [f"seq{v}" if v % 2 else int(v) for v in sequences]
    split = _Split(torch.from_numpy(labels), ids)
    ref = _reference(emb, labels, sequences, (1, 2, 4))
    res = LeaveOneOut("validation").evaluate(
        {"validation": EmbeddedSet(split, torch.from_numpy(emb), torch.from_numpy(labels))},
        lambda *a, **kw: evaluate_embeddings(*a, **kw, k_values=(1, 2, 4), ranking_engine=engine,
                                             metrics=["recall@K", "r_precision", "map@r", "map"]))
    for s, scale in enumerate(("fine", "coarse")):
        assert res[scale]["num_queries"] == ref[str(s)]["num_queries"]
        for m in ("recall@1", "recall@2", "recall@4", "r_precision", "map@r", "map"):
            assert res[scale][m] == pytest.approx(ref[str(s)][m], abs=1e-12), (scale, m)
    sizes = np.bincount(sequences)
    assert res["protocol"]["excluded_pairs"] == int((sizes * (sizes - 1)).sum()) > 0
    assert res["fine"]["excluded_queries"] > 0  # a query whose class sits only in its own sequence
    plain = evaluate_embeddings(emb, labels, k_values=(1, 2, 4), ranking_engine=engine)
    assert plain["fine"]["recall@1"] > res["fine"]["recall@1"]  # the exclusion matters on this data


def test_gathered_embeddings_of_another_length_than_a_sequenced_dataset_are_an_error():
    """The module's evaluation takes sequence / category ids from the datamodule's dataset by position: a count that
    differs is an error where the dataset has sequences (the exclusion would silently not apply: a wrong number),
    a warning where it has only categories, and nothing for plain data."""
    from types import SimpleNamespace

    from torch import nn

    from dynametric.engine.module import MetricLearningModule
    from dynametric.errors import ConfigError

    module = MetricLearningModule(nn.Linear(2, 2), [])

    class Items(list):
        sequence_ids = None
        category_ids = None

    for seq, cat in ((None, None), (None, ["a", "b", "c"]), ([1, 1, 2], None)):
        ds = Items([0, 1, 2])
        ds.sequence_ids, ds.category_ids = seq, cat
        module._trainer = SimpleNamespace(datamodule=SimpleNamespace(val_set=ds), validating=True,
                                          sanity_checking=False)
        assert module._evaluated_dataset(3) is ds
        if seq is not None:
            with pytest.raises(ConfigError, match="4 embeddings were gathered for a dataset of 3 items that carries "
                                                  "sequence ids"):
                module._evaluated_dataset(4)
        elif cat is not None:
            with pytest.warns(UserWarning, match="its categories are not reported"):
                assert module._evaluated_dataset(4) is None
        else:
            assert module._evaluated_dataset(4) is None
