"""Embedder: shapes, pooling maths, L2 normalisation, heads, frozen BatchNorm, optimiser groups."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from dynametric.errors import ConfigError
from dynametric.models import Backbone, GlobalPool, build_embedder, concat_heads, create_backbone


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_single_head_shape_and_unit_norm() -> None:
    model = build_embedder("simple_cnn", embedding_dim=24)
    out = model(torch.randn(5, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (5, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert model.feature_dim == 256 and model.embedding_dim == 24


def test_no_normalisation_keeps_linear_output() -> None:
    model = build_embedder("simple_cnn", embedding_dim=8, normalize=False).eval()
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    head = model.heads["embedding"].proj
    torch.testing.assert_close(out, head(model.pooled_features(x)))
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))


def test_identity_head_returns_normalised_pooled_feature() -> None:
    model = build_embedder("simple_cnn", embedding_dim=None, pooling="max").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x).flatten(2).amax(2)
    torch.testing.assert_close(model(x), feats / feats.norm(dim=1, keepdim=True))
    assert model.embedding_dim == 256


def test_pooling_modes_on_a_hand_built_map() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, -2.0], [0.0, -5.0]]]])  # [1, 2, 2, 2]
    avg, mx = torch.tensor([[3.0, -2.0]]), torch.tensor([[6.0, 0.0]])
    torch.testing.assert_close(GlobalPool("avg")(x), avg)
    torch.testing.assert_close(GlobalPool("max")(x), mx)
    torch.testing.assert_close(GlobalPool("avgmax")(x), avg + mx)
    torch.testing.assert_close(GlobalPool("catavgmax")(x), torch.cat([avg, mx], 1))
    assert GlobalPool("catavgmax").output_dim(2) == 4
    with pytest.raises(ConfigError, match="token"):
        GlobalPool("token")(x)


def test_pooling_on_tokens_skips_prefix_tokens() -> None:
    tokens = torch.tensor([[[100.0, -100.0], [1.0, 2.0], [3.0, 4.0]]])  # class token first
    pool = GlobalPool("avg", num_prefix_tokens=1)
    torch.testing.assert_close(pool(tokens), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(GlobalPool("max", num_prefix_tokens=1)(tokens), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(GlobalPool("token", num_prefix_tokens=1)(tokens), torch.tensor([[100.0, -100.0]]))


def test_unknown_pooling_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.pooling"):
        build_embedder("simple_cnn", pooling="mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling, feat", [("avg", 256), ("max", 256), ("avgmax", 256), ("catavgmax", 512)])
def test_pooling_widths_reach_the_head(pooling: str, feat: int) -> None:
    model = build_embedder("simple_cnn", pooling=pooling, embedding_dim=16)  # type: ignore[arg-type]
    assert model.feature_dim == feat
    assert model.heads["embedding"].proj.in_features == feat
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 16)


def test_two_heads_sharing_matters() -> None:
    model = build_embedder("simple_cnn", num_heads=2, head_dims=[16, 8])
    out = model(torch.randn(4, 3, 32, 32))
    assert isinstance(out, dict) and list(out) == ["class", "shared"]
    assert out["class"].shape == (4, 16) and out["shared"].shape == (4, 8)
    for emb in out.values():
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    joined = concat_heads(out)
    torch.testing.assert_close(joined, torch.cat([out["class"], out["shared"]], 1))
    assert model.embedding_dim == 24
    # The heads see the same pooled feature but have their own weights.
    assert model.heads["class"].proj.weight.data_ptr() != model.heads["shared"].proj.weight.data_ptr()


@pytest.mark.parametrize("kwargs", [
    {"embedding_dim": 12},
    {"embedding_dim": None, "pooling": "catavgmax"},  # no projection: the pooled width (2 x the feature width)
    {"num_heads": 2, "head_dims": [16, 8]},
    {"num_heads": 3, "head_dims": [5, None, 7], "head_names": ["a", "b", "c"]},
])
def test_output_dims_are_declared_and_match_the_forward(kwargs) -> None:
    """The engine reads each head's width from ``output_dims`` (no dummy forward); it is what a forward gives."""
    from dynametric.engine.builders import head_dims

    model = build_embedder("simple_cnn", **kwargs).eval()
    declared = model.output_dims
    model.forward = None  # type: ignore[assignment]  # declared widths need no forward pass
    assert head_dims(None, model) == declared
    del model.forward
    out = model(torch.randn(2, 3, 32, 32))
    if isinstance(out, torch.Tensor):
        assert declared == {None: out.shape[1], "concat": out.shape[1]}
    else:
        assert declared == {**{k: v.shape[1] for k, v in out.items()}, "concat": concat_heads(out).shape[1]}
        assert list(declared)[:-1] == list(model.head_names)


def test_custom_head_names_and_errors() -> None:
    model = build_embedder("simple_cnn", num_heads=3, head_names=["a", "b", "c"], embedding_dim=4)
    assert list(model(torch.randn(2, 3, 16, 16))) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="head_names"):
        build_embedder("simple_cnn", num_heads=2, head_names=["a", "a"])
    with pytest.raises(ConfigError, match="head_dims"):
        build_embedder("simple_cnn", num_heads=2, head_dims=[4])
    with pytest.raises(ConfigError, match="num_heads"):
        build_embedder("simple_cnn", num_heads=0)


