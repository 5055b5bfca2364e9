"""Reprs of the retrieval objects and of a loaded checkpoint: short whatever the size (a notebook prints them), and
naming what tells one apart (the generated ones listed every id and path, or the whole checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.retrieval.embed import EmbeddingSet

N = 100_000


def _items(n: int = N) -> EmbeddingSet:
    x = np.random.default_rng(0).standard_normal((n, 32)).astype(np.float32)
    labels = np.stack([np.arange(n) // 5, np.arange(n) // 50], 1)
    model = {"checkpoint": "/runs/some/where/" + "deep/" * 40 + "best.ckpt", "head": "shared"}
    return EmbeddingSet(x, [f"item{i}" for i in range(n)], [f"/data/images/long/folder/img_{i:07d}.jpg" for i in
                                                            range(n)], labels, ["fine", "coarse"], None, [], model,
                        Path("/data/embeddings/x.npy"))


def test_embedding_set_repr_is_short_and_names_its_sizes():
    text = repr(_items())
    assert len(text) < 300
    for fact in ("EmbeddingSet(", f"{N} items", "100000x32 float32", "'fine'", "'coarse'", "best.ckpt", "'shared'",
                 "x.npy"):
        assert fact in text
    assert "item99999" not in text and "img_" not in text
    bare = EmbeddingSet(np.zeros((3, 4), np.float32), ["a", "b", "c"], ["a", "b", "c"], None, [], None, [], {}, "x")
    assert repr(bare) == "EmbeddingSet(3 items, embeddings 3x4 float32, no labels, model -, source 'x')"


def test_scale_names_given_as_a_numpy_array_repr_as_a_list():
    x = np.zeros((5, 4), np.float32)
    items = EmbeddingSet(x, list("abcde"), [""] * 5, np.array([[0, 1]] * 5), np.array(["coarse", "fine"]), None, [],
                         {}, "x.npy")
    assert "'coarse', 'fine'" in repr(items)  # was: ValueError (the truth value of an array)


def test_many_long_scale_names_stay_bounded():
    items = _items(200)
    items.scale_names = [f"scale_{i}_" + "x" * 500 for i in range(50)]
    text = repr(items)
    assert len(text) < 500 and "+44 more" in text and "'scale_0_" in text


def test_retrieval_index_repr_is_short_and_names_kind_metric_sizes():
    pytest.importorskip("faiss")
    from dynametric.retrieval.index import RetrievalIndex

    index = RetrievalIndex.build(_items(), kind="flat", metric="l2")
    text = repr(index)
    assert len(text) < 300
    for fact in ("RetrievalIndex(", "kind 'flat'", "metric 'l2'", f"{N} items", "dim 32", "'fine'", "'coarse'",
                 "best.ckpt", "'shared'"):
        assert fact in text
    assert "item99999" not in text and "img_" not in text


def test_trained_model_repr_does_not_print_the_checkpoint():
    from dynametric.config import load_config
    from dynametric.engine.builders import build_model
    from dynametric.engine.inference import TrainedModel

    cfg = load_config(None, ["model.embedding_dim=16", "model.backbone_kwargs={width: 4, depth: 2}"])
    model = build_model(cfg)
    state = {"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 3,
             "global_step": 12, "big": torch.zeros(100_000)}
    trained = TrainedModel(cfg, model, Path("/runs/a/best.ckpt"), Path("/runs/a/config.yaml"), state, None)
    text = repr(trained)
    assert len(text) < 300
    params = sum(p.numel() for p in model.parameters())
    for fact in ("TrainedModel(", "'/runs/a/best.ckpt'", "epoch 3", "step 12", "'simple_cnn'", "embedding_dim 16",
                 "head None", f"{params} parameters"):
        assert fact in text
    assert "tensor" not in text
