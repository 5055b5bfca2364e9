"""dynametric's losses as drop-ins for pytorch-metric-learning's (test-only oracle): the same constructor call with
PML's reducers, regularizers and distance objects gives the same value and gradient (float64), and the PML
adapter gives any PML loss on [B, S] labels."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import dynametric.losses as dl
from dynametric import distances as dm_dist
from dynametric.errors import ConfigError, InputError
from dynametric.losses import LOSSES, MultiScaleLoss, PMLLoss, PMLMiner, build_loss, pml_loss, pml_miner
from dynametric.losses import reducers as dm_red
from dynametric.miners import MINERS, TripletMarginMiner

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_red = pytest.importorskip("pytorch_metric_learning.reducers")
pml_reg = pytest.importorskip("pytorch_metric_learning.regularizers")

B, D = 20, 6

PAIR_LOSSES = [
    ("ContrastiveLoss", {"pos_margin": 0.1, "neg_margin": 0.9}),
    ("TripletMarginLoss", {"margin": 0.3}),
    ("TripletMarginLoss", {"margin": 0.2, "swap": True, "smooth_loss": True}),
    ("NPairsLoss", {}),
    ("LiftedStructureLoss", {"neg_margin": 0.8}),
    ("GeneralizedLiftedStructureLoss", {"neg_margin": 0.8}),
    ("MarginLoss", {"margin": 0.1, "nu": 0.2, "beta": 0.9, "learn_beta": True}),
    ("MarginLoss", {"num_classes": 5, "learn_beta": True, "nu": 0.1}),
    ("MultiSimilarityLoss", {"alpha": 1.5, "beta": 20, "base": 0.6}),
    ("CircleLoss", {"m": 0.3, "gamma": 40}),
]
PAIR_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(PAIR_LOSSES)]

KEEPDIM_IN_PML = {"LiftedStructureLoss", "GeneralizedLiftedStructureLoss", "MultiSimilarityLoss", "CircleLoss"}

# reducer factories: (PML's, ours); the PML object goes to both libraries as well (mixing is allowed)
REDUCERS = {
    "mean": (pml_red.MeanReducer, dm_red.MeanReducer),
    "sum": (pml_red.SumReducer, dm_red.SumReducer),
    "avg_nonzero": (pml_red.AvgNonZeroReducer, dm_red.AvgNonZeroReducer),
    "threshold": (lambda: pml_red.ThresholdReducer(low=0.05, high=1.5),
                  lambda: dm_red.ThresholdReducer(low=0.05, high=1.5)),
    "class_weighted": (lambda: pml_red.ClassWeightedReducer(torch.arange(1.0, 6.0)),
                       lambda: dm_red.ClassWeightedReducer(torch.arange(1.0, 6.0))),
}


def batch(seed: int, n: int = B, d: int = D, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    return emb, labels


def value_and_grad(loss, emb, labels, *args):
    e = emb.clone().requires_grad_(True)
    value = loss(e, labels, *args)
    value.backward()
    return value.detach(), e.grad


def assert_same(ours, theirs, emb, labels, *args):
    v1, g1 = value_and_grad(ours, emb, labels, *args)
    v2, g2 = value_and_grad(theirs, emb, labels, *args)
    torch.testing.assert_close(v1, v2.to(v1.dtype).reshape(()), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)
    return v1


@pytest.mark.parametrize("reducer", sorted(REDUCERS))
@pytest.mark.parametrize("name,kwargs", PAIR_LOSSES, ids=PAIR_IDS)
def test_pair_losses_with_reducers_equal_pml(name, kwargs, reducer):
    pml_make, ours_make = REDUCERS[reducer]
    emb, labels = batch(3)
    if name in KEEPDIM_IN_PML and reducer == "class_weighted":
        # PML's per-element losses of these have shape [N, 1], so its ClassWeightedReducer broadcasts them against
        # the [N] weights (an [N, N] product); dynametric's are [N]: check against the definition instead
        losses = LOSSES[name](**kwargs, reducer=dm_red.DoNothingReducer()).double()(emb, labels)["loss"]
        rows = losses["indices"] if losses["reduction_type"] == "element" else losses["indices"][0]
        expected = (losses["losses"] * torch.arange(1.0, 6.0, dtype=torch.float64)[labels[rows]]).mean()
        value = LOSSES[name](**kwargs, reducer=pml_make()).double()(emb, labels)
        torch.testing.assert_close(value, expected)
        return
    theirs = getattr(pml_losses, name)(**kwargs, reducer=pml_make()).double()
    for red in (pml_make(), ours_make()):
        ours = LOSSES[name](**kwargs, reducer=red).double()
        assert_same(ours, theirs, emb, labels)


@pytest.mark.parametrize("name,kwargs", PAIR_LOSSES, ids=PAIR_IDS)
def test_default_reduction_equals_explicit_default_reducer(name, kwargs):
    """The built-in (memory-bounded) reduction and the loss-dict path with PML's default reducer agree."""
    emb, labels = batch(4)
    default = getattr(pml_losses, name)(**kwargs).reducer
    assert_same(LOSSES[name](**kwargs).double(), LOSSES[name](**kwargs, reducer=default).double(), emb, labels)


@pytest.mark.parametrize("name,kwargs", PAIR_LOSSES, ids=PAIR_IDS)
def test_do_nothing_reducer_gives_pml_loss_dict(name, kwargs):
    emb, labels = batch(5)
    mined = pml_miners.TripletMarginMiner(margin=0.5)(emb, labels)
    ours = LOSSES[name](**kwargs, reducer=dm_red.DoNothingReducer()).double()(emb, labels, mined)
    theirs = getattr(pml_losses, name)(**kwargs, reducer=pml_red.DoNothingReducer()).double()(emb, labels, mined)
    assert sorted(ours) == sorted(theirs)
    for key, info in theirs.items():
        assert ours[key]["reduction_type"] == info["reduction_type"], key
        if torch.is_tensor(info["losses"]):
            torch.testing.assert_close(ours[key]["losses"], info["losses"].to(torch.float64).reshape(
                ours[key]["losses"].shape), rtol=1e-9, atol=1e-12)
        if info["reduction_type"] == "already_reduced":
            continue
        got = ours[key]["indices"]
        want = info["indices"]
        if torch.is_tensor(want):
            assert got.tolist() == want.tolist(), key
        else:
            assert [t.tolist() for t in got] == [t.tolist() for t in want], key


@pytest.mark.parametrize("name,kwargs", PAIR_LOSSES, ids=PAIR_IDS)
def test_embedding_regularizer_with_and_without_reducer(name, kwargs):
    emb, labels = batch(6)
    for extra in ({}, {"reducer": pml_red.MeanReducer()}):
        reg = {"embedding_regularizer": pml_reg.LpRegularizer(power=2), "embedding_reg_weight": 0.3, **extra}
        ours = LOSSES[name](**kwargs, **reg).double()
        theirs = getattr(pml_losses, name)(**kwargs, **reg).double()
        value = assert_same(ours, theirs, emb, labels)
        plain = LOSSES[name](**kwargs, **extra).double()(emb, labels)
        assert value == pytest.approx(plain.item() + 0.3 * (emb**2).sum(1).mean().item(), rel=1e-9)


