"""Tiny stand-ins for the engine tests: a vector dataset with two label scales, a two-layer embedder,
a pair loss, a proxy loss (learnable parameters), a random miner and a leave-one-out evaluator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.engine.data import MetricDataModule
from dynametric.engine.trainer import TrainerSettings
from dynametric.losses.base import MetricLoss, Miner


class ToyData(torch.utils.data.Dataset):
    """``n_per_class`` noisy copies of a prototype per fine class; coarse = fine // 2. Random-noise transform."""

    def __init__(self, n_classes: int = 6, n_per_class: int = 8, dim: int = 8, seed: int = 0,
                 augment: bool = True, class_offset: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(n_classes + class_offset, dim, generator=g)[class_offset:]
        fine = torch.arange(n_classes).repeat_interleave(n_per_class) + class_offset
        self.x = protos[fine - class_offset] + 0.5 * torch.randn(len(fine), dim, generator=g)
        self.labels = torch.stack([fine, fine // 2], dim=1)
        self.scale_names = ["fine", "coarse"]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment:
            x = x + 0.1 * torch.randn(x.shape)  # global torch RNG: seeded per sample by the engine
        return x, self.labels[i]


class ToySampler:
    """P×K batch sampler, deterministic in (seed, epoch), sharded by rank (rank r takes slice r of each batch)."""

    def __init__(self, labels: torch.Tensor, m: int = 2, batch_size: int = 8, seed: int = 0, rank: int = 0,
                 world_size: int = 1, batches: int = 5) -> None:
        self.fine = labels[:, 0]
        self.m, self.bs, self.seed, self.rank, self.world, self.batches = m, batch_size, seed, rank, world_size, batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        classes = self.fine.unique()
        global_bs = self.bs * self.world
        for _ in range(self.batches):
            chosen = classes[torch.randperm(len(classes), generator=g)[: global_bs // self.m]]
            idx = []
            for c in chosen:
                members = (self.fine == c).nonzero().flatten()
                idx += members[torch.randperm(len(members), generator=g)[: self.m]].tolist()
            yield idx[self.rank * self.bs:(self.rank + 1) * self.bs]


class ToyEmbedder(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 16, out: int = 4) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.heads = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads(self.backbone(x)), dim=1)


class PairLoss(MetricLoss):
    """Contrastive loss on given pairs (a1, p, a2, n) or all pairs: mean d(pos)^2 + mean relu(m - d(neg))^2."""

    def __init__(self, margin: float = 1.0, scale: int = 0) -> None:
        super().__init__(scale=scale)
        self.margin = margin

    def compute_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels):
        d = torch.cdist(emb, emb)
        if indices_tuple is None:
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(labels), dtype=torch.bool)
            pos, neg = same & ~eye, ~same
            return (d[pos] ** 2).mean() + (F.relu(self.margin - d[neg]) ** 2).mean()
        a1, p, a2, n = indices_tuple
        return (d[a1, p] ** 2).mean() + (F.relu(self.margin - d[a2, n]) ** 2).mean()


class ProxyLoss(MetricLoss):
    """Softmax over negative squared distances to learnable class proxies (has loss parameters)."""

    def __init__(self, num_classes: int, dim: int, scale: int = 0) -> None:
        super().__init__(scale=scale)
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * 0.5)

    def compute_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels):
        return F.cross_entropy(-torch.cdist(emb, self.proxies) ** 2, labels)


class RandomPairMiner(Miner):
    """Random subset of the positive and negative pairs (uses the global torch RNG on purpose)."""

    def mine(self, emb, labels, ref_emb, ref_labels):
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool)
        pos = (same & ~eye).nonzero()
        neg = (~same).nonzero()
        keep_p = pos[torch.rand(len(pos)) < 0.7]
        keep_n = neg[torch.rand(len(neg)) < 0.5]
        return keep_p[:, 0], keep_p[:, 1], keep_n[:, 0], keep_n[:, 1]


def toy_evaluator(emb: torch.Tensor, labels: torch.Tensor, scale_names=None, **_):
    """Leave-one-out precision@1 per scale, reported as both recall@1 and map@r (enough for the engine tests)."""
    d = torch.cdist(emb, emb)
    d.fill_diagonal_(float("inf"))
    nn_idx = d.argmin(dim=1)
    names = scale_names or [f"scale{i}" for i in range(labels.shape[1])]
    out = {}
    for s, name in enumerate(names):
        hit = (labels[nn_idx, s] == labels[:, s]).float().mean().item()
        out[name] = {"recall@1": hit, "map@r": hit, "num_queries": len(labels), "excluded_queries": 0}
    out["mean"] = {k: sum(out[n][k] for n in names) / len(names) for k in ("recall@1", "map@r")}
    return out


def toy_datamodule(val: bool = True) -> MetricDataModule:
    """The toy training data with the toy sampler (and the toy validation data unless ``val`` is false)."""
    return MetricDataModule(ToyData(), ToyData(seed=1, augment=False) if val else None,
                            batch_sampler_factory=lambda labels, r, w: ToySampler(labels, rank=r, world_size=w),
                            eval_batch_size=16)


def toy_settings(**kw) -> TrainerSettings:
    """CPU trainer settings for the toy runs: no progress bar, two epochs, ``kw`` on top."""
    return TrainerSettings(**{"accelerator": "cpu", "progress_bar": False, "max_epochs": 2, **kw})