def test_parameter_groups_partition_trainable_parameters() -> None:
    model = build_embedder("simple_cnn", num_heads=2)
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == sum(1 for _ in model.parameters())
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.heads.parameters()}


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_batchnorm_stays_frozen_through_training() -> None:
    model = build_embedder("simple_cnn", freeze_bn=True, embedding_dim=8)
    model.train()
    assert model.training and model.heads.training
    bns = _bn_layers(model)
    assert bns and all(not bn.training for bn in bns)
    before = [(bn.running_mean.clone(), bn.running_var.clone(), bn.weight.clone()) for bn in bns]
    opt = torch.optim.SGD([p for g in model.parameter_groups().values() for p in g], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, 16, 16) * 3 + 1).sum().backward()
        opt.step()
    for bn, (mean, var, weight) in zip(bns, before):
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
        torch.testing.assert_close(bn.weight, weight)
        assert bn.weight.grad is None and not bn.weight.requires_grad and not bn.bias.requires_grad
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    bn_ids = {id(p) for bn in bns for p in bn.parameters()}
    assert not bn_ids & {id(p) for p in model.parameter_groups()["backbone"]}
    model.eval().train()  # toggling again must not unfreeze
    assert all(not bn.training for bn in bns)


def test_unfrozen_batchnorm_updates_statistics() -> None:  # control for the test above
    model = build_embedder("simple_cnn", embedding_dim=8).train()
    bn = _bn_layers(model)[0]
    mean = bn.running_mean.clone()
    model(torch.randn(6, 3, 32, 32) * 3 + 1)
    assert bn.training and not torch.allclose(bn.running_mean, mean)


def test_timm_backbone_and_dyml_setting() -> None:
    model = build_embedder("resnet18", pooling="max", embedding_dim=512)
    assert model.feature_dim == 512
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_channels_last_backbone_is_permuted() -> None:
    class NHWC(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 3, 1)

    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(Backbone("stub", NHWC(), 5, channels_last=True)(x), x)


def test_unknown_backbone_suggests_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"model.backbone.*did you mean.*'resnet50'"):
        create_backbone("resnet5O")
    with pytest.raises(ConfigError, match="simple_cnn"):
        create_backbone("simple_cn")


def test_simple_cnn_has_no_download() -> None:
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_embedder("simple_cnn", pretrained=True)


def test_pretrained_true_uses_timm_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    calls: list[tuple[str, dict]] = []
    real = timm.create_model

    def spy(name: str, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((name, dict(kwargs)))
        return real(name, **{**kwargs, "pretrained": False})

    monkeypatch.setattr(timm, "create_model", spy)
    model = build_embedder("resnet18", pretrained=True, embedding_dim=32)
    assert calls == [("resnet18", {"pretrained": True, "num_classes": 0, "global_pool": "", "in_chans": 3})]
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_config_model_section_mirrors_build_embedder() -> None:
    import dataclasses

    from dynametric.config import MODEL_TRAINING_KEYS, ModelConfig, embedder_kwargs

    params = inspect.signature(build_embedder).parameters
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    assert set(fields) - set(MODEL_TRAINING_KEYS) == set(params) and not set(MODEL_TRAINING_KEYS) & set(params)
    model = build_embedder(**embedder_kwargs(ModelConfig()))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 128)


def test_vit_tokens_pool_without_the_class_token() -> None:
    model = build_embedder("vit_tiny_patch16_224", pooling="avg", embedding_dim=None, normalize=False,
                           backbone_kwargs={"img_size": 32}).eval()
    assert model.backbone.num_prefix_tokens == 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (2, 5, 192)  # class token + 2 x 2 patches
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
        token_model = build_embedder("vit_tiny_patch16_224", pooling="token", embedding_dim=None, normalize=False,
                                     backbone_kwargs={"img_size": 32}).eval()
        token_model.load_state_dict(model.state_dict())
        torch.testing.assert_close(token_model(x), tokens[:, 0])


def test_token_pooling_without_a_class_token_is_refused_when_the_model_is_built() -> None:
    """`token` takes a transformer's class token: a backbone without one (a CNN, a ViT built without its class
    token) is refused by build_embedder, not at the first forward (a dry run builds the model, never runs it)."""
    for backbone, kwargs in (("simple_cnn", {}), ("resnet18", {}),
                             ("vit_tiny_patch16_224", {"img_size": 32, "class_token": False})):
        with pytest.raises(ConfigError) as exc:
            build_embedder(backbone, pooling="token", backbone_kwargs=kwargs)
        assert exc.value.key == "model.pooling"
        assert f"pooling 'token' needs a transformer backbone with a class token (token output [B, N, C]); " \
               f"backbone {backbone!r} has none" in str(exc.value)
    assert build_embedder("simple_cnn", pooling="avg").pool.mode == "avg"  # the other modes still build on a CNN


def test_failed_download_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    def offline(name: str, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs.get("pretrained"):
            raise OSError("Name or service not known")
        raise AssertionError("only the pretrained call is expected")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match=r"model.pretrained.*resnet18.*Name or service not known.*pretrained_path"):
        build_embedder("resnet18", pretrained=True)

    def no_hub(url: str, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("urlopen error")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_hub)
    with pytest.raises(ConfigError, match=r"bninception.*urlopen error"):
        create_backbone("bninception", pretrained=True)


def test_bf16_autocast_embeddings_are_unit_length_and_close_to_fp32() -> None:
    # CPU autocast runs F.normalize in bfloat16, which left ||e|| up to ~0.5% off 1 (and the cosine to the fp32
    # embedding ~0.997); the head now normalises in float32, as docs/retrieval.md states.
    from dynametric.engine.inference import InferenceOptions, embed_batch

    model = build_embedder("simple_cnn", embedding_dim=128).eval()
    x = torch.randn(16, 3, 32, 32)
    fp32 = embed_batch(model, x, InferenceOptions(device="cpu").resolve())
    bf16 = embed_batch(model, x, InferenceOptions(device="cpu", precision="bf16").resolve())
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.norm(dim=1), torch.ones(16), atol=1e-5, rtol=0)
    assert (bf16 * fp32).sum(dim=1).min() > 0.999
    assert (bf16 - fp32).abs().max() < 0.02