PML_DISTANCES = {
    "lp": lambda: pml_dist.LpDistance(),
    "lp_power2": lambda: pml_dist.LpDistance(power=2),
    "lp_p1": lambda: pml_dist.LpDistance(p=1),
    "lp_unnormalized": lambda: pml_dist.LpDistance(normalize_embeddings=False),
    "cosine": lambda: pml_dist.CosineSimilarity(),
    "cosine_power2": lambda: pml_dist.CosineSimilarity(power=2),
    "dot": lambda: pml_dist.DotProductSimilarity(),
    "dot_unnormalized": lambda: pml_dist.DotProductSimilarity(normalize_embeddings=False),
    "snr": lambda: pml_dist.SNRDistance(),  # no dynametric equivalent: used through its own __call__
}


@pytest.mark.parametrize("dist", sorted(PML_DISTANCES))
@pytest.mark.parametrize("name,kwargs", [c for c in PAIR_LOSSES if c[0] != "CircleLoss"],
                         ids=[i for i, c in zip(PAIR_IDS, PAIR_LOSSES, strict=True) if c[0] != "CircleLoss"])
def test_pml_distance_objects_accepted(name, kwargs, dist):
    emb, labels = batch(7)
    ours = LOSSES[name](**kwargs, distance=PML_DISTANCES[dist]()).double()
    theirs = getattr(pml_losses, name)(**kwargs, distance=PML_DISTANCES[dist]()).double()
    assert ours.distance.higher_is_closer == theirs.distance.is_inverted
    assert_same(ours, theirs, emb, labels)


def test_as_distance_maps_pml_objects_to_equivalents():
    d = dm_dist.as_distance(pml_dist.LpDistance(p=1, power=2, normalize_embeddings=False))
    assert type(d) is dm_dist.LpDistance and (d.p, d.power, d.normalize_embeddings) == (1, 2, False)
    assert type(dm_dist.as_distance(pml_dist.CosineSimilarity())) is dm_dist.CosineSimilarity
    # PML's DotProductSimilarity normalises by default: that is the cosine
    assert type(dm_dist.as_distance(pml_dist.DotProductSimilarity())) is dm_dist.CosineSimilarity
    assert isinstance(dm_dist.as_distance(pml_dist.SNRDistance()), dm_dist.ForeignDistance)
    with pytest.raises(ConfigError, match="distance"):
        dm_dist.as_distance("cosine")
    # and dynametric distances answer to PML's interface
    ours = dm_dist.CosineSimilarity()
    assert ours.is_inverted and ours.smallest_dist(torch.tensor(1.0), torch.tensor(2.0)) == 2.0


@pytest.mark.parametrize("name,kwargs", [
    ("LpDistance", {}), ("LpDistance", {"p": 1}), ("LpDistance", {"power": 2, "normalize_embeddings": False}),
    ("CosineSimilarity", {}), ("CosineSimilarity", {"power": 2}),
    ("DotProductSimilarity", {"normalize_embeddings": False, "power": 3})])
def test_pairwise_distance_is_pmls_without_power_and_pairwise_the_matrix_diagonal(name, kwargs):
    """pairwise_distance is PML's (no power: CosineSimilarity(power=2) squared it, against its docstring);
    pairwise keeps the power, row by row equal to the matrix. (The losses with these distances equal PML's in
    test_pml_distance_objects_accepted.)"""
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    ours, theirs = getattr(dm_dist, name)(**kwargs), getattr(pml_dist, name)(**kwargs)
    assert torch.equal(ours.pairwise_distance(a, b), theirs.pairwise_distance(a, b))
    na, nb = ours.maybe_normalize(a), ours.maybe_normalize(b)
    torch.testing.assert_close(ours.pairwise(na, nb), theirs(a, b).diagonal(), rtol=1e-6, atol=1e-9)  # cdist
    snr = dm_dist.as_distance(pml_dist.SNRDistance(power=2))  # a foreign distance: its own pairwise_distance
    assert torch.equal(snr.pairwise_distance(a, b), pml_dist.SNRDistance(power=2).pairwise_distance(a, b))
    torch.testing.assert_close(snr.pairwise(a, b), pml_dist.SNRDistance(power=2).pairwise_distance(a, b) ** 2)


def test_circle_loss_rejects_non_cosine_pml_distance():
    with pytest.raises(ConfigError, match="cosine"):
        dl.CircleLoss(distance=pml_dist.LpDistance())
    emb, labels = batch(8)
    assert_same(dl.CircleLoss(distance=pml_dist.CosineSimilarity()).double(), pml_losses.CircleLoss().double(),
                 emb, labels)


def test_bad_reducer_and_regularizer_are_errors():
    with pytest.raises(ConfigError, match="reducer"):
        dl.ContrastiveLoss(reducer="mean")
    with pytest.raises(InputError, match="embedding_regularizer"):
        dl.ContrastiveLoss(embedding_regularizer=3)
    emb, labels = batch(9)
    with pytest.raises(InputError, match="divisor"):
        dl.TripletMarginLoss(reducer=dm_red.DivisorReducer())(emb, labels)
    with pytest.raises(InputError, match="does not support reducer"):
        dl.MetricLoss(reducer=dm_red.MeanReducer())(emb, labels)  # a loss without a loss-dict form


# ------------------------------------------------------------------ proxy / classification losses
C = 5
PROXY = [
    ("ProxyNCALoss", "proxies", {"softmax_scale": 2.0}),
    ("ProxyAnchorLoss", "proxies", {"margin": 0.2, "alpha": 16}),
    ("NormalizedSoftmaxLoss", "W", {"temperature": 0.2}),
    ("CosFaceLoss", "W", {"margin": 0.3, "scale": 16}),
    ("ArcFaceLoss", "W", {"margin": 20.0, "scale": 16}),
    ("SoftTripleLoss", "fc", {"centers_per_class": 3, "la": 8}),
]
PROXY_IDS = [p[0] for p in PROXY]


def proxy_pair(name, attr, kwargs, **extra):
    ours = LOSSES[name](C, D, **kwargs, **extra).double()
    theirs = getattr(pml_losses, name)(num_classes=C, embedding_size=D, **kwargs, **extra).double()
    getattr(theirs, attr).data.copy_(getattr(ours, attr).data)
    return ours, theirs


