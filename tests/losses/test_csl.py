"""CSLLoss (DyML cross-scale learning): value and gradient against a hand-written per-sample reference (explicit
Python loops, test only), the margin-ordering property, the pairs mode against its own reference, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynametric.errors import InputError
from dynametric.losses.csl import CSLLoss
from tests.autocast import cpu_autocast_dtypes

# Fine ids 100..105 (raw, not 0..C-1), middle 7..10, coarse 3..4; rows deliberately not sorted by fine id.
PATHS = torch.tensor([[103, 9, 4], [100, 7, 3], [105, 10, 4], [101, 7, 3], [104, 9, 4], [102, 8, 3]])



def _reference(emb, labels, others, other_labels, gamma, margins, weights, exclude_self=False):
    """``sum_l w_l mean_i log(1 + sum_{c in N_l(i)} sum_{p in P(i)} exp(gamma (s_ic - s_ip + m_l)))`` by loops.

    ``others`` are proxies (proxy mode) or the batch itself (pairs mode, ``exclude_self``); anchors without a
    positive are skipped. Returns (loss, per-scale terms, skipped count)."""
    f = F.normalize(emb, dim=1)
    o = F.normalize(others, dim=1)
    terms, skipped = [], 0
    for level, m in enumerate(margins):
        per_anchor = []
        skipped = 0
        for i in range(f.shape[0]):
            sims = [torch.dot(f[i], o[j]) for j in range(o.shape[0])]
            pos = [j for j in range(o.shape[0])
                   if int(other_labels[j][0]) == int(labels[i][0]) and not (exclude_self and j == i)]
            neg = [j for j in range(o.shape[0]) if int(other_labels[j][level]) != int(labels[i][level])]
            if not pos:
                skipped += 1
                continue
            acc = torch.zeros((), dtype=emb.dtype)
            for c in neg:
                for p in pos:
                    acc = acc + torch.exp(gamma * (sims[c] - sims[p] + m))
            per_anchor.append(torch.log1p(acc))
        terms.append(torch.stack(per_anchor).mean())
    loss = sum(w * t for w, t in zip(weights, terms))
    return loss, torch.stack(terms), skipped


def _batch(seed: int, n: int = 10, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, PATHS.shape[0], (n,), generator=g)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * 2, PATHS[rows]


@pytest.mark.parametrize("gamma,margins,weights", [(32.0, (0.25, 0.35, 0.45), None),
                                                   (8.0, (0.1, 0.3, 0.6), (0.5, 1.0, 2.0))])
def test_proxy_mode_value_and_gradient_match_reference(gamma, margins, weights):
    torch.manual_seed(0)
    loss = CSLLoss(PATHS, 6, gamma=gamma, margins=margins, weights=weights).double()
    emb, labels = _batch(1)
    e1 = emb.clone().requires_grad_(True)
    value = loss(e1, labels)
    value.backward()

    e2 = emb.clone().requires_grad_(True)
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    ref, ref_terms, _ = _reference(e2, labels, proxies, PATHS, gamma, margins, weights or (1.0, 1.0, 1.0))
    ref.backward()
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.last_terms, ref_terms.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(loss.proxies.grad, proxies.grad, rtol=1e-7, atol=1e-9)
    assert value.item() > 0.1 and bool(loss.proxies.grad.abs().sum() > 0)


def test_two_scale_labels_and_from_labels():
    paths2 = PATHS[:, :2]
    emb, labels = _batch(2)
    loss = CSLLoss.from_labels(torch.cat([labels[:, :2], paths2]), 6, margins=(0.2, 0.4)).double()
    assert loss.num_classes == 6  # one proxy per distinct fine id
    # the proxies are ordered by fine id (from_labels sorts rows)
    assert loss.class_paths[:, 0].tolist() == [100, 101, 102, 103, 104, 105]
    value = loss(emb, labels[:, :2])
    ref, _, _ = _reference(emb, labels[:, :2], loss.proxies.detach(), loss.class_paths, 32.0, (0.2, 0.4), (1, 1))
    assert value.item() == pytest.approx(ref.item(), rel=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), gamma=st.floats(1.0, 40.0))
def test_proxy_mode_matches_reference_property(seed, n, gamma):
    torch.manual_seed(seed)
    loss = CSLLoss(PATHS, 6, gamma=gamma).double()
    emb, labels = _batch(seed, n=n)
    ref, _, _ = _reference(emb, labels, loss.proxies.detach(), PATHS, gamma, loss.margins, loss.weights)
    assert loss(emb, labels).item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)


def test_pairs_mode_matches_its_reference_and_counts_skipped():
    emb, labels = _batch(3, n=12)
    labels = labels.clone()
    labels[0] = torch.tensor([999, 11, 5])  # a singleton fine class: no positive, must be skipped
    loss = CSLLoss(None, 6, mode="pairs", margins=(0.25, 0.35, 0.45))
    e1 = emb.clone().requires_grad_(True)
    value = loss(e1, labels)
    value.backward()
    e2 = emb.clone().requires_grad_(True)
    ref, ref_terms, skipped = _reference(e2, labels, e2, labels, 32.0, loss.margins, loss.weights, exclude_self=True)
    ref.backward()
    assert skipped >= 1 and loss.last_skipped_anchors == skipped
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.last_terms, ref_terms.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-7, atol=1e-9)
    assert loss.loss_parameters() == []


def test_pairs_mode_with_reference_set():
    emb, labels = _batch(4, n=5)
    ref_emb, ref_labels = _batch(5, n=9)
    loss = CSLLoss(PATHS, 6, mode="pairs")
    value = loss(emb, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    ref, _, skipped = _reference(emb, labels, ref_emb, ref_labels, 32.0, loss.margins, loss.weights)
    assert value.item() == pytest.approx(ref.item(), rel=1e-10)
    assert loss.last_skipped_anchors == skipped


# ---------------------------------------------------------------- margin ordering

def _anchor_with_similarities(sims_by_fine: dict[int, float], dim: int = 8) -> torch.Tensor:
    """A unit vector whose cosine with proxy ``e_k`` (row k of PATHS) is the requested value."""
    f = torch.zeros(dim, dtype=torch.float64)
    for row, fid in enumerate(PATHS[:, 0].tolist()):
        f[row] = sims_by_fine[fid]
    f[-1] = math.sqrt(1.0 - float((f**2).sum()))
    return f[None, :]


def _loss_with_basis_proxies(**kwargs) -> CSLLoss:
    loss = CSLLoss(PATHS, 8, **kwargs).double()
    with torch.no_grad():
        loss.proxies.copy_(torch.eye(6, 8, dtype=torch.float64))
    return loss


# anchor of fine class 100 (middle 7, coarse 3): 101 is its fine sibling, 102 a middle sibling, 103-105 other coarse
WIDE = {100: 0.6, 101: 0.0, 102: -0.1, 103: -0.35, 104: -0.35, 105: -0.35}
ANCHOR_LABELS = torch.tensor([[100, 7, 3]])


def test_margins_satisfied_by_a_wide_gap_give_near_zero_loss():
    loss = _loss_with_basis_proxies()
    value = loss(_anchor_with_similarities(WIDE), ANCHOR_LABELS)
    assert value.item() < 1e-4 and bool((loss.last_terms < 1e-4).all())


def test_violating_the_fine_margin_raises_only_the_fine_term():
    loss = _loss_with_basis_proxies()
    value = loss(_anchor_with_similarities({**WIDE, 101: 0.5}), ANCHOR_LABELS)
    t = loss.last_terms
    assert t[0].item() == pytest.approx(math.log1p(math.exp(32 * (0.5 - 0.6 + 0.25))), rel=1e-3)
    assert t[1].item() < 1e-4 and t[2].item() < 1e-4
    assert value.item() == pytest.approx(t.sum().item())


@pytest.mark.parametrize("level,changed", [(1, {102: 0.35}), (2, {103: 0.05})])
def test_violating_a_coarser_margin_raises_that_term(level, changed):
    # Negatives are nested (N_2 ⊆ N_1 ⊆ N_0), so a coarse violation is also a finer-scale negative; with spread-out
    # margins it still satisfies the finer margins by a wide gap and only the violated scale's term rises.
    margins = (0.1, 0.4, 0.7)
    loss = _loss_with_basis_proxies(gamma=64.0, margins=margins)
    assert loss(_anchor_with_similarities(WIDE), ANCHOR_LABELS).item() < 1e-4
    loss(_anchor_with_similarities({**WIDE, **changed}), ANCHOR_LABELS)
    t = loss.last_terms
    s = next(iter(changed.values()))
    assert t[level].item() == pytest.approx(math.log1p(math.exp(64 * (s - 0.6 + margins[level]))), rel=1e-3)
    others = [t[k].item() for k in range(3) if k != level]
    assert max(others) < 1e-3


# ---------------------------------------------------------------- errors and edge cases

def test_unknown_fine_id_and_inconsistent_paths_are_rejected():
    loss = CSLLoss(PATHS, 6)
    with pytest.raises(InputError, match="fine label 106 is not one of the 6"):
        loss(torch.randn(2, 6), torch.tensor([[100, 7, 3], [106, 7, 3]]))
    with pytest.raises(InputError, match=r"batch row 1 .*registered with path \[101, 7, 3\]"):
        loss(torch.randn(2, 6), torch.tensor([[100, 7, 3], [101, 8, 3]]))
    with pytest.raises(InputError, match=r"labels \[B, 3\]"):
        loss(torch.randn(2, 6), torch.tensor([100, 101]))
    with pytest.raises(InputError, match="fine id 101 has two label paths"):
        CSLLoss.from_labels(torch.tensor([[101, 7, 3], [101, 8, 3]]), 6)
    with pytest.raises(InputError, match="fine id 100 appears in more than one row"):
        CSLLoss(torch.tensor([[100, 7, 3], [100, 7, 3]]), 6)
    with pytest.raises(InputError, match="margins"):
        CSLLoss(PATHS[:, :2], 6)
    with pytest.raises(InputError, match="class_paths"):
        CSLLoss(None, 6)
    with pytest.raises(InputError, match="mode"):
        CSLLoss(PATHS, 6, mode="triplet")
    with pytest.raises(InputError, match="indices_tuple"):
        loss(torch.randn(2, 6), PATHS[:2], indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([1])))


def test_terms_method_returns_the_per_scale_terms_with_gradient():
    loss = CSLLoss(PATHS, 6, weights=(1.0, 2.0, 3.0))
    emb, labels = _batch(7)
    emb = emb.float().requires_grad_(True)
    terms = loss.terms(emb, labels)
    assert terms.shape == (3,) and terms.requires_grad
    torch.testing.assert_close(loss(emb, labels), (terms * torch.tensor([1.0, 2.0, 3.0])).sum())
    torch.testing.assert_close(loss.last_terms, terms.detach())


def test_single_class_batches_are_finite_and_backprop():
    loss = CSLLoss(PATHS, 6)
    emb = torch.randn(4, 6, requires_grad=True)
    value = loss(emb, PATHS[[1, 1, 1, 1]])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and torch.isfinite(loss.proxies.grad).all()
    # pairs mode, one fine class: positives but no negatives at any scale -> 0, still connected
    pairs = CSLLoss(None, 6, mode="pairs")
    emb2 = torch.randn(4, 6, requires_grad=True)
    z = pairs(emb2, PATHS[[1, 1, 1, 1]])
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(emb2.grad).all()
    # pairs mode, no positive at all -> graph-connected zero, every anchor counted as skipped
    emb3 = torch.randn(3, 6, requires_grad=True)
    z = pairs(emb3, PATHS[[0, 1, 2]])
    z.backward()
    assert z.item() == 0.0 and pairs.last_skipped_anchors == 3
    # empty batch (proxy mode): a graph-connected zero
    empty = torch.zeros(0, 6, requires_grad=True)
    z = loss(empty, torch.zeros(0, 3, dtype=torch.long))
    z.backward()
    assert z.item() == 0.0 and loss.last_terms is None


@pytest.mark.parametrize("mode", ["proxy", "pairs"])
def test_a_nan_embedding_or_proxy_gives_nan_never_a_silent_zero(mode):
    """An empty set (``-inf``) gives an exact 0; a NaN (a diverged model) must stay NaN so that the run's
    non-finite policy sees it (it used to be masked as an empty set: a loss of exactly 0)."""
    loss = CSLLoss(PATHS if mode == "proxy" else None, 6, mode=mode)
    labels = PATHS[[0, 1, 2, 3, 0, 2]]
    assert torch.isnan(loss(torch.full((6, 6), float("nan")), labels))
    one_row = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    one_row[2] = float("nan")
    assert torch.isnan(loss(one_row, labels))
    if mode == "proxy":
        clean = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(loss(clean, labels))
        with torch.no_grad():
            loss.proxies[0] = float("nan")
        assert torch.isnan(loss(clean, labels)) and torch.isnan(loss.last_terms[0])


def test_a_hierarchy_with_one_coarse_class_has_a_zero_coarse_term():
    paths = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0]])
    loss = CSLLoss(paths, 4)
    value = loss(torch.randn(5, 4, requires_grad=True), paths[[0, 1, 2, 0, 2]])
    value.backward()
    assert loss.last_terms[2].item() == 0.0 and loss.last_terms[0].item() > 0


def test_proxies_are_the_loss_parameters_and_state_is_saved():
    loss = CSLLoss(PATHS, 6)
    assert loss.loss_parameters() == [loss.proxies]
    bound = 1 / math.sqrt(6)
    assert loss.proxies.detach().abs().max().item() <= bound
    state = loss.state_dict()
    assert torch.equal(state["class_paths"], PATHS) and "proxies" in state
    other = CSLLoss(PATHS, 6)
    other.load_state_dict(state)
    emb, labels = _batch(6)
    assert loss(emb.float(), labels).item() == pytest.approx(other(emb.float(), labels).item())


@pytest.mark.parametrize("mode", ["proxy", "pairs"])
@pytest.mark.parametrize("dtype", cpu_autocast_dtypes(torch.bfloat16, torch.float16))
def test_autocast_half_precision_close_to_fp32(mode, dtype):
    torch.manual_seed(0)
    loss = CSLLoss(PATHS, 8, mode=mode)
    net = torch.nn.Linear(16, 8)
    x = torch.randn(24, 16)
    labels = PATHS[torch.randint(0, 6, (24,))]
    ref = loss(net(x), labels)
    with torch.autocast("cpu", dtype=dtype):
        emb = net(x)
        value = loss(emb, labels)
    assert emb.dtype == dtype and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in net.parameters())
    torch.testing.assert_close(value, ref, rtol=5e-2, atol=5e-2)


def test_training_with_csl_reaches_every_margin():
    """Free embeddings + proxies optimised with CSL end up satisfying every scale's margin (the loss trains)."""
    torch.manual_seed(0)
    labels = PATHS.repeat_interleave(4, dim=0)  # 6 fine classes x 4 samples
    emb = torch.nn.Parameter(torch.randn(labels.shape[0], 8))
    loss = CSLLoss(PATHS, 8)
    opt = torch.optim.Adam([{"params": [emb]}, {"params": loss.loss_parameters(), "lr": 0.05}], lr=0.05)
    first = loss(emb, labels).item()
    for _ in range(150):
        opt.zero_grad()
        loss(emb, labels).backward()
        opt.step()
    final = loss(emb, labels).item()
    assert first > 10 and final < 0.05 * first and final < 0.5
    with torch.no_grad():
        s = F.normalize(emb, dim=1) @ F.normalize(loss.proxies, dim=1).t()
        own = s.gather(1, loss.class_index(labels[:, 0])[:, None]).squeeze(1)
        for level, m in enumerate(loss.margins):
            neg = labels[:, level, None] != PATHS[:, level][None, :]
            hardest = s.masked_fill(~neg, -2).max(dim=1).values
            assert bool((own - hardest > m).float().mean() >= 0.95), level


