"""MultiScaleLoss: per-scale sum with weights, DyML chunk layout, per-scale parameters, PML per-scale oracle."""

from __future__ import annotations

import pytest
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.losses import (
    ContrastiveLoss,
    MarginLoss,
    MultiScaleLoss,
    MultiSimilarityLoss,
    ThreeScaleChunks,
    TripletMarginLoss,
    build_loss,
    three_scale_chunks,
)

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")


def hierarchy_batch(seed: int, n: int = 24, d: int = 8):
    """Labels [n, 3]: fine, middle, coarse (coarser classes are unions of finer ones)."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, 8, (n,), generator=g)
    labels = torch.stack([fine * 11 + 5, fine // 2 + 100, fine // 4 - 50], 1)
    return torch.randn(n, d, generator=g, dtype=torch.float64), labels


def test_whole_batch_is_weighted_sum_and_equals_pml_per_scale():
    emb, labels = hierarchy_batch(0)
    weights = [1.0, 0.5, 0.25]
    ms = MultiScaleLoss(TripletMarginLoss(margin=0.2), weights=weights)
    e1 = emb.clone().requires_grad_(True)
    out = ms(e1, labels)
    out.backward()
    e2 = emb.clone().requires_grad_(True)
    pml = pml_losses.TripletMarginLoss(margin=0.2)
    ref = sum(w * pml(e2, labels[:, s]) for s, w in enumerate(weights))
    ref.backward()
    torch.testing.assert_close(out.detach(), ref.detach())
    torch.testing.assert_close(e1.grad, e2.grad)
    assert [float(v) for v in ms.last_scale_losses] == pytest.approx(
        [float(pml(emb, labels[:, s])) for s in range(3)])


def test_three_scale_layout_indices():
    # 2 items of 3 scales x K=2: rows 0-1 fine, 2-3 middle, 4-5 coarse, then 6-7 fine, ...
    chunks = three_scale_chunks(12, images_per_class=2)
    assert [c.tolist() for c in chunks] == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert [c.tolist() for c in ThreeScaleChunks(2)(12)] == [c.tolist() for c in chunks]
    with pytest.raises(InputError, match="three-scale items") as info:
        three_scale_chunks(10, images_per_class=2)
    assert info.value.key == "batch_size"  # its own argument
    for key in ("images_per_class", "num_scales"):
        with pytest.raises(InputError) as info:
            three_scale_chunks(12, **{key: 0})
        assert str(info.value) == f"key '{key}': {key} must be positive, got 0"


def test_a_batch_that_does_not_fit_the_three_scale_layout_is_keyed_embeddings_in_a_loss_call():
    loss = MultiScaleLoss("TripletMarginLoss", weights=[1.0, 1.0, 1.0], chunks=ThreeScaleChunks(2))
    emb, labels = hierarchy_batch(1, n=24)
    with pytest.raises(InputError, match="three-scale items") as info:
        loss(emb[:10], labels[:10])
    assert info.value.key == "embeddings"


@pytest.mark.parametrize("chunks_kind", ["layout", "ranges"])
def test_chunked_scales_use_only_their_rows(chunks_kind):
    emb, labels = hierarchy_batch(1, n=24)
    if chunks_kind == "layout":
        chunks = ThreeScaleChunks(images_per_class=2)
        rows = [c.tolist() for c in three_scale_chunks(24, 2)]
    else:
        chunks = [(0, 8), (8, 16), slice(16, 24)]
        rows = [list(range(0, 8)), list(range(8, 16)), list(range(16, 24))]
    ms = MultiScaleLoss(lambda s: MultiSimilarityLoss(), chunks=chunks, num_scales=3)
    e1 = emb.clone().requires_grad_(True)
    ms(e1, labels).backward()
    e2 = emb.clone().requires_grad_(True)
    pml = pml_losses.MultiSimilarityLoss()
    ref = sum(pml(e2[r], labels[r, s]) for s, r in enumerate(rows))
    ref.backward()
    torch.testing.assert_close(ms(emb, labels), ref.detach())
    torch.testing.assert_close(e1.grad, e2.grad)
    # negatives come only from the chunk: rows of other chunks get no gradient from a scale's loss
    e3 = emb.clone().requires_grad_(True)
    MultiScaleLoss(MultiSimilarityLoss(), weights=[1, 0, 0], chunks=chunks)(e3, labels).backward()
    outside = sorted(set(range(24)) - set(rows[0]))
    assert float(e3.grad[outside].abs().max()) == 0.0
    assert float(e3.grad[rows[0]].abs().max()) > 0.0


def test_per_scale_parameters_from_factory_list_and_registry():
    ms = MultiScaleLoss(lambda s: MarginLoss(learn_beta=True, nu=0.1, num_classes=[80, 8, 4][s]), num_scales=3)
    assert [p.shape[0] for p in ms.loss_parameters()] == [80, 8, 4]
    emb, labels = hierarchy_batch(2)
    dense = torch.stack([torch.unique(labels[:, s], return_inverse=True)[1] for s in range(3)], 1)
    ms(emb.float(), dense).backward()
    assert all(p.grad is not None for p in ms.loss_parameters())
    built = build_loss("MultiScaleLoss", base_losses_or_factory="MarginLoss", num_scales=3,
                       base_kwargs={"learn_beta": True, "num_classes": [80, 8, 4]})
    assert [p.shape[0] for p in built.loss_parameters()] == [80, 8, 4]
    listed = MultiScaleLoss([TripletMarginLoss(margin=m) for m in (0.1, 0.2, 0.3)])
    assert listed.num_scales == 3 and listed.loss_at(2).margin == 0.3
    with pytest.raises(ConfigError, match="shared instance"):
        MultiScaleLoss(MarginLoss(learn_beta=True), num_scales=3)


def test_per_scale_miner_outputs_and_ref_emb():
    emb, labels = hierarchy_batch(3, n=16)
    ref, ref_labels = hierarchy_batch(4, n=10)
    ms = MultiScaleLoss(TripletMarginLoss(margin=0.3), num_scales=3)
    pml = pml_losses.TripletMarginLoss(margin=0.3)
    out = ms(emb, labels, None, ref, ref_labels)
    expected = sum(pml(emb, labels[:, s], None, ref, ref_labels[:, s]) for s in range(3))
    torch.testing.assert_close(out, expected)
    tuples = [(torch.tensor([0]), torch.tensor([1]), torch.tensor([2])), None,
              (torch.tensor([3, 4]), torch.tensor([5, 6]), torch.tensor([7, 8]))]
    for s in (0, 2):
        tuples[s] = tuple(t.clamp(max=15) for t in tuples[s])
    out = ms(emb, labels, tuples)
    expected = sum(pml(emb, labels[:, s], tuples[s]) for s in range(3))
    torch.testing.assert_close(out, expected)


def test_per_scale_miners_mine_each_chunk_with_its_labels():
    from pytorch_metric_learning import miners as pml_miners

    from dynametric.miners import TripletMarginMiner

    emb, labels = hierarchy_batch(6, n=24)
    rows = [c for c in three_scale_chunks(24, 2)]
    pml = pml_losses.TripletMarginLoss(margin=0.3)
    pml_miner = pml_miners.TripletMarginMiner(margin=0.4, type_of_triplets="semihard")
    expected = sum(pml(emb[r], labels[r, s], pml_miner(emb[r], labels[r, s])) for s, r in enumerate(rows))
    for miners in (TripletMarginMiner(margin=0.4, type_of_triplets="semihard"),
                   {"name": "TripletMarginMiner", "margin": 0.4, "type_of_triplets": "semihard"}):
        ms = MultiScaleLoss(TripletMarginLoss(margin=0.3), num_scales=3, chunks=ThreeScaleChunks(2), miners=miners)
        torch.testing.assert_close(ms(emb, labels), expected)
    # a miner only at the coarse scale: the other scales use all their triplets
    only_coarse = MultiScaleLoss(TripletMarginLoss(margin=0.3), chunks=ThreeScaleChunks(2),
                                 miners=[None, None, TripletMarginMiner(margin=0.4, type_of_triplets="semihard")])
    expected = sum(pml(emb[r], labels[r, s], pml_miner(emb[r], labels[r, s]) if s == 2 else None)
                   for s, r in enumerate(rows))
    torch.testing.assert_close(only_coarse(emb, labels), expected)
    with pytest.raises(ConfigError, match="miners"):
        MultiScaleLoss(TripletMarginLoss(), num_scales=3, miners=[None, None])


def test_chunked_scales_with_the_batch_as_reference_set_follow_pml_s_rule_on_each_chunk():
    """``ref_labels is labels``: the reference set is the batch, so it is chunked as the batch is and no pair (i, i)
    is a positive (PML's rule, on each chunk); with ``ref_emb is embeddings`` too the call is the plain one."""
    emb, labels = hierarchy_batch(8, n=24)
    view = emb + 0.05 * torch.randn(emb.shape, generator=torch.Generator().manual_seed(3), dtype=emb.dtype)
    rows = list(three_scale_chunks(24, 2))
    pml = pml_losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.8)
    ms = MultiScaleLoss(ContrastiveLoss(pos_margin=0.1, neg_margin=0.8), num_scales=3,
                        chunks=ThreeScaleChunks(2))
    plain = ms(emb, labels)
    torch.testing.assert_close(ms(emb, labels, None, emb, labels), plain)
    lab = [labels[r, s] for s, r in enumerate(rows)]
    second_view = sum(pml(emb[r], lab[s], None, view[r], lab[s]) for s, r in enumerate(rows))
    copies = sum(pml(emb[r], lab[s], None, view[r], lab[s].clone()) for s, r in enumerate(rows))
    assert not torch.isclose(second_view, copies)  # the pairs (i, i) matter on this batch
    torch.testing.assert_close(ms(emb, labels, None, view, labels), second_view)
    # equal copies of the labels are another reference set: every chunk against all of it, (i, i) included
    whole = sum(pml(emb[r], labels[r, s], None, view, labels[:, s].clone()) for s, r in enumerate(rows))
    torch.testing.assert_close(ms(emb, labels, None, view, labels.clone()), whole)
    with pytest.raises(InputError, match="'ref_labels': expected 10 label rows, got 24"):
        ms(emb, labels, None, view[:10], labels)