@pytest.mark.parametrize("name,attr,kwargs", PROXY, ids=PROXY_IDS)
def test_proxy_losses_reducers_regularizers_logits_equal_pml(name, attr, kwargs):
    emb, labels = batch(10, classes=C)
    mined = pml_miners.MultiSimilarityMiner(epsilon=0.2)(emb, labels)
    for extra in ({"reducer": pml_red.MeanReducer()}, {"reducer": pml_red.SumReducer()},
                  {"weight_regularizer": pml_reg.LpRegularizer(), "weight_reg_weight": 0.5},
                  {"embedding_regularizer": pml_reg.LpRegularizer(), "reducer": dm_red.MeanReducer()}):
        if name == "ProxyAnchorLoss" and isinstance(extra.get("reducer"), pml_red.SumReducer):
            extra = {"reducer": pml_red.DivisorReducer()}
        pml_extra = {k: (pml_red.MeanReducer() if isinstance(v, dm_red.Reducer) else v) for k, v in extra.items()}
        ours, theirs = proxy_pair(name, attr, kwargs, **extra)
        theirs = getattr(pml_losses, name)(num_classes=C, embedding_size=D, **kwargs, **pml_extra).double()
        getattr(theirs, attr).data.copy_(getattr(ours, attr).data)
        assert_same(ours, theirs, emb, labels, mined)
    torch.testing.assert_close(ours.get_logits(emb), theirs.get_logits(emb), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dist", ["dot_unnormalized", "lp", "cosine"])
def test_normalized_softmax_takes_a_distance(dist):
    emb, labels = batch(11, classes=C)
    ours, theirs = proxy_pair("NormalizedSoftmaxLoss", "W", {"temperature": 0.5}, distance=PML_DISTANCES[dist]())
    assert_same(ours, theirs, emb, labels)
    torch.testing.assert_close(ours.get_logits(emb), theirs.get_logits(emb))
    if dist == "dot_unnormalized":  # the class vectors are normalised, the embeddings not: logits scale with |x|
        torch.testing.assert_close(ours.get_logits(3 * emb), 3 * ours.get_logits(emb))


def test_collect_stats_records_counts():
    emb, labels = batch(12)
    loss = dl.NPairsLoss(collect_stats=True, reducer=dm_red.MeanReducer())
    loss(emb, labels)
    assert loss.num_pairs == len(set(labels.tolist()) & {int(x) for x in labels if (labels == x).sum() > 1})
    miner = TripletMarginMiner(margin=0.2, collect_stats=True)
    a, _, _ = miner(emb, labels)
    assert miner.num_triplets == a.numel() and isinstance(miner.avg_triplet_margin, float)
    quiet = TripletMarginMiner(margin=0.2)
    quiet(emb, labels)
    assert not hasattr(quiet, "num_triplets")


# ------------------------------------------------------------------ the PML adapter
def hier_batch(seed: int, n: int = 24):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g, dtype=torch.float64)
    fine = torch.randint(0, 6, (n,), generator=g)
    return emb, torch.stack([fine, fine // 2, fine // 3], dim=1)


@pytest.mark.parametrize("name,kwargs", [
    ("TupletMarginLoss", {}), ("FastAPLoss", {}), ("SupConLoss", {"temperature": 0.2}),
    ("IntraPairVarianceLoss", {}), ("ContrastiveLoss", {"pos_margin": 0.1})])
@pytest.mark.parametrize("scale", [0, 1, 2])
def test_pml_loss_one_scale_equals_pml_on_that_column(name, kwargs, scale):
    emb, labels = hier_batch(scale)
    ours = pml_loss(name, label_scale=scale, **kwargs)
    assert isinstance(ours, PMLLoss) and ours.loss_parameters() == []
    v1, g1 = value_and_grad(ours, emb, labels)
    v2, g2 = value_and_grad(getattr(pml_losses, name)(**kwargs), emb, labels[:, scale])
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_pml_loss_weighted_sum_over_scales_with_proxies_per_scale():
    emb, labels = hier_batch(4)
    num_classes = [int(labels[:, s].max()) + 1 for s in range(3)]
    weights = [1.0, 0.5, 0.25]
    ours = pml_loss("ArcFaceLoss", weights=weights, num_classes=num_classes, embedding_size=D, margin=20.0)
    assert isinstance(ours, MultiScaleLoss)
    assert [m.loss.W.shape[1] for m in ours.losses] == num_classes  # one weight matrix per scale
    assert len(ours.loss_parameters()) == 3
    ours.double()
    e = emb.clone().requires_grad_(True)
    total = ours(e, labels)
    expected = sum(w * ours.losses[s].loss(emb, labels[:, s]) for s, w in enumerate(weights))
    torch.testing.assert_close(total, expected)
    total.backward()
    assert all(p.grad is not None for p in ours.loss_parameters())
    with pytest.raises(ConfigError, match="num_classes"):
        pml_loss("ArcFaceLoss", weights=[1, 1], num_classes=[3, 2, 1], embedding_size=D)
    with pytest.raises(ConfigError, match="parameters"):
        pml_loss(pml_losses.ArcFaceLoss(3, D), weights=[1, 1])


@pytest.mark.parametrize("name", ["ArcFaceLoss", "CosFaceLoss", "SubCenterArcFaceLoss"])
def test_pml_loss_scale_is_pmls_logit_scale_and_label_scale_the_column(name):
    """The adapter's label column is label_scale; scale goes to PML. (It was the column: scale=30 raised "scale 30
    out of range", scale=1 trained column 1 with PML's logit scale left at 64.)"""
    emb, labels = hier_batch(7)
    classes = int(labels[:, 1].max()) + 1
    torch.manual_seed(1)
    ours = pml_loss(name, num_classes=classes, embedding_size=D, scale=30, label_scale=1)
    torch.manual_seed(1)
    theirs = getattr(pml_losses, name)(num_classes=classes, embedding_size=D, scale=30)
    assert ours.scale == 1 and ours.loss.scale == 30 and "label_scale=1" in repr(ours)
    torch.testing.assert_close(ours.double()(emb, labels), theirs.double()(emb, labels[:, 1]))
    torch.manual_seed(1)
    column0 = pml_loss(name, num_classes=int(labels[:, 0].max()) + 1, embedding_size=D, scale=1)
    assert column0.scale == 0 and column0.loss.scale == 1
    assert PMLLoss(pml_losses.SupConLoss(), label_scale=2).scale == 2
    assert PMLMiner(pml_miners.BatchHardMiner(), label_scale=2).scale == 2
    assert pml_miner("BatchHardMiner", label_scale=1).scale == 1
    with pytest.raises(ConfigError, match=r"^key 'scale': BatchHardMiner has no argument 'scale'; its arguments: "
                                          r"pos_strategy, .*, collect_stats \(the adapter's label column is "
                                          r"label_scale\)$"):  # not a PML miner keyword, and no longer the column
        pml_miner("BatchHardMiner", scale=1)


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None])
def test_label_scale_must_be_an_integer_column(bad):
    """label_scale=True (a bool is an int) was taken as column 1 or reached PML's own `labels must be a 1D tensor`
    error; a float or a string reached the indexing. Every way into the adapter refuses it, one line naming it."""
    expected = (rf"^key 'label_scale': expected an integer label column \(0 = the finest scale\), got "
                rf"{re.escape(repr(bad))} \({type(bad).__name__}\)$")
    builders = [lambda: PMLLoss(pml_losses.ContrastiveLoss(), label_scale=bad),
                lambda: PMLMiner(pml_miners.BatchHardMiner(), label_scale=bad),
                lambda: pml_miner("BatchHardMiner", label_scale=bad),
                lambda: LOSSES["pml:ContrastiveLoss"](label_scale=bad),
                lambda: MINERS["pml:BatchHardMiner"](label_scale=bad)]
    if bad is not None:  # pml_loss's None is its default, column 0 (or one loss per scale with weights)
        builders += [lambda: pml_loss("ContrastiveLoss", label_scale=bad),
                     lambda: pml_loss("ContrastiveLoss", label_scale=bad, weights=[1, 1])]
    for build in builders:
        with pytest.raises(ConfigError, match=expected):
            build()
    assert PMLLoss(pml_losses.ContrastiveLoss(), label_scale=np.int64(1)).scale == 1  # a NumPy int is one


