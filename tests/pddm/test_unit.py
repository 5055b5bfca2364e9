"""PDDM unit: definition, symmetry, vectorised all-pairs == pair-by-pair, chunking, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynametric.errors import ConfigError, InputError
from dynametric.models import PDDM
from dynametric.models.pddm import default_hidden_dim
from tests.pddm.helpers import g, points, position_unit


def _reference_score(unit: PDDM, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The unit's formula written out for one pair (no shared code with the implementation)."""
    u = (a - b).abs()
    v = (a + b) / 2
    hu = torch.relu(u @ unit.fc_u.weight.T + unit.fc_u.bias)
    hv = torch.relu(v @ unit.fc_v.weight.T + unit.fc_v.bias)
    hu = hu / hu.norm().clamp(min=1e-12)
    hv = hv / hv.norm().clamp(min=1e-12)
    c = torch.relu(torch.cat([hu, hv]) @ unit.fc_c.weight.T + unit.fc_c.bias)
    return (c @ unit.fc_s.weight.T + unit.fc_s.bias).squeeze()


def test_default_hidden_width() -> None:
    assert default_hidden_dim(512) == 512
    assert default_hidden_dim(2048) == 1024
    assert PDDM(64).hidden_dim == 64
    unit = PDDM(2048)
    assert unit.fc_u.weight.shape == (1024, 2048) and unit.fc_c.weight.shape == (1024, 2048)
    assert unit.fc_s.weight.shape == (1, 1024)


def test_hand_set_unit_matches_closed_form() -> None:
    unit = position_unit()
    f = points([0.5, 0.6, 4.0, -3.0])
    s = unit.score_matrix(f)
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 3), (0, 3)]:
        mid = (f[i, 0] + f[j, 0]).item() / 2
        assert s[i, j].item() == pytest.approx(g(mid), abs=1e-6)


def test_all_pairs_equal_pair_by_pair_and_symmetric() -> None:
    torch.manual_seed(0)
    unit = PDDM(16, hidden_dim=24, dropout=0.0)
    with torch.no_grad():
        for p in unit.parameters():
            p.normal_(0, 0.5)  # larger weights than the default init so scores spread
    f = torch.randn(11, 16)
    s = unit.score_matrix(f)
    assert torch.equal(s, s.T), "all-pairs matrix must be exactly symmetric"
    assert torch.isneginf(s.diagonal()).all()
    ref = torch.empty(11, 11)
    for i in range(11):
        for j in range(11):
            ref[i, j] = _reference_score(unit, f[i], f[j])
            # each single pair is symmetric bitwise, too
            assert torch.equal(unit.score_pairs(f[i:i + 1], f[j:j + 1]), unit.score_pairs(f[j:j + 1], f[i:i + 1]))
    off = ~torch.eye(11, dtype=torch.bool)
    torch.testing.assert_close(s[off], ref[off], atol=1e-5, rtol=1e-5)
    assert s[off].std() > 0.05, "degenerate test: all scores equal"
    # the cross-set and candidate paths agree with the same reference
    torch.testing.assert_close(unit.score_cross(f[:4], f[4:]), ref[:4, 4:], atol=1e-5, rtol=1e-5)
    cand = torch.tensor([[5, 4], [10, 0]])
    torch.testing.assert_close(
        unit.score_candidates(f[[1, 3]], f, cand), torch.stack([ref[1, [5, 4]], ref[3, [10, 0]]]), atol=1e-5, rtol=1e-5
    )


def test_chunking_does_not_change_scores() -> None:
    torch.manual_seed(1)
    big = PDDM(8, hidden_dim=8, dropout=0.0)
    small = PDDM(8, hidden_dim=8, dropout=0.0, max_chunk_bytes=1)  # one pair per chunk
    small.load_state_dict(big.state_dict())
    assert small.pairs_per_chunk() == 1
    f = torch.randn(7, 8)
    torch.testing.assert_close(small.score_matrix(f), big.score_matrix(f), atol=1e-6, rtol=1e-6)


def test_hidden_vectors_are_normalised_per_pair_not_per_batch() -> None:
    """Normalising along the batch axis (a known bug in one port) would change scores with the batch."""
    torch.manual_seed(2)
    unit = PDDM(6, hidden_dim=5, dropout=0.0)
    f = torch.randn(9, 6)
    s_full = unit.score_matrix(f)
    s_sub = unit.score_matrix(f[:3])
    torch.testing.assert_close(s_full[:3, :3], s_sub, atol=1e-6, rtol=1e-6)
    a = F.normalize(torch.relu(unit.fc_u((f[0] - f[1]).abs())), dim=0)
    assert a.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_dropout_only_in_training_and_not_when_deterministic() -> None:
    torch.manual_seed(3)
    unit = PDDM(8, hidden_dim=64, dropout=0.5)
    f = torch.randn(6, 8)
    unit.eval()
    ref = unit.score_matrix(f)
    unit.train()
    torch.testing.assert_close(unit.score_matrix(f, deterministic=True), ref)
    assert not torch.allclose(unit.score_matrix(f), ref), "dropout had no effect in training mode"


def test_gradients_reach_unit_and_embeddings() -> None:
    torch.manual_seed(4)
    unit = PDDM(4, hidden_dim=6, dropout=0.0)
    f = torch.randn(5, 4, requires_grad=True)
    s = unit.score_matrix(f, diagonal=0.0)
    s.sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    for name, p in unit.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_validation_errors() -> None:
    with pytest.raises(ConfigError, match="hidden_dim"):
        PDDM(8, hidden_dim=0)
    with pytest.raises(ConfigError, match="dropout"):
        PDDM(8, dropout=1.0)
    unit = PDDM(8, dropout=0.0)
    with pytest.raises(InputError, match=r"\[N, 8\]"):
        unit.score_matrix(torch.randn(4, 7))
    with pytest.raises(InputError, match="equal row counts"):
        unit.score_pairs(torch.randn(3, 8), torch.randn(2, 8))
    assert unit.score_matrix(torch.randn(1, 8)).shape == (1, 1)
    assert unit.score_matrix(torch.randn(0, 8)).shape == (0, 0)
