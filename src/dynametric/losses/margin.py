"""Margin loss (Wu, Manmatha, Smola, Krähenbühl, "Sampling Matters in Deep Embedding Learning", ICCV 2017).

``l(a,p,n) = [d_ap - beta + alpha]_+ + [beta - d_an + alpha]_+``, ``L = sum l / #(non-zero hinge terms)
+ nu * beta`` (the regulariser only when ``beta`` is learned; per-class ``beta[y_a]`` when ``num_classes`` is set, then
``nu * sum beta[y_a] / #(non-zero hinge terms)``). Keyword arguments and defaults as pytorch-metric-learning's
``MarginLoss``: ``margin=0.2`` (alpha), ``nu=0``, ``beta=1.2``, ``triplets_per_anchor="all"``, ``learn_beta=False``,
``num_classes=None``. Wu et al. pair it with :class:`~dynametric.miners.DistanceWeightedMiner` and learn ``beta``
(``learn_beta=True``, its own learning rate, see :meth:`loss_parameters`). With ``num_classes`` the labels must lie
in ``[0, num_classes)``. An integer ``triplets_per_anchor`` samples as
:class:`~dynametric.losses.TripletMarginLoss` does (torch's generator, one vectorised draw): under one seed not
PML's triplets, so not PML's value.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.distances import Distance, LpDistance, as_distance
from dynametric.losses.base import IndicesTuple, MetricLoss, check_count
from dynametric.losses.reducers import divisor_reduce, graph_zero, zero_entry
from dynametric.losses.triplet import check_triplets_per_anchor
from dynametric.tuples import check_miner_output, convert_to_triplets, distance_matrix, match_masks

NO_TRIPLETS = "no triplets (no positive pair or a single class)"


class MarginLoss(MetricLoss):
    """Margin loss with a (optionally learnable, optionally per-class) boundary ``beta``."""

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0.0,
        beta: float = 1.2,
        triplets_per_anchor: int | str = "all",
        learn_beta: bool = False,
        num_classes: int | None = None,
        distance: Distance | None = None,
        scale: int = 0,
        *,
        reducer: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, reducer=reducer, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight, collect_stats=collect_stats)
        if num_classes is not None:
            num_classes = check_count(num_classes, "num_classes")
        self.margin = margin
        self.nu = nu
        self.learn_beta = learn_beta
        self.num_classes = num_classes
        self.triplets_per_anchor = check_triplets_per_anchor(triplets_per_anchor)
        self.distance = as_distance(distance) or LpDistance()
        init = torch.full((int(num_classes) if num_classes else 1,), float(beta))
        if learn_beta:
            self.beta = nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    @property
    def works_without_labels(self) -> bool:  # type: ignore[override]  # per-class beta is indexed by the anchor's label
        return not self.num_classes

    def _check_label_range(self, labels: torch.Tensor) -> None:
        if self.num_classes:  # labels on an accelerator: first call only (MetricLoss.check_label_range)
            num_classes = self.num_classes
            self.check_label_range(labels, num_classes, lambda _, low, high: (
                f"MarginLoss(num_classes={num_classes}) needs labels in [0, {num_classes}), got values in "
                f"[{low}, {high}]"))

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self._check_label_range(labels)
        indices_tuple, _ = check_miner_output(indices_tuple, embeddings, ref_emb)
        if indices_tuple is None and self.triplets_per_anchor == "all":
            return self._all_triplets(embeddings, labels, ref_emb, ref_labels)
        terms = self._triplet_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if terms is None:
            return self.zero_loss(embeddings, "no triplets (no positive pair or a single class)")
        pos_loss, neg_loss, beta, divisor, mat, _ = terms
        loss = divisor_reduce(pos_loss + neg_loss, divisor, mat)
        if self.learn_beta:
            if self.beta.numel() == 1:
                loss = loss + (beta * self.nu).sum()
            else:
                loss = loss + divisor_reduce(beta * self.nu, divisor, mat)
        else:
            loss = loss + graph_zero(mat)
        return loss

    def _triplet_terms(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """Per-triplet ``(pos_loss, neg_loss, beta, divisor, distance matrix, (a, p, n))``; ``None`` without
        triplets. ``indices_tuple`` is already validated."""
        a, p, n = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor)
        if a.numel() == 0:
            return None
        beta = self.beta if self.beta.numel() == 1 else self.beta[labels[a]]
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        beta = beta.to(device=embeddings.device, dtype=mat.dtype)
        d_ap, d_an = mat[a, p], mat[a, n]
        pos_loss = F.relu(self.distance.margin(d_ap, beta) + self.margin)
        neg_loss = F.relu(self.distance.margin(beta, d_an) + self.margin)
        divisor = (pos_loss > 0).sum() + (neg_loss > 0).sum()
        return pos_loss, neg_loss, beta, divisor, mat, (a, p, n)

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        self._check_label_range(labels)
        indices_tuple, _ = check_miner_output(indices_tuple, embeddings, ref_emb)
        terms = self._triplet_terms(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if terms is None:
            return {"margin_loss": zero_entry(), "beta_reg_loss": zero_entry()}
        pos_loss, neg_loss, beta, divisor, _, triplets = terms
        out = {"margin_loss": {"losses": pos_loss + neg_loss, "indices": triplets, "reduction_type": "triplet",
                               "divisor": divisor}}
        if not self.learn_beta:
            out["beta_reg_loss"] = zero_entry()
        elif self.beta.numel() == 1:
            out["beta_reg_loss"] = {"losses": beta * self.nu, "indices": None, "reduction_type": "already_reduced"}
        else:
            out["beta_reg_loss"] = {"losses": beta * self.nu, "indices": triplets[0], "reduction_type": "element",
                                    "divisor": divisor}
        return out

    def _all_triplets(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """All triplets in ``O(B R)``: the positive term of ``(a, p)`` occurs once per negative of ``a`` and the
        negative term of ``(a, n)`` once per positive of ``a``, so both sums are weighted row sums."""
        pos, neg = match_masks(labels, ref_labels)
        num_pos = pos.sum(1)
        num_neg = neg.sum(1)
        n_triplets = num_pos * num_neg
        none = n_triplets.sum() == 0  # not read to the host: the zero loss is picked on the device at the end
        self._log_once.when(NO_TRIPLETS, lambda: bool(none),
                            lambda: f"{type(self).__name__}: {NO_TRIPLETS}; returning a zero loss")
        beta = self.beta if self.beta.numel() == 1 else self.beta[labels]
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        beta = beta.to(device=embeddings.device, dtype=mat.dtype)
        beta_col = beta.unsqueeze(1) if beta.numel() > 1 else beta
        pos_loss = F.relu(self.distance.margin(mat, beta_col) + self.margin)
        neg_loss = F.relu(self.distance.margin(beta_col, mat) + self.margin)
        pos_w = torch.where(pos, num_neg.unsqueeze(1), 0).to(mat.dtype)  # times each (a, p) appears
        neg_w = torch.where(neg, num_pos.unsqueeze(1), 0).to(mat.dtype)  # times each (a, n) appears
        # exact int64 count of non-zero hinge terms over all triplets
        divisor = (((pos_loss > 0) & pos).sum(1) * num_neg).sum() + (((neg_loss > 0) & neg).sum(1) * num_pos).sum()
        loss = divisor_reduce((pos_loss * pos_w).sum() + (neg_loss * neg_w).sum(), divisor, mat)
        if self.learn_beta:
            if self.beta.numel() == 1:
                loss = loss + (beta * self.nu).sum()
            else:
                loss = loss + divisor_reduce(beta * self.nu * n_triplets.to(mat.dtype), divisor, mat)
        zero = embeddings.sum() * 0.0  # MetricLoss.zero_loss's value, without its (host-side) message
        for param in self.parameters():
            zero = zero + param.sum() * 0.0
        return torch.where(none, zero, loss)