def test_a_pml_loss_s_label_scale_is_checked_against_the_data_as_a_native_loss_s_scale(capsys):
    """`loss.kwargs.label_scale` of a `pml:` loss beyond the data's scales passed the dry run (the check looked the
    name up with LOSSES.get, which does not answer `pml:` names)."""
    from dynametric.cli import main

    assert main(["train", "--dry-run", "loss.name=pml:ContrastiveLoss", "loss.multiscale=false",
                 "loss.kwargs={label_scale: 5}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: <command line> key 'loss.kwargs.label_scale': pml:ContrastiveLoss(label_scale=5) "
        "trains on a label scale the data does not have: expected 0..2 (the labels have 3 scale(s))")


@pytest.mark.parametrize("miner, override, expected", [
    ("TripletMarginMiner", "miner.kwargs.scale=5",
     "<command line> key 'miner.kwargs.scale': TripletMarginMiner(scale=5)"),
    ("pml:BatchHardMiner", "miner.kwargs.label_scale=3",
     "<command line> key 'miner.kwargs.label_scale': pml:BatchHardMiner(label_scale=3)"),
    ("pml:BatchHardMiner", "miner.kwargs.label_scale=-1",  # was read as the coarsest column, as losses refuse it
     "<command line> key 'miner.kwargs.label_scale': pml:BatchHardMiner(label_scale=-1)"),
])
def test_a_miner_s_label_column_is_checked_against_the_data_as_a_loss_s(capsys, miner, override, expected):
    """A miner's `scale` / `label_scale` beyond the data's scales passed the dry run (only the loss's column was
    checked) and the run stopped at its first step with an IndexError traceback."""
    from dynametric.cli import main

    assert main(["train", "--dry-run", f"miner.name={miner}", override]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: {expected} mines on a label scale the data does not have: expected 0..2 (the labels "
        "have 3 scale(s))")
    assert main(["train", "--dry-run", "extra_losses=[{name: ContrastiveLoss, multiscale: true, miner: {name: "
                 f"{miner}}}}}]", override.replace("miner.", "extra_losses[0].miner.")]) == 2
    assert "key 'extra_losses[0].miner.kwargs." in capsys.readouterr().err
    column = override.split("=")[0]
    assert main(["train", "--dry-run", f"miner.name={miner}", column + "=2", "loss.multiscale=false"]) == 0  # coarsest
    # with loss.multiscale: true (the default run) the miner mines every scale on that scale's labels: a column of
    # its own is refused (it used to pass the dry run and stop the run at its first step)
    capsys.readouterr()
    assert main(["train", "--dry-run", f"miner.name={miner}", column + "=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: <command line> key '{column}': with loss.multiscale: true the miner mines every "
        f"scale on that scale's labels, so it takes no label column of its own: remove {column} (got 2), or set "
        "loss.multiscale: false to mine and train on one column")
    # 0 too, as the loss's own column is: each scale's miner reads that scale's labels, not column 0 of the batch
    assert main(["train", "--dry-run", f"miner.name={miner}", column + "=0"]) == 2
    assert f"remove {column} (got 0)" in capsys.readouterr().err


def _first_training_batch(cfg, datasets):
    """The images (float64) and [B, S] labels of the first batch the run's sampler draws from the training split."""
    from dynametric.data.protocol import dataset_labels
    from dynametric.engine.builders import sampler_factory

    labels = dataset_labels(datasets.train, "the training split")
    rows = next(iter(sampler_factory(cfg)(labels, 0, 1)))
    items = [datasets.train[int(i)] for i in rows]
    return torch.stack([x for x, _ in items]).double(), torch.stack([y for _, y in items])


@pytest.mark.parametrize("miner, kwargs, pml_twin", [
    ("TripletMarginMiner", "{margin: 0.2, type_of_triplets: semihard, collect_stats: true}",
     lambda: pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")),
    ("pml:BatchEasyHardMiner", "{pos_strategy: easy, neg_strategy: semihard}",
     lambda: pml_miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="semihard")),
])
def test_a_configured_miner_of_a_multiscale_loss_mines_each_scale_on_its_labels_in_a_training_step(
        tmp_path, miner, kwargs, pml_twin):
    """`loss.multiscale: true` with a miner passed the dry run and stopped the run at its first step (the engine
    mined the whole batch once and handed that one tuple to MultiScaleLoss). A real training step of the configured
    run now equals, in float64, PML's loss with PML's miner run on each scale's label column, weighted; mining once
    on the finest column would give another value."""
    from dynametric.config import load_config
    from dynametric.engine.builders import build_datasets
    from dynametric.pipeline import build_components
    from tests.commands.test_train import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    weights = [1.0, 0.5, 0.25]
    cfg = load_config(tmp_path / "tiny.yaml", [f"miner.name={miner}", f"miner.kwargs={kwargs}",
                                               "loss.multiscale=true", f"loss.scale_weights={weights}"])
    datasets = build_datasets(cfg, with_test=False)
    comps = build_components(cfg, datasets=datasets)
    (term,) = comps.objectives
    assert term.miner is None and isinstance(term.loss, MultiScaleLoss)  # the loss mines, once per scale
    miners = term.loss.scale_miners
    assert len({id(m) for m in miners}) == 3  # one object per scale: each keeps its own statistics
    images, labels = _first_training_batch(cfg, datasets)
    module = comps.module.double()
    with torch.no_grad():
        emb = module.embedder(images)  # training mode, as the step computes them (batch statistics)
    total = module.training_step((images, labels), 0)
    total.backward()
    assert all(p.grad is not None for p in module.embedder.parameters() if p.requires_grad)
    loss = pml_losses.TripletMarginLoss()  # TINY's loss, default keywords
    expected = sum(w * loss(emb, labels[:, s], pml_twin()(emb, labels[:, s])) for s, w in enumerate(weights))
    torch.testing.assert_close(total.detach(), expected, rtol=1e-12, atol=1e-12)
    once = pml_twin()(emb, labels[:, 0])  # what mining the whole batch once, on the finest labels, would give
    assert not torch.isclose(sum(w * loss(emb, labels[:, s], once) for s, w in enumerate(weights)), expected)
    if miner == "TripletMarginMiner":  # collect_stats: each scale's miner counted the triplets of its own labels
        assert [m.num_triplets for m in miners] == [len(pml_twin()(emb, labels[:, s])[0]) for s in range(3)]


def test_pml_loss_weighted_form_gives_every_keyword_to_every_scale():
    """With weights=, scale (and every other keyword) reaches every scale's loss; it used to be dropped."""
    emb, labels = hier_batch(8)
    num_classes = [int(labels[:, s].max()) + 1 for s in range(3)]
    weights = [1.0, 0.5, 0.25]
    torch.manual_seed(2)
    ours = pml_loss("CosFaceLoss", weights=weights, num_classes=num_classes, embedding_size=D, scale=30, margin=0.2)
    assert [(m.loss.scale, m.loss.margin) for m in ours.losses] == [(30, 0.2)] * 3
    torch.manual_seed(2)
    theirs = [pml_losses.CosFaceLoss(num_classes=c, embedding_size=D, scale=30, margin=0.2).double()
              for c in num_classes]
    expected = sum(w * theirs[s](emb, labels[:, s]) for s, w in enumerate(weights))
    torch.testing.assert_close(ours.double()(emb, labels), expected)
    with pytest.raises(ConfigError, match="label_scale=1 with weights"):
        pml_loss("CosFaceLoss", weights=[1, 1], num_classes=[4, 2], embedding_size=D, label_scale=1)
    # a PML keyword named like one of the adapter's would be taken by the adapter: refused by name
    with pytest.raises(ConfigError, match="MultipleLosses has its own 'weights'"):
        pml_loss("MultipleLosses", losses=[pml_losses.TripletMarginLoss()], weights=[1.0])
    with pytest.raises(ConfigError, match="MultipleLosses has its own 'miners'"):
        pml_loss("MultipleLosses", losses=[pml_losses.TripletMarginLoss()], miners=[None])
    # one object with state (a memory) shared by every scale would mix the scales' labels in it
    with pytest.raises(ConfigError, match="buffers"):
        pml_loss(pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), D, memory_size=8), weights=[1, 1])


def test_pml_loss_passes_pmls_own_loss_keyword():
    """The adapter's first parameter is positional-only: PML's wrappers take a keyword named loss ("got multiple
    values for argument 'loss'" before)."""
    inner = pml_losses.ContrastiveLoss()
    cbm = pml_loss("CrossBatchMemory", loss=inner, embedding_size=D, memory_size=64)
    assert isinstance(cbm.loss, pml_losses.CrossBatchMemory) and cbm.loss.loss is inner
    ssl = pml_loss("SelfSupervisedLoss", loss=pml_losses.TripletMarginLoss(), symmetric=False)
    assert isinstance(ssl.loss, pml_losses.SelfSupervisedLoss) and not ssl.loss.symmetric
    assert build_loss("pml:CrossBatchMemory", loss=inner, embedding_size=D, memory_size=8).loss.loss is inner
    with pytest.raises(TypeError):
        pml_loss(loss="ContrastiveLoss")  # the name itself is positional only
    assert isinstance(pml_miner("BatchHardMiner").miner, pml_miners.BatchHardMiner)


def _value_and_grads(loss, emb, *args, **kwargs):
    e = emb.clone().requires_grad_(True)
    value = loss(e, *args, **kwargs)
    value.backward()
    return value.detach(), e.grad


def test_pml_loss_wraps_cross_batch_memory_as_pml_calls_it():
    """CrossBatchMemory.forward(embeddings, labels, indices_tuple=None, enqueue_mask=None) was called with five
    positional arguments (a TypeError); now it gets what it takes, enqueue_mask included, on column label_scale."""
    g = torch.Generator().manual_seed(20)

    def arguments():
        return {"loss": pml_losses.ContrastiveLoss(), "embedding_size": D, "memory_size": 40,
                "miner": pml_miners.MultiSimilarityMiner(epsilon=0.2)}

    ours = pml_loss("CrossBatchMemory", label_scale=1, **arguments())
    theirs = pml_losses.CrossBatchMemory(**arguments())
    for step in range(5):
        emb = torch.randn(16, D, generator=g)
        fine = torch.randint(0, 6, (16,), generator=g)
        labels = torch.stack([fine, fine // 2], dim=1)
        mask = {"enqueue_mask": torch.rand(16, generator=g) < 0.5} if step % 2 else {}
        v1, g1 = _value_and_grads(ours, emb, labels, **mask)
        v2, g2 = _value_and_grads(theirs, emb, labels[:, 1], **mask)
        torch.testing.assert_close(v1, v2)
        torch.testing.assert_close(g1, g2)
        assert v1.item() > 0
    torch.testing.assert_close(ours.loss.embedding_memory, theirs.embedding_memory)
    assert torch.equal(ours.loss.label_memory, theirs.label_memory) and ours.loss.queue_idx == theirs.queue_idx
    emb, labels = hier_batch(21)
    for call, match in [(lambda: ours(emb, labels, ref_emb=emb, ref_labels=labels), "CrossBatchMemory takes no "
                         r"ref_emb \(it takes embeddings, enqueue_mask, indices_tuple, labels\)"),
                        (lambda: ours(emb), "CrossBatchMemory needs labels"),
                        (lambda: ours(emb, labels, enqueue_msk=None), "takes no enqueue_msk")]:
        with pytest.raises(InputError, match=match) as err:
            call()
        assert "\n" not in str(err.value)
    assert theirs.queue_idx == ours.loss.queue_idx  # a refused call changed nothing


def test_pml_loss_wraps_self_supervised_multiple_and_label_free_losses():
    emb, labels = hier_batch(22)
    aug = emb + 0.1 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(0), dtype=emb.dtype)
    # SelfSupervisedLoss.forward(embeddings, ref_emb): no labels
    ssl = pml_loss("SelfSupervisedLoss", loss=pml_losses.TripletMarginLoss())
    v1, g1 = _value_and_grads(ssl, emb, ref_emb=aug)
    v2, g2 = _value_and_grads(pml_losses.SelfSupervisedLoss(pml_losses.TripletMarginLoss()), emb, aug)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)
    with pytest.raises(InputError, match=r"SelfSupervisedLoss takes no labels \(it takes embeddings, ref_emb\)"):
        ssl(emb, labels=labels)
    with pytest.raises(InputError, match=r"SelfSupervisedLoss takes no labels: its second positional argument is "
                       r"ref_emb \(PML's forward\(embeddings, ref_emb\)\), got a torch.int64 tensor of shape "
                       r"\(24, 3\)"):
        ssl(emb, labels)  # by position, the second argument is ref_emb (as in PML)
    with pytest.raises(InputError, match="SelfSupervisedLoss needs ref_emb"):
        ssl(emb)
    # MultipleLosses.forward(embeddings, labels, indices_tuple=None)
    mined = pml_miners.MultiSimilarityMiner()(emb, labels[:, 2])
    parts = [pml_losses.TripletMarginLoss(margin=0.3), pml_losses.ContrastiveLoss()]
    multi = pml_loss(pml_losses.MultipleLosses(parts, weights=[1.0, 0.5]), label_scale=2)
    expected = parts[0](emb, labels[:, 2], mined) + 0.5 * parts[1](emb, labels[:, 2], mined)
    torch.testing.assert_close(multi(emb, labels, mined), expected)
    torch.testing.assert_close(multi(emb, labels), parts[0](emb, labels[:, 2]) + 0.5 * parts[1](emb, labels[:, 2]))
    with pytest.raises(InputError, match="MultipleLosses takes no ref_emb"):
        multi(emb, labels, ref_emb=aug, ref_labels=labels)
    # VICRegLoss: its forward has labels, its compute_loss refuses them; it takes ref_emb alone
    vicreg = pml_loss("VICRegLoss")
    torch.testing.assert_close(vicreg(emb, ref_emb=aug), pml_losses.VICRegLoss()(emb, ref_emb=aug))
    with pytest.raises(InputError, match=r"VICRegLoss takes no labels \(it takes embeddings, ref_emb\)"):
        vicreg(emb, labels, ref_emb=aug, ref_labels=labels)
    with pytest.raises(InputError, match="VICRegLoss takes no indices_tuple"):
        vicreg(emb, indices_tuple=mined, ref_emb=aug)
    # a plain PML loss still takes the labels' column, a miner's tuple and a labelled reference set
    ntx = pml_loss("NTXentLoss", label_scale=1)
    column = labels[:, 1]  # one object: PML drops the pairs (i, i) when ref_labels is labels, so both must see one
    torch.testing.assert_close(ntx(emb, labels, None, aug, labels),
                               pml_losses.NTXentLoss()(emb, column, None, aug, column))
    torch.testing.assert_close(ntx(emb, labels, None, aug, labels.clone()),
                               pml_losses.NTXentLoss()(emb, column, None, aug, column.clone()))
    with pytest.raises(InputError, match="ref_emb and ref_labels must be given together"):
        ntx(emb, labels, ref_emb=aug)
    with pytest.raises(InputError, match="ref_labels without ref_emb"):
        ntx(emb, labels, ref_labels=labels)
    with pytest.raises(InputError, match="NPairsLoss takes no ref_emb"):  # PML's NPairs refuses a reference set
        pml_loss("NPairsLoss")(emb, labels, ref_emb=aug, ref_labels=labels)


def test_pml_miner_on_a_scale_and_with_pml_loss():
    emb, labels = hier_batch(5)
    ours = pml_miner("BatchEasyHardMiner", label_scale=1)
    assert isinstance(ours, PMLMiner)
    got = ours(emb, labels)
    want = pml_miners.BatchEasyHardMiner()(emb, labels[:, 1])
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
    loss = pml_loss("TupletMarginLoss", label_scale=1)
    torch.testing.assert_close(loss(emb, labels, got), pml_losses.TupletMarginLoss()(emb, labels[:, 1], want))
    # a dynametric loss and a PML miner mix as well
    torch.testing.assert_close(dl.TripletMarginLoss(scale=1)(emb, labels, got),
                               pml_losses.TripletMarginLoss()(emb, labels[:, 1], want))


def test_pml_names_in_the_registries_and_build_loss():
    assert "pml:ArcFaceLoss" in LOSSES and "pml:BatchEasyHardMiner" in MINERS
    assert "pml:NoSuchLoss" not in LOSSES and "ArcFaceLoss" in LOSSES
    loss = build_loss("pml:CosFaceLoss", num_classes=4, embedding_size=D, scale=8, label_scale=2,
                      distance="cosine")
    assert isinstance(loss, PMLLoss) and loss.scale == 2 and loss.loss.scale == 8
    assert type(loss.loss.distance).__module__.startswith("pytorch_metric_learning")  # converted for PML's checks
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("pml:NoSuchLoss")


def test_config_builds_pml_loss_with_num_classes_per_scale():
    from dynametric.config import Config, LossConfig
    from dynametric.engine.builders import build_loss_term

    _, labels = hier_batch(6)
    term = LossConfig(name="pml:ProxyAnchorLoss", kwargs={"margin": 0.2}, multiscale=True,
                      scale_weights=[1.0, 0.0, 2.0])
    loss = build_loss_term(term, "loss", labels, dim=D, num_scales=3)
    assert isinstance(loss, MultiScaleLoss) and loss.weights == [1.0, 0.0, 2.0]
    assert [m.loss.proxies.shape for m in loss.losses] == [(int(labels[:, s].max()) + 1, D) for s in range(3)]
    single = build_loss_term(LossConfig(name="pml:NormalizedSoftmaxLoss", kwargs={"label_scale": 1}), "loss",
                             labels, dim=D, num_scales=3)
    assert single.scale == 1 and single.loss.W.shape == (D, int(labels[:, 1].max()) + 1)
    with pytest.raises(ConfigError):
        build_loss_term(LossConfig(name="pml:ArcFaceLoss", kwargs={"margn": 3}), "loss", labels, dim=D, num_scales=3)
    assert Config is not None


@pytest.mark.parametrize("name,kwargs", PAIR_LOSSES, ids=PAIR_IDS)
def test_losses_from_an_indices_tuple_alone(name, kwargs):
    emb, labels = batch(13)
    loss = LOSSES[name](**kwargs).double()
    tuples = [pml_miners.TripletMarginMiner(margin=0.5)(emb, labels), pml_miners.MultiSimilarityMiner()(emb, labels)]
    for mined in tuples:
        if name == "NPairsLoss" or kwargs.get("num_classes"):  # they need the labels themselves
            with pytest.raises(InputError, match="needs labels"):
                loss(emb, indices_tuple=mined)
            continue
        with_labels = loss(emb, labels, mined)
        assert loss(emb, indices_tuple=mined).item() == pytest.approx(with_labels.item(), rel=1e-12)
        assert loss(emb, indices_tuple=mined, ref_emb=emb).item() == pytest.approx(with_labels.item(), rel=1e-12)
        theirs = getattr(pml_losses, name)(**kwargs).double()
        assert with_labels.item() == pytest.approx(theirs(emb, indices_tuple=mined).item(), rel=1e-9)
    with pytest.raises(InputError, match="labels or an indices_tuple"):
        loss(emb)


@pytest.mark.parametrize("name,attr,kwargs", PROXY, ids=PROXY_IDS)
def test_class_weights_keep_their_dtype_where_pml_converts_them(name, attr, kwargs):
    """float64 embeddings give PML's float64 value and gradient (the float32 weights enter as a float64 copy of the
    same values); PML converts its weights to float64 in place, dynametric never changes a parameter's dtype (a
    float64 call then a float32 one crashed Adam)."""
    ours = LOSSES[name](C, D, **kwargs)  # float32 weights
    theirs = getattr(pml_losses, name)(num_classes=C, embedding_size=D, **kwargs)
    getattr(theirs, attr).data.copy_(getattr(ours, attr).data)
    emb, labels = batch(14, classes=C)
    assert_same(ours, theirs, emb, labels)
    assert getattr(theirs, attr).dtype == torch.float64 and getattr(ours, attr).dtype == torch.float32
    for dtype in (torch.float32, torch.float16):
        assert ours(emb.to(dtype), labels).dtype == torch.float32 and getattr(ours, attr).dtype == torch.float32


def test_unknown_pml_names_are_one_line_in_plain_words():
    """`pml_loss("NoSuchLoss")` said 'no losse' with key 'loss.name' only by accident of slicing, and `pml_miner`
    named key 'mine.name'; the list of names offered left out nothing abstract."""
    from dynametric.errors import ConfigError
    from dynametric.losses import pml_loss, pml_miner

    with pytest.raises(ConfigError) as err:
        pml_loss("NoSuchLoss")
    text = str(err.value)
    assert "key 'loss': pytorch-metric-learning has no loss 'NoSuchLoss'; available: " in text  # pml_loss's loss
    assert "SupConLoss" in text and "BaseMetricLossFunction" not in text and "\n" not in text
    assert "GenericPairLoss" not in text and "Mixin" not in text  # abstract bases and mixins are not offered
    with pytest.raises(ConfigError) as err:
        pml_miner("NoSuchMiner")
    text = str(err.value)
    assert "key 'miner': pytorch-metric-learning has no miner 'NoSuchMiner'" in text
    assert "BatchEasyHardMiner" in text and "BaseMiner" not in text


@pytest.mark.parametrize("override, expected", [
    ("loss.kwargs.reducer=mean", "reducer must be a reducer object (e.g. MeanReducer()), got 'mean'"),
    ("loss.kwargs.reducer={name: MeanReducer}",
     "reducer must be a reducer object (e.g. MeanReducer()), got {'name': 'MeanReducer'}"),
    ("loss.kwargs.embedding_regularizer=LpRegularizer",
     "embedding_regularizer must be callable (e.g. LpRegularizer()) or null, got 'LpRegularizer'"),
])
def test_a_pml_loss_refuses_a_reducer_or_regularizer_given_by_name_when_it_is_built(capsys, override, expected):
    """`loss.kwargs.reducer=mean` on a `pml:` loss passed the dry run and stopped the run with a raw `'str' object is
    not callable` traceback at the first step; a native loss refuses the same value at config time. Both now refuse
    it in the dry run, one line naming the key (multiscale or not)."""
    from dynametric.cli import main

    tiny = "data.options={images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}"
    key = override.split("=")[0]
    for name, multiscale in (("pml:TripletMarginLoss", "false"), ("pml:TripletMarginLoss", "true"),
                             ("TripletMarginLoss", "false")):
        assert main(["train", "--dry-run", tiny, f"loss.name={name}", f"loss.multiscale={multiscale}", override]) == 2
        said = expected if name.startswith("pml:") else expected.replace(" (e.g. LpRegularizer()) or null", "")
        assert _error_line(capsys) == f"dynametric train: error: <command line> key '{key}': {name}: {said}"
    # a distance given by name is PML's distance object (as for a native loss): accepted, and used
    loss = LOSSES["pml:TripletMarginLoss"](distance=dl.build_distance("cosine"))
    assert isinstance(loss.loss.distance, pml_dist.CosineSimilarity)


@pytest.mark.parametrize("name, override, expected", [
    ("pml:ArcFaceLoss", "loss.kwargs.weight_init_func=xavier_normal_",
     "weight_init_func must be callable (e.g. torch.nn.init.normal_, in Python: a config cannot give a function) or "
     "null, got 'xavier_normal_'"),
    ("pml:ProxyAnchorLoss", "loss.kwargs.weight_init_func=0.5",
     "weight_init_func must be callable (e.g. torch.nn.init.normal_, in Python: a config cannot give a function) or "
     "null, got 0.5"),
    ("pml:ContrastiveLoss", "loss.kwargs.reducer=3", "reducer must be a reducer object (e.g. MeanReducer()), got 3"),
    ("pml:ArcFaceLoss", "loss.kwargs.distance=l2",
     "ArcFaceLoss requires the distance metric to be CosineSimilarity, got LpDistance"),
    ("pml:SoftTripleLoss", "loss.kwargs.distance=l2",  # PML: `assert self.distance.is_inverted`, no message
     "SoftTripleLoss's distance must be a similarity, where higher is closer (e.g. CosineSimilarity(); in a config: "
     "cosine), got LpDistance"),
    ("pml:RankedListLoss", "loss.kwargs={margin: 0.4, Tn: 1, imbalance: 2}",  # "Imbalance must ...": a capital
     "Imbalance must be between 0 and 1, got 2"),
])
def test_what_pml_s_constructor_calls_or_checks_is_refused_on_its_own_key(capsys, name, override, expected):
    """PML calls weight_init_func in the constructor (`'str' object is not callable`), trips over reducer=3 there
    (`int is not a Module subclass`), both keyed to the whole `loss.kwargs`, and asserts ArcFace's distance type (a
    traceback): each is now one line on the key that was given, in the dry run."""
    from dynametric.cli import main

    tiny = "data.options={images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}"
    key = override.split("=")[0] if "{" not in override else "loss.kwargs.imbalance"
    assert main(["train", "--dry-run", tiny, f"loss.name={name}", "loss.multiscale=false", override]) == 2
    assert _error_line(capsys) == f"dynametric train: error: <command line> key '{key}': {name}: {expected}"


def _error_line(capsys) -> str:
    """The error line of a refused dry run; the lines before it on stderr are the dry run's notes (loss.name changed
    on the command line: the default config's loss.kwargs are not used)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("note: ") for line in lines[:-1])
    return lines[-1]


def test_the_python_adapter_keys_weight_init_func_and_applies_a_callable_one():
    with pytest.raises(ConfigError, match=r"^key 'weight_init_func': weight_init_func must be callable .*, got 'x'$"):
        pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, weight_init_func="x")
    with pytest.raises(ConfigError, match=r"^key 'distance': ArcFaceLoss requires the distance metric to be "
                                          r"CosineSimilarity, got LpDistance$"):
        pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, distance=pml_dist.LpDistance())
    loss = pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D,
                    weight_init_func=lambda w: torch.nn.init.constant_(w, 0.25))
    assert torch.equal(loss.loss.W, torch.full((D, 3), 0.25))


def test_a_pml_constructor_assertion_is_keyed_by_the_keyword_it_tests():
    """PML's constructor checks are assertions: one without a message (SoftTripleLoss's `assert
    self.distance.is_inverted`) was `SoftTripleLoss's constructor failed a check` on no key, and one whose message
    capitalises the keyword (RankedListLoss's "Imbalance must be between 0 and 1") was not keyed either."""
    with pytest.raises(ConfigError) as err:
        pml_loss("SoftTripleLoss", num_classes=3, embedding_size=D, distance=pml_dist.LpDistance())
    assert (err.value.key, str(err.value)) == ("distance", (
        "key 'distance': SoftTripleLoss's distance must be a similarity, where higher is closer (e.g. "
        "CosineSimilarity(); in a config: cosine), got LpDistance"))
    with pytest.raises(ConfigError) as err:  # a dynametric distance is named as given
        pml_loss("SoftTripleLoss", num_classes=3, embedding_size=D, distance=dm_dist.LpDistance())
    assert err.value.key == "distance" and str(err.value).endswith(", got LpDistance")
    with pytest.raises(ConfigError) as err:
        pml_loss("RankedListLoss", margin=0.4, Tn=1, imbalance=2)
    assert (err.value.key, str(err.value)) == ("imbalance", "key 'imbalance': Imbalance must be between 0 and 1, got 2")
    assert pml_loss("SoftTripleLoss", num_classes=3, embedding_size=D,  # a similarity passes, and is PML's
                    distance=pml_dist.CosineSimilarity()).loss.distance.is_inverted


REDUCER_WANTED = "reducer must be a reducer object (e.g. MeanReducer())"
DISTANCE_WANTED = "distance must be a distance object (e.g. CosineSimilarity(); a config names one: cosine, l2, " \
                  "{name: LpDistance, p: 1})"
REGULARIZER_WANTED = "must be callable (e.g. LpRegularizer()) or null"


def _square(w):
    return (w ** 2).sum()


@pytest.mark.parametrize("build, key, message", [
    (lambda: pml_loss("ContrastiveLoss", reducer=pml_red.MeanReducer), "reducer",
     f"{REDUCER_WANTED}, got the class MeanReducer; instantiate it: MeanReducer()"),
    (lambda: pml_loss("ContrastiveLoss", reducer=_square), "reducer", f"{REDUCER_WANTED}, got the function _square"),
    (lambda: pml_loss("ContrastiveLoss", reducer=pml_dist.CosineSimilarity()), "reducer",
     f"{REDUCER_WANTED}, got a CosineSimilarity object, a distance"),
    (lambda: pml_loss("ContrastiveLoss", reducer=torch.nn.Identity()), "reducer",
     f"{REDUCER_WANTED}, got an Identity object"),
    (lambda: pml_loss("ContrastiveLoss", distance=pml_dist.CosineSimilarity), "distance",
     f"{DISTANCE_WANTED}, got the class CosineSimilarity; instantiate it: CosineSimilarity()"),
    (lambda: pml_loss("ContrastiveLoss", distance=dm_dist.LpDistance), "distance",
     f"{DISTANCE_WANTED}, got the class LpDistance; instantiate it: LpDistance()"),
    (lambda: pml_loss("ContrastiveLoss", distance=pml_red.SumReducer()), "distance",
     f"{DISTANCE_WANTED}, got a SumReducer object, a reducer"),
    (lambda: pml_loss("ContrastiveLoss", embedding_regularizer=pml_reg.LpRegularizer), "embedding_regularizer",
     f"embedding_regularizer {REGULARIZER_WANTED}, got the class LpRegularizer; instantiate it: LpRegularizer()"),
    (lambda: pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, weight_regularizer=dm_red.MeanReducer()),
     "weight_regularizer", f"weight_regularizer {REGULARIZER_WANTED}, got a MeanReducer object, a reducer"),
    (lambda: pml_miner("TripletMarginMiner", distance=pml_dist.LpDistance), "distance",
     f"{DISTANCE_WANTED}, got the class LpDistance; instantiate it: LpDistance()"),
    (lambda: PMLLoss(pml_losses.ContrastiveLoss(distance=pml_dist.CosineSimilarity)), "distance",  # built by PML
     f"{DISTANCE_WANTED}, got the class CosineSimilarity; instantiate it: CosineSimilarity()"),
])
def test_the_python_adapter_refuses_a_class_or_an_object_of_another_kind_where_pml_expects_an_object(build, key,
                                                                                                     message):
    """The QA report: callable() let a class or a function through: `reducer=MeanReducer` or a function tripped
    PML's constructor with a raw `TypeError: ... is not a Module subclass`, and `distance=CosineSimilarity` built
    and failed at the first call. A reducer / distance must be an instance of PML's base class or dynametric's; a
    class is refused with how to instantiate it, a regularizer that is a reducer or a distance too."""
    with pytest.raises(ConfigError) as err:
        build()
    assert (err.value.key, err.value.message) == (key, message)


