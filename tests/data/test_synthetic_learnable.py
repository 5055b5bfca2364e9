"""The synthetic hierarchy is learnable: a tiny CNN trained briefly beats the untrained network and chance by a wide
margin on the *test* split (unseen fine classes), at every scale. Plain torch only (loss and R@1 written here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.data.samplers import MPerClassSampler
from dynametric.data.synthetic import SyntheticHierarchy

STEPS = 400


def tiny_cnn() -> nn.Module:
    def block(cin: int, cout: int, pool: bool) -> nn.Module:
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

    return nn.Sequential(block(3, 16, True), block(16, 32, True), block(32, 64, True), block(64, 64, False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64))


def leave_one_out_r1(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Recall@1 per scale, cosine similarity, the query itself excluded."""
    e = F.normalize(emb, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    nn_idx = sim.argmax(1)
    return (labels[nn_idx] == labels).float().mean(0)


def chance_r1(labels: torch.Tensor) -> torch.Tensor:
    """Expected R@1 of a random neighbour: sum_c n_c (n_c - 1) / (N (N - 1)) per scale."""
    n = labels.shape[0]
    out = []
    for s in range(labels.shape[1]):
        _, c = labels[:, s].unique(return_counts=True)
        out.append(float((c * (c - 1)).sum()) / (n * (n - 1)))
    return torch.tensor(out)


def all_triplets_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Sum over scales of the mean of the non-zero triplet hinges max(0, d_ap - d_an + margin)."""
    e = F.normalize(emb, dim=1)
    d = torch.cdist(e, e)
    eye = torch.eye(len(e), dtype=torch.bool)
    total = emb.new_zeros(())
    for s in range(labels.shape[1]):
        same = labels[:, s, None] == labels[None, :, s]
        valid = (same & ~eye)[:, :, None] & ~same[:, None, :]
        hinge = F.relu(d[:, :, None] - d[:, None, :] + margin) * valid
        total = total + hinge.sum() / ((hinge > 0).sum() + 1)
    return total


def test_tiny_cnn_learns_synthetic_hierarchy(one_torch_thread):
    torch.manual_seed(0)
    train = SyntheticHierarchy("train", seed=0)
    test = SyntheticHierarchy("test", seed=0, images_per_class=8)
    x_train, y_train = train.tensors(), train.labels
    x_test, y_test = test.tensors(), test.labels
    model = tiny_cnn()
    model.eval()
    with torch.no_grad():
        before = leave_one_out_r1(model(x_test), y_test)
    chance = chance_r1(y_test)

    sampler = MPerClassSampler(y_train, m=4, batch_size=64, iterations_per_epoch=STEPS, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for batch in sampler:
        loss = all_triplets_loss(model(x_train[batch]), y_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = leave_one_out_r1(model(x_test), y_test)

    # hard for an untrained network (scales: fine, middle, coarse)
    assert before[0] < 0.2 and before[1] < 0.3 and before[2] < 0.5, before
    # learnable, and the gains carry over to fine classes never seen in training
    assert after[0] > max(3 * before[0], 10 * chance[0], 0.25), (before, after, chance)
    assert after[1] > before[1] + 0.15 and after[1] > chance[1] + 0.2, (before, after, chance)
    assert after[2] > before[2] + 0.08 and after[2] > chance[2] + 0.1, (before, after, chance)