# ------------------------------------------------------------------------------ arguments outside the paper's ranges

_PATHS = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 1]])


@pytest.mark.parametrize("kwargs, key, words", [
    ({"gamma": 0}, "gamma", "gamma (the cosine scale) must be a number > 0, got 0"),
    ({"gamma": -1}, "gamma", "gamma (the cosine scale) must be a number > 0, got -1"),
    ({"gamma": float("nan")}, "gamma", "must be a number > 0"),
    ({"weights": [1, -1, 1]}, "weights", "weights must be non-negative, not all zero, got [1.0, -1.0, 1.0]"),
    ({"weights": [0, 0, 0]}, "weights", "not all zero"),
])
def test_gamma_and_weights_outside_their_range_are_refused(kwargs, key, words) -> None:
    with pytest.raises(InputError) as info:
        CSLLoss.from_labels(_PATHS, 8, **kwargs)
    assert info.value.key == key and words in str(info.value) and "\n" not in str(info.value)


def test_zero_weight_at_one_scale_is_fine_and_float_labels_follow_the_other_losses() -> None:
    loss = CSLLoss.from_labels(_PATHS, 8, weights=[1, 0, 1])
    emb = torch.randn(4, 8)
    assert torch.isfinite(loss(emb, _PATHS))
    assert torch.equal(loss(emb, _PATHS.float()), loss(emb, _PATHS))  # integral floats: as every loss takes them
    with pytest.raises(InputError, match="labels must be integers, found non-integer values"):
        loss(emb, _PATHS.float() + 0.5)