def test_the_objects_pml_takes_pass_the_check_and_give_pml_s_value():
    """Instances of PML's bases and of dynametric's reducer / distance pass; a function is a regularizer (PML only
    calls it), and weight_init_func stays any callable."""
    emb, labels = batch(9)
    ours = pml_loss("ContrastiveLoss", reducer=dm_red.SumReducer(), distance=dm_dist.LpDistance(p=1),
                    embedding_regularizer=_square)
    theirs = pml_losses.ContrastiveLoss(reducer=pml_red.SumReducer(), distance=pml_dist.LpDistance(p=1),
                                        embedding_regularizer=_square)
    torch.testing.assert_close(ours(emb, labels), theirs(emb, labels))
    arc = pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, weight_regularizer=_square,
                   weight_init_func=torch.nn.init.ones_)
    assert torch.equal(arc.loss.W, torch.ones(D, 3)) and arc.loss.weight_regularizer is _square


#: A constructor with PML's kind of checks, assertions without a message (one over two lines), written to a module
#: of its own: pytest gives the assertions of a test module messages.
_CHECKED = """
class Checked:
    def __init__(self, distance=None, ratio=0.5, low=0, high=1, other=None):
        self.distance = distance
        assert not self.distance.is_inverted
        assert 0 < ratio < 1
        assert (low
                < high)
"""


