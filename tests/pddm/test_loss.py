"""PDDMLoss: hand-computed values (both variants, both modes), brute force, degenerate batches, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.losses.pddm import PDDMLoss
from dynametric.models.pddm import PDDM
from tests.pddm.helpers import LABELS, XS, g, points, position_unit


def _hand_loss(**kw) -> PDDMLoss:
    loss = PDDMLoss(2, hidden_dim=2, dropout=0.0, normalize_embeddings=False, **kw)
    loss.unit.load_state_dict(position_unit().state_dict())
    return loss


def _h(x: float) -> float:
    return max(x, 0.0)


def _mid(a: int, b: int) -> float:
    return (XS[a] + XS[b]) / 2


def _quad_terms(q: tuple[int, int, int, int], alpha: float, beta: float, dist, triplet: bool) -> tuple[float, float]:
    i, j, k, l = q
    s_ij, s_ik, s_jl = g(_mid(i, j)), g(_mid(i, k)), g(_mid(j, l))
    d_ij, d_ik, d_jl = dist(i, j), dist(i, k), dist(j, l)
    e_m = _h(alpha + s_ik - s_ij) + (0.0 if triplet else _h(alpha + s_jl - s_ij))
    e_e = _h(beta + d_ij - d_ik) + (0.0 if triplet else _h(beta + d_ij - d_jl))
    return e_m, e_e


def _sq(a: int, b: int) -> float:
    return (XS[a] - XS[b]) ** 2


def _eu(a: int, b: int) -> float:
    return abs(XS[a] - XS[b])


@pytest.mark.parametrize("variant", ["quadruplet", "triplet"])
@pytest.mark.parametrize("embedding_distance", ["squared", "euclidean"])
@pytest.mark.parametrize("alpha,beta,lam", [(0.5, 1.0, 0.5), (0.2, 100.0, 0.25), (0.9, 9.45, 2.0)])
def test_faithful_loss_equals_hand_computed(variant: str, embedding_distance: str, alpha, beta, lam) -> None:
    loss = _hand_loss(variant=variant, embedding_distance=embedding_distance, alpha=alpha, beta=beta, lambda_=lam)
    got = loss(points(XS), LABELS)
    dist = _sq if embedding_distance == "squared" else _eu
    e_m, e_e = _quad_terms((0, 1, 5, 5), alpha, beta, dist, variant == "triplet")
    assert got.item() == pytest.approx(e_m + lam * e_e, rel=1e-5, abs=1e-6)
    stats = loss.stats()
    assert stats["E_m"] == pytest.approx(e_m, rel=1e-5, abs=1e-6) and stats["E_e"] == pytest.approx(e_e, rel=1e-5)
    assert (stats["num_batches"], stats["num_quadruplets"], stats["num_degenerate_batches"]) == (1, 1, 0)
    if (alpha, beta) == (0.5, 1.0):  # written out once with the numbers: S_01 = g(0.55), S_05 = g(5.25), S_15 = g(5.3)
        expected = 0.5 + 5.25 / math.sqrt(5.25**2 + 1) - 0.55 / math.sqrt(0.55**2 + 1)
        if variant == "quadruplet":
            expected += 0.5 + 5.3 / math.sqrt(5.3**2 + 1) - 0.55 / math.sqrt(0.55**2 + 1)
        assert got.item() == pytest.approx(expected, rel=1e-5)  # E_e = 0: D_01 + 1 < D_05, D_15


@pytest.mark.parametrize(
    "variant,reduction,alpha,beta,lam",
    [
        ("quadruplet", "mean", 0.05, 30.0, 0.5),
        ("triplet", "mean", 0.05, 30.0, 0.5),
        ("quadruplet", "mean_nonzero", 0.05, 30.0, 0.5),
        ("triplet", "mean_nonzero", 0.0, 1.0, 0.0),  # (4, 5, 3): S_43 < S_45, so that quadruplet's loss is 0
    ],
)
def test_per_positive_pair_loss_equals_hand_computed(variant: str, reduction: str, alpha, beta, lam) -> None:
    loss = _hand_loss(mode="per_positive_pair", variant=variant, alpha=alpha, beta=beta, lambda_=lam,
                      reduction=reduction)
    got = loss(points(XS), LABELS)
    quads = [(0, 1, 5, 5), (2, 3, 5, 5), (4, 5, 3, 3)]
    per = [sum(t * w for t, w in zip(_quad_terms(q, alpha, beta, _sq, variant == "triplet"), (1.0, lam)))
           for q in quads]
    nonzero = [p for p in per if p > 0]
    if reduction == "mean_nonzero" and variant == "triplet":
        assert len(nonzero) == 2, "hand case should mix zero and non-zero quadruplets"
    expected = sum(per) / len(per) if reduction == "mean" else sum(nonzero) / len(nonzero)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert loss.num_quadruplets == 3 and loss.num_batches == 1


def test_loss_equals_brute_force_on_random_batch() -> None:
    torch.manual_seed(0)
    loss = PDDMLoss(6, hidden_dim=10, dropout=0.0, mode="per_positive_pair", alpha=0.5, beta=1.0, lambda_=0.5)
    with torch.no_grad():
        for p in loss.unit.parameters():
            p.normal_(0, 0.7)
    emb = torch.randn(10, 6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    f = torch.nn.functional.normalize(emb, dim=1)
    unit: PDDM = loss.unit

    def s(a: int, b: int) -> float:
        return unit.score_pairs(f[a:a + 1], f[b:b + 1]).item()

    total, count = 0.0, 0
    for a, b in itertools.combinations(range(10), 2):
        if labels[a] != labels[b]:
            continue
        negs = [c for c in range(10) if labels[c] != labels[a]]
        k = max(negs, key=lambda c: (s(a, c), -c))
        l = max(negs, key=lambda c: (s(b, c), -c))
        dd = lambda x, y: float(((f[x] - f[y]) ** 2).sum())  # noqa: E731
        e_m = _h(0.5 + s(a, k) - s(a, b)) + _h(0.5 + s(b, l) - s(a, b))
        e_e = _h(1.0 + dd(a, b) - dd(a, k)) + _h(1.0 + dd(a, b) - dd(b, l))
        total += e_m + 0.5 * e_e
        count += 1
    assert loss(emb, labels).item() == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("labels", [[3, 3, 3, 3, 3], [0, 1, 2, 3, 4], [9]])
@pytest.mark.parametrize("mode", ["faithful_one_per_batch", "per_positive_pair"])
def test_degenerate_batch_is_zero_finite_and_counted(labels: list[int], mode: str) -> None:
    torch.manual_seed(1)
    loss = PDDMLoss(4, mode=mode, dropout=0.5)
    emb = torch.randn(len(labels), 4, requires_grad=True)
    out = loss(emb, torch.tensor(labels))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() == 0
    for p in loss.loss_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert loss.num_degenerate_batches == 1 and loss.stats()["num_degenerate_batches"] == 1.0


def test_duplicate_embeddings_give_finite_gradients_with_plain_distance() -> None:
    loss = PDDMLoss(3, hidden_dim=4, dropout=0.0, embedding_distance="euclidean", beta=1.0)
    emb = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    out = loss(emb, torch.tensor([0, 0, 1, 1]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("mode", ["faithful_one_per_batch", "per_positive_pair"])
@pytest.mark.parametrize("variant", ["quadruplet", "triplet"])
def test_pddm_parameters_and_embeddings_receive_gradients(mode: str, variant: str) -> None:
    torch.manual_seed(2)
    loss = PDDMLoss(8, hidden_dim=16, mode=mode, variant=variant, dropout=0.1)
    assert {id(p) for p in loss.loss_parameters()} == {id(p) for p in loss.unit.parameters()}
    emb = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(12) // 3
    out = loss(emb, labels)
    assert out.item() > 0
    out.backward()
    assert emb.grad.abs().sum() > 0
    for name, p in loss.unit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name != "fc_s.bias":  # b_s cancels in every S difference of E_m, so its gradient is exactly 0
            assert p.grad.abs().sum() > 0, name
    assert loss.unit.fc_s.bias.grad.abs().item() < 1e-6


def test_mining_is_deterministic_under_dropout() -> None:
    torch.manual_seed(3)
    loss = PDDMLoss(8, hidden_dim=32, dropout=0.5, mode="per_positive_pair")
    loss.train()
    f = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    labels = torch.arange(10) // 2
    first = loss.mine(f, labels)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, loss.mine(f, labels)))
    loss.eval()
    assert all(torch.equal(a, b) for a, b in zip(first, loss.mine(f, labels)))


def test_hierarchical_labels_use_selected_scale() -> None:
    loss0 = _hand_loss(scale=0)
    loss1 = _hand_loss(scale=1)
    coarse = torch.tensor([0, 0, 1, 1, 0, 1])  # point 4 joins class 0: hardest positive becomes (0, 4)
    labels = torch.stack([LABELS, coarse], dim=1)
    assert loss0(points(XS), labels).item() == pytest.approx(loss0(points(XS), LABELS).item())
    assert loss1(points(XS), labels).item() == pytest.approx(loss0(points(XS), coarse).item())
    assert loss1(points(XS), labels).item() != pytest.approx(loss0(points(XS), LABELS).item())


def test_validation() -> None:
    for kw, key in [({"mode": "x"}, "mode"), ({"variant": "x"}, "variant"), ({"alpha": -1}, "alpha"),
                    ({"embedding_distance": "cos"}, "embedding_distance"), ({"reduction": "sum"}, "reduction")]:
        with pytest.raises(ConfigError, match=key):
            PDDMLoss(4, **kw)
    loss = PDDMLoss(4)
    emb, labels = torch.randn(4, 4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(InputError, match="indices_tuple"):
        loss(emb, labels, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(InputError, match="ref_emb"):
        loss(emb, labels, ref_emb=emb, ref_labels=labels.clone())
    # the batch's own objects are no reference set (pytorch-metric-learning's rule): the plain call
    torch.manual_seed(0)
    plain = loss(emb, labels)
    torch.manual_seed(0)
    assert loss(emb, labels, ref_emb=emb, ref_labels=labels).item() == plain.item()


def test_a_negative_scale_is_refused_not_read_as_the_last_column() -> None:
    with pytest.raises(ConfigError) as info:
        PDDMLoss(6, scale=-1)
    assert info.value.key == "scale" and "0..S-1" in str(info.value)


def test_an_empty_batch_gives_a_graph_connected_zero() -> None:
    loss = PDDMLoss(6)
    x = torch.randn(0, 6, requires_grad=True)
    value = loss(x, torch.zeros(0, dtype=torch.long))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert x.grad is not None and x.grad.shape == (0, 6)
    assert all(p.grad is not None and not p.grad.any() for p in loss.unit.parameters())
    assert loss.num_degenerate_batches == 1


# ------------------------------------------------------------------ the faithful mode without host reads

def _reference_from_public_mining(loss: PDDMLoss, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The loss written out from the public ``mine_hard_quadruplets`` (float64, dropout off): ``None`` where it
    mines nothing."""
    from dynametric.miners.pddm import mine_hard_quadruplets

    f = torch.nn.functional.normalize(emb, dim=-1)
    with torch.no_grad():
        scores = loss.unit.score_matrix(f, deterministic=True)
    quad = mine_hard_quadruplets(scores, labels, loss.mode)
    if quad[0].numel() == 0:
        return None
    terms = []
    for i, j, k, l in zip(*[t.tolist() for t in quad]):
        def s(a: int, b: int) -> torch.Tensor:
            return loss.unit.score_pairs(f[a:a + 1], f[b:b + 1]).reshape(())

        def d(a: int, b: int) -> torch.Tensor:
            diff = f[a] - f[b]
            return (diff * diff).sum() if loss.embedding_distance == "squared" else torch.linalg.vector_norm(diff)

        e_m = torch.relu(loss.alpha + s(i, k) - s(i, j))
        e_e = torch.relu(loss.beta + d(i, j) - d(i, k))
        if loss.variant == "quadruplet":
            e_m = e_m + torch.relu(loss.alpha + s(j, l) - s(i, j))
            e_e = e_e + torch.relu(loss.beta + d(i, j) - d(j, l))
        terms.append(e_m + loss.lambda_ * e_e)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("variant", ["quadruplet", "triplet"])
