"""Evaluation protocols as one interface: leave-one-out, query -> gallery and DyML run through
``EvaluationProtocol.run`` with the same numbers as a direct evaluation, on both ranking engines; `dynametric
evaluate --checkpoint` reruns a query -> gallery run's test protocol, its own-copy exclusion included."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.engine.dyml import DyMLProtocol, run_protocol
from dynametric.engine.protocols import EvaluationProtocol, LeaveOneOut, QueryGallery
from dynametric.metrics import evaluate_embeddings
from dynametric.pipeline import protocol_from_config
from tests.dyml.helpers import write_release


@dataclass
class _Set:
    """An in-memory split: embeddings stand in for the model's output, ``paths`` give file-name identities."""

    emb: torch.Tensor
    labels: torch.Tensor
    paths: list[str] | None
    scale_names: list[str]
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.emb)


def _splits(seed: int = 0) -> dict[str, _Set]:
    rng = np.random.default_rng(seed)
    names = ["fine", "coarse"]

    def make(n: int, prefix: str) -> _Set:
        emb = torch.from_numpy(rng.integers(-2, 3, (n, 6)).astype(np.float32))
        fine = torch.from_numpy(rng.integers(0, 6, n))
        return _Set(emb, torch.stack([fine, fine // 3], 1), [f"/x/{prefix}{i}.jpg" for i in range(n)], names)

    q, g = make(12, "q"), make(30, "g")
    # the first four queries also sit in the gallery: same file name, same embedding, same labels
    g.emb[:4], g.labels[:4] = q.emb[:4], q.labels[:4]
    g.paths[:4] = [p.replace("/x/q", "/y/q") for p in q.paths[:4]]
    return {"test": make(40, "t"), "query": q, "gallery": g}


def _embed(ds: _Set) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.emb, ds.labels


def test_every_protocol_is_one_interface():
    dyml = DyMLProtocol("vehicle", "contained", scales=("fine", "coarse"))
    for p, splits in ((LeaveOneOut("test"), ["test"]), (QueryGallery("query", "gallery"), ["query", "gallery"]),
                      (dyml, ["query_fine", "gallery_fine", "query_coarse", "gallery_coarse"]),
                      (DyMLProtocol("all_in_one", "disjoint").bind(test_split="val"), ["val"])):
        assert isinstance(p, EvaluationProtocol)
        assert p.required_splits() == splits
    assert dyml.view_split() == "gallery_fine" and QueryGallery().view_split() is None
    assert LeaveOneOut().name == "leave_one_out" and QueryGallery().name == "query_gallery"
    assert dyml.name == dyml.header()["name"] == "dyml-vehicle"


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_generic_protocols_equal_a_direct_evaluation(engine):
    sets = _splits()
    evaluate = functools.partial(evaluate_embeddings, metrics=["recall@K", "map@r", "map"], k_values=(1, 4),
                                 ranking_engine=engine)
    loo = LeaveOneOut("test").run(sets.__getitem__, _embed, evaluate)
    t = sets["test"]
    assert loo == evaluate(t.emb, t.labels, scale_names=["fine", "coarse"])
    q, g = sets["query"], sets["gallery"]
    for inside in (False, True):
        got = QueryGallery("query", "gallery", inside).run(sets.__getitem__, _embed, evaluate)
        ids = ([Path(p).name for p in q.paths], [Path(p).name for p in g.paths]) if inside else (None, None)
        want = evaluate(q.emb, q.labels, g.emb, g.labels, scale_names=["fine", "coarse"], query_ids=ids[0],
                        gallery_ids=ids[1])
        assert got.pop("protocol") == {"name": "query_gallery", "query_split": "query", "gallery_split": "gallery",
                                       "queries": 12, "gallery": 30, "query_in_gallery": inside}
        assert got == want
    # the own copies are found at rank 1 unless excluded
    kept = QueryGallery("query", "gallery", False).run(sets.__getitem__, _embed, evaluate)
    assert kept["fine"]["recall@1"] > got["fine"]["recall@1"]


def test_dyml_protocol_through_the_interface_on_both_engines():
    rng = np.random.default_rng(3)
    sets = _splits(3)
    sets["test"].paths = None  # in memory: detect hashes the pixel arrays
    sets["test"].images = rng.integers(0, 256, (40, 2, 2), dtype=np.uint8)
    sets["test"].images[7] = sets["test"].images[2]  # a byte-identical pair: each excludes the other
    protocol = DyMLProtocol("all_in_one", "detect", k_values=(1, 2))
    ref = run_protocol(protocol, _embed, sets.__getitem__, scale_names=["fine", "coarse"])
    assert ref["fine"]["excluded_queries_with_match"] == 2
    for engine in ("cpu", "torch"):
        evaluate = functools.partial(evaluate_embeddings, ranking_engine=engine, metrics=["nmi"], k_values=(5,))
        got = protocol.bind(scale_names=["fine", "coarse"]).run(sets.__getitem__, _embed, evaluate)
        # the protocol's own metric options win over the caller's; the engines agree to 1e-12 (summation order)
        assert got.pop("protocol") == ref["protocol"] and list(got) == [k for k in ref if k != "protocol"]
        for scale, values in got.items():
            assert list(values) == list(ref[scale])
            assert values == {k: pytest.approx(v, abs=1e-12) if isinstance(v, float) else v
                              for k, v in ref[scale].items()}


QG_CONFIG = """
data: {{format: dyml-vehicle, root: {root}, transform: small, image_size: 16, sampler: three_scale, m: 2,
        batch_size: 12, val_split: null, val_fraction: 0.25, eval_batch_size: 64}}
model: {{backbone: simple_cnn, embedding_dim: 8, pooling: max, backbone_kwargs: {{width: 4, depth: 2}}}}
loss: {{name: CSLLoss}}
optim: {{lr: 0.003}}
eval: {{metrics: [recall@K, map, asi], k_values: [1, 10], protocol: query_gallery, query_split: query_middle,
        gallery_split: gallery_middle, query_in_gallery: true}}
trainer: {{max_epochs: 1, progress_bar: false, log_every_n_steps: 1, monitor: mean/map}}
run: {{report: false}}
"""


def test_evaluate_checkpoint_reruns_the_query_gallery_test_of_a_run(tmp_path: Path):
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(QG_CONFIG.format(root=root))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--metrics", "recall@K", "map", "asi", "--k",
                 "1", "10", "--device", "cpu", "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["protocol"] == test["protocol"] and ev["protocol"]["query_in_gallery"] is True
    for m in ("recall@1", "recall@10", "map", "asi", "num_queries"):
        assert ev["middle"][m] == pytest.approx(test["middle"][m], abs=1e-6), m
    # the own copies are excluded: kept (eval.query_in_gallery=false), they rank first and raise the metrics
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--metrics", "recall@K", "map", "asi", "--k",
                 "1", "10", "--device", "cpu", "--set", "eval.query_in_gallery=false", "--json",
                 str(tmp_path / "kept.json")]) == 0
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert kept["protocol"]["query_in_gallery"] is False and kept["middle"]["map"] > ev["middle"]["map"]
    from dynametric.config import load_config

    assert protocol_from_config(load_config(cfg)) == QueryGallery("query_middle", "gallery_middle", True)
    assert protocol_from_config(load_config(cfg), split="val") == LeaveOneOut("val")