@pytest.mark.parametrize("kwargs, key, message", [
    ({"distance": pml_dist.CosineSimilarity()}, "distance",
     "Checked's distance must be a distance, where lower is closer (e.g. LpDistance(); in a config: l2), got "
     "CosineSimilarity"),
    ({"distance": pml_dist.LpDistance(), "ratio": 2, "other": 1}, "ratio",
     "Checked's constructor failed its check `assert 0 < ratio < 1`, got 2"),
    ({"distance": pml_dist.LpDistance(), "low": 3, "high": 1}, None,  # two keywords: no single key
     "Checked's constructor failed its check `assert (low < high)`"),
    ({"distance": pml_dist.LpDistance(), "high": -1}, "high",
     "Checked's constructor failed its check `assert (low < high)`, got -1"),
])
def test_an_assertion_without_a_message_is_read_from_its_statement(tmp_path, kwargs, key, message):
    import importlib.util

    import dynametric.pml as dpml

    path = tmp_path / "checked_constructor.py"
    path.write_text(_CHECKED)
    spec = importlib.util.spec_from_file_location("checked_constructor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ConfigError) as err:
        dpml._instantiate("losses", module.Checked, kwargs)
    assert err.value.key == key and err.value.message == message


def test_the_python_adapter_refuses_names_where_pml_expects_objects():
    """The same check for a Python caller of the adapter (PML would keep the name and fail at the first call)."""
    with pytest.raises(ConfigError, match=r"^key 'reducer': reducer must be a reducer object \(e.g. MeanReducer\(\)\), "
                                          r"got 'mean'$"):
        pml_loss("TripletMarginLoss", reducer="mean")
    with pytest.raises(ConfigError, match=r"^key 'weight_regularizer': weight_regularizer must be callable"):
        pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, weight_regularizer="RegularFaceRegularizer")
    with pytest.raises(ConfigError, match=r"^key 'distance': distance must be a distance object"):
        pml_loss("ContrastiveLoss", distance="cosine")
    with pytest.raises(ConfigError, match=r"^key 'distance': distance must be a distance object"):
        pml_miner("TripletMarginMiner", distance="cosine")
    emb, labels = batch(3)  # objects pass, and PML's value is unchanged
    ours = pml_loss("TripletMarginLoss", reducer=pml_red.SumReducer(), embedding_regularizer=pml_reg.LpRegularizer())
    theirs = pml_losses.TripletMarginLoss(reducer=pml_red.SumReducer(), embedding_regularizer=pml_reg.LpRegularizer())
    torch.testing.assert_close(ours(emb, labels), theirs(emb, labels))


