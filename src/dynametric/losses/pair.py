"""The base of the pair losses (contrastive, lifted, generalised lifted, multi-similarity, circle): the preamble they
share, so that each loss states only its own formula (the role of pytorch-metric-learning's ``GenericPairLoss``).

:class:`PairLoss` owns

* the constructor's common part: the ``distance`` (``None`` = the loss's :meth:`~PairLoss.default_distance`; PML
  distances are accepted through :func:`~dynametric.distances.as_distance`) and the options every loss takes
  (``reducer=``, ``embedding_regularizer=``, ``embedding_reg_weight=``, ``collect_stats=``). A subclass writes
  ``def __init__(self, <its own arguments>, distance=None, scale=0, **options)`` and passes ``**options`` on; its
  public signature still lists the options one by one (config validation and ``help()`` see the real arguments);
* ``labels=None`` with an ``indices_tuple`` (the tuple alone defines a pair loss);
* the pairs in the two forms the losses use: :meth:`~PairLoss.pair_indices` (``(a1, p, a2, n)`` and the distance
  matrix) and :meth:`~PairLoss.pair_masks` (dense ``[B, R]`` positive/negative masks and the distance matrix), each
  after validating a miner's output and applying PML's rule that fewer than two positive *and* fewer than two
  negative pairs give a zero loss.

:class:`AnchorPairLoss` goes one step further for losses with one value per anchor (a row of the masks): the
subclass gives :meth:`~AnchorPairLoss.anchor_losses` (and, if not the mean, :meth:`~AnchorPairLoss.reduce`), the base
turns it into both the built-in reduction and PML's ``"element"`` loss dictionary.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import torch

from dynametric.distances import Distance, LpDistance, as_distance
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.losses.reducers import zero_entry
from dynametric.tuples import (
    check_miner_output,
    convert_to_pairs,
    distance_matrix,
    few_pairs,
    match_masks,
    pair_masks,
)

#: The reason logged when PML's generic pair rule makes the loss zero.
TOO_FEW_PAIRS = "fewer than two positive and two negative pairs"

_OPTIONS = [p for p in inspect.signature(MetricLoss.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
_OPTION_NAMES = frozenset(p.name for p in _OPTIONS)


def _spell_out_options(init: Any) -> None:
    """Give ``init(self, ..., **options)`` the signature with the common options listed as keyword-only, and their
    annotations (resolved: ``embedding_reg_weight: float``), so that the factories' type check reads them too."""
    sig = inspect.signature(init)
    params = list(sig.parameters.values())
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD or params[-1].name != "options":
        return
    init.__signature__ = sig.replace(parameters=params[:-1] + _OPTIONS)
    hints = typing.get_type_hints(MetricLoss.__init__)
    init.__annotations__.update({name: hints[name] for name in _OPTION_NAMES if name in hints})


class PairLoss(MetricLoss):
    """Base of the pair losses: distance, common options and the pairs of a batch (see the module docstring)."""

    works_without_labels = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            _spell_out_options(init)

    def __init__(self, distance: Distance | None = None, scale: int = 0, **options: Any) -> None:
        for name in options:
            if name not in _OPTION_NAMES:  # the message Python gives for the spelled-out signature
                raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {name!r}")
        super().__init__(scale, **options)
        self.distance = as_distance(distance) or self.default_distance()

    def default_distance(self) -> Distance:
        """The distance used when none is given (PML's default for the loss)."""
        return LpDistance()

    def pair_indices(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """``((a1, p, a2, n), num_refs)`` of the miner's pairs (``None`` = all pairs from the labels), validated."""
        indices_tuple, num_refs = check_miner_output(indices_tuple, embeddings, ref_emb)
        return convert_to_pairs(indices_tuple, labels, ref_labels), num_refs

    def pair_masks(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(distance matrix [B, R], positive mask, negative mask)``, or ``None`` when fewer than two positive and
        two negative pairs are listed (PML's generic pair rule: the loss is then zero)."""
        indices_tuple, num_refs = check_miner_output(indices_tuple, embeddings, ref_emb)
        if indices_tuple is None:  # all pairs: no host read for the counts (few_pairs)
            pos, neg = match_masks(labels, ref_labels)
            if few_pairs(pos, neg):
                return None
        else:
            pos, neg, num_pos, num_neg = pair_masks(indices_tuple, labels, ref_labels, num_refs)
            if num_pos <= 1 and num_neg <= 1:
                return None
        return distance_matrix(self.distance, embeddings, ref_emb), pos, neg


class AnchorPairLoss(PairLoss):
    """A pair loss with one value per anchor, computed from the distance matrix and the pair masks."""

    def anchor_losses(
        self, mat: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor | str:  # pragma: no cover - abstract
        """The per-anchor losses ``[B]``, or the reason why the loss is zero."""
        raise NotImplementedError

    def reduce(self, losses: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
        """The built-in reduction of the per-anchor losses (the mean; PML's default reducer on ``"element"``)."""
        return losses.mean()

    def _anchor_losses(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        pairs = self.pair_masks(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if pairs is None:
            return TOO_FEW_PAIRS, None
        return self.anchor_losses(*pairs), pairs[0]

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        losses, mat = self._anchor_losses(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if isinstance(losses, str):
            return self.zero_loss(embeddings, losses)
        return self.reduce(losses, mat)

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        losses, _ = self._anchor_losses(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if isinstance(losses, str):
            return {"loss": zero_entry()}
        rows = torch.arange(losses.shape[0], device=losses.device)
        return {"loss": {"losses": losses, "indices": rows, "reduction_type": "element"}}
