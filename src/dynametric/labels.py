"""The label convention: ``LongTensor[N, S]``, one column per scale, finest first.

A 1-D tensor of ``N`` labels is the single-scale case ``S = 1``. Every loss, miner, sampler and metric in
dynametric accepts either form and calls :func:`as_label_matrix` to normalise it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynametric.errors import InputError

LabelsLike = torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]


def as_label_matrix(labels: LabelsLike, *, name: str = "labels", num_rows: int | None = None) -> torch.Tensor:
    """Return ``labels`` as a ``LongTensor[N, S]`` (finest scale first).

    Accepts 1-D (``S = 1``) or 2-D integer tensors/arrays/lists. Raises :class:`InputError` naming ``name``
    for floats with a fractional part or outside int64's range, other ranks, or a row count different from ``num_rows``.
    """
    if not isinstance(labels, torch.Tensor):
        try:
            arr = np.asarray(labels)
        except ValueError:  # numpy's "setting an array element with a sequence ... inhomogeneous shape"
            raise InputError(_ragged_message(labels), key=name) from None
        if arr.dtype.kind not in "biuf":  # text, bytes, objects: torch's own error would be a long type list
            example = f" values (e.g. {repr(arr.flat[0])[:40]})" if arr.size else ""
            raise InputError(f"labels must be integer class ids, got {arr.dtype}{example}; map them to ids first, "
                             "e.g. numpy.unique(labels, return_inverse=True)[1]", key=name)
        labels = torch.as_tensor(arr)
    if labels.dtype.is_floating_point:
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise InputError("labels must be integers, found non-integer values", key=name)
        wide = labels.double()  # every float dtype's integers are exact in float64; int64 holds [-2^63, 2^63)
        outside = (wide < -(2.0**63)) | (wide >= 2.0**63)
        if bool(outside.any()):  # .long() would turn them all into one class
            raise InputError("labels must be integers in the int64 range [-2^63, 2^63), found "
                             f"{wide[outside][0].item():g}", key=name)
    elif labels.dtype == torch.bool or labels.is_complex():
        raise InputError(f"labels must be integers, got dtype {labels.dtype}", key=name)
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    elif labels.dim() != 2:
        raise InputError(f"labels must be [N] or [N, S], got shape {tuple(labels.shape)}", key=name)
    if labels.shape[1] == 0:
        raise InputError("labels have zero scale columns", key=name)
    if num_rows is not None and labels.shape[0] != num_rows:
        raise InputError(f"expected {num_rows} label rows, got {labels.shape[0]}", key=name)
    return labels.long()


def _row_width(row: object) -> str:
    """How wide a label row is, for :func:`_ragged_message`: ``2 columns`` or ``a single number``."""
    try:
        return f"{len(row)} column{'s' if len(row) != 1 else ''}"  # type: ignore[arg-type]
    except TypeError:
        return "a single number"


def _ragged_message(labels: object) -> str:
    """The one-line error for labels numpy cannot make one array of: rows of different lengths, naming the first
    row that differs from row 0."""
    rows = list(labels) if isinstance(labels, Sequence | np.ndarray) else []
    widths = [_row_width(row) for row in rows]
    for i, width in enumerate(widths[1:], start=1):
        if width != widths[0]:
            return (f"label rows have different lengths: row 0 has {widths[0]}, row {i} has {width} "
                    "(labels must be [N] or [N, S], one column per scale in every row)")
    return "labels cannot be read as one [N] or [N, S] array of class ids (rows of different lengths or nesting)"


def select_scale(labels: LabelsLike, scale: int = 0, *, name: str = "labels") -> torch.Tensor:
    """Return the 1-D ``LongTensor[N]`` of one scale from ``[N]`` or ``[N, S]`` labels.

    ``scale`` is an integer (numpy integers too; not ``bool``) in ``[-S, S)``, counted as the losses' and miners'
    ``scale`` is: ``0`` the finest column, ``-1`` the last (coarsest) one. Another value is one
    :class:`InputError` line (keyed ``scale`` for a non-integer, ``name`` for one out of range)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)):
        raise InputError(f"scale must be an integer label column (0 = the finest), got {scale!r} "
                         f"({type(scale).__name__})", key="scale")
    scale = int(scale)
    mat = as_label_matrix(labels, name=name)
    if not -mat.shape[1] <= scale < mat.shape[1]:
        raise InputError(f"scale {scale} out of range for labels with {mat.shape[1]} scale(s)", key=name)
    return mat[:, scale]


def default_scale_names(num_scales: int) -> list[str]:
    """``fine`` / ``fine, coarse`` / ``fine, middle, coarse``; ``scale0..scale{S-1}`` otherwise."""
    if num_scales == 1:
        return ["fine"]
    if num_scales == 2:
        return ["fine", "coarse"]
    if num_scales == 3:
        return ["fine", "middle", "coarse"]
    return [f"scale{i}" for i in range(num_scales)]