@pytest.mark.parametrize("build, message", [
    (lambda: pml_loss("TripletMarginLoss", margn=0.1), "TripletMarginLoss has no argument 'margn'; did you mean "
                                                       "'margin'?"),
    (lambda: pml_loss("TripletMarginLoss", margn=0.1, weights=[1.0, 1.0]), "TripletMarginLoss has no argument "
                                                                          "'margn'; did you mean 'margin'?"),
    (lambda: pml_loss("ArcFaceLoss", num_classes=3, embedding_size=D, scal=3.0), "ArcFaceLoss has no argument "
                                                                                  "'scal'; did you mean 'scale'?"),
    (lambda: pml_miner("MultiSimilarityMiner", foo=1), "MultiSimilarityMiner has no argument 'foo'; its arguments: "
                                                       "epsilon, distance, collect_stats"),
])
def test_a_python_caller_s_unknown_keyword_is_named_with_the_arguments(build, message):
    """An unknown keyword was PML's `TypeError: ModuleWithRecords.__init__() got an unexpected keyword argument`,
    which names a base class the user never wrote; the arguments of every constructor in the chain count (ArcFace's
    `scale`, a base class's `collect_stats`)."""
    with pytest.raises(ConfigError) as err:
        build()
    assert err.value.message == message and err.value.key == message.split("'")[1]
    # the arguments of a base class the PML class passes its keywords to are accepted
    assert isinstance(pml_loss("SubCenterArcFaceLoss", num_classes=3, embedding_size=D, sub_centers=2,
                               collect_stats=False), PMLLoss)


