"""The pair-loss base (losses/pair.py): the preamble it owns and the contract its subclasses keep."""

from __future__ import annotations

import inspect

import pytest
import torch

from dynametric.distances import CosineSimilarity, LpDistance
from dynametric.errors import ConfigError
from dynametric.losses import build_loss
from dynametric.losses.circle import CircleLoss
from dynametric.losses.contrastive import ContrastiveLoss
from dynametric.losses.lifted import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from dynametric.losses.multi_similarity import MultiSimilarityLoss
from dynametric.losses.npairs import NPairsLoss
from dynametric.losses.pair import AnchorPairLoss, PairLoss
from dynametric.losses.reducers import MeanReducer

PAIR_LOSSES = [ContrastiveLoss, LiftedStructureLoss, GeneralizedLiftedStructureLoss, MultiSimilarityLoss, CircleLoss,
               NPairsLoss]
OPTIONS = ["reducer", "embedding_regularizer", "embedding_reg_weight", "collect_stats"]


@pytest.mark.parametrize("cls", PAIR_LOSSES)
def test_signature_spells_out_the_common_options(cls):
    params = inspect.signature(cls).parameters
    assert issubclass(cls, PairLoss)
    assert [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] == OPTIONS
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert list(params)[-6:-4] == ["distance", "scale"]
    with pytest.raises(TypeError, match=f"{cls.__name__}.__init__.. got an unexpected keyword argument 'nope'"):
        cls(nope=1)


def test_config_still_rejects_unknown_arguments():
    with pytest.raises(ConfigError, match="ContrastiveLoss has no argument 'margn'; did you mean 'pos_margin'") as err:
        build_loss("ContrastiveLoss", margn=0.5)
    assert err.value.key == "margn"


def test_default_distances():
    assert isinstance(ContrastiveLoss().distance, LpDistance)
    assert isinstance(MultiSimilarityLoss().distance, CosineSimilarity)
    assert NPairsLoss().distance.normalize_embeddings
    assert NPairsLoss.works_without_labels is False and ContrastiveLoss.works_without_labels is True


class _MeanPositiveDistance(AnchorPairLoss):
    """A toy loss stated only by its formula: per anchor, the mean distance to its positives."""

    def anchor_losses(self, mat, pos, neg):
        return (mat * pos).sum(1) / pos.sum(1).clamp(min=1)


def test_a_subclass_states_only_its_formula():
    torch.manual_seed(0)
    emb = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = _MeanPositiveDistance()
    unit = emb / emb.norm(dim=1, keepdim=True)
    expected = torch.stack([(unit[i] - unit[i ^ 1]).norm() for i in range(6)]).mean()
    torch.testing.assert_close(loss(emb, labels), expected)
    torch.testing.assert_close(_MeanPositiveDistance(reducer=MeanReducer())(emb, labels), expected)
    # one positive and one negative pair only: PML's rule gives a zero that still back-propagates
    emb.requires_grad_(True)
    out = loss(emb[:3], torch.tensor([0, 0, 1]), indices_tuple=(torch.tensor([0]), torch.tensor([1]),
                                                                   torch.tensor([0]), torch.tensor([2])))
    out.backward()
    assert float(out.detach()) == 0.0 and torch.all(emb.grad == 0)