def reversed_scales(labels: np.ndarray, names: Sequence[str]) -> str | None:
    """A note when label columns look coarsest first: some later column has more classes than an earlier one and
    each of its classes lies in a single class of the earlier column (the earlier one is the coarser). ``labels``:
    ``[N, S]`` integers, the columns as given; ``None`` when they look finest first (or cannot tell). The pair named
    is the first such one, by the earlier column, then the later one.

    Each column is factorised once (``S`` calls of ``np.unique``): its class count and, per row, the first row of
    the row's class. A later column ``p`` nests in an earlier ``c`` when every row has the ``c`` label of the first
    row of its ``p`` class; each earlier column tests all later ones with more classes at once (one vectorised
    comparison per earlier column, in blocks of bounded memory), so a CSV of thousands of columns is read at once
    (it made ``S^2 / 2`` pairs of ``np.unique`` calls)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] < 2 or labels.shape[0] == 0:
        return None
    rows, columns = labels.shape
    counts = np.empty(columns, dtype=np.int64)
    first = np.empty((rows, columns), dtype=np.intp)  # first[i, j]: the first row of row i's class in column j
    for j in range(columns):
        _, where, inverse = np.unique(labels[:, j], return_index=True, return_inverse=True)
        counts[j] = len(where)
        first[:, j] = where[inverse.reshape(-1)]
    block = max(1, (1 << 22) // rows)  # later columns compared at once: about 4 M cells
    for child in range(columns - 1):
        column = labels[:, child]
        later = child + 1 + np.flatnonzero(counts[child + 1:] > counts[child])
        for lo in range(0, len(later), block):
            parents = later[lo:lo + block]
            nested = (column[first[:, parents]] == column[:, None]).all(axis=0)
            if nested.any():
                parent = int(parents[int(np.argmax(nested))])
                return (f"the label columns look coarsest first: every {names[parent]} class lies in a single "
                        f"{names[child]} class and there are more {names[parent]} classes "
                        f"({int(counts[parent])} vs {int(counts[child])}); the first column is taken as the "
                        "finest scale, so put the columns finest first")
    return None


RESERVED_SCALE_NAMES: dict[str, str] = {"mean": "the mean over the scales",
                                         "by_category": "the per-category results",
                                         "protocol": "what the evaluation protocol excluded"}
"""Keys an evaluation result holds beside its scales, with what each holds: a scale so named would be overwritten by
them (in ``metrics.json``) and left out of the loggers."""


def reserved_name_error(name: str, names: Sequence[object]) -> str:
    """The message refusing the scale name ``name`` (a key of :data:`RESERVED_SCALE_NAMES`) among ``names``."""
    return (f"{name!r} cannot be a scale name (an evaluation reports {RESERVED_SCALE_NAMES[name]} under it), got "
            f"{[str(n) for n in names]}")


def check_scale_names(names: Sequence[object], *, key: str = "scale_names",
                      reserved: Sequence[str] = tuple(RESERVED_SCALE_NAMES)) -> tuple[str, ...]:
    """``names`` as a tuple of scale names, finest first: non-empty strings (not blank), each once, none of them
    :data:`RESERVED_SCALE_NAMES` (``mean``, ``by_category``, ``protocol``: keys of an evaluation result;
    ``reserved=()`` allows them); else one :class:`InputError` keyed ``key`` naming the first fault. A repeated name
    would merge two scales' results (and per-scale loss parts) into one entry. A single string is refused (it was
    read letter by letter: ``"fine"`` as four names)."""
    if isinstance(names, (str, bytes)):
        raise InputError(f"expected a list of names, got a string {names!r}", key=key)
    out = tuple(names)
    bad = [n for n in out if not isinstance(n, str) or not n]
    if bad:
        raise InputError(f"scale names must be non-empty strings, got {list(out)}", key=key)
    if any(not str(n).strip() for n in out):  # ' ': a column no table, report or --scale can show or name
        raise InputError(f"scale names must be non-empty strings (not blank), got {list(out)}", key=key)
    repeated = sorted({n for n in out if out.count(n) > 1}, key=out.index)
    if repeated:
        raise InputError(f"scale names must be distinct (one per label column), got {list(out)}: "
                         f"{', '.join(map(repr, repeated))} repeats", key=key)
    for name in reserved:
        if name in out:
            raise InputError(reserved_name_error(name, out), key=key)
    return tuple(str(n) for n in out)


def label_column_argument(cls: Any) -> str | None:
    """The keyword naming the label column a loss or miner class reads: ``label_scale`` where its signature has one
    (CosFace / ArcFace, whose ``scale`` is the logit scale; ``pml:`` wrappers), else ``scale``; ``None`` when it has
    neither, or for ``None`` or a class whose signature cannot be read."""
    if cls is None:
        return None
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return None
    return next((arg for arg in ("label_scale", "scale") if arg in params), None)
