"""embed_dataset returns the documented LongTensor[N, S] labels whatever form a dataset item's label has: a label
path [fine, coarse] as a list or tuple (collated into one tensor per column), a tensor row, a plain int, an integral
float; fractional, NaN and boolean labels are one InputError keyed 'labels' naming the items."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from dynametric.engine.inference import embed_dataset
from dynametric.errors import InputError

PATHS = [[0, 0], [1, 0], [2, 1], [3, 1]]


def _model() -> torch.nn.Module:
    from dynametric.models import build_embedder

    torch.manual_seed(0)
    return build_embedder("simple_cnn", embedding_dim=8, backbone_kwargs={"width": 4, "depth": 2}).eval()


def _images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("form", [
    pytest.param(lambda p: list(p), id="list"),
    pytest.param(lambda p: tuple(p), id="tuple"),
    pytest.param(lambda p: torch.tensor(p, dtype=torch.int32), id="int32 tensor"),
    pytest.param(lambda p: np.array(p, dtype=np.float64), id="integral float array"),
    pytest.param(lambda p: torch.tensor([p]), id="[1, S] row"),  # a dataset's labels[i:i + 1]
])
def test_label_paths_give_the_long_matrix(form: Any) -> None:
    model, im = _model(), _images()
    for batch_size in (4, 3):  # one batch, and two of 3 + 1 items
        emb, labels = embed_dataset(model, [(im[i], form(PATHS[i])) for i in range(4)], batch_size=batch_size)
        assert emb.shape == (4, 8)
        assert labels.dtype == torch.long
        assert labels.tolist() == PATHS


def test_single_labels_give_one_long_column() -> None:
    model, im = _model(), _images()
    for value in (lambda i: i, lambda i: float(i), lambda i: np.int32(i), lambda i: torch.tensor([i])):
        _, labels = embed_dataset(model, [(im[i], value(i)) for i in range(4)])
        assert labels.dtype == torch.long and labels.tolist() == [[0], [1], [2], [3]]


def test_non_integer_labels_are_refused_naming_the_items() -> None:
    model, im = _model(), _images()
    with pytest.raises(InputError, match=r"key 'labels'.*items 0\.\.3 of the dataset.*integers"):
        embed_dataset(model, [(im[i], i + 0.5) for i in range(4)])
    with pytest.raises(InputError, match=r"key 'labels'.*items 2\.\.3 of the dataset.*integers"):
        embed_dataset(model, [(im[i], [i, 0.5 if i == 3 else 0]) for i in range(4)], batch_size=2)
    with pytest.raises(InputError, match="key 'labels'.*integers.*bool"):
        embed_dataset(model, [(im[i], bool(i % 2)) for i in range(4)])
    with pytest.raises(InputError, match="key 'labels'.*integers"):
        embed_dataset(model, [(im[i], float("nan") if i == 1 else 0.0) for i in range(4)])
