"""MIC clustering route: per-class standardisation, k-means backends, re-clustering schedule, label noise."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from dynametric.errors import ConfigError
from dynametric.methods.mic import (
    SurrogateLabeler,
    kmeans,
    layer_features,
    sample_surrogate_batch,
    standardise_per_class,
)
from dynametric.models import build_embedder


def test_standardise_per_class() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=g) * 3 + 1
    y = torch.tensor([0, 1, 2] * 10)
    z = standardise_per_class(x, y, "mean")
    for c in range(3):
        assert torch.allclose(z[y == c].mean(0), torch.zeros(5), atol=1e-5)
        assert torch.allclose(z[y == c], x[y == c] - x[y == c].mean(0), atol=1e-5)
    zs = standardise_per_class(x, y, "mean_std")
    for c in range(3):
        assert torch.allclose(zs[y == c].std(0, unbiased=False), torch.ones(5), atol=1e-4)
    assert torch.equal(standardise_per_class(x, y, "none"), x)
    with pytest.raises(ConfigError):
        standardise_per_class(x, y, "zscore")


def _blobs(k: int, per: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g) * 10
    truth = torch.arange(k).repeat_interleave(per)
    return centres[truth] + 0.1 * torch.randn(k * per, dim, generator=g), truth


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_recovers_blobs_with_k_clusters(backend: str) -> None:
    x, truth = _blobs(6, 20, 8, 1)
    assign, centres = kmeans(x, 6, seed=0, n_init=3, backend=backend)
    assert assign.shape == (120,) and centres.shape == (6, 8)
    assert set(assign.tolist()) == set(range(6))
    assert adjusted_rand_score(truth.numpy(), assign.numpy()) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        kmeans(x, 121)


def test_clusters_group_shared_deviations_not_classes() -> None:
    """Images = class mean + one of 3 shared deviations. Per-class standardisation makes k-means find the shared
    deviations (what MIC wants); without it, k-means finds classes."""
    g = torch.Generator().manual_seed(3)
    n_cls, dim = 12, 16
    class_means = torch.randn(n_cls, dim, generator=g) * 6
    deviations = torch.randn(3, dim, generator=g) * 2
    cls = torch.arange(n_cls).repeat_interleave(9)
    dev = torch.arange(3).repeat(n_cls * 3)
    x = class_means[cls] + deviations[dev] + 0.05 * torch.randn(cls.numel(), dim, generator=g)
    labeler = SurrogateLabeler(num_clusters=3, recluster_every=3, seed=0, backend="torch")
    labels = labeler.initial(x, cls)
    assert set(labels.tolist()) == {0, 1, 2}
    assert adjusted_rand_score(dev.numpy(), labels.numpy()) == pytest.approx(1.0)
    raw, _ = kmeans(x, 3, seed=0, backend="torch")
    assert adjusted_rand_score(dev.numpy(), raw.numpy()) < 0.2
    # every cluster mixes many classes
    for k in range(3):
        assert torch.unique(cls[labels == k]).numel() == n_cls


def test_reclustering_schedule_and_relabelling() -> None:
    x, _ = _blobs(4, 10, 6, 2)
    y = torch.arange(40) % 5
    labeler = SurrogateLabeler(num_clusters=4, recluster_every=3, seed=0, backend="torch")
    labeler.initial(x, y)
    calls: list[int] = []
    blobs_b, truth_b = _blobs(4, 10, 6, 9)

    def embed() -> torch.Tensor:
        calls.append(1)
        return blobs_b

    fired = [e for e in range(10) if labeler.maybe_recluster(e, embed)]
    assert fired == [3, 6, 9] and len(calls) == 3
    assert [h for h in labeler.history] == [(0, "initial"), (3, "shared_embedding"), (6, "shared_embedding"),
                                           (9, "shared_embedding")]
    assert labeler.labels is not None
    assert adjusted_rand_score(truth_b.numpy(), labeler.labels.numpy()) == pytest.approx(1.0)
    never = SurrogateLabeler(num_clusters=4, recluster_every=0)
    assert not any(never.due(e) for e in range(20))


def test_label_noise_fraction_and_slot_content() -> None:
    g = torch.Generator().manual_seed(0)
    k = 10
    clusters = torch.randint(k, (500,), generator=g)
    noisy_total, slots_total = 0, 0
    for _ in range(300):
        idx, lab, noisy = sample_surrogate_batch(clusters, 8, 4, noise=0.2, generator=g)
        assert idx.shape == (32,) and lab.shape == (32,)
        slot_lab = lab.view(8, 4)[:, 0]
        assert torch.unique(slot_lab).numel() == 8  # distinct clusters per batch
        src = clusters[idx].view(8, 4)
        # clean slots hold images of their own cluster; every slot's images come from a single cluster
        assert (src[~noisy] == slot_lab[~noisy].unsqueeze(1)).all()
        assert (src == src[:, :1]).all()
        noisy_total += int(noisy.sum())
        slots_total += 8
    frac = noisy_total / slots_total
    sd = math.sqrt(0.2 * 0.8 / slots_total)
    assert abs(frac - 0.2) < 4 * sd
    _, _, none = sample_surrogate_batch(clusters, 8, 4, noise=0.0, generator=g)
    assert not none.any()
    with pytest.raises(ConfigError):
        sample_surrogate_batch(clusters, 11, 4)


def test_label_noise_per_image() -> None:
    """MIC's code: each image independently comes from a random cluster with probability ``noise``."""
    g = torch.Generator().manual_seed(1)
    k = 10
    clusters = torch.randint(k, (500,), generator=g)
    foreign, images, mixed_slots = 0, 0, 0
    for _ in range(300):
        idx, lab, noisy = sample_surrogate_batch(clusters, 8, 4, noise=0.3, generator=g, noise_per="image")
        assert idx.shape == (32,) and torch.unique(lab.view(8, 4)[:, 0]).numel() == 8
        src = clusters[idx].view(8, 4)
        own = src == lab.view(8, 4)
        assert own[~noisy].all()  # slots without a replaced image hold only their own cluster
        foreign += int((~own).sum())
        images += 32
        mixed_slots += int((own.any(1) & ~own.all(1)).sum())  # clean and foreign images in one slot
    # a replaced image comes from a uniform cluster, its own with probability 1/k: P(foreign) = 0.3 * (1 - 1/k)
    p = 0.3 * (1 - 1 / k)
    assert abs(foreign / images - p) < 4 * math.sqrt(p * (1 - p) / images)
    assert mixed_slots > 100  # impossible with per-slot noise
    _, _, none = sample_surrogate_batch(clusters, 8, 4, noise=0.0, generator=g, noise_per="image")
    assert not none.any()
    with pytest.raises(ConfigError, match="noise_per"):
        sample_surrogate_batch(clusters, 8, 4, noise_per="batch")