def test_errors():
    emb, labels = hierarchy_batch(5, n=12)
    with pytest.raises(ConfigError, match="num_scales"):
        MultiScaleLoss(TripletMarginLoss())
    with pytest.raises(ConfigError, match="weights"):
        MultiScaleLoss(TripletMarginLoss(), weights=[1, 1], num_scales=3)
    with pytest.raises(InputError, match="column"):
        MultiScaleLoss(TripletMarginLoss(), num_scales=3)(emb, labels[:, :2])
    with pytest.raises(InputError, match="one indices tuple"):
        MultiScaleLoss(TripletMarginLoss(), num_scales=3)(emb, labels, (torch.tensor([0]),) * 3)
    with pytest.raises(InputError, match="outside"):
        MultiScaleLoss(TripletMarginLoss(), chunks=[(0, 4), (4, 8), (8, 20)])(emb, labels)
    with pytest.raises(ConfigError) as info:
        MultiScaleLoss(TripletMarginLoss(scale=1), num_scales=3)
    assert (info.value.key, info.value.message) == ("base_losses_or_factory", (
        "the loss of scale 0, TripletMarginLoss, reads label column 1; MultiScaleLoss gives each scale's loss that "
        "scale's column alone, so build it without a column of its own (scale / label_scale 0, the default)"))


