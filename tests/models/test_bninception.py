"""BN-Inception: architecture sanity, Caffe key names, input adapter, loading the published weight layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.models import BNInception, build_embedder, create_backbone, load_backbone_weights
from dynametric.models.bninception import CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

# Parameter count of the feature extractor (convs with bias + affine BN), without the 1000-way classifier
# (1024 * 1000 + 1000 more): about 10.2 M, matching the ~11.2 M usually quoted for BN-Inception with its classifier.
EXPECTED_PARAMS = 10_179_936


@pytest.fixture(scope="module")
def net() -> BNInception:
    torch.manual_seed(0)
    return BNInception().eval()


def test_forward_shape_at_224(net: BNInception) -> None:
    with torch.no_grad():
        out = net(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1024, 7, 7)
    assert torch.isfinite(out).all() and (out >= 0).all()  # every branch ends in a ReLU


def test_parameter_count_and_caffe_key_names(net: BNInception) -> None:
    assert sum(p.numel() for p in net.parameters()) == EXPECTED_PARAMS
    keys = set(net.state_dict())
    for key in ("conv1_7x7_s2.weight", "conv1_7x7_s2.bias", "conv1_7x7_s2_bn.running_var",
                "inception_3a_double_3x3_2_bn.weight", "inception_3c_3x3.weight", "inception_4e_double_3x3_2.bias",
                "inception_5b_pool_proj_bn.running_mean"):
        assert key in keys
    assert "inception_3c_1x1.weight" not in keys and "inception_4e_pool_proj.weight" not in keys
    assert net.inception_3c_3x3.stride == (2, 2) and net.inception_3c_3x3_reduce.in_channels == 320
    assert net.inception_5a_1x1.in_channels == 1024 and net.inception_4a_1x1.in_channels == 576
    # 69 convolutions: 3 in the stem, 7 in each of the 8 regular blocks, 5 in the reduction blocks 3c and 4e.
    convs = [k for k in keys if k.endswith(".weight") and not k.split(".")[0].endswith("_bn")]
    assert len(convs) == 3 + 8 * 7 + 2 * 5


def test_embedder_on_bninception_small_input() -> None:
    model = build_embedder("bninception", embedding_dim=64, freeze_bn=True).train()
    assert model.feature_dim == 1024
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 64)


def test_input_adapter_converts_imagenet_rgb_to_caffe_bgr(net: BNInception) -> None:
    rgb01 = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    seen: list[torch.Tensor] = []
    handle = net.conv1_7x7_s2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            net((rgb01 - mean) / std)
    finally:
        handle.remove()
    expected = 255.0 * rgb01.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-3)


def _published_layout(net: BNInception) -> dict[str, torch.Tensor]:
    """The converted Caffe file: BN tensors stored as [1, C], plus the 1000-way ``last_linear`` classifier."""
    state = {k: (v.unsqueeze(0) if v.dim() == 1 and "_bn." in k and not k.endswith("num_batches_tracked") else v)
             for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    return state


def test_local_file_in_published_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = BNInception()
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(_published_layout(source), path)
    backbone = create_backbone("bninception")
    report = load_backbone_weights(backbone, path)
    assert report.ignored_classifier == ["last_linear.bias", "last_linear.weight"]
    torch.testing.assert_close(backbone.body.inception_4c_3x3_bn.running_var, source.inception_4c_3x3_bn.running_var)
    torch.testing.assert_close(backbone.body.conv1_7x7_s2.weight, source.conv1_7x7_s2.weight)


def test_pretrained_true_downloads_published_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(4)
    source = BNInception()
    calls: list[tuple[str, dict]] = []

    def fake_download(url: str, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((url, kwargs))
        return _published_layout(source)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    backbone = create_backbone("bninception", pretrained=True)
    assert calls and calls[0][0].endswith("bn_inception-52deb4733.pth") and calls[0][1]["weights_only"] is True
    torch.testing.assert_close(backbone.body.inception_5b_1x1.weight, source.inception_5b_1x1.weight)


def test_reduction_pool_equals_caffe_pooling_on_even_sides_and_fixes_odd_ones() -> None:
    from dynametric.models.bninception import _ReductionPool

    x = torch.randn(2, 3, 28, 14)
    torch.testing.assert_close(_ReductionPool()(x), torch.nn.MaxPool2d(3, stride=2, ceil_mode=True)(x))
    odd = torch.randn(1, 2, 25, 13)
    conv_side = [(n - 1) // 2 + 1 for n in (25, 13)]
    assert list(_ReductionPool()(odd).shape[-2:]) == conv_side


@pytest.mark.parametrize("side", [50, 72])  # sides where the original ceil/floor mismatch would crash
def test_odd_intermediate_sides_run(net: BNInception, side: int) -> None:
    with torch.no_grad():
        assert net(torch.randn(1, 3, side, side)).shape[:2] == (1, 1024)