# ---------------------------------------------------------------- pairs mode without host reads

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), classes=st.integers(1, 6), with_ref=st.booleans())
@example(seed=8878, n=2, classes=4, with_ref=True)  # a term of 20.001: F.softplus's threshold dropped 2e-9 of it
def test_pairs_mode_mean_over_anchors_with_a_positive_matches_reference(seed, n, classes, with_ref):
    """The mean over the anchors that have a positive, taken as a sum over all anchors (0 for the others) divided
    by their count: value and gradient equal the per-anchor float64 reference that skips them, also when some or
    all anchors have no positive."""
    g = torch.Generator().manual_seed(seed)
    labels = PATHS[torch.randint(0, classes, (n,), generator=g)]
    emb = torch.randn(n, 6, generator=g, dtype=torch.float64)
    loss = CSLLoss(None, 6, mode="pairs")
    e1 = emb.clone().requires_grad_(True)
    if with_ref:
        r = int(torch.randint(0, 6, (1,), generator=g))
        ref_emb, ref_labels = torch.randn(r, 6, generator=g, dtype=torch.float64), PATHS[torch.randint(0, 6, (r,),
                                                                                                      generator=g)]
        value = loss(e1, labels, ref_emb=ref_emb, ref_labels=ref_labels)
    else:
        ref_emb, ref_labels = None, None
        value = loss(e1, labels)
    value.backward()
    e2 = emb.clone().requires_grad_(True)
    others, other_labels = (e2, labels) if ref_emb is None else (ref_emb, ref_labels)
    skipped = [i for i in range(n) if not any(
        int(other_labels[j][0]) == int(labels[i][0]) and not (ref_emb is None and j == i)
        for j in range(others.shape[0]))]
    assert loss.last_skipped_anchors == len(skipped)
    if len(skipped) == n:  # no anchor has a positive: a zero still connected to the graph, zero gradients
        assert value.item() == 0.0 and value.requires_grad
        assert e1.grad is not None and not e1.grad.any()
        assert torch.equal(loss.last_terms, torch.zeros(3, dtype=torch.float64))
        return
    ref, ref_terms, ref_skipped = _reference(e2, labels, others, other_labels, 32.0, loss.margins, loss.weights,
                                             exclude_self=ref_emb is None)
    ref_grad = torch.autograd.grad(ref, e2)[0] if ref.requires_grad else torch.zeros_like(e2)  # no negatives: 0
    assert ref_skipped == len(skipped)
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss.last_terms, ref_terms.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e1.grad, ref_grad, rtol=1e-7, atol=1e-9)


