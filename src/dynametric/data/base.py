"""The common image-dataset base: ``HierarchicalImageDataset`` plus the load report every reader returns.

A reader turns files on disk into :class:`SplitRecords` (image paths, raw per-scale class ids, the file and line
each record came from, and a :class:`LoadReport`). It never stops at the first bad line: every problem is
collected. :meth:`HierarchicalImageDataset.from_records` then applies the policy: ``mode="strict"`` (default)
raises one :class:`~dynametric.errors.InputError` listing every problem; ``mode="lenient"`` keeps the good records
and leaves the skipped ones in the report. Hierarchy violations are errors in both modes.

Labels follow the library convention ``LongTensor[N, S]``, finest scale first. Raw ids (ints or strings, as in
the files) are kept: ``class_ids[s][c]`` is the raw id of contiguous class ``c`` at scale ``s`` (sorted raw ids →
``0..C-1``), ``id_maps[s]`` is its inverse.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                                              ".tiff"})  # .jpe, .jfif: the other JPEG names Pillow registers
MODES: tuple[str, str] = ("strict", "lenient")
_MAX_LISTED = 20  # problems spelled out in one exception message (all are in the report)


@dataclass(frozen=True)
class Problem:
    """One problem found while reading a dataset: where (file, 1-based line) and what.

    ``kind`` is one of ``malformed_row``, ``missing_file``, ``missing_image``, ``missing_images`` (the summary when
    none, or almost none, of an index file's images is under the folder read), ``unreadable_image``,
    ``unreadable_folder``, ``non_utf8_name``, ``outside_root``, ``outside_split``, ``hierarchy``, ``duplicate``,
    ``count_mismatch``, ``empty_split`` (``data inspect`` adds ``damaged_image``, ``shared_file``,
    ``class_overlap``).
    ``split_unknown`` marks a record of a file shared by several splits whose split cannot be read (the split cell is
    unknown, the fields are shifted, a quote is left open): it may belong to any split, so every split lists it.
    """

    message: str
    file: str | None = None
    line: int | None = None
    kind: str = "malformed_row"
    split_unknown: bool = False

    def __str__(self) -> str:
        if self.file is None:
            return self.message if self.line is None else f"line {self.line}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}" if self.line is not None else f"{self.file}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message, "kind": self.kind}


@dataclass
class LoadReport:
    """What a reader met: records kept, header mode per file, blank lines, problems, warnings, notes.

    ``warnings`` are things the user should see although the data can be read (files a ``folder`` tree holds but
    does not read): :meth:`HierarchicalImageDataset.from_records` logs them, ``data inspect`` prints them."""

    split: str
    files: list[str] = field(default_factory=list)
    records: int = 0
    header: dict[str, str] = field(default_factory=dict)  # file -> "glued" | "own_line" | "none"
    blank_lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, message: str, file: str | Path | None = None, line: int | None = None,
            kind: str = "malformed_row", *, split_unknown: bool = False) -> None:
        self.problems.append(Problem(message, None if file is None else str(file), line, kind, split_unknown))

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "files": list(self.files), "records": self.records, "header": dict(self.header),
                "blank_lines": self.blank_lines, "problems": [p.as_dict() for p in self.problems],
                "warnings": list(self.warnings), "notes": list(self.notes)}

    def summary(self) -> str:
        parts = [f"split {self.split!r}: {self.records} records kept"]
        if self.header:
            parts.append("header " + ", ".join(f"{Path(f).name}={m}" for f, m in self.header.items()))
        parts.append(f"{self.blank_lines} blank line(s) ignored")
        parts.append(f"{len(self.problems)} problem(s)")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning(s)")
        return "; ".join(parts)


@dataclass
class SplitRecords:
    """A reader's output for one split, before labels are made contiguous."""

    split: str
    paths: list[str]
    raw_labels: Sequence[tuple[Hashable, ...]]  # one tuple per record, finest scale first
    scale_names: tuple[str, ...]
    locations: Sequence[tuple[str, int | None]]  # (file, 1-based line) of each record, for error messages
    report: LoadReport
    class_ids: list[list[Hashable]] | None = None  # shared id space (e.g. query + gallery); None = from records
    class_names: list[dict[Hashable, str]] | None = None  # optional human-readable names per scale
    #: every scale nests in each coarser one (DyML's fine ⊂ middle ⊂ coarse): a class of an intermediate scale with
    #: several parents is a hierarchy violation too, not only a note (:func:`check_hierarchy`'s ``nested``)
    nested: bool = False


def raise_problems(problems: Sequence[Problem], what: str) -> None:
    """Raise one :class:`InputError` spelling out up to 20 problems (the first one gives file and line)."""
    if not problems:
        return
    first = problems[0]
    listed = "\n  ".join(str(p) for p in problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise InputError(f"{len(problems)} problem(s) in {what}: {first.message}\n  {listed}{more}",
                     file=first.file, line=first.line)


def _sort_key(value: Hashable) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | np.integer) else (1, str(value))


def contiguous_ids(column: Sequence[Hashable], class_ids: Sequence[Hashable] | None = None
                   ) -> tuple[np.ndarray, list[Hashable]]:
    """Map raw ids to ``0..C-1`` by sorted raw id; returns ``(labels int64[N], class_ids)``.

    With ``class_ids`` given (a shared id space), every value of ``column`` must be in it.
    """
    if class_ids is None:
        class_ids = sorted(set(column), key=_sort_key)
    index = {c: i for i, c in enumerate(class_ids)}
    missing = [v for v in set(column) if v not in index]
    if missing:
        raise InputError(f"raw id(s) {sorted(map(str, missing))[:5]} are not in the shared id space", key="class_ids")
    return np.fromiter((index[v] for v in column), dtype=np.int64, count=len(column)), list(class_ids)


def _check_label_rows(records: SplitRecords, name: str) -> None:
    """One :class:`InputError` at the record's location (``file:line``) when a format's reader gave a record with
    another number of labels than the split has scales (``scale_names``), or a label row count other than the path
    count: a reader registered by user code, whose ragged rows numpy refused with ``setting an array element with a
    sequence``, and whose longer rows lost their last labels. One ``len`` per record."""
    rows, s_count, split = records.raw_labels, len(records.scale_names), records.split
    if len(rows) != len(records.paths):
        raise InputError(f"{name} split {split!r}: the format's reader gave {len(records.paths)} image paths but "
                         f"{len(rows)} label rows; expected one row per image", file=records.report.files[0]
                         if records.report.files else None)
    try:
        sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        bad = np.flatnonzero(sizes != s_count)
        first = int(bad[0]) if bad.size else None
    except TypeError:  # a row that is not a sequence (a bare class id)
        first = next(i for i, row in enumerate(rows) if not hasattr(row, "__len__"))
    if first is None:
        return
    row = rows[first]
    got = (f"{len(row)} label{'' if len(row) == 1 else 's'} {list(row)!r}" if hasattr(row, "__len__")
           else f"a bare {type(row).__name__} {row!r}")
    file, line = records.locations[first] if first < len(records.locations) else (None, None)
    where = "" if file is not None else f" (record {first + 1})"
    raise InputError(f"{name} split {split!r}{where}: the record has {got}; expected {s_count}, one per scale "
                     f"({', '.join(records.scale_names)})", file=file, line=line)


def _contiguous_matrix(raw_labels: Sequence[tuple[Hashable, ...]], s_count: int,
                       shared: Sequence[Sequence[Hashable]] | None) -> tuple[np.ndarray, list[list[Hashable]]]:
    """``int64[N, S]`` contiguous labels and the raw ids per scale (vectorised when every id is an integer)."""
    raw = np.array(raw_labels) if raw_labels else np.zeros((0, s_count), dtype=np.int64)
    if raw.ndim == 2 and raw.shape[1] == s_count and raw.dtype.kind in "iu":
        mats, all_ids = [], []
        for s in range(s_count):
            if shared is None:
                ids, col = np.unique(raw[:, s], return_inverse=True)
            else:
                ids = np.asarray(shared[s])
                if ids.dtype.kind not in "iu":
                    break  # mixed id types: use the general path
                col = np.searchsorted(ids, raw[:, s]).clip(0, max(len(ids) - 1, 0))
                if len(ids) == 0 or not np.array_equal(ids[col], raw[:, s]):
                    break
            mats.append(col.astype(np.int64).reshape(-1))
            all_ids.append(ids.tolist())
        else:
            return np.stack(mats, 1), all_ids
    columns = [[r[s] for r in raw_labels] for s in range(s_count)]
    mats, all_ids = [], []
    for s in range(s_count):
        col, id_list = contiguous_ids(columns[s], None if shared is None else shared[s])
        mats.append(col)
        all_ids.append(id_list)
    return np.stack(mats, 1), all_ids


REVERSED_SCALES = "the scales look reversed"
"""How the one problem :func:`check_hierarchy` returns for scales given coarsest first begins."""
_SHOWN_PARENTS = 3  # parents named per violating class (the rest counted)
_SHOWN_CLASSES = 3  # violating classes named in the reversed-scales problem (the rest counted)


def check_hierarchy(labels: np.ndarray, scale_names: Sequence[str], class_ids: Sequence[Sequence[Hashable]],
                    locations: Sequence[tuple[str, int | None]] | None = None,
                    max_lines: int = 3, nested: bool = False) -> tuple[list[Problem], list[str]]:
    """Check that every finest class has exactly one parent at each coarser scale.

    ``labels`` is ``int64[N, S]`` (contiguous, finest first). Returns ``(problems, notes)``: a problem per
    violating finest class naming its first 3 parents (and how many more) and up to ``max_lines`` records
    (file:line) of each; the notes say, for every intermediate scale, whether each of its classes has a single
    parent above it. With ``nested`` (data whose scales are defined to nest, :attr:`SplitRecords.nested`) an
    intermediate class with several parents is a problem as well, named as a finest one is.

    Scales given coarsest first (a CSV's label columns reversed: every class of a coarser scale lies in a single
    finest class, each of the 2 or more finest classes has several parents there, and the coarser scale has more
    classes) are one problem, beginning with :data:`REVERSED_SCALES`:
    what to do first, then the first few violations and how many more.
    """
    problems: list[Problem] = []
    notes: list[str] = []
    n, s_count = labels.shape
    counts_per_scale = [int(np.unique(labels[:, s]).size) for s in range(s_count)]
    violations: list[tuple[int, int, int, list[tuple[int, np.ndarray]]]] = []  # (child, parent, class, parents)
    reversed_pair: tuple[int, int] | None = None
    for child in range(s_count - 1):
        for parent in range(child + 1, s_count):
            width = int(labels[:, parent].max()) + 1 if n else 1
            pairs = np.unique(labels[:, child].astype(np.int64) * width + labels[:, parent])  # distinct (kid, parent)
            kids, counts = np.unique(pairs // width, return_counts=True)
            bad = kids[counts > 1]
            if child > 0:
                verdict = "yes" if bad.size == 0 else f"no ({bad.size} {scale_names[child]} class(es) have several)"
                notes.append(f"each {scale_names[child]} class has a single {scale_names[parent]} parent: {verdict}")
                if not nested:
                    continue
            if bad.size == 0:
                continue
            if child == 0 and 1 < bad.size == counts_per_scale[child] < counts_per_scale[parent] and \
                    np.unique(pairs % width, return_counts=True)[1].max() == 1:
                reversed_pair = (child, parent)  # the last such pair: the scale given last, the finest in truth
            order = np.argsort(labels[:, child], kind="stable")  # rows grouped by class, file order kept
            starts = np.searchsorted(labels[order, child], bad, side="left")
            ends = np.searchsorted(labels[order, child], bad, side="right")
            for c, lo, hi in zip(bad.tolist(), starts.tolist(), ends.tolist()):
                rows_c = order[lo:hi]
                parents = [(p, rows_c[labels[rows_c, parent] == p]) for p in np.unique(labels[rows_c, parent]).tolist()]
                violations.append((child, parent, c, parents))

    def where(rows: np.ndarray, count: int) -> str:
        if locations is None:
            return "rows " + ", ".join(str(r) for r in rows[:count].tolist())
        return ", ".join(_loc(locations[r]) for r in rows[:count].tolist())

    def first_location(parents: list[tuple[int, np.ndarray]]) -> tuple[str | None, int | None]:
        if locations is None:
            return None, None
        return locations[int(parents[0][1][0])]

    if reversed_pair is not None:  # one problem: what to do first, then the first few violations
        child, parent = reversed_pair
        finest_first = sorted(range(s_count), key=lambda s: (-counts_per_scale[s], -s))
        file, line = first_location(violations[0][3])

        def at(rows: np.ndarray) -> str:  # the problem's own file is named once, before the message
            if locations is not None and locations[int(rows[0])][0] == file and line is not None:
                return f"line {locations[int(rows[0])][1]}"
            return where(rows, 1)

        shown = []
        for kid, par, c, parents in violations[:_SHOWN_CLASSES]:
            named = ", ".join(f"{class_ids[par][p]!r} ({at(rows)})" for p, rows in parents[:_SHOWN_PARENTS])
            more = ", ..." if len(parents) > _SHOWN_PARENTS else ""
            shown.append(f"{scale_names[kid]} class {class_ids[kid][c]!r} has {len(parents)} {scale_names[par]} "
                         f"parents: {named}{more}")
        rest = len(violations) - len(shown)
        msg = (f"{REVERSED_SCALES}: label columns go finest first, here e.g. "
               f"path,split,{','.join(scale_names[s] for s in finest_first)} (every {scale_names[parent]} class "
               f"lies in a single {scale_names[child]} class and there are more {scale_names[parent]} classes, "
               f"{counts_per_scale[parent]} against {counts_per_scale[child]}); as given, {len(violations)} "
               f"hierarchy violation(s): " + "; ".join(shown) + (f"; and {rest} more" if rest else ""))
        return [Problem(msg, file, line, "hierarchy")], notes
    for child, parent, c, parents in violations:
        parts = [f"{scale_names[parent]} {class_ids[parent][p]!r} (e.g. {where(rows, max_lines)})"
                 for p, rows in parents[:_SHOWN_PARENTS]]
        if len(parents) > _SHOWN_PARENTS:
            parts.append(f"and {len(parents) - _SHOWN_PARENTS} more")
        msg = (f"hierarchy violation: {scale_names[child]} class {class_ids[child][c]!r} has "
               f"{len(parents)} {scale_names[parent]} parents: " + "; ".join(parts))
        file, line = first_location(parents)
        problems.append(Problem(msg, file, line, "hierarchy"))
    return problems, notes


def _loc(loc: tuple[str, int | None]) -> str:
    return f"{loc[0]}:{loc[1]}" if loc[1] is not None else loc[0]


BACKGROUND = 255  # transparent pixels are composited onto white (R = G = B = 255)
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_TRANSPARENT = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _round_div(values: np.ndarray, divisor: int) -> np.ndarray:
    """``floor(values / divisor + 1/2)`` for non-negative integers, as ``uint8`` (the callers clip to 0..255)."""
    return ((values * 2 + divisor) // (2 * divisor)).astype(np.uint8)


def _grey_to_uint8(img: Image.Image) -> np.ndarray:
    """A one-channel 16-bit, 32-bit integer or float image as ``uint8`` by its range convention (not by its
    content): 16-bit (``I;16*``, and ``I``, which Pillow uses for 16-bit PGM/PPM) ``round(v / 257)``; ``I`` from a
    TIFF of 32 bits per sample ``round(v / 16843009)`` (0..2**32-1 onto 0..255, negatives 0); float (``F``) taken
    as 0..1: ``round(255 v)`` clipped to 0..255, NaN 0."""
    values = np.asarray(img)
    if img.mode == "F":
        scaled = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0)
        return np.floor(scaled * 255.0 + 0.5).astype(np.uint8)
    wide = values.astype(np.int64)
    tiff_bits = getattr(img, "tag_v2", {}).get(258) if img.format == "TIFF" else None
    bits = int(np.max(tiff_bits)) if tiff_bits is not None else 16
    if img.mode == "I" and bits > 16:
        return _round_div(wide.clip(0, 2**32 - 1), 16843009)
    return _round_div(wide.clip(0, 65535), 257)


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, as it is meant to be seen (the one conversion of every image dynametric reads).

    * **EXIF orientation** is applied (``ImageOps.exif_transpose``): a phone photo stored 40x20 with orientation 6
      comes out 20x40, upright.
    * **16-bit, 32-bit and float greyscale** are scaled by their range convention (:func:`_grey_to_uint8`:
      16-bit ``v / 257``, float 0..1 clipped), never clipped at 255 (Pillow's ``convert`` turns a 16-bit
      gradient 0..30000 into black and white). 16-bit colour PNGs Pillow reduces to 8 bits itself (high byte).
    * **Transparency** (an alpha channel, a palette or colour key with transparency, a 16-bit greyscale PNG's colour
      key too) is composited onto white
      (:data:`BACKGROUND`): ``out = round((c * a + 255 * (255 - a)) / 255)``; a fully transparent pixel is white
      whatever colour it stores.
    * Every other mode (``L``, ``P``, ``1``, ``CMYK``, ``YCbCr``, ...) goes through Pillow's ``convert("RGB")``.

    An 8-bit RGB image without transparency or orientation (the common JPEG) is returned as it is: no copy.
    """
    img.load()
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    transparent = img.mode in _TRANSPARENT or "transparency" in img.info
    if img.mode == "RGB" and orientation == 1 and not transparent:
        return img
    if orientation in range(2, 9):
        img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        grey = _grey_to_uint8(img)
        key = img.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):  # a greyscale PNG's colour key (tRNS), in stored units
            grey = np.where(np.asarray(img) == key, np.uint8(BACKGROUND), grey)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if transparent:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[:, :, 3:]
        out = (rgba[:, :, :3] * alpha + BACKGROUND * (255 - alpha) + 127) // 255
        return Image.fromarray(out.astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


class BoxOutsideImage(Exception):
    """:func:`load_rgb`'s crop ``box`` reaches past the stored image (``size``: its stored width and height;
    ``oriented``: whether EXIF orientation rotates or flips it for display)."""

    def __init__(self, box: tuple[int, int, int, int], size: tuple[int, int], oriented: bool) -> None:
        super().__init__(f"crop box {tuple(box)} past the edge of the stored {size[0]}x{size[1]} image")
        self.box, self.size, self.oriented = box, size, oriented


def _oriented_box(box: tuple[int, int, int, int], size: tuple[int, int],
                  orientation: int) -> tuple[int, int, int, int]:
    """Where the stored-pixel box ``(x_1, y_1, x_2, y_2)`` of a ``size`` image lands once EXIF ``orientation`` is
    applied (``ImageOps.exif_transpose``'s transposition for 2..8)."""
    (l, t, r, b), (w, h) = box, size
    return {2: (w - r, t, w - l, b), 3: (w - r, h - b, w - l, h - t), 4: (l, h - b, r, h - t), 5: (t, l, b, r),
            6: (h - b, l, h - t, r), 7: (h - b, w - r, h - t, w - l), 8: (t, w - r, b, w - l)}.get(orientation, box)


def yes_no(value: Any, name: str) -> bool:
    """``value`` of the on/off option ``name`` (``swap_rb``, ``skip_corrupt``, ``check_files`` ...) as a bool: only
    ``True`` / ``False`` (numpy's bools too) are taken; anything else (``'maybe'``, ``'false'`` in quotes, ``1``)
    raises a ConfigError keyed ``name``, where reading it by truth would have switched the option on."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    shown = repr(value) if value is None or isinstance(value, (str, int, float)) else type(value).__name__
    raise ConfigError(f"expected true or false, got {shown}", key=name)


def load_rgb(path: str | Path | IO[bytes], swap_rb: bool = False,
             box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """Open and fully decode an image as RGB with :func:`to_rgb` (EXIF orientation applied, 16-bit and float
    images scaled, transparency on white); ``swap_rb`` exchanges the R and B channels after decoding. ``path`` may
    be a file open for reading in binary (``embed`` decodes the file it opened and checked).

    ``box`` ``(x_1, y_1, x_2, y_2)``: only that region, in the coordinates of the stored pixel array (before EXIF
    orientation, as open-metric-learning crops: it does not rotate), shown upright: the crop of the converted image
    where the box lands after orientation, i.e. the same pixels. A box past the stored image's edge raises
    :class:`BoxOutsideImage` (PIL would pad the crop with black)."""
    with Image.open(path) as img:  # leaving the block closes the file, not the decoded image
        rgb = to_rgb(img)
        if box is not None:
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            if box[2] > img.width or box[3] > img.height:
                raise BoxOutsideImage(box, img.size, orientation in range(2, 9))
            rgb = rgb.crop(_oriented_box(box, img.size, orientation))
    if swap_rb:
        r, g, b = rgb.split()
        rgb = Image.merge("RGB", (b, g, r))
    return rgb


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_problem(path: str | Path, exc: BaseException) -> str:
    """What :func:`load_rgb` met, in words: ``empty file (0 bytes)`` for a zero-byte file (PIL says only that it
    cannot identify it), else ``<exception type>: <message>``."""
    if isinstance(exc, UnidentifiedImageError):
        try:
            if os.path.getsize(path) == 0:
                return "empty file (0 bytes)"
        except OSError:
            pass
    return f"{type(exc).__name__}: {exc}"


def image_read_error(path: str | Path, exc: BaseException, verb: str = "decode") -> InputError:
    """The one-line error for an image file :func:`load_rgb` could not open (embed, search --image, --decode gpu):
    a folder, a missing file (a symbolic link whose target is missing names the target), an empty file, else
    ``cannot <verb> image (<type>: <message>)``."""
    if isinstance(exc, IsADirectoryError):
        return InputError("is a folder; expected an image file", file=path)
    if isinstance(exc, FileNotFoundError):
        target = None
        try:
            if os.path.islink(path):
                target = os.readlink(path)
        except OSError:
            pass
        if target is not None:
            return InputError(f"image file not found: it is a symbolic link to {target}, which does not exist",
                              file=path)
        return InputError("image file not found", file=path)
    return InputError(f"cannot {verb} image ({decode_problem(path, exc)})", file=path)


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """A DataLoader worker's error as the worker raised it: one line (the same as with no workers).

    torch re-raises an exception of a loader worker in the main process as the same type built from ``"Caught
    InputError in DataLoader worker process 1.\nOriginal Traceback ..."`` (the worker's whole traceback); this
    returns an exception of that type holding only the worker's own message (the text after the traceback's last
    ``<module>.<type>: ``), or ``exc`` itself when it is not such a re-raised error. Every command's error
    printing calls it (``train``, ``evaluate``, ``embed``, ...: with ``workers: auto`` a GPU host loads with
    workers)."""
    text = str(exc)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return exc
    kind = type(exc)
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = text.rfind(marker)
    if at < 0:
        return exc
    message = text[at + len(marker):].strip()
    try:
        clean = kind(message)
    except Exception:  # a type whose constructor wants more than a message: keep the long one
        return exc
    return clean


LIBJPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")
"""How libjpeg's warnings about damaged compressed data begin (it decodes such a JPEG, grey where data is missing).
``Corrupt JPEG data: N extraneous bytes before marker`` is left out: junk between segments, the image is whole."""
_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def libjpeg_messages() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2 in the block (libjpeg prints its warnings there, from C, and
    neither Pillow nor torchvision passes them on); the list gets libjpeg's damage lines after the block, and any
    other text is written on to stderr. One block at a time in the process (a lock)."""
    found: list[str] = []
    with _FD2_LOCK, tempfile.TemporaryFile() as tmp:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no descriptor 2 (a daemon): nothing would be printed either
            saved = -1
        if saved < 0:
            yield found
            return
        try:
            os.dup2(tmp.fileno(), 2)
            yield found
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            other = []
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if line.strip().startswith(LIBJPEG_DAMAGE) and "extraneous bytes" not in line:
                    found.append(line.strip())
                else:
                    other.append(line)
            if other:
                sys.stderr.write("\n".join(other) + "\n")


def _quiet_decode_jpeg(data: Any, **kwargs: Any) -> Any:
    from torchvision.io import decode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoding (a warning per call)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return decode_jpeg(data, **kwargs)


def jpeg_damage(data: bytes | torch.Tensor) -> str | None:
    """libjpeg's warning(s) about damaged compressed data in a JPEG that still decodes (bytes zeroed or cut out
    before the end-of-image marker: libjpeg fills the rest with grey, Pillow says nothing), joined by ``; ``; None
    for a clean JPEG, or one libjpeg cannot decode at all (Pillow's decoding names that error)."""
    tensor = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    with libjpeg_messages() as found:
        try:
            _quiet_decode_jpeg(tensor, device="cpu")
        except RuntimeError:
            pass
    return "; ".join(dict.fromkeys(found)) or None


def own_label_matrix(labels: Any, *, name: str = "labels") -> torch.Tensor:
    """:func:`~dynametric.labels.as_label_matrix` of ``labels`` that shares no memory with them: a dataset keeps its
    own copy of the caller's tensor or array (``labels[:] = 0`` after building it left the dataset's labels zeroed,
    silently). Copied only where the conversion kept the caller's memory (one ``memcpy``: about 10 ms per million
    rows of three scales)."""
    out = as_label_matrix(labels, name=name)
    if isinstance(labels, torch.Tensor):
        shared = out.untyped_storage().data_ptr() == labels.untyped_storage().data_ptr()
    elif isinstance(labels, np.ndarray):
        shared = out.device.type == "cpu" and bool(np.may_share_memory(out.numpy(), labels))
    else:  # a list: converted into new memory
        shared = False
    return out.clone() if shared else out


class PathTable(Sequence[str]):
    """An immutable list of paths stored as one UTF-8 byte buffer plus offsets.

    Unlike a Python list of ``str`` it costs about one byte per character and holds no per-item Python objects,
    so DataLoader workers forked from the main process do not copy it page by page through reference counts.
    A file name that is not UTF-8 (held by Python as surrogate escapes) round-trips unchanged (``surrogateescape``,
    as ``os.fsencode``); the readers report such names as problems before they get here.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        if encoded:
            np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._data = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if isinstance(index, np.ndarray | torch.Tensor | list):
            return [self[int(i)] for i in np.asarray(index).reshape(-1)]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"path index {index} out of range for {len(self)} paths")
        return self._data[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"PathTable({len(self)} paths)"


class HierarchicalImageDataset(torch.utils.data.Dataset):
    """Images on disk with hierarchical labels ``LongTensor[N, S]`` (finest first).

    ``dataset[i]`` is ``(transform(PIL RGB image), labels[i])``. A file that cannot be decoded raises an
    :class:`InputError` naming its path; with ``skip_corrupt=True`` it is logged (warning, with the path),
    counted in ``skipped_corrupt`` and replaced by the next readable image of the same finest class (so batch
    composition and labels stay right). With DataLoader workers each worker keeps its own count; the log is
    the complete record.

    ``sequence_ids``: one id per item where the reader sets it (OML's ``sequence`` column), else ``None``; a query ->
    gallery evaluation never ranks a gallery item of the query's sequence for it
    (:class:`~dynametric.engine.protocols.QueryGallery`; a leave-one-out evaluation never ranks an item of the query's
    sequence either, :class:`~dynametric.engine.protocols.LeaveOneOut`).

    ``category_ids``: one category id per item where the reader sets it (OML's ``category`` column, whether or not it
    is also a label scale), else ``None``; an evaluation whose queries carry them reports its retrieval metrics per
    query category as well (``by_category``, :mod:`dynametric.metrics.categories`). ``category_note``: where the
    reader had categories but the split carries none (an OML ``category`` cell empty on one of its rows), the
    reason, which ``dynametric evaluate --checkpoint`` shows when the split is its queries'; else ``None``.
    """

    sequence_ids: list[Hashable] | None = None
    category_ids: list[Hashable] | None = None
    category_note: str | None = None

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, scale_names: Sequence[str], split: str, *,
                 class_ids: Sequence[Sequence[Hashable]] | None = None,
                 transform: Callable[[Image.Image], Any] | None = None,
                 swap_rb: bool = False, skip_corrupt: bool = False, report: LoadReport | None = None,
                 class_names: Sequence[dict[Hashable, str]] | None = None, name: str = "dataset") -> None:
        self.labels = own_label_matrix(labels, name="labels")
        if self.labels.shape[0] and int(self.labels.min()) < 0:
            raise InputError("labels must be contiguous ids >= 0 (raw ids go into class_ids)", key="labels")
        if class_ids is None:  # labels are already the ids
            class_ids = [list(range(int(self.labels[:, s].max()) + 1 if len(paths) else 0))
                         for s in range(self.labels.shape[1])]
        if self.labels.dim() != 2 or self.labels.shape[0] != len(paths) or self.labels.shape[1] != len(scale_names):
            raise InputError(f"labels of shape {tuple(self.labels.shape)} do not match {len(paths)} paths and "
                             f"{len(scale_names)} scale names", key="labels")
        if len(class_ids) != len(scale_names):
            raise InputError("one class_ids list per scale is required", key="class_ids")
        for s, ids in enumerate(class_ids):
            if self.labels.shape[0] and int(self.labels[:, s].max()) >= len(ids):
                raise InputError(f"scale {s} has label {int(self.labels[:, s].max())} but only {len(ids)} class ids",
                                 key="class_ids")
        self._paths = paths if isinstance(paths, PathTable) else PathTable(list(paths))
        self.scale_names: tuple[str, ...] = tuple(scale_names)
        self.split = split
        self.class_ids: list[list[Hashable]] = [list(c) for c in class_ids]
        self.id_maps: list[dict[Hashable, int]] = [{c: i for i, c in enumerate(ids)} for ids in self.class_ids]
        self.class_names = [dict(d) for d in class_names] if class_names is not None else None
        self.transform = transform
        self.swap_rb = yes_no(swap_rb, "swap_rb")
        self.skip_corrupt = yes_no(skip_corrupt, "skip_corrupt")
        self.report = report if report is not None else LoadReport(split=split, records=len(paths))
        self.name = name
        self.skipped_corrupt = 0
        self.corrupt_paths: set[str] = set()
        self._by_fine: dict[int, np.ndarray] | None = None

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def from_records(cls, records: SplitRecords, *, transform: Callable[[Image.Image], Any] | None = None,
                     mode: str = "strict", check_hierarchy: bool = True, swap_rb: bool = False,
                     skip_corrupt: bool = False, name: str = "dataset") -> HierarchicalImageDataset:
        """Apply the strict/lenient policy to a reader's records and build the dataset."""
        if mode not in MODES:
            raise InputError(f"mode must be one of {list(MODES)}, got {mode!r}", key="mode")
        check_hierarchy = yes_no(check_hierarchy, "check_hierarchy")
        report = records.report
        for warning in report.warnings:
            log.warning("%s split %r: %s", name, records.split, warning)
        if mode == "strict":
            raise_problems(report.problems, f"{name} split {records.split!r}")
        elif report.problems:
            own = [p for p in report.problems if not p.split_unknown]
            unknown = len(report.problems) - len(own)
            skipped = [f"{len(own)} bad record(s) of this split"] if own else []
            if unknown:
                skipped.append(f"{unknown}{'' if own else ' bad record(s)'} whose split cannot be read (left out of "
                               "every split)")
            log.warning("%s split %r: skipped %s (lenient mode); first: %s", name, records.split,
                        " and ".join(skipped), (own or report.problems)[0])
        if not records.paths:
            raise InputError(f"{name} split {records.split!r} has no records",
                             file=report.files[0] if report.files else None)
        s_count = len(records.scale_names)
        _check_label_rows(records, name)
        labels, all_ids = _contiguous_matrix(records.raw_labels, s_count, records.class_ids)
        if check_hierarchy and s_count > 1:
            problems, notes = check_hierarchy_fn(labels, records.scale_names, all_ids, records.locations,
                                                 nested=records.nested)
            report.notes.extend(notes)
            if len(problems) == 1 and problems[0].message.startswith(REVERSED_SCALES):  # one line: what to do
                raise InputError(f"{name} split {records.split!r}: {problems[0].message}", file=problems[0].file,
                                 line=problems[0].line)
            raise_problems(problems, f"{name} split {records.split!r} (hierarchy)")
        return cls(records.paths, torch.from_numpy(labels), records.scale_names, records.split, class_ids=all_ids,
                   transform=transform, swap_rb=swap_rb, skip_corrupt=skip_corrupt, report=report,
                   class_names=records.class_names, name=name)

    # ----------------------------------------------------------------------------------------------- access
    @property
    def paths(self) -> PathTable:
        """Image paths (a compact :class:`PathTable`, cheap to share with DataLoader workers)."""
        return self._paths

    @property
    def num_classes(self) -> list[int]:
        """Number of classes in this split's id space, per scale."""
        return [len(c) for c in self.class_ids]

    def class_counts(self) -> dict[str, int]:
        """Number of distinct classes present in this split, keyed by scale name."""
        return {n: int(self.labels[:, s].unique().numel()) for s, n in enumerate(self.scale_names)}

    def raw_label(self, index: int) -> tuple[Hashable, ...]:
        """The raw (file) class ids of item ``index``, finest first."""
        row = self.labels[index].tolist()
        return tuple(self.class_ids[s][c] for s, c in enumerate(row))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image of item ``index`` (no transform); raises :class:`InputError` naming the path."""
        return self._load_rgb(index)

    def _load_rgb(self, index: int, box: tuple[int, int, int, int] | None = None) -> Image.Image:
        """:func:`load_rgb` of item ``index`` (its crop ``box``: a box past the edge raises :class:`BoxOutsideImage`);
        an image that cannot be decoded raises :class:`InputError` naming the path."""
        path = self._paths[index]
        try:
            return load_rgb(path, self.swap_rb, box)
        except _DECODE_ERRORS as exc:
            raise InputError(f"cannot read image ({decode_problem(path, exc)})", file=path) from exc

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        index = int(index)
        try:
            image = self.load_image(index)
        except InputError as exc:
            if not self.skip_corrupt:
                raise
            image, index = self._substitute(index, exc.message)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index].clone()

    def _substitute(self, index: int, reason: str = "corrupt") -> tuple[Image.Image, int]:
        path = self._paths[index]
        self.skipped_corrupt += 1
        self.corrupt_paths.add(path)
        log.warning("%s split %r: skipping image %s (%s; skip #%d); using another image of its class",
                    self.name, self.split, path, reason, self.skipped_corrupt)
        if self._by_fine is None:
            fine = self.labels[:, 0].numpy()
            order = np.argsort(fine, kind="stable")
            bounds = np.flatnonzero(np.diff(fine[order])) + 1
            self._by_fine = {int(fine[g[0]]): g for g in np.split(order, bounds) if g.size}
        group = self._by_fine[int(self.labels[index, 0])]
        start = int(np.searchsorted(group, index))
        for k in range(1, group.size):
            cand = int(group[(start + k) % group.size])
            if self._paths[cand] in self.corrupt_paths:
                continue
            try:
                return self.load_image(cand), cand
            except InputError:
                self.skipped_corrupt += 1
                self.corrupt_paths.add(self._paths[cand])
                log.warning("%s split %r: skipping corrupt image %s (skip #%d)", self.name, self.split,
                            self._paths[cand], self.skipped_corrupt)
        raise InputError(f"every image of {self.scale_names[0]} class {self.raw_label(index)[0]!r} is unreadable "
                         f"(skip_corrupt cannot substitute)", file=path)

    def subset(self, indices: Sequence[int] | torch.Tensor, split: str | None = None,
               remap: bool = True) -> HierarchicalImageDataset:
        """A new dataset of the given items; ``remap=True`` makes its labels contiguous again (raw ids kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        labels = self.labels[idx]
        class_ids = self.class_ids
        if remap:
            cols, class_ids = [], []
            for s in range(labels.shape[1]):
                uniq, inv = torch.unique(labels[:, s], return_inverse=True)
                cols.append(inv)
                class_ids.append([self.class_ids[s][u] for u in uniq.tolist()])
            labels = torch.stack(cols, 1) if cols else labels
        out = HierarchicalImageDataset(self._paths[idx.numpy()], labels, self.scale_names,
                                       split or self.split, class_ids=class_ids, transform=self.transform,
                                       swap_rb=self.swap_rb, skip_corrupt=self.skip_corrupt,
                                       class_names=self.class_names, name=self.name)
        if self.sequence_ids is not None:
            out.sequence_ids = [self.sequence_ids[i] for i in idx.tolist()]
        if self.category_ids is not None:
            out.category_ids = [self.category_ids[i] for i in idx.tolist()]
        out.category_note = self.category_note
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.class_counts().items())
        return f"{type(self).__name__}({self.name!r}, split={self.split!r}, images={len(self)}, classes: {counts})"


check_hierarchy_fn = check_hierarchy  # alias: ``from_records`` has a parameter named ``check_hierarchy``
