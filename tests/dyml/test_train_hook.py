"""`dynametric train` on tiny DyML releases runs the DyML test protocol (method.name: dyml): per-scale query ->
gallery for Vehicle, all-in-one leave-one-out for Product; the mode, exclusions and tag reach metrics.json and the
numbers equal the protocol recomputed from the selected checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.data import build_dataset
from dynametric.engine.builders import build_model, load_split
from dynametric.engine.checkpoint import load_embedder_weights
from dynametric.engine.inference import embed_dataset
from dynametric.methods.dyml.protocol import DyMLProtocol, run_protocol
from tests.dyml.helpers import write_release

TINY = """
data:
  format: {fmt}
  root: {root}
  transform: small
  image_size: 16
  sampler: three_scale
  m: 2
  batch_size: 12
  val_split: null
  val_fraction: 0.25
  eval_batch_size: 64
model: {{backbone: simple_cnn, embedding_dim: 8, pooling: max, backbone_kwargs: {{width: 4, depth: 2}}}}
loss: {loss}
optim: {{lr: 0.003}}
eval: {{metrics: [recall@K, map, asi], k_values: [1, 10, 20]}}
trainer: {{max_epochs: 2, progress_bar: false, log_every_n_steps: 1, monitor: mean/map}}
method: {{name: dyml, kwargs: {{variant: {variant}, query_in_gallery: {mode}, protocol: released-files}}}}
run: {{report: true}}
"""


def _train(tmp: Path, variant: str, mode: str, loss: str) -> tuple[Path, Path]:
    root = write_release(tmp / f"dyml_{variant}", variant)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(TINY.format(fmt=f"dyml-{variant}", root=root, variant=variant, mode=mode, loss=loss))
    out = tmp / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return cfg, out


def _recompute(cfg_path: Path, out: Path) -> dict:
    cfg = load_config(cfg_path)
    model = build_model(cfg)
    load_embedder_weights(model, out / "best.ckpt")
    protocol = DyMLProtocol.from_kwargs(cfg.method.kwargs)
    return run_protocol(protocol, lambda ds: embed_dataset(model, ds),
                        lambda split: load_split(cfg, split, train=False), scale_names=["fine", "middle", "coarse"])


def test_vehicle_run_uses_the_per_scale_protocol(tmp_path: Path) -> None:
    cfg, out = _train(tmp_path, "vehicle", "detect", "{name: TripletMarginLoss, multiscale: true}")
    metrics = json.loads((out / "metrics.json").read_text())
    for block in ("untrained", "test"):
        res = metrics[block]
        assert list(res) == ["fine", "middle", "coarse", "mean", "protocol"]
        assert res["protocol"]["tag"] == "released-files" and res["protocol"]["query_in_gallery"] == "detect"
        for level in ("fine", "middle", "coarse"):
            assert res[level]["query_in_gallery"] == "detect" and res[level]["excluded_queries_with_match"] == 1
            assert res["protocol"]["sizes"][level] == {"queries": 6, "gallery": 10}
            assert set(res[level]) >= {"asi", "map", "recall@1", "recall@10", "recall@20"}
    ref = _recompute(cfg, out)
    for level in ("fine", "middle", "coarse", "mean"):
        for k in ("asi", "map", "recall@1", "recall@10"):
            assert metrics["test"][level][k] == pytest.approx(ref[level][k], abs=1e-5)
    info = json.loads((out / "run_info.json").read_text())
    assert info["test_protocol"]["name"] == "dyml-vehicle" and info["test_images"] is None
    # `dynametric evaluate --checkpoint` reruns the same protocol
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["protocol"]["query_in_gallery"] == "detect"
    for level in ("fine", "middle", "coarse", "mean"):
        assert ev[level]["map"] == pytest.approx(metrics["test"][level]["map"], abs=1e-5)
    assert "Multi-scale retrieval" in (out / "report.html").read_text()


def test_product_run_uses_all_in_one_leave_one_out_with_csl(tmp_path: Path) -> None:
    cfg, out = _train(tmp_path, "product", "detect", "{name: CSLLoss}")
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert list(test) == ["fine", "middle", "coarse", "mean", "protocol"]
    assert test["protocol"]["sizes"] == {"all": {"images": 19}}
    # the duplicated image and its copy: each excludes the other
    assert all(test[s]["excluded_queries_with_match"] == 2 for s in ("fine", "middle", "coarse"))
    ref = _recompute(cfg, out)
    for level in ("fine", "middle", "coarse", "mean"):
        assert test[level]["map"] == pytest.approx(ref[level]["map"], abs=1e-5)


def test_missing_query_in_gallery_is_a_one_line_config_error(tmp_path: Path, capsys) -> None:
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    cfg = tmp_path / "cfg.yaml"
    text = TINY.format(fmt="dyml-vehicle", root=root, variant="vehicle", mode="detect", loss="{name: CSLLoss}")
    cfg.write_text(text.replace(", query_in_gallery: detect", ""))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "method.kwargs.query_in_gallery" in err and "no default" in err


def test_dataset_labels_are_contiguous_even_with_gapped_raw_ids(tmp_path: Path) -> None:
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    ds = build_dataset("dyml-vehicle", root, "train")
    assert ds.class_ids[0][:2] == [1000, 1037]
    assert torch.equal(torch.unique(ds.labels[:, 0]), torch.arange(8))


def test_generic_query_gallery_protocol_in_train(tmp_path: Path) -> None:
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    cfg_path = tmp_path / "cfg.yaml"
    text = TINY.format(fmt="dyml-vehicle", root=root, variant="vehicle", mode="detect", loss="{name: CSLLoss}")
    text = text.replace("method: {name: dyml, kwargs: {variant: vehicle, query_in_gallery: detect, protocol: "
                        "released-files}}", "")
    text = text.replace("eval: {metrics: [recall@K, map, asi], k_values: [1, 10, 20]}",
                        "eval: {metrics: [recall@K, map, asi], k_values: [1, 10], protocol: query_gallery, "
                        "query_split: query_middle, gallery_split: gallery_middle}")
    cfg_path.write_text(text)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert list(test) == ["middle", "mean", "protocol"]
    assert test["protocol"] == {"name": "query_gallery", "query_split": "query_middle",
                                "gallery_split": "gallery_middle", "queries": 6, "gallery": 10,
                                "query_in_gallery": False, "queries_in_gallery": 0,
                                "same_sequence_excluded": False, "excluded_pairs": 0}
    cfg = load_config(cfg_path)
    model = build_model(cfg)
    load_embedder_weights(model, out / "best.ckpt")
    from dynametric.metrics import evaluate_embeddings

    q = load_split(cfg, "query_middle", train=False)
    g = load_split(cfg, "gallery_middle", train=False)
    (qe, ql), (ge, gl) = embed_dataset(model, q), embed_dataset(model, g)
    # the released query/ and gallery/ folders hold different files (a byte copy is found: DyML's detect mode)
    ref = evaluate_embeddings(qe, ql, ge, gl, metrics=["recall@K", "map", "asi"], k_values=(1, 10),
                              scale_names=["middle"])
    for k in ("recall@1", "map", "asi"):
        assert test["middle"][k] == pytest.approx(ref["middle"][k], abs=1e-5)