def test_pairs_mode_without_any_positive_loss_is_zero_and_terms_is_none():
    loss = CSLLoss(PATHS, 6, mode="pairs")
    emb = torch.randn(4, 6, requires_grad=True)
    labels = PATHS[[0, 1, 2, 3]]  # four fine classes, one sample each
    value = loss(emb, labels)
    value.backward()
    assert value.item() == 0.0 and not emb.grad.any() and loss.last_skipped_anchors == 4
    assert torch.equal(loss.last_terms, torch.zeros(3)) and all(v.item() == 0.0 for v in loss.loss_parts().values())
    # the public terms() keeps its documented None (it reads the count on the host)
    assert loss.terms(emb, labels) is None and loss.last_terms is None
    terms = loss.terms(emb, PATHS[[0, 0, 1, 2]])
    assert terms is not None and terms.shape == (3,) and loss.last_skipped_anchors == 2


def test_pairs_mode_logs_skipped_anchors_once_at_debug_level(caplog):
    loss = CSLLoss(None, 6, mode="pairs")
    emb = torch.randn(5, 6)
    with caplog.at_level("DEBUG", logger="dynametric.losses"):
        loss(emb, PATHS[[0, 0, 1, 1, 1]])  # every anchor has a positive: nothing to say
        assert not [r for r in caplog.records if "skipped" in r.getMessage()]
        loss(emb, PATHS[[0, 0, 1, 2, 3]])
        loss(emb, PATHS[[0, 1, 2, 3, 4]])
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == ["CSLLoss(pairs): anchors without an in-batch positive are skipped (3 in this batch)"]


