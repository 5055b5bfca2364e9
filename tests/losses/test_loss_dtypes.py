"""Dtypes of the tuple losses and the miners: half-precision embeddings are computed in float32 (the distance
matrix from the embeddings converted first, autocast off, never rounded back to half precision), so a loss of
fp16/bf16 embeddings is the loss of the same values in float32, value and gradient (the gradient arriving in the
embeddings' own dtype); embeddings and ``ref_emb`` of different dtypes are computed in their promotion."""

from __future__ import annotations

import pytest
import torch

from dynametric import distances as dm_dist
from dynametric.losses import LOSSES
from dynametric.miners import MINERS
from dynametric.tuples import compute_dtype
from tests.autocast import cpu_autocast_dtypes

TUPLE_LOSSES = [
    ("ContrastiveLoss", {}),
    ("TripletMarginLoss", {"margin": 0.3}),
    ("TripletMarginLoss", {"margin": 0.3, "swap": True, "smooth_loss": True}),
    ("NPairsLoss", {}),
    ("LiftedStructureLoss", {}),
    ("GeneralizedLiftedStructureLoss", {}),
    ("MarginLoss", {"learn_beta": True, "nu": 0.1}),
    ("MultiSimilarityLoss", {}),
    ("CircleLoss", {}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(TUPLE_LOSSES)]
DISTANCES = {"l2": dm_dist.LpDistance, "squared": dm_dist.SquaredL2Distance, "cos": dm_dist.CosineSimilarity}
HALF = [torch.bfloat16, torch.float16]


def batch(seed: int = 0, n: int = 24, d: int = 8, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def make(name, kwargs, dist):
    if name == "CircleLoss" and dist != "cos":
        dist = "cos"  # CircleLoss takes the cosine only
    return LOSSES[name](distance=DISTANCES[dist](), **kwargs)


def value_and_grad(loss, emb, labels, **kwargs):
    e = emb.detach().clone().requires_grad_(True)
    value = loss(e, labels, **kwargs)
    value.backward()
    return value.detach(), e.grad


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("dist", sorted(DISTANCES))
@pytest.mark.parametrize("name,kwargs", TUPLE_LOSSES, ids=IDS)
def test_half_precision_embeddings_give_the_float32_loss_of_the_same_values(name, kwargs, dist, dtype):
    emb, labels = batch(1)
    half = emb.to(dtype)
    v_half, g_half = value_and_grad(make(name, kwargs, dist), half, labels)
    v32, g32 = value_and_grad(make(name, kwargs, dist), half.float(), labels)
    assert v_half.dtype == torch.float32 and g_half.dtype == dtype
    assert torch.equal(v_half, v32)  # the same float32 computation, not merely close
    assert torch.equal(g_half, g32.to(dtype))  # its gradient, rounded once to the embeddings' dtype
    assert bool(g32.abs().sum() > 0)


@pytest.mark.parametrize("dtype", cpu_autocast_dtypes(*HALF), ids=str)
@pytest.mark.parametrize("name,kwargs", TUPLE_LOSSES, ids=IDS)
def test_autocast_does_not_lower_the_distance_matrix(name, kwargs, dtype):
    """float32 embeddings under autocast: the cosine matrix (a matmul, which autocast runs in half precision) is
    computed with autocast off, so the loss is the one without autocast."""
    emb, labels = batch(2)
    plain = value_and_grad(make(name, kwargs, "cos"), emb, labels)
    e = emb.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        value = make(name, kwargs, "cos")(e, labels)
    value.backward()  # outside autocast, as torch recommends
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.detach(), plain[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(e.grad, plain[1], rtol=1e-5, atol=1e-7)


MIXED = [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.float32),
         (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("emb_dtype,ref_dtype", MIXED, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name,kwargs", [c for c in TUPLE_LOSSES if c[0] != "NPairsLoss"],
                         ids=[i for i, c in zip(IDS, TUPLE_LOSSES, strict=True) if c[0] != "NPairsLoss"])
def test_embeddings_and_ref_emb_of_different_dtypes_are_promoted(name, kwargs, emb_dtype, ref_dtype):
    """Both sides in ``torch.promote_types`` of the two (half precision as float32): the value equals the call
    with both converted, and each gradient arrives in its own tensor's dtype. (float64 with float32 used to be a
    RuntimeError from the distance, while fp16 with fp32 was accepted.)"""
    emb, labels = batch(3)
    ref, ref_labels = batch(4, n=17)
    common = compute_dtype(emb.to(emb_dtype), ref.to(ref_dtype))
    assert common == {frozenset({torch.float64, torch.float32}): torch.float64}.get(
        frozenset({emb_dtype, ref_dtype}), torch.float32)
    e = emb.to(emb_dtype).clone().requires_grad_(True)
    r = ref.to(ref_dtype).clone().requires_grad_(True)
    value = make(name, kwargs, "l2")(e, labels, ref_emb=r, ref_labels=ref_labels)
    value.backward()
    e2 = emb.to(emb_dtype).to(common).clone().requires_grad_(True)
    r2 = ref.to(ref_dtype).to(common).clone().requires_grad_(True)
    same = make(name, kwargs, "l2")(e2, labels, ref_emb=r2, ref_labels=ref_labels)
    same.backward()
    assert value.dtype == common and torch.equal(value.detach(), same.detach())
    assert e.grad.dtype == emb_dtype and r.grad.dtype == ref_dtype
    assert torch.equal(e.grad, e2.grad.to(emb_dtype)) and torch.equal(r.grad, r2.grad.to(ref_dtype))


MINER_CASES = [
    ("TripletMarginMiner", {"margin": 0.2}),
    ("BatchHardMiner", {}),
    ("MultiSimilarityMiner", {"epsilon": 0.1}),
    ("PairMarginMiner", {"pos_margin": 0.5, "neg_margin": 0.9}),
]


@pytest.mark.parametrize("emb_dtype,ref_dtype", MIXED, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name,kwargs", MINER_CASES, ids=[n for n, _ in MINER_CASES])
def test_miners_mine_mixed_dtypes_in_their_promotion(name, kwargs, emb_dtype, ref_dtype):
    emb, labels = batch(5)
    ref, ref_labels = batch(6, n=17)
    e, r = emb.to(emb_dtype), ref.to(ref_dtype)
    common = compute_dtype(e, r)
    got = MINERS[name](**kwargs)(e, labels, r, ref_labels)
    want = MINERS[name](**kwargs)(e.to(common), labels, r.to(common), ref_labels)
    assert [t.tolist() for t in got] == [t.tolist() for t in want]


def test_miners_under_autocast_compare_float32_similarities():
    """Pair margins placed one float32 step above each positive pair's cosine: in float32 every such pair is kept
    (``s < pos_margin``), as without autocast; a bf16 matrix rounds about half of them above the margin."""
    emb, labels = batch(7, n=20, d=16)
    sims = dm_dist.CosineSimilarity()(emb)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(20, dtype=torch.bool)
    values = sims[pos][:40]
    for s in values.tolist():
        margin = float(torch.nextafter(torch.tensor(s), torch.tensor(2.0)))
        miner = MINERS["PairMarginMiner"](pos_margin=margin, neg_margin=-1.0, distance=dm_dist.CosineSimilarity())
        plain = miner(emb, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = miner(emb, labels)
        assert [t.tolist() for t in under] == [t.tolist() for t in plain]


LEARNED_LAYER_LOSSES = [
    ("PDDMLoss", {"embedding_dim": 8, "hidden_dim": 8, "dropout": 0.0}),
    ("PDDMLoss", {"embedding_dim": 8, "hidden_dim": 8, "dropout": 0.0, "mode": "per_positive_pair",
                  "variant": "triplet"}),
    ("DecorrelationLoss", {"embedding_size": 8, "hidden": 8}),
]
LEARNED_IDS = ["PDDM-faithful", "PDDM-per-pair-triplet", "Decorrelation"]


def learned_value_and_grads(loss, emb, labels):
    loss.zero_grad()
    e = emb.detach().clone().requires_grad_(True)
    value = loss(e, labels)
    value.backward()
    return value.detach(), e.grad, [p.grad.clone() for p in loss.parameters()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,kwargs", LEARNED_LAYER_LOSSES, ids=LEARNED_IDS)
def test_losses_with_learned_layers_take_every_floating_dtype(name, kwargs, dtype):
    """PDDMLoss and DecorrelationLoss: float64/fp16/bf16 embeddings were ``mat1 and mat2 must have the same dtype``
    outside autocast (their float32 nn.Linear layers). The layers now run in their parameters' dtype: half precision
    gives exactly the float32 loss of the same values (the tuple losses' rule), float64 the float32 loss up to
    float32 rounding, each with the gradient in the embeddings' dtype and gradients reaching the layers."""
    torch.manual_seed(0)
    loss = LOSSES[name](**kwargs)
    emb, labels = batch(6, n=12, classes=4)
    x = emb.to(dtype)
    value, grad, param_grads = learned_value_and_grads(loss, x, labels)
    ref_value, ref_grad, ref_param_grads = learned_value_and_grads(loss, x.float(), labels)
    assert value.dtype == compute_dtype(x) and grad.dtype == dtype
    assert all(p.dtype == torch.float32 for p in loss.parameters())  # the layers are left as they were
    if dtype == torch.float64:
        torch.testing.assert_close(value.float(), ref_value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad.float(), ref_grad, rtol=1e-4, atol=1e-6)
    else:
        assert torch.equal(value, ref_value) and torch.equal(grad, ref_grad.to(dtype))
    assert bool(ref_grad.abs().sum() > 0) and any(bool(g.abs().sum() > 0) for g in ref_param_grads)
    for g, ref in zip(param_grads, ref_param_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,kwargs", LEARNED_LAYER_LOSSES, ids=LEARNED_IDS)
def test_losses_with_learned_layers_still_run_under_autocast(name, kwargs):
    torch.manual_seed(0)
    loss = LOSSES[name](**kwargs)
    emb, labels = batch(7, n=12, classes=4)
    plain = learned_value_and_grads(loss, emb, labels)[0]
    e = emb.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(e, labels)
    value.backward()
    assert e.grad is not None and e.grad.dtype == torch.float32
    torch.testing.assert_close(value.detach().float(), plain, rtol=2e-2, atol=2e-2)  # bf16 layers: close only


def test_pddm_with_a_dead_stream_is_finite_under_float16_autocast():
    """PDDM normalises its ReLU streams; under float16 autocast on the CPU the norm was float16, whose eps 1e-12 is
    0, so a dead stream (all-zero row) gave 0/0: a NaN loss and NaN gradients. Now normalised in float32."""
    torch.manual_seed(0)
    loss = LOSSES["PDDMLoss"](embedding_dim=8, hidden_dim=4, dropout=0.0)
    unit = next(m for m in loss.modules() if hasattr(m, "fc_u"))
    with torch.no_grad():
        unit.fc_u.bias.fill_(-5.0)  # the difference stream's ReLU is zero for every pair
    e = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.arange(12) % 3
    plain = loss(e, labels)
    x = e.half().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        value = loss(x, labels)
    value.backward()
    assert torch.isfinite(value) and bool(torch.isfinite(x.grad).all())
    assert all(bool(torch.isfinite(p.grad).all()) for p in loss.parameters() if p.grad is not None)
    torch.testing.assert_close(value.float(), plain, rtol=1e-2, atol=1e-2)


def test_sharing_normalisation_of_a_zero_row_is_zero_not_nan_in_float16():
    from dynametric.models.sharing import _normalise

    x = torch.zeros(2, 4, dtype=torch.float16)
    x[1] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    out = _normalise(x)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.tensor([[0, 0, 0, 0], [0.6, 0.8, 0, 0]], dtype=torch.float16))