def test_a_wrapped_pml_loss_runs_its_maths_in_float32_under_bfloat16():
    """PML's formulas are not written for 16-bit numbers: TupletMarginLoss takes acos of a cosine, which bfloat16
    (autocast's matmul, or bfloat16 embeddings) rounds to exactly 1 for nearby pairs: a finite loss with a NaN
    gradient. The adapter computes in float32 with autocast off: the gradient is finite and the float32 one, up to
    the rounding of the embeddings themselves."""
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2)
    emb = torch.randn(4, 32).repeat_interleave(2, 0) + 0.02 * torch.randn(8, 32)  # pairs about 1 degree apart
    loss = pml_loss("TupletMarginLoss")

    def grad(x: torch.Tensor, autocast: bool) -> torch.Tensor:
        x = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = loss(x, labels)
        value.backward()
        assert value.dtype == torch.float32
        return x.grad.float()

    reference = grad(emb, autocast=False)
    assert bool(reference.abs().sum() > 0)
    torch.testing.assert_close(grad(emb, autocast=True), reference)  # float32 inputs: float32 maths
    rounded = emb.bfloat16().float()
    bf16_grad = grad(emb.bfloat16(), autocast=False)  # bf16-true: bfloat16 embeddings, float32 maths
    torch.testing.assert_close(bf16_grad, grad(rounded, autocast=False), rtol=2e-2, atol=1e-3)
