"""The width a backbone reports (``feature_dim``, from which the heads are sized) is the width of what its forward
gives, also for timm models whose head holds a hidden layer that timm applies with ``global_pool=""``; a backbone
that reports another width is caught by ``Embedder.check_forward`` (and so by ``train --dry-run``)."""

from __future__ import annotations

import pytest
import torch

from dynametric.config import load_config
from dynametric.errors import ConfigError
from dynametric.models import build_embedder
from dynametric.models.backbones import Backbone, SimpleCNN
from dynametric.models.embedder import Embedder
from dynametric.models.heads import EmbeddingHead, GlobalPool
from dynametric.pipeline.run import dry_run

# (timm name, num_features = forward_features' channels, what forward gives with global_pool="": the head's hidden
# conv's width); the values are timm's declared architecture of each model
HEAD_HIDDEN = [("mobilenetv3_small_100", 576, 1024), ("mobilenetv3_large_100", 960, 1280), ("ghostnet_100", 960, 1280),
               ("mobilenetv4_conv_small", 960, 1280), ("hgnetv2_b0", 1024, 2048), ("resnet18", 512, 512)]


@pytest.mark.parametrize(("name", "num_features", "width"), HEAD_HIDDEN)
def test_timm_backbones_report_the_width_their_forward_gives(name: str, num_features: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_embedder(name, pretrained=False, embedding_dim=8).eval()
    assert model.backbone.body.num_features == num_features
    assert model.backbone.feature_dim == width
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape[:2] == (2, width)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    model.check_forward(64)  # passes


def test_check_forward_refuses_a_backbone_reporting_another_width() -> None:
    body = SimpleCNN(width=4, depth=2)  # 8 output channels
    wrong = Backbone("simple_cnn", body, feature_dim=12)
    model = Embedder(wrong, GlobalPool("avg"), {"embedding": EmbeddingHead(12, 4)})
    model.train()
    with pytest.raises(ConfigError, match=r"^key 'model.backbone': backbone 'simple_cnn' gives 8-channel features, "
                                          r"but reports 12 \(the heads' input width\)"):
        model.check_forward(16, in_chans=3)
    assert model.training  # the mode is restored
    with pytest.raises(ConfigError, match=r"cannot run on a 16x16 image with 5 channel\(s\) \(RuntimeError: "):
        model.check_forward(16, in_chans=5)


def test_the_dry_run_catches_a_width_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynametric.models.backbones as backbones

    cfg = load_config(None, ["model.backbone=mobilenetv3_small_100", "model.embedding_dim=8", "data.image_size=32",
                             "data.options={images_per_class: 2}"])
    monkeypatch.setattr(backbones, "timm_output_width", lambda body: body.num_features)  # the width it used to take
    with pytest.raises(ConfigError, match="backbone 'mobilenetv3_small_100' gives 1024-channel features, but "
                                          "reports 576"):
        dry_run(cfg, log=lambda line: None)
    monkeypatch.undo()
    dry_run(cfg, log=lambda line: None)


def test_timm_models_that_cannot_drop_their_pooling_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^key 'model.backbone': timm model 'deit_tiny_distilled_patch16_224' "
                                          r"cannot be built without its own pooling \(timm: The distilled head"):
        build_embedder("deit_tiny_distilled_patch16_224", embedding_dim=8)
