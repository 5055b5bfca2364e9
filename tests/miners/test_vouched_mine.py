"""Which miners' tuples the losses take without reading them back: a class declares that its own `mine` builds
tuples in range by construction (`vouched_mine=True`); a subclass that writes its own `mine` is not vouched for
(whatever package it lives in), one that keeps its parent's `mine` is."""

from __future__ import annotations

import torch

from dynametric.miners import MINERS, Miner, PMLMiner
from dynametric.miners.triplet_margin import TripletMarginMiner
from dynametric.tuples import is_mined


class KeepsParentsMine(TripletMarginMiner):
    pass


class WritesItsOwn(TripletMarginMiner):
    def mine(self, embeddings, labels, ref_emb, ref_labels):
        a, p, n = super().mine(embeddings, labels, ref_emb, ref_labels)
        return a, p, n


class SaysSo(TripletMarginMiner, vouched_mine=True):
    def mine(self, embeddings, labels, ref_emb, ref_labels):
        return super().mine(embeddings, labels, ref_emb, ref_labels)


def test_only_declared_mines_are_vouched_for() -> None:
    assert all(cls.vouched_mine for name, cls in MINERS.items() if cls is not PMLMiner), MINERS
    assert not PMLMiner.vouched_mine and not Miner.vouched_mine
    assert KeepsParentsMine.vouched_mine and not WritesItsOwn.vouched_mine and SaysSo.vouched_mine
    emb = torch.nn.functional.normalize(torch.randn(24, 8), dim=1)
    labels = torch.arange(6).repeat_interleave(4)
    for cls, marked in ((TripletMarginMiner, True), (KeepsParentsMine, True), (WritesItsOwn, False), (SaysSo, True)):
        out = cls(margin=1.0)(emb, labels)
        assert is_mined(out, 24, 24) is marked, cls
