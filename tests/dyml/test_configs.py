"""configs/dyml/*.yaml: the stated protocol (ResNet-34, max pooling, 512-d, L2; pretrained for Vehicle/Product,
scratch for Animal; K = 4 three-scale chunks; the DyML test protocol with an explicit query_in_gallery), the
published numbers and the re-run warning in the comments, and loss terms that build per scale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dynametric.config import load_config
from dynametric.engine.builders import build_loss_term
from dynametric.losses import CosFaceLoss, CSLLoss, MultiScaleLoss, ThreeScaleChunks
from dynametric.methods.dyml.protocol import QUERY_IN_GALLERY_MODES, DyMLProtocol

ROOT = Path(__file__).resolve().parents[2] / "configs" / "dyml"
DATASETS = ("vehicle", "animal", "product")
METHODS = ("csl", "triplet", "npair", "ms", "cosface", "circle")
# Sun et al., CVPR 2021 (ASI, mAP, R@1, R@10, R@20 per dataset: Vehicle, Animal, Product)
PUBLISHED = {
    "triplet": ((18.3, 10.0, 13.8, 52.6, 65.1), (19.3, 11.0, 18.2, 55.5, 66.3), (9.2, 9.3, 11.2, 43.6, 53.3)),
    "npair": ((19.4, 10.5, 16.4, 55.7, 68.1), (45.7, 30.3, 39.6, 69.6, 78.8), (15.7, 15.3, 20.3, 55.5, 65.6)),
    "ms": ((19.7, 10.4, 17.4, 56.0, 67.9), (19.9, 11.6, 16.7, 53.5, 64.8), (9.8, 10.0, 12.7, 45.7, 56.4)),
    "cosface": ((23.0, 12.0, 22.9, 62.1, 73.4), (39.6, 28.4, 45.1, 75.7, 83.3), (25.5, 25.0, 49.3, 81.3, 87.7)),
    "circle": ((22.8, 12.1, 23.5, 62.0, 73.3), (44.5, 30.6, 41.5, 72.2, 80.3), (15.8, 15.0, 26.7, 61.5, 70.3)),
    "csl": ((23.0, 12.1, 25.2, 64.2, 75.0), (45.2, 31.0, 52.3, 81.7, 88.3), (29.0, 28.7, 54.3, 83.1, 89.4)),
}
RERUN_R1 = {"vehicle": 87.1, "animal": 60.9, "product": 52.7}
CASES = [(d, m) for d in DATASETS for m in METHODS]


def test_every_config_exists() -> None:
    names = {p.stem for p in ROOT.glob("*.yaml")}
    assert {f"{d}-{m}" for d, m in CASES} <= names


@pytest.mark.parametrize(("dataset", "method"), CASES, ids=[f"{d}-{m}" for d, m in CASES])
def test_config_states_the_protocol(dataset: str, method: str) -> None:
    path = ROOT / f"{dataset}-{method}.yaml"
    cfg = load_config(path)
    assert cfg.data.format == f"dyml-{dataset}" and cfg.data.root
    m = cfg.model
    assert (m.backbone, m.pooling, m.embedding_dim, m.normalize) == ("resnet34", "max", 512, True)
    assert m.pretrained is (dataset != "animal")
    assert cfg.data.sampler == "three_scale" and cfg.data.m == 4 and cfg.data.batch_size % 12 == 0
    assert cfg.data.val_split is None and cfg.data.val_fraction > 0  # model selection never on the test sets
    assert cfg.method.name == "dyml"
    proto = DyMLProtocol.from_kwargs(cfg.method.kwargs)
    assert proto.variant == dataset and proto.query_in_gallery in QUERY_IN_GALLERY_MODES
    assert proto.protocol == "released-files" and proto.is_per_scale is (dataset != "product")
    assert "query_in_gallery" in path.read_text()  # stated explicitly, never inherited
    assert cfg.loss.multiscale is (method != "csl")
    text = path.read_text(encoding="utf-8")
    published = PUBLISHED[method][DATASETS.index(dataset)]
    line = next(x for x in text.splitlines() if re.search(r"ASI [\d.]+ +mAP [\d.]+ +R@1 [\d.]+ +R@10", x))
    assert [float(v) for v in re.findall(r"(?:ASI|mAP|R@1|R@10|R@20) ([\d.]+)", line)] == list(published)
    assert "WARNING" in text and f"R@1 {RERUN_R1[dataset]}" in text and "released-files" in text


@pytest.mark.parametrize("method", METHODS)
def test_loss_terms_build_per_scale_with_the_chunk_layout(method: str) -> None:
    cfg = load_config(ROOT / f"vehicle-{method}.yaml")
    fine = torch.arange(12).repeat_interleave(2) * 7 % 83  # ids with gaps (a carved training subset)
    labels = torch.stack([fine, fine % 5, fine % 2], 1)
    chunks = ThreeScaleChunks(cfg.data.m, 3)
    loss = build_loss_term(cfg.loss, "loss", labels, 512, 3, chunks)
    if method == "csl":
        assert isinstance(loss, CSLLoss) and loss.proxies.shape == (12, 512)
        return
    assert isinstance(loss, MultiScaleLoss) and loss.chunks is chunks and loss.num_scales == 3
    if method == "cosface":
        sizes = [loss.loss_at(s).num_classes for s in range(3)]
        assert sizes == [int(labels[:, s].max()) + 1 for s in range(3)] == [78, 5, 2]
        assert all(isinstance(loss.loss_at(s), CosFaceLoss) and loss.loss_at(s).logit_scale == 64 for s in range(3))
    emb = torch.nn.functional.normalize(torch.randn(24, 512), dim=1).requires_grad_()
    batch = labels[torch.arange(24) % 24]
    value = loss(emb, batch)
    value.backward()
    assert torch.isfinite(value) and emb.grad is not None
