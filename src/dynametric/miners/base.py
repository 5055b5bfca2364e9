"""The miner contract: ``miner(embeddings, labels, ref_emb=None, ref_labels=None) -> indices tuple``.

Miners sit below the losses: a loss may use a miner (:class:`~dynametric.losses.MultiScaleLoss` builds one per
scale, :class:`~dynametric.losses.PDDMLoss` mines quadruplets), a miner never imports a loss. What both share lives
below them: index tuples in :mod:`dynametric.tuples`, distances in :mod:`dynametric.distances`.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import torch
from torch import nn

from dynametric.errors import InputError
from dynametric.labels import as_label_matrix
from dynametric.tuples import IndicesTuple, compute_dtype, mark_mined
from dynametric.utils.stats import RecordsStats

logger = logging.getLogger("dynametric.losses")  # the logger name miners have always used (shared with the losses)


def _type_name(value: object) -> str:
    """``numpy.ndarray``, ``list``: the type of ``value`` as one would import it."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _check_tensor(value: object, name: str, shape: str) -> torch.Tensor:
    """``value`` as a floating-point 2-d tensor, else a one-line :class:`InputError` keyed ``name``: not a tensor
    (``expected a torch.Tensor, got numpy.ndarray``), not floating point (integer, bool or complex: ``expected a
    floating-point tensor, got torch.int64``), not 2-d (``shape``: what it must be)."""
    if not isinstance(value, torch.Tensor):
        raise InputError(f"expected a torch.Tensor, got {_type_name(value)}"
                         + (" (torch.from_numpy(array) makes one)" if type(value).__module__ == "numpy" else ""),
                         key=name)
    if not value.is_floating_point():
        raise InputError(f"expected a floating-point tensor, got {value.dtype}", key=name)
    if value.dim() != 2:
        raise InputError(f"{name} must be {shape}, got shape {tuple(value.shape)}", key=name)
    return value


def check_embeddings(embeddings: torch.Tensor, ref_emb: torch.Tensor | None = None) -> None:
    """The input check of every loss and miner call: ``embeddings`` a floating-point ``[B, D]`` tensor and
    ``ref_emb``, when given, an ``[R, D]`` one of the same width ``D`` (else a one-line :class:`InputError` naming the
    argument: not a tensor, not floating point (integer, bool, complex), the shape, both widths; rather than torch's
    ``cdist`` error deep inside)."""
    _check_tensor(embeddings, "embeddings", "[B, D]")
    if ref_emb is None:
        return
    _check_tensor(ref_emb, "ref_emb", "[R, D] like the embeddings' [B, D]")
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise InputError(f"ref_emb has width {ref_emb.shape[1]} but the embeddings have width {embeddings.shape[1]} "
                         "(both must be [*, D] with the same D)", key="ref_emb")