@pytest.mark.parametrize("embedding_distance", ["squared", "euclidean"])
@pytest.mark.parametrize("seed", range(6))
def test_faithful_loss_and_gradients_equal_the_public_mining_written_out(variant, embedding_distance, seed) -> None:
    """The loss mines on the device (a flag for a degenerate batch, no host read); value and gradients (embeddings,
    unit) equal the public mining's quadruplet written out by hand, in float64, on random batches with duplicated
    embeddings (exact score ties) and with degenerate ones (one class, all classes distinct)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loss = PDDMLoss(5, hidden_dim=7, dropout=0.0, variant=variant, embedding_distance=embedding_distance,
                    alpha=0.9, beta=1.5).double()
    with torch.no_grad():
        for p in loss.unit.parameters():
            p.normal_(0, 0.8, generator=gen)
    for labels in ([0, 0, 1, 1, 1, 2, 2, 0], [4, 4, 4, 4], [0, 1, 2, 3], [3]):
        m = len(labels)
        emb = torch.randn(m, 5, generator=gen, dtype=torch.float64)
        if m > 4:
            emb[4] = emb[2]  # a duplicate: ties in the scores of rows 2 and 4
            emb[7] = emb[1]
        lab = torch.tensor(labels)
        params = list(loss.unit.parameters())
        e1 = emb.clone().requires_grad_(True)
        value = loss(e1, lab)
        got = torch.autograd.grad(value, [e1, *params], allow_unused=True)
        e2 = emb.clone().requires_grad_(True)
        ref = _reference_from_public_mining(loss, e2, lab)
        if ref is None:
            assert value.item() == 0.0 and value.requires_grad
            assert all(t is not None and not t.any() for t in got), labels
            continue
        want = torch.autograd.grad(ref, [e2, *params], allow_unused=True)
        torch.testing.assert_close(value, ref, rtol=1e-12, atol=1e-14)
        for a, b in zip(got, want):
            torch.testing.assert_close(a if a is not None else torch.zeros_like(b),
                                       b if b is not None else torch.zeros_like(a), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["faithful_one_per_batch", "per_positive_pair"])
def test_counters_parts_and_stats_over_valid_and_degenerate_batches(mode: str) -> None:
    torch.manual_seed(0)
    loss = PDDMLoss(4, mode=mode)
    for labels in ([0, 0, 1, 1], [2, 2, 2, 2], [0, 0, 1, 1, 1]):
        out = loss(torch.randn(len(labels), 4, requires_grad=True), torch.tensor(labels))
        parts = {k: v.item() for k, v in loss.loss_parts().items()}
        if labels == [2, 2, 2, 2]:
            assert out.item() == 0.0 and parts == {"E_m": 0.0, "E_e": 0.0, "quadruplets": 0.0, "degenerate": 1.0}
        else:
            assert parts["degenerate"] == 0.0 and parts["quadruplets"] == (1 if mode.startswith("faithful") else
                                                                            2 + (len(labels) == 5) * 2)
            assert out.item() == pytest.approx(parts["E_m"] + 0.5 * parts["E_e"], rel=1e-6)
    quads = 2 if mode.startswith("faithful") else 2 + 4
    assert (loss.num_batches, loss.num_quadruplets, loss.num_degenerate_batches) == (3, quads, 1)
    assert isinstance(loss.num_quadruplets, int) and isinstance(loss.num_degenerate_batches, int)
    stats = loss.stats()
    assert (stats["num_batches"], stats["num_quadruplets"], stats["num_degenerate_batches"]) == (3.0, quads, 1.0)
    assert stats["E_m"] == parts["E_m"] and stats["E_e"] == parts["E_e"]


@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
def test_nan_scores_raise_the_same_error_in_both_modes(labels) -> None:
    """A NaN score off the diagonal: the per-pair mode raises in the call (its one read finds it); the faithful mode,
    which reads nothing in the call, returns a NaN loss (never a finite one, whatever quadruplet it picked) and its
    stats() raises the same error."""
    emb = torch.randn(5, 4)
    emb[4] = float("nan")
    lab = torch.tensor(labels)
    with pytest.raises(InputError) as info:
        PDDMLoss(4, mode="per_positive_pair")(emb, lab)
    message = str(info.value)
    assert message == "key 'scores': PDDM scores contain NaN off the diagonal"
    loss = PDDMLoss(4)
    assert torch.isnan(loss(emb, lab))
    with pytest.raises(InputError) as info:
        loss.stats()
    assert str(info.value) == message
    clean = PDDMLoss(4)  # the flag is the loss's own: a clean loss still reports
    clean(emb[:4], lab[:4])
    assert clean.stats()["num_batches"] == 1.0


def test_a_degenerate_faithful_batch_is_logged_once_at_debug_level(caplog) -> None:
    loss = PDDMLoss(4)
    with caplog.at_level("DEBUG", logger="dynametric.losses"):
        loss(torch.randn(4, 4), torch.tensor([0, 0, 1, 1]))
        loss(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))
        loss(torch.randn(4, 4), torch.tensor([5, 5, 5, 5]))
    said = [r.getMessage() for r in caplog.records if "PDDMLoss" in r.getMessage()]
    assert said == ["PDDMLoss: batch without a positive pair or without a negative; returning a zero loss"]