def test_a_wrapped_pml_loss_with_a_column_of_its_own_is_named_with_its_pml_class():
    from dynametric.losses.pml import PMLLoss

    with pytest.raises(ConfigError) as info:
        MultiScaleLoss([PMLLoss(pml_losses.ContrastiveLoss()), PMLLoss(pml_losses.ContrastiveLoss(), label_scale=2)])
    assert info.value.message.startswith("the loss of scale 1, PMLLoss(ContrastiveLoss), reads label column 2; ")


@pytest.mark.parametrize("name, base_kwargs, arg", [
    ("TripletMarginLoss", {"scale": 0}, "scale"),
    ("TripletMarginLoss", {"scale": 2, "margin": 0.2}, "scale"),
    ("pml:ContrastiveLoss", {"label_scale": 1}, "label_scale"),
    ("CosFaceLoss", {"label_scale": 0, "num_classes": 4, "embedding_size": 8}, "label_scale"),
])
def test_a_label_column_in_base_kwargs_is_refused(name, base_kwargs, arg):
    """A registry name builds one loss per scale on that scale's column: a column keyword in base_kwargs (0 included,
    as pml_loss(..., weights=..., label_scale=0) refuses it) is meaningless; it was accepted (0) or refused on
    'base_losses_or_factory' with the loss's internal attribute."""
    with pytest.raises(ConfigError) as info:
        MultiScaleLoss(name, num_scales=3, base_kwargs=base_kwargs)
    assert (info.value.key, info.value.message) == (f"base_kwargs.{arg}", (
        f"base_kwargs[{arg!r}]={base_kwargs[arg]!r}: MultiScaleLoss gives each scale's {name} that scale's label "
        f"column; remove {arg!r}"))


