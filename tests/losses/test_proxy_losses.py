"""Proxy/classification losses: value and gradient equality with PML (test-only oracle), hand-computed cases,
label checks, edge cases, autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynametric.errors import InputError
from dynametric.losses import LOSSES, CSLLoss, DecorrelationLoss, MarginLoss, PDDMLoss
from dynametric.losses.proxies import (
    ArcFaceLoss,
    CosFaceLoss,
    NormalizedSoftmaxLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    SoftTripleLoss,
    miner_weights,
    sparse_centers_regularizer,
)
from tests.autocast import cpu_autocast_dtypes

B, D, C = 24, 12, 7

# (name, our class, weight attribute, kwargs shared by both libraries)
CASES = [
    ("ProxyNCALoss", ProxyNCALoss, "proxies", {}),
    ("ProxyNCALoss", ProxyNCALoss, "proxies", {"softmax_scale": 10.0}),
    ("ProxyAnchorLoss", ProxyAnchorLoss, "proxies", {}),
    ("ProxyAnchorLoss", ProxyAnchorLoss, "proxies", {"margin": 0.3, "alpha": 8}),
    ("NormalizedSoftmaxLoss", NormalizedSoftmaxLoss, "W", {}),
    ("NormalizedSoftmaxLoss", NormalizedSoftmaxLoss, "W", {"temperature": 0.2}),
    ("CosFaceLoss", CosFaceLoss, "W", {}),
    ("CosFaceLoss", CosFaceLoss, "W", {"margin": 0.5, "scale": 16}),
    ("ArcFaceLoss", ArcFaceLoss, "W", {}),
    ("ArcFaceLoss", ArcFaceLoss, "W", {"margin": 10.0, "scale": 20}),
    ("SoftTripleLoss", SoftTripleLoss, "fc", {"centers_per_class": 3}),
    ("SoftTripleLoss", SoftTripleLoss, "fc", {"centers_per_class": 4, "la": 8, "gamma": 0.5, "margin": 0.2}),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]



def _pml(module: str):
    """``pytorch_metric_learning.<module>``, the reference of these tests (the dev extra has it); the test is skipped
    without it."""
    return pytest.importorskip(f"pytorch_metric_learning.{module}")


def _pair(name: str, cls: type, attr: str, kwargs: dict, ours_extra: dict | None = None, pml_extra: dict | None = None,
          num_classes: int = C, dim: int = D, seed: int = 0):
    torch.manual_seed(seed)
    ours = cls(num_classes, dim, **kwargs, **(ours_extra or {})).double()
    ref = getattr(_pml("losses"), name)(num_classes=num_classes, embedding_size=dim, **kwargs, **(pml_extra or {}))
    ref = ref.double()
    getattr(ref, attr).data.copy_(getattr(ours, attr).data)
    return ours, ref


def _run(loss: torch.nn.Module, attr: str, emb: torch.Tensor, labels: torch.Tensor, **kw):
    e = emb.clone().requires_grad_(True)
    value = loss(e, labels, **kw)
    value.backward()
    return value.detach(), e.grad, getattr(loss, attr).grad


def _assert_same(ours, ref, attr, emb, labels, ours_labels=None, **kw):
    v1, ge1, gw1 = _run(ours, attr, emb, labels if ours_labels is None else ours_labels, **kw)
    v2, ge2, gw2 = _run(ref, attr, emb, labels, **kw)
    torch.testing.assert_close(v1, v2.to(v1.dtype), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ge1, ge2, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw1, gw2, rtol=1e-8, atol=1e-10)
    assert float(v1) > 0


@pytest.mark.parametrize("name,cls,attr,kwargs", CASES, ids=IDS)
def test_value_and_gradient_equal_pml(name, cls, attr, kwargs):
    ours, ref = _pair(name, cls, attr, kwargs)
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, C, (B,), generator=g)
    # Our loss also takes [B, S] labels and uses column `scale` (label_scale for CosFace/ArcFace).
    col_kw = {"label_scale": 1} if cls in (CosFaceLoss, ArcFaceLoss) else {"scale": 1}
    ours_col, _ = _pair(name, cls, attr, kwargs, ours_extra=col_kw)
    ours_col.load_state_dict(ours.state_dict())
    two_col = torch.stack([torch.randint(0, C, (B,), generator=g), labels], dim=1)
    _assert_same(ours, ref, attr, emb, labels)
    ref.zero_grad()
    _assert_same(ours_col, ref, attr, emb, labels, ours_labels=two_col)


@pytest.mark.parametrize("name,cls,attr,kwargs", CASES[::2], ids=IDS[::2])
@pytest.mark.parametrize("tuple_kind", ["triplets", "pairs"])
def test_miner_weighting_equal_pml(name, cls, attr, kwargs, tuple_kind):
    ours, ref = _pair(name, cls, attr, kwargs, seed=3)
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    k = 3 if tuple_kind == "triplets" else 4
    # rows 0..B/2 only, with repeats, so the weights are non-trivial (some 0, some fractional)
    indices = tuple(torch.randint(0, B // 2, (9,), generator=g) for _ in range(k))
    _assert_same(ours, ref, attr, emb, labels, indices_tuple=indices)


def test_miner_weights_by_hand():
    idx = (torch.tensor([0, 0, 1]), torch.tensor([2, 3, 0]), torch.tensor([1, 0, 0]))
    # counts: 0 -> 5, 1 -> 2, 2 -> 1, 3 -> 1, 4 -> 0
    torch.testing.assert_close(miner_weights(idx, 5, device=torch.device("cpu")),
                               torch.tensor([1.0, 0.4, 0.2, 0.2, 0.0]))
    # anchors only (triplets: a)
    torch.testing.assert_close(miner_weights(idx, 5, device=torch.device("cpu"), anchors_only=True),
                               torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(miner_weights(None, 3, device=torch.device("cpu")), torch.ones(3))
    with pytest.raises(InputError, match="outside"):
        miner_weights((torch.tensor([7]), torch.tensor([0]), torch.tensor([1])), 5, device=torch.device("cpu"))


def test_arcface_both_branches_equal_pml():
    # Low dimension and a large margin: many target angles exceed pi - m, so the monotonic branch is exercised.
    ours, ref = _pair("ArcFaceLoss", ArcFaceLoss, "W", {"margin": 60.0, "scale": 4}, dim=3, num_classes=5, seed=5)
    g = torch.Generator().manual_seed(6)
    emb = torch.randn(64, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (64,), generator=g)
    cos = F.normalize(emb, dim=1) @ F.normalize(ours.W.detach(), dim=0)
    target_angle = torch.acos(cos.gather(1, labels[:, None]))
    assert bool((target_angle > math.pi - math.radians(60)).any()) and bool((target_angle < 1.0).any())
    _assert_same(ours, ref, "W", emb, labels)


def test_arcface_gradient_finite_at_cos_minus_one_and_one():
    loss = ArcFaceLoss(2, 2, scale=1.0).double()
    with torch.no_grad():
        loss.W.copy_(torch.eye(2, dtype=torch.float64))
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    value = loss(emb, torch.tensor([0, 0]))
    value.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(loss.W.grad).all()
    m = math.radians(28.6)
    # sample 0: theta = 0 -> cos(m); sample 1: theta = pi > pi - m -> cos(pi) - m sin(m); other logit 0
    expected = [math.log(1 + math.exp(-math.cos(m))), math.log(1 + math.exp(1 + m * math.sin(m)))]
    assert value.item() == pytest.approx(sum(expected) / 2, rel=1e-9)


def test_soft_triple_regulariser_equal_pml():
    kw = {"centers_per_class": 4}
    ours, ref = _pair("SoftTripleLoss", SoftTripleLoss, "fc", kw, ours_extra={"centers_reg_weight": 0.2},
                      pml_extra={"weight_regularizer": _pml("regularizers").SparseCentersRegularizer(C, 4),
                                 "weight_reg_weight": 0.2})
    g = torch.Generator().manual_seed(8)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    _assert_same(ours, ref, "fc", emb, labels)


def test_sparse_centers_regulariser_by_hand():
    # one class, 2 centres at 90 degrees: sqrt(2 - 0) / (1 * 2 * 1)
    centers = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    assert float(sparse_centers_regularizer(centers, 1, 2)) == pytest.approx(math.sqrt(2) / 2)
    # identical centres: 0 (up to rounding of 2 - 2 cos under the root)
    same = torch.tensor([[1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    assert float(sparse_centers_regularizer(same, 1, 2)) < 1e-6


@pytest.mark.parametrize("name,cls,attr", [("ProxyNCALoss", ProxyNCALoss, "proxies"),
                                           ("CosFaceLoss", CosFaceLoss, "W")])
def test_generic_weight_regulariser_equal_pml(name, cls, attr):
    regularizers = _pml("regularizers")
    ours, ref = _pair(name, cls, attr, {},
                      ours_extra={"weight_regularizer": regularizers.LpRegularizer(), "weight_reg_weight": 0.3},
                      pml_extra={"weight_regularizer": regularizers.LpRegularizer(), "weight_reg_weight": 0.3})
    g = torch.Generator().manual_seed(9)
    _assert_same(ours, ref, attr, torch.randn(B, D, generator=g, dtype=torch.float64),
                 torch.randint(0, C, (B,), generator=g))


# ---------------------------------------------------------------- hand-computed small cases

def _eye_weights(loss: torch.nn.Module, attr: str) -> None:
    with torch.no_grad():
        w = getattr(loss, attr)
        w.copy_(torch.eye(w.shape[0], w.shape[1], dtype=w.dtype))


def test_proxy_nca_by_hand():
    loss = ProxyNCALoss(2, 2)
    _eye_weights(loss, "proxies")
    # f = e0: squared distances 0 and 2 -> -log(e^0 / (e^0 + e^-2))
    value = loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_proxy_anchor_by_hand():
    loss = ProxyAnchorLoss(3, 2, margin=0.1, alpha=2)
    with torch.no_grad():
        loss.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosines: row0 (1, 0, -1), row1 (0, 1, 0)
    value = loss(emb, torch.tensor([0, 0]))
    a, m = 2.0, 0.1
    pos = math.log(1 + math.exp(-a * (1 - m)) + math.exp(-a * (0 - m)))  # proxy 0, the only one with positives
    neg = (0.0  # proxy 0 has no negatives
           + math.log(1 + math.exp(a * (0 + m)) + math.exp(a * (1 + m)))  # proxy 1
           + math.log(1 + math.exp(a * (-1 + m)) + math.exp(a * (0 + m))))  # proxy 2
    assert value.item() == pytest.approx(pos / 1 + neg / 3, rel=1e-6)


def test_normalized_softmax_by_hand():
    loss = NormalizedSoftmaxLoss(2, 2, temperature=0.5)
    _eye_weights(loss, "W")
    value = loss(torch.tensor([[3.0, 4.0]]), torch.tensor([1]))  # cosines 0.6, 0.8
    assert value.item() == pytest.approx(-1.6 + math.log(math.exp(1.2) + math.exp(1.6)), rel=1e-6)


def test_cosface_by_hand():
    loss = CosFaceLoss(2, 2, margin=0.35, scale=2.0)
    _eye_weights(loss, "W")
    value = loss(torch.tensor([[3.0, 4.0]]), torch.tensor([0]))  # cosines 0.6, 0.8; target 0.6 - 0.35
    t, o = 2 * 0.25, 2 * 0.8
    assert value.item() == pytest.approx(-t + math.log(math.exp(t) + math.exp(o)), rel=1e-6)


def test_arcface_by_hand():
    loss = ArcFaceLoss(2, 2, margin=30.0, scale=1.0)
    _eye_weights(loss, "W")
    f = torch.tensor([[math.cos(math.radians(60)), math.sin(math.radians(60))]])
    value = loss(f, torch.tensor([0]))  # theta 60 deg + 30 deg -> cos 90 = 0; other cosine sin 60
    assert value.item() == pytest.approx(math.log(1 + math.exp(math.sin(math.radians(60)))), abs=1e-6)


def test_soft_triple_by_hand():
    loss = SoftTripleLoss(2, 2, centers_per_class=2, la=1.0, gamma=1.0, margin=0.1)
    with torch.no_grad():  # class 0 centres e0, e1; class 1 centres -e0, -e1 (columns of fc)
        loss.fc.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]]))
    value = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    # class 0: centre sims (1, 0) -> weights softmax(1, 0); S0 = e/(e+1); class 1: sims (-1, 0) -> S1 = -1/(e+1)
    e = math.e
    s0, s1 = e / (e + 1), -1 / (1 + e)
    expected = -(s0 - 0.1) + math.log(math.exp(s0 - 0.1) + math.exp(s1))
    assert value.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- contract and edge cases

ALL = [(cls, attr) for _, cls, attr, _ in CASES[::2]]


@pytest.mark.parametrize("cls,attr", ALL)
def test_out_of_range_labels_rejected(cls, attr):
    loss = cls(4, D)
    emb = torch.randn(3, D)
    with pytest.raises(InputError, match=r"label 4 .*num_classes=4"):
        loss(emb, torch.tensor([0, 4, 1]))
    with pytest.raises(InputError, match=r"label -1 "):
        loss(emb, torch.tensor([0, -1, 1]))
    with pytest.raises(InputError, match="ref_emb"):
        loss(emb, torch.tensor([0, 1, 1]), ref_emb=emb, ref_labels=torch.tensor([0, 1, 1]))
    with pytest.raises(InputError, match="embedding_size"):
        loss(torch.randn(3, D + 1), torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("cls,attr", ALL)
def test_loss_parameters_are_the_class_weights(cls, attr):
    loss = cls(4, D)
    params = loss.loss_parameters()
    assert len(params) == 1 and params[0] is getattr(loss, attr)
    loss(torch.randn(5, D), torch.tensor([0, 1, 2, 3, 0])).backward()
    assert getattr(loss, attr).grad is not None and bool(getattr(loss, attr).grad.abs().sum() > 0)


@pytest.mark.parametrize("cls,attr", ALL)
def test_single_class_batch_is_finite_and_backprops(cls, attr):
    torch.manual_seed(0)
    loss = cls(5, D)
    emb = torch.randn(6, D, requires_grad=True)
    value = loss(emb, torch.full((6,), 2))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and bool(emb.grad.abs().sum() > 0)
    # an empty batch gives a graph-connected zero
    empty = torch.randn(0, D, requires_grad=True)
    z = loss(empty, torch.zeros(0, dtype=torch.long))
    z.backward()
    assert z.item() == 0.0


@pytest.mark.parametrize("cls,attr", ALL)
@pytest.mark.parametrize("dtype", cpu_autocast_dtypes(torch.bfloat16, torch.float16))
def test_autocast_half_precision_close_to_fp32(cls, attr, dtype):
    torch.manual_seed(0)
    loss = cls(C, D)
    net = torch.nn.Linear(16, D)
    x = torch.randn(B, 16)
    labels = torch.randint(0, C, (B,))
    ref = loss(net(x), labels)
    with torch.autocast("cpu", dtype=dtype):
        emb = net(x)
        value = loss(emb, labels)
    assert emb.dtype == dtype
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in net.parameters())
    torch.testing.assert_close(value.float(), ref, rtol=3e-2, atol=3e-2)
    # half-precision embeddings passed directly (no autocast) work too
    direct = loss(net(x).detach().to(dtype), labels)
    torch.testing.assert_close(direct.float(), ref.detach(), rtol=3e-2, atol=3e-2)


def test_weight_init_func_and_defaults():
    loss = ProxyNCALoss(3, 4, weight_init_func=torch.nn.init.ones_)
    assert torch.equal(loss.proxies.detach(), torch.ones(3, 4))
    arc = ArcFaceLoss(3, 4)
    assert arc.margin == pytest.approx(math.radians(28.6)) and arc.logit_scale == 64 and arc.scale == 0
    cos = CosFaceLoss(3, 4)
    assert cos.margin == 0.35 and cos.logit_scale == 64
    assert CosFaceLoss(3, 4, scale=10, label_scale=2).scale == 2  # .scale is the label column (base contract)
    st = SoftTripleLoss(3, 4)
    assert (st.centers_per_class, st.la, st.gamma, st.margin) == (10, 20, 0.1, 0.01)
    assert st.fc.shape == (4, 30)
    pa = ProxyAnchorLoss(3, 4)
    assert (pa.margin, pa.alpha) == (0.1, 32)
    assert NormalizedSoftmaxLoss(3, 4).temperature == 0.05
    with pytest.raises(InputError, match="num_classes"):
        CosFaceLoss(0, 4)


def test_registry_and_multiscale_use():
    from dynametric.losses import LOSSES, MultiScaleLoss, build_loss

    for name in ["ProxyNCALoss", "ProxyAnchorLoss", "NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss",
                 "SoftTripleLoss", "CSLLoss"]:
        assert name in LOSSES
    cos = build_loss("CosFaceLoss", num_classes=3, embedding_size=4, margin=0.2, scale=10)
    assert isinstance(cos, CosFaceLoss) and cos.logit_scale == 10 and cos.margin == 0.2
    # the DyML multi-scale CosFace baseline: one weight matrix per scale, of size C_s
    torch.manual_seed(0)
    ms = MultiScaleLoss("CosFaceLoss", num_scales=3, base_kwargs={"num_classes": [6, 3, 2], "embedding_size": D})
    assert [loss.num_classes for loss in ms.losses] == [6, 3, 2]
    assert len(ms.loss_parameters()) == 3
    labels = torch.stack([torch.arange(8) % 6, torch.arange(8) % 3, torch.arange(8) % 2], dim=1)
    emb = torch.randn(8, D)
    expected = sum(ms.losses[s](emb, labels[:, s]) for s in range(3))
    torch.testing.assert_close(ms(emb, labels), expected)
    with pytest.raises(InputError, match=r"label 2 .*num_classes=2"):
        ms(emb, labels.clone().fill_(2))


@pytest.mark.parametrize("distance,pml_distance", [
    ("l2", "LpDistance"), ("cosine", "CosineSimilarity"), ("unnormalized_sq", "unnormalized_sq")])
def test_proxy_nca_other_distances_equal_pml(distance, pml_distance):
    pml_d = _pml("distances")

    from dynametric.distances import CosineSimilarity, LpDistance

    ours_d = {"l2": LpDistance(), "cosine": CosineSimilarity(),
              "unnormalized_sq": LpDistance(power=2, normalize_embeddings=False)}[distance]
    ref_d = {"LpDistance": pml_d.LpDistance(), "CosineSimilarity": pml_d.CosineSimilarity(),
             "unnormalized_sq": pml_d.LpDistance(power=2, normalize_embeddings=False)}[pml_distance]
    ours, ref = _pair("ProxyNCALoss", ProxyNCALoss, "proxies", {"softmax_scale": 0.5},
                      ours_extra={"distance": ours_d}, pml_extra={"distance": ref_d})
    g = torch.Generator().manual_seed(11)
    _assert_same(ours, ref, "proxies", torch.randn(B, D, generator=g, dtype=torch.float64),
                 torch.randint(0, C, (B,), generator=g))


def test_cross_loss_identities():
    """CosFace(m=0, s) = ArcFace(m=0, s) = NormalizedSoftmax(T=1/s); SoftTriple(K=1, la, delta) = CosFace(delta, la)."""
    g = torch.Generator().manual_seed(12)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    w = torch.randn(D, C, generator=g, dtype=torch.float64)
    losses = [CosFaceLoss(C, D, margin=0.0, scale=8.0), ArcFaceLoss(C, D, margin=0.0, scale=8.0),
              NormalizedSoftmaxLoss(C, D, temperature=1 / 8.0)]
    values = []
    for loss in losses:
        loss.double()
        with torch.no_grad():
            loss.W.copy_(w)
        values.append(loss(emb, labels).item())
    assert values[0] == pytest.approx(values[1], rel=1e-9) and values[0] == pytest.approx(values[2], rel=1e-9)
    st1 = SoftTripleLoss(C, D, centers_per_class=1, la=12.0, margin=0.3).double()
    cf = CosFaceLoss(C, D, margin=0.3, scale=12.0).double()
    with torch.no_grad():
        st1.fc.copy_(w)
        cf.W.copy_(w)
    assert st1(emb, labels).item() == pytest.approx(cf(emb, labels).item(), rel=1e-9)


@pytest.mark.parametrize("name", ["ArcFaceLoss", "ProxyAnchorLoss", "NormalizedSoftmaxLoss", "SoftTripleLoss"])
@pytest.mark.parametrize("key, value", [("weight_regularizer", "x"), ("weight_init_func", 3)])
def test_a_weight_regularizer_or_init_that_is_not_callable_is_refused_when_built(name, key, value):
    """A config value such as `weight_regularizer: x` was kept and failed at the first training step."""
    from dynametric.errors import InputError
    from dynametric.losses import build_loss

    with pytest.raises(InputError, match=f"{key} must be callable .* got {value!r}") as err:
        build_loss(name, num_classes=4, embedding_size=8, **{key: value})
    assert err.value.key == key


@pytest.mark.parametrize("name,cls,attr,kwargs", CASES[::2], ids=IDS[::2])
def test_a_call_never_converts_the_class_weights_in_place(name, cls, attr, kwargs):
    """float64 embeddings used to convert the float32 weights to float64 in place (PML's cast_types): a float64
    call then a float32 one crashed Adam (its state in the old dtype). The weights keep their dtype; the float64
    value is the one of a float64 copy of the loss (the same weight values, so the same value), and the gradient
    reaches the weights in their own dtype."""
    torch.manual_seed(0)
    lp = _pml("regularizers").LpRegularizer
    loss = cls(C, D, **kwargs, weight_regularizer=lp())
    twin = cls(C, D, **kwargs, weight_regularizer=lp()).double()
    getattr(twin, attr).data.copy_(getattr(loss, attr).data)
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    for dtype in (torch.float64, torch.float32, torch.float64):
        opt.zero_grad()
        value = loss(emb.to(dtype), labels)
        assert value.dtype == dtype and getattr(loss, attr).dtype == torch.float32
        if dtype == torch.float64 and not opt.state:  # before any step: the twin's exact weights
            twin.zero_grad()
            expected = twin(emb, labels)
            expected.backward()
            torch.testing.assert_close(value.detach(), expected.detach(), rtol=1e-12, atol=1e-12)
            value.backward()
            torch.testing.assert_close(getattr(loss, attr).grad, getattr(twin, attr).grad.float())
        else:
            value.backward()
        weight = getattr(loss, attr)
        assert weight.grad.dtype == torch.float32 and bool(weight.grad.abs().sum() > 0)
        opt.step()  # was: a dtype error from Adam after a call in another dtype
    assert loss.get_logits(emb).dtype == torch.float64 and getattr(loss, attr).dtype == torch.float32


SIZE_CASES = [
    ("CosFaceLoss(3.5, D)", lambda v: CosFaceLoss(v, D), "num_classes"),
    ("ProxyNCALoss(C, 8.7)", lambda v: ProxyNCALoss(C, v), "embedding_size"),
    ("SoftTripleLoss(centers_per_class)", lambda v: SoftTripleLoss(C, D, centers_per_class=v), "centers_per_class"),
    ("MarginLoss(num_classes)", lambda v: MarginLoss(num_classes=v),
     "num_classes"),
    ("PDDMLoss(embedding_dim)", lambda v: PDDMLoss(v),
     "embedding_dim"),
    ("PDDMLoss(hidden_dim)", lambda v: PDDMLoss(8, hidden_dim=v),
     "hidden_dim"),
    ("DecorrelationLoss(embedding_size)",
     lambda v: DecorrelationLoss(v), "embedding_size"),
    ("DecorrelationLoss(hidden)",
     lambda v: DecorrelationLoss(8, hidden=v), "hidden"),
    ("CSLLoss(embedding_size)",
     lambda v: CSLLoss([[0], [1]], v, margins=(0.1,)), "embedding_size"),
]


@pytest.mark.parametrize("make,key", [c[1:] for c in SIZE_CASES], ids=[c[0] for c in SIZE_CASES])
@pytest.mark.parametrize("value", [3.5, 8.7, 8.0, True])
def test_size_arguments_that_are_no_integers_are_refused_not_truncated(make, key, value):
    """CosFaceLoss(3.5, D) built 3 classes, CosFaceLoss(True, D) one, ProxyNCALoss(C, 8.7) 8-d proxies (int())."""
    from dynametric.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make(value)
    assert (err.value.key, err.value.message) == (
        key, f"{key} must be an integer >= 1, got {value!r} ({type(value).__name__})")
    make(8)  # an integer is fine


DIVISOR_CASES = [
    ("MultiSimilarityLoss(alpha)", lambda v: LOSSES["MultiSimilarityLoss"](alpha=v), "alpha"),
    ("MultiSimilarityLoss(beta)", lambda v: LOSSES["MultiSimilarityLoss"](beta=v), "beta"),
    ("NormalizedSoftmaxLoss(temperature)", lambda v: NormalizedSoftmaxLoss(C, D, temperature=v), "temperature"),
    ("SoftTripleLoss(gamma)", lambda v: SoftTripleLoss(C, D, gamma=v), "gamma"),
]


@pytest.mark.parametrize("make,key", [c[1:] for c in DIVISOR_CASES], ids=[c[0] for c in DIVISOR_CASES])
@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("inf"), True, "2"])
def test_hyperparameters_a_loss_divides_by_must_be_positive(make, key, value):
    """MultiSimilarityLoss(alpha=0) returned inf silently (1/alpha); temperature=0 and gamma=0 divide by 0 too."""
    from dynametric.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make(value)
    assert (err.value.key, err.value.message) == (
        key, f"{key} must be a finite number > 0 (the loss divides by it), got {value!r}")
    loss = make(0.5)
    emb = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    assert bool(torch.isfinite(loss(emb, torch.arange(B) % C)))


BAD_TUPLES = [
    ("float indices", (torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0])),
     "entry 0 must be a 1-D integer tensor, got torch.float32 (1,)"),
    ("unequal triplet lengths", (torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])),
     "triplet index tensors must have equal lengths"),
    ("unequal pair lengths", (torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([3])),
     "pair index tensors (a1, p) and (a2, n) must have equal lengths"),
    ("negative out of range", (torch.tensor([0]), torch.tensor([1]), torch.tensor([99])),
     "entry 2 has indices outside [0, 24)"),
    ("positive out of range", (torch.tensor([0]), torch.tensor([-1]), torch.tensor([2])),
     "entry 1 has indices outside [0, 24)"),
    ("five entries", tuple(torch.tensor([0]) for _ in range(5)),
     "expected a tuple of 3 (a, p, n) or 4 (a1, p, a2, n) index tensors"),
]


@pytest.mark.parametrize("name,cls,attr,kwargs", CASES[::2], ids=IDS[::2])
@pytest.mark.parametrize("what,tup,message", BAD_TUPLES, ids=[b[0] for b in BAD_TUPLES])
def test_proxy_losses_validate_the_indices_tuple_as_the_tuple_losses(name, cls, attr, kwargs, what, tup, message):
    """miner_weights cast float indices with .long(), took entries of unequal lengths, and ProxyNCA (which counts
    anchors only) returned a value for a negative 99 in a batch of 24."""
    emb = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(B) % C
    with pytest.raises(InputError) as err:
        cls(C, D, **kwargs)(emb, labels, tup)
    assert (err.value.key, err.value.message) == ("indices_tuple", message)
    with pytest.raises(InputError) as tuple_loss_err:  # the tuple losses' own message
        LOSSES["TripletMarginLoss"]()(emb, labels, tup)
    assert tuple_loss_err.value.message == message
