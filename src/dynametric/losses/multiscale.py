"""Multi-scale baseline loss (DyML, Sun et al., "Dynamic Metric Learning", CVPR 2021).

``L_MS = sum_s w_s L_s({f}_{chunk s}, y^(s))``: a single-scale loss per scale ``s`` with that scale's labels
(``labels[:, s]``, finest first), weights ``w_s`` (default 1). With ``chunks`` each scale's loss sees only its
chunk of the batch (``negatives: chunk``, the faithful DyML setting: the three-scale sampler puts ``K`` images per
scale in every item); without, every scale uses the whole batch (``negatives: batch``, reported to inflate recall).

Proxy and classification losses need one parameter set per scale: pass a factory (``lambda s: ProxyAnchorLoss(
num_classes=C[s], ...)``), a list of losses, or a registry name with ``base_kwargs`` (a ``num_classes`` list gives
one entry per scale).

:meth:`MultiScaleLoss.loss_parts` gives the weighted per-scale contributions ``w_s L_s`` of the last call by scale
name (they add up to the loss); a training run logs them as ``train/<term>/<scale>``. The unweighted ``L_s`` are in
:attr:`MultiScaleLoss.last_scale_losses`. Neither makes a host read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn

from dynametric.errors import ConfigError, InputError
from dynametric.labels import label_column_argument
from dynametric.losses.base import IndicesTuple, MetricLoss, Miner

ChunkSpec = tuple[int, int] | slice | torch.Tensor
ChunksLike = Sequence[ChunkSpec] | Callable[[int], Sequence[ChunkSpec]]


def three_scale_chunks(batch_size: int, images_per_class: int = 4, num_scales: int = 3) -> list[torch.Tensor]:
    """Per-scale row indices of a batch from DyML's three-scale sampler.

    Each item contributes ``num_scales * K`` consecutive rows: ``K`` for scale 0 (fine), then ``K`` for scale 1,
    ... . Returns ``[idx_scale0, idx_scale1, ...]``; ``batch_size`` must be a multiple of ``num_scales * K``, else
    an :class:`InputError` keyed ``batch_size`` (keyed ``embeddings`` when a :class:`MultiScaleLoss` call hits it:
    the batch is the embeddings' rows).
    """
    for key, value in (("images_per_class", images_per_class), ("num_scales", num_scales)):
        if value < 1:
            raise ConfigError(f"{key} must be positive, got {value!r}", key=key)
    group = num_scales * images_per_class
    if batch_size % group:
        raise InputError(
            f"batch of {batch_size} rows is not a whole number of three-scale items of {group} images "
            f"({num_scales} scales x {images_per_class} images)",
            key="batch_size",
        )
    rows = torch.arange(batch_size).view(-1, num_scales, images_per_class)
    return [rows[:, s, :].reshape(-1) for s in range(num_scales)]


class ThreeScaleChunks:
    """Callable chunk layout for :class:`MultiScaleLoss`: ``ThreeScaleChunks(K)(batch_size)`` =
    :func:`three_scale_chunks` (so the last, smaller batch of an epoch works too)."""

    def __init__(self, images_per_class: int = 4, num_scales: int = 3) -> None:
        for key, value in (("images_per_class", images_per_class), ("num_scales", num_scales)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}", key=key)
        self.images_per_class = images_per_class
        self.num_scales = num_scales

    def __call__(self, batch_size: int) -> list[torch.Tensor]:
        return three_scale_chunks(batch_size, self.images_per_class, self.num_scales)

    def __repr__(self) -> str:
        return f"ThreeScaleChunks(images_per_class={self.images_per_class}, num_scales={self.num_scales})"


def _chunk_index(spec: ChunkSpec, batch_size: int, scale: int, device: torch.device) -> torch.Tensor:
    if isinstance(spec, slice):
        idx = torch.arange(batch_size)[spec]
    elif isinstance(spec, torch.Tensor):
        idx = spec.long().flatten()
        if spec.dtype == torch.bool:
            if spec.numel() != batch_size:
                raise InputError(f"boolean chunk mask of scale {scale} has {spec.numel()} entries, batch has "
                                 f"{batch_size}", key="chunks")
            idx = torch.nonzero(spec).flatten()
    elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, int) for v in spec):
        start, stop = spec
        if not 0 <= start <= stop <= batch_size:
            raise InputError(f"chunk ({start}, {stop}) of scale {scale} is outside a batch of {batch_size}",
                             key="chunks")
        idx = torch.arange(start, stop)
    else:
        raise ConfigError(f"chunk of scale {scale} must be (start, stop), a slice or an index tensor, got {spec!r}",
                          key="chunks")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= batch_size):
        raise InputError(f"chunk of scale {scale} has rows outside a batch of {batch_size}", key="chunks")
    return idx.to(device)


def _loss_name(loss: MetricLoss) -> str:
    """``ContrastiveLoss``; a wrapped PML loss as ``PMLLoss(ContrastiveLoss)``."""
    inner = getattr(loss, "loss", None)
    name = type(loss).__name__
    return f"{name}({type(inner).__name__})" if isinstance(inner, nn.Module) else name


class MultiScaleLoss(MetricLoss):
    """Weighted sum of a single-scale loss applied at every scale (optionally on per-scale batch chunks).

    ``base_losses_or_factory``: one :class:`MetricLoss` (shared by all scales; only for losses without
    parameters), a list with one loss per scale, a callable ``factory(scale) -> MetricLoss``, or a registry name
    (built with ``base_kwargs``; list-valued ``num_classes`` is split per scale). ``num_scales`` defaults to the
    length of the list / ``weights``; ``chunks`` is ``None`` (whole batch), a per-scale list of ``(start, stop)`` /
    slices / index tensors, or a callable ``batch_size -> list`` such as :class:`ThreeScaleChunks`.

    ``miners`` (optional): one :class:`Miner` (or a registry name / ``{"name": ..., **kwargs}``) used at every
    scale, or a list with one (or ``None``) per scale; each mines its scale's chunk with that scale's labels.
    ``indices_tuple`` (optional, overrides the miners) is a list with one miner output (or ``None``) per scale,
    indexing that scale's chunk. The per-scale values ``L_s`` of the last call are kept in :attr:`last_scale_losses`
    (detached, unweighted); :meth:`loss_parts` names the weighted ones ``w_s L_s`` by scale (they add up to the loss).
    """

    uses_all_scales = True

    def __init__(
        self,
        base_losses_or_factory: MetricLoss | Sequence[MetricLoss] | Callable[[int], MetricLoss] | str,
        weights: Sequence[float] | None = None,
        chunks: ChunksLike | None = None,
        num_scales: int | None = None,
        base_kwargs: dict | None = None,
        miners: Miner | Sequence[Miner | None] | str | dict | None = None,
    ) -> None:
        super().__init__(scale=0)
        base = base_losses_or_factory
        if num_scales is None:
            if isinstance(base, Sequence) and not isinstance(base, str):
                num_scales = len(base)
            elif weights is not None:
                num_scales = len(weights)
            elif chunks is not None and not callable(chunks):
                num_scales = len(chunks)
            elif isinstance(chunks, ThreeScaleChunks):
                num_scales = chunks.num_scales
            elif isinstance(miners, Sequence) and not isinstance(miners, str):
                num_scales = len(miners)
            else:
                raise ConfigError("MultiScaleLoss needs num_scales (or a list of losses, weights, chunks or miners)",
                                  key="num_scales")
        if num_scales < 1:
            raise ConfigError(f"num_scales must be positive, got {num_scales}", key="num_scales")
        losses = self._build_losses(base, num_scales, base_kwargs or {})
        for s, loss in enumerate(losses):
            if not isinstance(loss, MetricLoss):
                raise ConfigError(f"loss of scale {s} is not a dynametric MetricLoss: {loss!r}",
                                  key="base_losses_or_factory")
            if loss.uses_all_scales:
                raise ConfigError(f"{type(loss).__name__} already uses every scale; it cannot be a per-scale loss",
                                  key="base_losses_or_factory")
            if loss.scale not in (0, -1):
                raise ConfigError(f"the loss of scale {s}, {_loss_name(loss)}, reads label column {loss.scale}; "
                                  "MultiScaleLoss gives each scale's loss that scale's column alone, so build it "
                                  "without a column of its own (scale / label_scale 0, the default)",
                                  key="base_losses_or_factory")
        for s, loss in enumerate(losses):
            if any(loss is other for other in losses[:s]) and any(True for _ in loss.parameters()):
                raise ConfigError(f"{type(loss).__name__} has parameters; give one loss per scale (a factory or "
                                  "a list), not one shared instance", key="base_losses_or_factory")
        self.losses = nn.ModuleList(losses)  # a shared instance appears once per scale; parameters() dedups
        self.num_scales = num_scales
        if weights is None:
            weights = [1.0] * num_scales
        if len(weights) != num_scales:
            raise ConfigError(f"{len(weights)} weights for {num_scales} scales", key="weights")
        self.weights = [float(w) for w in weights]
        if not all(math.isfinite(w) and w >= 0 for w in self.weights) or not any(w > 0 for w in self.weights):
            raise ConfigError(f"expected non-negative weights, not all zero, got {self.weights}", key="weights")
        if chunks is not None and not callable(chunks) and len(chunks) != num_scales:
            raise ConfigError(f"{len(chunks)} chunks for {num_scales} scales", key="chunks")
        self.chunks = chunks
        if isinstance(miners, str | dict):  # registry name or {"name": ..., **kwargs} (configs)
            from dynametric.miners import build_miner

            spec = {"name": miners} if isinstance(miners, str) else dict(miners)
            if "name" not in spec:
                raise ConfigError("a miner mapping needs a 'name'", key="miners")
            try:
                miners = build_miner(spec.pop("name"), **spec)
            except ConfigError as exc:  # keyed as build_miner's call: name, <arg>, kwargs; here under miners
                where = ("miners" if isinstance(miners, str) else "miners.name") if exc.key == "name" else \
                    f"miners.{exc.key}" if exc.key else "miners"
                raise ConfigError(exc.message, key=where) from exc
        if miners is None or isinstance(miners, Miner):
            miner_list = [miners] * num_scales
        else:
            miner_list = list(miners)
            if len(miner_list) != num_scales:
                raise ConfigError(f"{len(miner_list)} miners for {num_scales} scales", key="miners")
        for s, miner in enumerate(miner_list):
            if miner is not None and (not isinstance(miner, Miner) or miner.scale not in (0, -1)):
                raise ConfigError(f"miner of scale {s} must be a dynametric Miner with scale=0 (it receives one label "
                                  f"column), got {miner!r}", key="miners")
        self.miners = nn.ModuleList([m for m in miner_list if m is not None])
        self._miner_at = miner_list
        self.last_scale_losses: list[torch.Tensor] = []
        self._weighted_parts: list[torch.Tensor] | None = None  # w_s L_s of the last call, detached

    @staticmethod
    def _build_losses(base, num_scales: int, base_kwargs: dict) -> list[MetricLoss]:
        if isinstance(base, MetricLoss):
            return [base] * num_scales
        if isinstance(base, str):
            from dynametric.losses import LOSSES, build_loss

            col_arg = label_column_argument(LOSSES[base] if base in LOSSES else None)  # pml: names too (__missing__)
            if col_arg is not None and col_arg in base_kwargs:
                raise ConfigError(f"base_kwargs[{col_arg!r}]={base_kwargs[col_arg]!r}: MultiScaleLoss gives each "
                                  f"scale's {base} that scale's label column; remove {col_arg!r}",
                                  key=f"base_kwargs.{col_arg}")
            out = []
            for s in range(num_scales):
                kw = dict(base_kwargs)
                if isinstance(kw.get("num_classes"), list | tuple):
                    if len(kw["num_classes"]) != num_scales:
                        raise ConfigError(f"num_classes lists {len(kw['num_classes'])} values for {num_scales} "
                                          "scales", key="base_kwargs.num_classes")
                    kw["num_classes"] = kw["num_classes"][s]
                try:
                    out.append(build_loss(base, **kw))
                except ConfigError as exc:  # keyed as build_loss's call: name, <arg>, kwargs; here the arguments'
                    where = "base_losses_or_factory" if exc.key == "name" else \
                        "base_kwargs" if exc.key in (None, "kwargs") else f"base_kwargs.{exc.key}"
                    raise ConfigError(exc.message, key=where) from exc
            return out
        if isinstance(base, Sequence):
            if len(base) != num_scales:
                raise ConfigError(f"{len(base)} losses for {num_scales} scales", key="base_losses_or_factory")
            return list(base)
        if callable(base):
            return [base(s) for s in range(num_scales)]
        raise ConfigError(f"cannot build per-scale losses from {base!r}", key="base_losses_or_factory")

    def loss_at(self, scale: int) -> MetricLoss:
        """The loss applied at ``scale``."""
        return cast(MetricLoss, self.losses[scale])

    @property
    def scale_miners(self) -> list[Miner | None]:
        """The miner of each scale (``None``: that scale's loss uses all its tuples); one object may serve several
        scales (``miners=miner``), and then its recorded statistics (``collect_stats``) are those of its last
        call, the last scale it mines."""
        return list(self._miner_at)

    def resolve_chunks(self, batch_size: int, device: torch.device) -> list[torch.Tensor | None]:
        """Row indices used at each scale (``None`` = the whole batch)."""
        if self.chunks is None:
            return [None] * self.num_scales
        if callable(self.chunks):
            try:
                specs = self.chunks(batch_size)
            except InputError as exc:  # the layout's batch_size is the embeddings' row count here
                if exc.key != "batch_size" or isinstance(exc, ConfigError):
                    raise
                raise InputError(exc.message, key="embeddings") from None
        else:
            specs = self.chunks
        if len(specs) != self.num_scales:
            raise ConfigError(f"chunk layout gives {len(specs)} chunks for {self.num_scales} scales", key="chunks")
        return [_chunk_index(spec, batch_size, s, device) for s, spec in enumerate(specs)]

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | Sequence[IndicesTuple | None] | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self.last_scale_losses = []
        self._weighted_parts = None  # a call that stops on bad input leaves no values of an earlier call
        if labels.shape[1] < self.num_scales:
            raise InputError(f"MultiScaleLoss over {self.num_scales} scales got labels with {labels.shape[1]} "
                             "column(s)", key="labels")
        if ref_labels is not None and ref_labels.shape[1] < self.num_scales:
            raise InputError(f"ref_labels have {ref_labels.shape[1]} column(s), need {self.num_scales}",
                             key="ref_labels")
        if indices_tuple is not None:
            if len(indices_tuple) != self.num_scales or isinstance(indices_tuple[0], torch.Tensor):
                raise InputError(f"MultiScaleLoss takes one indices tuple (or None) per scale: a list of "
                                 f"{self.num_scales}; to mine each scale on its own chunk and labels pass "
                                 "MultiScaleLoss(..., miners=miner) instead", key="indices_tuple")
        chunks = self.resolve_chunks(embeddings.shape[0], embeddings.device)
        # a zero on the graph (backward works whatever the parts are) that reads no row: a row in no chunk (NaN
        # included) does not enter the value, which stays the sum of the parts
        total = embeddings[:0].sum() * 0.0
        weighted_parts = []
        for s in range(self.num_scales):  # loop over scales (at most a handful), not over samples
            rows = chunks[s]
            emb = embeddings if rows is None else embeddings[rows]
            lab = labels[:, s] if rows is None else labels[rows, s]
            mined = None if indices_tuple is None else indices_tuple[s]
            ref = ref_emb
            if ref_labels is None:
                ref_lab = None
            elif ref_labels is labels:
                # the reference set is the batch (pytorch-metric-learning's rule, prepare_reference): it is chunked
                # as the batch is, and the scale's loss and miner get the very object `lab`, so they drop the pairs
                # (i, i); with `ref_emb is embeddings` as well the call is the plain in-batch one on the chunk
                ref_lab = lab
                if ref_emb is embeddings:
                    ref = emb
                elif rows is not None and ref_emb is not None:
                    ref = ref_emb[rows]
            else:  # a chunk of rows against the whole reference set: no row of it is the chunk's "own" row
                ref_lab = ref_labels[:, s]
            miner = self._miner_at[s]
            if mined is None and miner is not None and emb.shape[0] > 0:
                mined = miner(emb, lab, ref, ref_lab)
            if emb.shape[0] == 0:  # a zero of the chunk's (no) rows: a non-finite row elsewhere does not make it NaN
                value = self.zero_loss(emb, f"empty chunk at scale {s}")
            else:
                value = self.loss_at(s)(emb, lab, mined, ref, ref_lab)
            self.last_scale_losses.append(value.detach())
            weighted = self.weights[s] * value
            weighted_parts.append(weighted.detach())
            total = total + weighted
        self._weighted_parts = weighted_parts
        return total

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """The weighted per-scale contributions ``w_s L_s`` of the last call, ``{scale name: detached 0-dim
        tensor}`` in scale order, finest first. They add up to the loss (up to float rounding); a scale of weight 0
        (with a finite ``L_s``) or with an empty chunk gives 0. The unweighted ``L_s`` are
        :attr:`last_scale_losses`. Scale ``s`` reads label column ``s``, so the names are the first ``num_scales``
        of :attr:`scale_names` (the data's, set by the engine's builders; a loss over fewer scales than the data has
        covers the finest ones); without :attr:`scale_names`, or with fewer names than scales,
        :func:`dynametric.labels.default_scale_names` ``(num_scales)``. Empty before the first call and after a call
        stopped by bad input. No host read: the values stay tensors on the loss's device."""
        if self._weighted_parts is None:
            return {}
        names = list(self.scale_names or ())[: self.num_scales]
        if len(names) != self.num_scales:
            from dynametric.labels import default_scale_names

            names = default_scale_names(self.num_scales)
        return dict(zip(names, self._weighted_parts, strict=True))