def select_label_column(mat: torch.Tensor, scale: object, name: str, hint: str = "") -> torch.Tensor:
    """Column ``scale`` of the ``[N, S]`` label matrix ``mat``: the rule of every loss and miner. ``scale`` must be an
    integer (``bool`` is not one) in ``[-S, S)``, else a one-line :class:`InputError` keyed ``name`` (``hint``, a
    loss's note on what ``.scale`` means there, is appended to the message)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral):
        raise InputError(f"scale {scale!r} is not a label column (an integer){hint}", key=name)
    column = int(scale)
    if not -mat.shape[1] <= column < mat.shape[1]:
        raise InputError(f"scale {scale} out of range for labels with {mat.shape[1]} scale(s){hint}", key=name)
    return mat[:, column]


def check_reference_pair(ref_emb: object, ref_labels: object) -> None:
    """``ref_emb`` and ``ref_labels`` are given together or not at all (losses and miners): else a one-line
    :class:`InputError` keyed ``ref_emb``."""
    if (ref_emb is None) != (ref_labels is None):
        raise InputError("ref_emb and ref_labels must be given together", key="ref_emb")


def _index_tuple(out: object) -> bool:
    return isinstance(out, tuple) and len(out) in (3, 4) and all(
        isinstance(t, torch.Tensor) and t.dtype == torch.long and t.dim() == 1 for t in out)


class Miner(RecordsStats, nn.Module):
    """Base class of miners: ``miner(embeddings, labels, ref_emb=None, ref_labels=None) -> indices tuple``.

    Mining is index selection and runs without gradient. ``labels`` may be ``[B]`` or ``[B, S]``; column
    ``self.scale`` is used (the constructor's ``scale=``, default ``0`` = the finest; a negative value counts from
    the coarsest end, ``-1``; :class:`~dynametric.miners.pml.PMLMiner` takes it as ``label_scale=``). Distances are
    compared in the input's dtype (float64 input is mined in float64, so near-ties are decided exactly as
    pytorch-metric-learning decides them), float16 and bfloat16 in float32: the embeddings are converted before the
    distance matrix is computed, with autocast off, so it is never rounded to half precision. Embeddings and
    ``ref_emb`` of different dtypes are mined in their promotion (:func:`dynametric.tuples.compute_dtype`: float64
    with float32 in float64, half with float32 in float32). ``collect_stats=True`` records ``num_triplets``,
    ``num_pos_pairs`` and ``num_neg_pairs`` (0 for the kind of tuple the miner does not return, as PML) and
    miner-specific values after each call.
    """

    #: whether this class's ``mine`` is one of dynametric's own, whose tuples are in range and disjoint by
    #: construction (they are marked so, :func:`dynametric.tuples.mark_mined`). Declared by the class that writes
    #: ``mine`` (``class M(Miner, vouched_mine=True)``); a subclass that writes its own ``mine`` is not vouched for
    #: unless it says so itself.
    vouched_mine: bool = False

    def __init_subclass__(cls, vouched_mine: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "mine" in cls.__dict__:
            cls.vouched_mine = vouched_mine

    def __init__(self, scale: int = 0, *, collect_stats: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.collect_stats = bool(collect_stats)

    def label_column(self, labels: torch.Tensor, num_rows: int, name: str, device: torch.device) -> torch.Tensor:
        """Column :attr:`scale` of ``labels`` (``[B]`` or ``[B, S]``, checked to have ``num_rows`` rows; errors name
        ``name``) on ``device``; a scale that is no integer or that the labels do not have is an :class:`InputError`
        on ``name``, as for losses (:func:`select_label_column`)."""
        mat = as_label_matrix(labels, name=name, num_rows=num_rows)
        return select_label_column(mat, self.scale, name).to(device)

    def label_columns(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None,
                      ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`label_column` of ``labels`` and, when a reference set ``ref_emb`` is given, of ``ref_labels``
        (then required, and refused without ``ref_emb``: :func:`check_reference_pair`): ``(labels, ref_labels or
        None)``, both on the embeddings' device. When the caller passed ``ref_labels is labels`` (the same object)
        the second is the first's very object too, so that the pytorch-metric-learning rule "the reference labels
        are the batch's: no pair ``(i, i)`` is a positive" (:func:`dynametric.tuples.match_masks`) survives the
        column selection."""
        same_labels = ref_labels is labels
        labels = self.label_column(labels, embeddings.shape[0], "labels", embeddings.device)
        check_reference_pair(ref_emb, ref_labels)
        if ref_emb is None or ref_labels is None:
            return labels, None
        ref_col = self.label_column(ref_labels, ref_emb.shape[0], "ref_labels", embeddings.device)  # checks its rows
        return labels, labels if same_labels else ref_col

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> IndicesTuple:
        """Mine a batch: pytorch-metric-learning's call ``miner(embeddings, labels, ref_emb, ref_labels)``.

        ``embeddings``: ``[B, D]`` floating point; ``labels``: ``[B]`` or ``[B, S]`` integer class ids (column
        :attr:`scale` is read); ``ref_emb`` / ``ref_labels`` (given together): a reference set to mine against
        instead of the batch. Returns the indices tuple the losses take: triplets ``(a, p, n)`` or pairs
        ``(a1, p, a2, n)`` (``LongTensor`` s on the embeddings' device; ``a``/``a1``/``a2`` index the batch,
        ``p``/``n`` the reference set). Bad input is one :class:`~dynametric.errors.InputError` line keyed by the
        argument."""
        check_embeddings(embeddings, ref_emb)
        same_emb = ref_emb is embeddings
        labels, ref_lab = self.label_columns(embeddings, labels, ref_emb, ref_labels)
        dtype = compute_dtype(embeddings, ref_emb)  # mixed dtypes: their promotion; half precision: float32
        emb = embeddings.detach().to(dtype)
        # Same objects on purpose, as pytorch-metric-learning hands them to ``mine``: without a reference set (or
        # with ref_emb is embeddings and ref_labels is labels, the same call) ``mine`` gets ``ref_emb is
        # embeddings`` and ``ref_labels is labels``; the second is what makes the pairs (i, i) no positives
        # (``match_masks``), the first what keeps an item from being mined with itself where PML's miner tests it.
        if ref_emb is None or ref_lab is None:
            ref, ref_lab = emb, labels
        else:
            ref = emb if same_emb else ref_emb.detach().to(dtype)
        # autocast off: under it a float32 matmul (the cosine matrix) would run, and be rounded, in half precision
        with torch.no_grad(), torch.autocast(device_type=emb.device.type, enabled=False):
            out = self.mine(emb, labels, ref, ref_lab)
        if type(self).vouched_mine and _index_tuple(out):
            # in range and disjoint by construction: the losses skip reading that back (dynametric.tuples.is_mined)
            mark_mined(out, emb.shape[0], ref.shape[0])
        if self.collect_stats and len(out) in (3, 4):  # all three counts, 0 for tuples it does not return (as PML)
            triplets = len(out) == 3
            self.record(num_triplets=int(out[0].numel()) if triplets else 0,
                        num_pos_pairs=0 if triplets else int(out[0].numel()),
                        num_neg_pairs=0 if triplets else int(out[2].numel()))
        return out

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:  # pragma: no cover - abstract
        raise NotImplementedError
