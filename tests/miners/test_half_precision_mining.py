"""Half-precision embeddings are mined in float32 (docs/losses.md): the distance matrix is computed from the
float32 copy of the fp16/bf16 values and never rounded back, so the tuples equal those mined from that copy."""

from __future__ import annotations

import pytest
import torch

import dynametric.miners as DM
from dynametric.distances import CosineSimilarity, LpDistance

MINERS = {
    "triplet_all": lambda: DM.TripletMarginMiner(margin=0.2),
    "triplet_semihard_l2sq": lambda: DM.TripletMarginMiner(margin=0.1, type_of_triplets="semihard",
                                                           distance=LpDistance(power=2)),
    "triplet_cosine": lambda: DM.TripletMarginMiner(margin=0.1, distance=CosineSimilarity()),
    "batch_hard": lambda: DM.BatchHardMiner(),
    "pair_margin": lambda: DM.PairMarginMiner(pos_margin=0.6, neg_margin=1.0),
    "multi_similarity": lambda: DM.MultiSimilarityMiner(epsilon=0.05),
}


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(MINERS))
def test_half_precision_batches_are_mined_as_their_float32_copy(name, dtype):
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        emb = torch.randn(32, 8, generator=g).to(dtype)
        labels = torch.randint(0, 5, (32,), generator=g)
        ref = torch.randn(20, 8, generator=g).to(dtype)
        ref_labels = torch.randint(0, 5, (20,), generator=g)
        _same(MINERS[name]()(emb, labels), MINERS[name]()(emb.float(), labels))
        _same(MINERS[name]()(emb, labels, ref, ref_labels), MINERS[name]()(emb.float(), labels, ref.float(),
                                                                             ref_labels))


def test_the_qa_bf16_batch_that_the_half_precision_matrix_mined_differently():
    """torch.manual_seed(1), 32 x 8, 5 classes: the bf16 distance matrix (rounded back to bf16 before the comparison)
    gave 3218 triplets, the float32 matrix of the same rounded values 3217; float64 agrees with float32."""
    torch.manual_seed(1)
    emb = torch.randn(32, 8)
    labels = torch.randint(0, 5, (32,))
    e = emb.to(torch.bfloat16)
    counts = [len(DM.TripletMarginMiner()(x, labels)[0]) for x in (e, e.float(), e.double())]
    assert counts == [3217, 3217, 3217]
    rounded = LpDistance()(e).float()  # the distance object itself still answers in the input's dtype
    assert rounded.dtype == torch.float32 and not torch.equal(rounded, LpDistance()(e.float()))


def test_float32_and_float64_mining_is_unchanged_by_the_conversion():
    """Only fp16/bf16 are converted: float64 is mined in float64 (a margin tie at 1e-12 decided as in float64)."""
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0 + 1e-12]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    a, p, n = DM.TripletMarginMiner(margin=2e-12, type_of_triplets="semihard", distance=LpDistance(
        normalize_embeddings=False))(emb, labels)
    # anchor 0: d_ap = 1, d_an = 1 + 1e-12, so the margin d_an - d_ap is ~1e-12 <= 2e-12 (in float64 only)
    assert a.tolist() == [0] and p.tolist() == [1] and n.tolist() == [2]
    assert len(DM.TripletMarginMiner(margin=2e-12, type_of_triplets="semihard", distance=LpDistance(
        normalize_embeddings=False))(emb.float(), labels)[0]) == 0  # in float32 the two distances are equal