def test_cosface_s_logit_scale_in_base_kwargs_is_not_a_column():
    loss = MultiScaleLoss("CosFaceLoss", num_scales=2, base_kwargs={"scale": 16, "num_classes": 4,
                                                                    "embedding_size": 8})
    assert [(loss.loss_at(s).logit_scale, loss.loss_at(s).scale) for s in range(2)] == [(16.0, 0), (16.0, 0)]


@pytest.mark.parametrize("weights", [[1, -1, 1], [0, 0, 0], [1, float("nan"), 1]])
def test_negative_nan_or_all_zero_scale_weights_are_refused(weights) -> None:
    with pytest.raises(ConfigError) as info:
        MultiScaleLoss(TripletMarginLoss(), weights=weights)
    assert info.value.key == "weights" and "expected non-negative weights, not all zero" in str(info.value)


@pytest.mark.parametrize("kwargs, key", [({"images_per_class": 0}, "images_per_class"),
                                         ({"images_per_class": -2}, "images_per_class"),
                                         ({"num_scales": 0}, "num_scales")])
def test_three_scale_chunks_refuses_a_non_positive_layout_when_built(kwargs, key) -> None:
    with pytest.raises(ConfigError) as info:
        ThreeScaleChunks(**kwargs)
    assert info.value.key == key and "must be a positive integer" in str(info.value)


# ------------------------------------------------------------------------------------ named parts (loss_parts)
def test_parts_are_the_weighted_per_scale_losses_by_scale_name_and_add_up_to_the_value():
    """``loss_parts()`` = ``{scale name: w_s L_s}``: each equals the weight times PML's loss on that scale's column
    (float64, computed here independently), they add up to the value, and the names follow ``scale_names``. The
    unweighted values stay in ``last_scale_losses``; with weights other than 1 the two differ, so returning those
    (or the running total) is caught."""
    emb, labels = hierarchy_batch(7)
    weights = [1.0, 0.5, 0.25]
    ms = MultiScaleLoss(TripletMarginLoss(margin=0.2), weights=weights)
    assert ms.loss_parts() == {}  # before the first call
    value = ms(emb.clone().requires_grad_(True), labels)
    parts = ms.loss_parts()
    assert list(parts) == ["fine", "middle", "coarse"]  # default names of three scales
    assert all(p.dim() == 0 and not p.requires_grad and p.dtype == torch.float64 for p in parts.values())
    pml = pml_losses.TripletMarginLoss(margin=0.2)
    expected = [w * pml(emb, labels[:, s]) for s, w in enumerate(weights)]
    assert all(float(e) > 0 for e in expected)  # every scale contributes: a mix-up of scales would show
    torch.testing.assert_close(torch.stack(list(parts.values())), torch.stack(expected))
    torch.testing.assert_close(sum(parts.values()), value.detach())
    torch.testing.assert_close(torch.stack(ms.last_scale_losses), torch.stack(expected) / torch.tensor(weights,
                                                                                                      dtype=emb.dtype))
    ms.scale_names = ("leaf", "twig", "branch")
    assert list(ms.loss_parts()) == ["leaf", "twig", "branch"]
    # a second call replaces the parts (no accumulation over calls)
    emb2, labels2 = hierarchy_batch(8)
    value2 = ms(emb2, labels2)
    torch.testing.assert_close(sum(ms.loss_parts().values()), value2)
    torch.testing.assert_close(ms.loss_parts()["twig"], 0.5 * pml(emb2, labels2[:, 1]))