# ---------------------------------------------------------------- vouching for the batch labels

def test_label_checks_keep_their_messages_until_the_labels_are_trusted():
    loss = CSLLoss(PATHS, 6)
    emb = torch.randn(2, 6)
    with pytest.raises(InputError) as info:
        loss(emb, torch.tensor([[100, 7, 3], [999, 7, 3]]))
    assert str(info.value) == ("key 'labels': fine label 999 is not one of the 6 fine training classes this CSLLoss "
                               "was built with")
    with pytest.raises(InputError) as info:
        loss(emb, torch.tensor([[100, 7, 3], [101, 8, 3]]))
    assert str(info.value) == ("key 'labels': batch row 1 has label path [101, 8, 3] but fine class 101 was "
                               "registered with path [101, 7, 3]")
    assert not loss.labels_trusted
    # a label matrix with a bad row is refused with the same words, keyed train_labels, and nothing is trusted
    with pytest.raises(InputError) as info:
        loss.trust_labels(torch.cat([PATHS, torch.tensor([[102, 7, 3]])]))
    assert str(info.value) == ("key 'train_labels': training label row 6 has label path [102, 7, 3] but fine class "
                               "102 was registered with path [102, 8, 3]")
    with pytest.raises(InputError, match="key 'train_labels': fine label 7 is not one of the 6"):
        loss.trust_labels(torch.tensor([[7, 7, 3]]))
    assert not loss.labels_trusted
    good = PATHS[[1, 3]]
    before = loss(emb, good)
    loss.trust_labels(PATHS[[0, 0, 3, 5]])
    assert loss.labels_trusted and torch.equal(loss(emb, good), before)  # the same value without the check
    # trusted: the per-call check is off (the caller vouched that every batch is rows of the checked labels); the
    # column count is still checked
    loss(emb, torch.tensor([[100, 7, 3], [101, 8, 3]]))
    with pytest.raises(InputError, match=r"expects labels \[B, 3\]"):
        loss(emb, PATHS[[0, 1], :2])
    with pytest.raises(InputError, match="training label row 0"):  # a second call checks again
        loss.trust_labels(torch.tensor([[101, 8, 3]]))
    assert not loss.labels_trusted