def test_layer_features_mic_pooling() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stage = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stage(x).mean((2, 3))

    toy = Toy()
    x = torch.randn(2, 3, 56, 56)
    f = layer_features(toy, x, "stage")
    assert f.shape == (2, 2 * 16)  # 56x56 -> avg pool 18 / stride 12 -> 4x4
    ref = nn.functional.avg_pool2d(toy.stage(x), 18, 12).flatten(1)
    assert torch.allclose(f, nn.functional.normalize(ref, dim=1), atol=1e-6)
    emb = build_embedder("simple_cnn", embedding_dim=8, num_heads=2)
    small = layer_features(emb, torch.randn(3, 3, 32, 32), "backbone.body.features.3")
    assert small.shape == (3, 32 * 16) and torch.allclose(small.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ConfigError, match="unknown layer"):
        layer_features(emb, torch.randn(1, 3, 32, 32), "nope")


MIC_TABLE = {"cub": (30, 2500.0, 0.8, [50], 100), "cars": (150, 500.0, 0.8, [60], 110),
             "sop": (50, 250.0, 0.5, [20, 35], 45)}


@pytest.mark.parametrize("name", sorted(MIC_TABLE))
def test_mic_configs_match_methods_table(name: str) -> None:
    from pathlib import Path

    from dynametric.config import load_config
    from dynametric.methods.mic import MICSettings

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mic" / f"{name}.yaml")
    mic = MICSettings.from_kwargs(cfg.method.kwargs)
    k, rho, p_aux, steps, epochs = MIC_TABLE[name]
    assert cfg.method.name == "mic" and mic.combination == "alternating" and mic.num_clusters == k
    assert mic.p_aux == p_aux and mic.label_noise == 0.2 and mic.recluster_every == 3 and mic.m_shared == 4
    shared, adv = cfg.extra_losses
    assert shared.head == "shared" and shared.kwargs["num_classes"] == k
    assert adv.name == "DecorrelationLoss" and adv.weight == rho and adv.head == "concat"
    assert cfg.optim.scheduler.milestones == steps and cfg.trainer.max_epochs == epochs
    assert cfg.data.val_split is None and cfg.data.val_fraction > 0  # selection never on the test split
    assert cfg.eval.heads and cfg.eval.heads[0] == "class"  # MIC's test embedding


def test_mic_settings_errors_name_the_key() -> None:
    from dynametric.methods.mic import MICSettings

    with pytest.raises(ConfigError, match="unknown MIC option") as err:
        MICSettings.from_kwargs({"clusters": 3})
    assert err.value.key == "method.kwargs.clusters"
    with pytest.raises(ConfigError) as err:
        MICSettings.from_kwargs({"p_aux": 1.5})
    assert err.value.key == "method.kwargs.p_aux"
    with pytest.raises(ConfigError):
        MICSettings.from_kwargs({"standardise": "zscore"})
    with pytest.raises(ConfigError) as err:
        MICSettings.from_kwargs({"label_noise_per": "batch"})
    assert err.value.key == "method.kwargs.label_noise_per"
    faithful = MICSettings.from_kwargs({"adv_step": "both", "label_noise_per": "image"})
    assert (faithful.adv_step, faithful.label_noise_per) == ("both", "image")
    assert (MICSettings().adv_step, MICSettings().label_noise_per) == ("shared", "slot")  # defaults unchanged


def test_resnet_feature_layer_of_the_configs() -> None:
    names = {n for n, _ in build_embedder("resnet50", embedding_dim=8, num_heads=2).named_modules()}
    assert "backbone.body.layer1" in names  # the configs' feature_layer
    small = build_embedder("resnet18", embedding_dim=8, num_heads=2)
    feats = layer_features(small, torch.rand(1, 3, 224, 224), "backbone.body.layer1")
    assert feats.shape == (1, 64 * 16)  # 64 x 56 x 56 -> 18/12 pooling -> 64 x 4 x 4 (ResNet-50: 256 -> 4096-d)