def test_parts_of_a_hand_computed_batch():
    """Two scales worked out by hand. Unit embeddings a=(1,0), p=(0.8,0.6), n=(0,1) (the triplet loss normalises
    them and takes Euclidean distances sqrt(2 - 2 cos)): fine labels [0, 0, 1] give the triplets (a,p,n), (p,a,n);
    coarse labels [0, 1, 1] give (p,n,a), (n,p,a); every one of them has a positive loss, so each scale's loss is
    the mean of its two."""
    a, p, n = [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]
    emb = torch.tensor([a, p, n], dtype=torch.float64)
    labels = torch.tensor([[0, 0], [0, 1], [1, 1]])
    d = {("a", "p"): (2 - 2 * 0.8) ** 0.5, ("a", "n"): 2 ** 0.5, ("p", "n"): (2 - 2 * 0.6) ** 0.5}
    margin = 1.0
    # fine: anchors a and p (positives of each other), negative n; mean over the triplets with a positive loss
    fine = [max(d[("a", "p")] - d[("a", "n")] + margin, 0), max(d[("a", "p")] - d[("p", "n")] + margin, 0)]
    # coarse: anchors p and n (positives of each other), negative a
    coarse = [max(d[("p", "n")] - d[("a", "p")] + margin, 0), max(d[("p", "n")] - d[("a", "n")] + margin, 0)]
    fine_loss = sum(fine) / sum(v > 0 for v in fine)
    coarse_loss = sum(coarse) / sum(v > 0 for v in coarse)
    ms = MultiScaleLoss(TripletMarginLoss(margin=margin), weights=[2.0, 3.0])
    value = ms(emb, labels)
    parts = ms.loss_parts()
    assert list(parts) == ["fine", "coarse"]
    assert float(parts["fine"]) == pytest.approx(2.0 * fine_loss, rel=1e-12)
    assert float(parts["coarse"]) == pytest.approx(3.0 * coarse_loss, rel=1e-12)
    assert float(value) == pytest.approx(2.0 * fine_loss + 3.0 * coarse_loss, rel=1e-12)


def test_an_empty_chunk_and_a_zero_weight_give_zero_parts():
    emb, labels = hierarchy_batch(9, n=16)
    ms = MultiScaleLoss(MultiSimilarityLoss(), weights=[1.0, 0.0, 2.0], chunks=[(0, 8), (8, 16), (8, 8)])
    value = ms(emb, labels)
    parts = ms.loss_parts()
    assert float(parts["middle"]) == 0.0 and float(ms.last_scale_losses[1]) > 0.0  # weight 0: contributes nothing
    assert float(parts["coarse"]) == 0.0 and float(ms.last_scale_losses[2]) == 0.0  # empty chunk
    pml = pml_losses.MultiSimilarityLoss()
    torch.testing.assert_close(parts["fine"], pml(emb[:8], labels[:8, 0]))
    torch.testing.assert_close(value, parts["fine"])


def test_parts_are_named_by_the_finest_scale_names_when_the_loss_covers_fewer_scales():
    emb, labels = hierarchy_batch(10)
    ms = MultiScaleLoss(TripletMarginLoss(margin=0.2), weights=[1.0, 1.0])  # fine + middle of 3-column labels
    ms.scale_names = ("leaf", "twig", "branch")  # the data's three names, as the engine sets them
    ms(emb, labels)
    pml = pml_losses.TripletMarginLoss(margin=0.2)
    parts = ms.loss_parts()
    assert list(parts) == ["leaf", "twig"]
    torch.testing.assert_close(parts["twig"], pml(emb, labels[:, 1]))
    ms.scale_names = ("leaf",)  # fewer names than scales: the default names of two scales
    assert list(ms.loss_parts()) == ["fine", "coarse"]


def test_a_failed_call_leaves_no_parts_of_an_earlier_call():
    emb, labels = hierarchy_batch(11, n=12)
    ms = MultiScaleLoss(TripletMarginLoss(), chunks=[(0, 4), (4, 8), (8, 12)])
    ms(emb, labels)
    assert len(ms.loss_parts()) == 3
    with pytest.raises(InputError, match="outside"):
        ms(emb[:10], labels[:10])
    assert ms.loss_parts() == {} and ms.last_scale_losses == []
    ms(emb, labels)
    assert len(ms.loss_parts()) == 3
    with pytest.raises(InputError, match="column"):
        ms(emb, labels[:, :2])
    assert ms.loss_parts() == {} and ms.last_scale_losses == []


@pytest.mark.parametrize("names, message", [
    (("a", "a", "b"), "scale names must be distinct (one per label column), got ['a', 'a', 'b']: 'a' repeats"),
    (["leaf", ""], "scale names must be non-empty strings, got ['leaf', '']"),
    (("leaf", 3), "scale names must be non-empty strings, got ['leaf', 3]"),
])
def test_scale_names_that_would_merge_parts_are_refused_when_set(names, message):
    """("a", "a", "b") gave two parts, the two `a` scales merged into one: they summed to 0.512 for a loss of 0.860.
    CSL's parts are named the same way."""
    from dynametric.losses import CSLLoss

    for loss in (MultiScaleLoss(TripletMarginLoss(), weights=[1, 1, 1]), CSLLoss(None, 8, mode="pairs")):
        with pytest.raises(ConfigError) as info:
            loss.scale_names = names
        assert (info.value.key, info.value.message) == ("scale_names", message)
        assert loss.scale_names is None  # unchanged
    ms = MultiScaleLoss(TripletMarginLoss(), weights=[1, 1])
    ms.scale_names = ["leaf", "mean"]  # a list is kept as a tuple; `mean` is no part name of a loss's
    assert ms.scale_names == ("leaf", "mean")
    ms.scale_names = None
    assert ms.scale_names is None


def test_a_non_finite_row_in_no_chunk_leaves_the_value_and_the_parts_finite_and_equal():
    """The value started from `embeddings.sum() * 0.0`: a NaN row no scale reads made it NaN while every part was
    finite. Now the value is the sum of the parts and reads only the chunks' rows (an empty chunk's zero too)."""
    emb, labels = hierarchy_batch(12, n=16)
    ms = MultiScaleLoss(TripletMarginLoss(), weights=[1.0, 2.0, 1.0], chunks=[(0, 6), (6, 12), (12, 12)])
    clean = ms(emb, labels)
    clean_parts = ms.loss_parts()
    bad = emb.clone()
    bad[13] = float("nan")
    bad[15, 0] = float("inf")
    bad.requires_grad_(True)
    value = ms(bad, labels)
    parts = ms.loss_parts()
    assert torch.isfinite(value) and all(torch.isfinite(p) for p in parts.values())
    assert float(value) == float(clean) > 0 and float(parts["coarse"]) == 0.0  # the empty chunk's zero
    assert {k: float(v) for k, v in parts.items()} == {k: float(v) for k, v in clean_parts.items()}
    assert float(value) == pytest.approx(float(sum(parts.values())), rel=1e-12)
    value.backward()
    assert torch.isfinite(bad.grad).all() and not bad.grad[12:].any() and bad.grad[:12].any()
    bad2 = emb.clone()
    bad2[3] = float("nan")  # in the fine chunk: the value is NaN where that scale's part is (the run's policy sees it)
    ms = MultiScaleLoss(MultiSimilarityLoss(), weights=[1.0, 2.0, 1.0], chunks=[(0, 6), (6, 12), (12, 12)])
    value = ms(bad2, labels)
    parts = ms.loss_parts()
    assert torch.isnan(value) and torch.isnan(parts["fine"]) and torch.isfinite(parts["middle"])
