"""open-metric-learning's dataset CSV (``oml`` format).

OML describes a retrieval dataset by one CSV (``df.csv`` by default)::

    label,path,split,is_query,is_gallery,category,x_1,x_2,y_1,y_2
    0,images/0001.jpg,train,,,bird,,,,
    7,images/0100.jpg,validation,True,False,bird,12,80,5,60
    7,images/0101.jpg,validation,False,True,bird,,,,

* required columns ``label`` (an integer class id), ``path`` (relative to the CSV's folder, or ``image_root``),
  ``split`` (``train`` or ``validation``), ``is_query``, ``is_gallery`` (empty on ``train`` rows; on
  ``validation`` rows true/false, ``1``/``0`` also accepted, and at least one of them true);
* optional ``category``: in OML it only splits the metrics report by the query's category, so by default it is not
  a label (noted in the load report) and a label may sit in several categories; every split's dataset carries it as
  ``category_ids`` (when no record of the split has an empty cell), from which the evaluations report their
  retrieval metrics per query category (``by_category``; ``eval.per_category``). The option
  ``category_as_scale=True`` makes it a second, coarser label scale too (scales ``label`` then ``category``, finest
  first, checked to be a hierarchy: every label in one category; ``multiscale`` training then uses it). A cell
  that is an ASCII integer (``-?[0-9]+``) is that int, as pandas reads it; any other is its text (``sequence`` too;
  ``007`` and ``7`` are one id, which the split's load report notes);
* optional ``sequence``: an id (e.g. of the video or burst a frame comes from), required on every validation row
  when the column is present; as OML's ``calc_mask_to_ignore``, a query -> gallery evaluation excludes from each
  query's ranking the gallery items of its sequence (the validation splits' datasets carry ``sequence_ids``;
  :class:`~dynametric.engine.protocols.QueryGallery`). Train rows' values are not read (OML trains without them);
* optional bounding box ``x_1, x_2, y_1, y_2`` (all four columns or none): pixel coordinates with ``x_1 < x_2``,
  ``y_1 < y_2``, all ``>= 0``; the item is the crop ``(x_1, y_1, x_2, y_2)`` of the image (PIL's box, as OML crops:
  of the stored pixels, before EXIF orientation, then shown upright, ``load_rgb``);
  a row with the four cells empty uses the whole image. The same image may appear on several rows with different
  boxes (one item per box). The reader does not open images: a box past the image's edge is reported by
  ``dynametric data inspect`` (which decodes them) and raises when the item is loaded (:func:`box_problem`).

Splits offered: ``train``; ``validation`` (every validation row); ``query`` and ``gallery`` (the validation rows
flagged ``is_query`` / ``is_gallery``; a row flagged both is in both, and ``eval.query_in_gallery: true``, required
then, keeps a query from retrieving its own row, as OML does). ``query`` and ``gallery`` share one class-id space.
As in OML, every query label must have a gallery item. Other columns (OML's ``category_int``, ...)
are ignored and listed in the load report's notes. Every problem names the file, the line and the column; a bad
row is a problem of the splits it belongs to (a validation row: ``validation`` and the ``query`` / ``gallery`` its
flags name), one whose split cell cannot be read a problem of every split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image

from dynametric.data.base import BoxOutsideImage, HierarchicalImageDataset, LoadReport, SplitRecords, contiguous_ids
from dynametric.data.readers import (
    DuplicateTracker,
    csv_in_root,
    image_exists,
    read_csv_rows,
    require_file,
    require_header,
    start_csv_read,
)
from dynametric.errors import InputError
from dynametric.utils.readers import id_cell, integer_label, merged_ids, merged_ids_note

REQUIRED = ("label", "path", "split", "is_query", "is_gallery")
BOX = ("x_1", "x_2", "y_1", "y_2")
SPLITS = ("train", "validation", "query", "gallery")
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}

Box = tuple[int, int, int, int]  # PIL order: (left, upper, right, lower) = (x_1, y_1, x_2, y_2)


@dataclass
class OMLRecords(SplitRecords):
    """:class:`SplitRecords` plus one crop box (or ``None``) per record and, for the validation splits of a CSV with a
    ``sequence`` column, one sequence id per record (else ``None``); with a ``category`` column filled on every record
    of the split, one category id per record (else ``None``, and ``category_note`` says why where the column
    exists)."""

    boxes: list[Box | None] | None = None
    sequences: list[Hashable] | None = None
    categories: list[Hashable] | None = None
    category_note: str | None = None


class CroppedImageDataset(HierarchicalImageDataset):
    """A :class:`HierarchicalImageDataset` whose items are crops: ``boxes[i]`` (``(x_1, y_1, x_2, y_2)`` pixels, or
    ``None`` for the whole image) is applied right after decoding, before the transform."""

    boxes: list[Box | None]

    def load_image(self, index: int) -> Image.Image:
        box = self.boxes[int(index)] if getattr(self, "boxes", None) is not None else None
        try:  # the box is in stored pixels (OML does not rotate); the crop is then shown upright (load_rgb)
            return self._load_rgb(int(index), box)
        except BoxOutsideImage as exc:  # PIL would pad the crop with black
            raise InputError(f"{box_problem(exc.box, exc.size, exc.oriented)} (item {int(index)})",
                             file=self.paths[int(index)]) from None

    def subset(self, indices: Any, split: str | None = None, remap: bool = True) -> CroppedImageDataset:
        import torch

        out = cast(CroppedImageDataset, super().subset(indices, split, remap))
        out.__class__ = CroppedImageDataset
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        out.boxes = [self.boxes[i] for i in idx]
        return out


def box_problem(box: Box, size: tuple[int, int], oriented: bool = False) -> str | None:
    """Why the crop ``box`` ``(x_1, y_1, x_2, y_2)`` does not fit an image whose stored pixel array is ``size``
    ``(width, height)``, else ``None`` (the reader checks ``0 <= x_1 < x_2`` and ``0 <= y_1 < y_2``; the size needs
    the image). ``oriented``: its EXIF orientation rotates or flips it for display (boxes are in stored pixels, as
    OML's)."""
    (_, _, x2, y2), (w, h) = box, size
    if x2 <= w and y2 <= h:
        return None
    column, value, edge = ("x_2", x2, f"width {w}") if x2 > w else ("y_2", y2, f"height {h}")
    stored = " as stored; boxes are in stored pixels, before its EXIF orientation is applied" if oriented else ""
    return (f"column '{column}': the box (x_1, y_1, x_2, y_2) = {tuple(box)} reaches {column}={value}, past the "
            f"image's {edge} (a {w}x{h} image{stored})")


def _flag(text: str) -> bool | None:
    """``True`` / ``False`` for a flag cell, ``None`` for an empty one; raises ``ValueError`` otherwise."""
    t = text.strip().lower()
    if t in ("", "nan", "none"):
        return None
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(text)


def _id_cell(text: str) -> Hashable | None:
    """An id cell (``category``, ``sequence``): an int where it is an ASCII integer (``7``, ``-3``), else the text
    (``--1``, ``²``: :func:`~dynametric.utils.readers.id_cell`); ``None`` when empty."""
    return id_cell(text) if text else None


def _split_categories(categories: list[Hashable | None], locations: Sequence[tuple[str, int | None]], header: list[str],
                      path: Path, split: str, report: LoadReport) -> tuple[list[Hashable] | None, str | None]:
    """The records' categories (the metrics' per-category report, :attr:`HierarchicalImageDataset.category_ids`)
    and, when they are dropped, why (:attr:`HierarchicalImageDataset.category_note`): ``(None, None)`` without a
    ``category`` column, ``(None, note)`` with an empty cell on a record of the split (a query without a category
    would fall in no part of the report). The note goes into the load report of the splits whose items are
    queries (``query``; ``train`` and ``validation``, evaluated leave-one-out: every item a query), not of
    ``gallery``, whose categories no query -> gallery report reads."""
    if "category" not in header:
        return None, None
    empty = [i for i, c in enumerate(categories) if c is None]
    if not empty:
        return list(categories), None
    note = (f"column 'category' of {path.name} is empty on {len(empty)} of the {len(categories)} records of split "
            f"{split!r} (first at line {locations[empty[0]][1]}): no per-category metrics for it")
    if split != "gallery":
        report.notes.append(note)
    return None, note


def _coordinate(text: str) -> float | None:
    t = text.strip()
    if t.lower() in ("", "nan", "none"):
        return None
    value = float(t)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


class OMLFormat:
    name = "oml"
    root_expected = "an OML dataset CSV (label, path, split, is_query, is_gallery) or its folder"
    options: dict[str, object] = {"csv_file": "df.csv", "image_root": None, "category_as_scale": False}

    def _csv_path(self, root: str | Path | None, csv_file: str) -> Path:
        return csv_in_root(root, csv_file, self.root_expected)

    def _parse(self, path: Path, report: LoadReport) -> tuple[list[str], list[tuple[int, list[str]]]]:
        require_file(path, "an OML dataset CSV with columns " + ", ".join(REQUIRED))
        rows = read_csv_rows(path, report)
        require_header(rows, report, path, "a header naming " + ", ".join(REQUIRED))
        header = [h.strip() for h in rows[0][1]]
        report.header[str(path)] = "own_line"
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise InputError(f"missing column(s) {missing}; an OML CSV needs {list(REQUIRED)} (optional: category, "
                             f"sequence, {', '.join(BOX)}); got {header}", file=path, line=rows[0][0])
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise InputError(f"column(s) {dup} appear more than once", file=path, line=rows[0][0])
        boxes = [c for c in BOX if c in header]
        if boxes and len(boxes) != len(BOX):
            raise InputError(f"bounding boxes need all four columns {list(BOX)}; missing "
                             f"{[c for c in BOX if c not in header]}", file=path, line=rows[0][0])
        extra = [h for h in header if h not in (*REQUIRED, *BOX, "category", "sequence")]
        if extra:
            report.notes.append(f"column(s) {extra} of {path.name} ignored")
        return header, [(n, [f.strip() for f in r]) for n, r in rows[1:]]

    def splits(self, root: str | Path | None, csv_file: str = "df.csv", **_: object) -> list[str]:
        """The splits the rows name (a malformed row too, where its split cell can be read); ``["train"]`` when no
        row names one (a header-only file, every split cell unreadable), so that reading it reports why."""
        header, rows = self._parse(self._csv_path(root, csv_file), LoadReport(split="*"))
        col = header.index("split")
        found = {r[col] for _, r in rows if len(r) > col}
        out = ["train"] if "train" in found or "validation" not in found else []
        return out + (["validation", "query", "gallery"] if "validation" in found else [])

    @staticmethod
    def _owners(header: list[str], r: list[str]) -> tuple[str, ...] | None:
        """The splits a (bad) row belongs to; ``None`` when its split cell cannot be read. A validation row is in
        ``query`` / ``gallery`` as its flags say; in both when they cannot be read or are both false."""
        col = header.index("split")
        split = r[col] if len(r) > col else None
        if split == "train":
            return ("train",)
        if split != "validation":
            return None
        try:
            flags = [_flag(r[header.index(n)]) for n in ("is_query", "is_gallery")] if len(r) == len(header) else []
        except ValueError:
            flags = []
        if not any(flags):
            return ("validation", "query", "gallery")
        return ("validation", *(n for n, f in zip(("query", "gallery"), flags) if f))

    def _check_row(self, header: list[str], r: list[str], path: Path, number: int,
                   report: LoadReport, wanted: str | None = None, category_as_scale: bool = False
                   ) -> tuple[Any, ...] | None:
        """Validate one row; ``(label, category, split, is_query, is_gallery, box, sequence)`` or ``None``
        (``category``: the cell where the column exists, ``None`` when it is empty, an error then only with
        ``category_as_scale``; ``sequence``: the id of a validation row
        where the column exists, else ``None``). A problem is
        added to ``report`` when the row belongs to split ``wanted`` (any split when ``None``) or its split cannot be
        read (:meth:`_owners`)."""
        col = {h: i for i, h in enumerate(header)}

        def problem(message: str) -> None:
            owners = self._owners(header, r)
            if owners is None:
                report.add(message, path, number, split_unknown=True)
            elif wanted is None or wanted in owners:
                report.add(message, path, number)

        def bad(column: str, message: str) -> None:
            problem(f"column '{column}': {message}")

        if len(r) != len(header):
            readable = len(r) > col["split"] and r[col["split"]] in ("train", "validation")
            problem(f"expected {len(header)} fields {header}, got {len(r)}"
                    + ("" if readable else " (its split cannot be read)"))
            return None
        label_text = r[col["label"]]
        label = integer_label(label_text)
        if label is None:
            shown = label_text if len(label_text) <= 40 else label_text[:40] + "..."
            bad("label", f"expected an integer class id (ASCII digits, within 64 bits), got {shown!r}")
            return None
        if not r[col["path"]]:
            bad("path", "empty path")
            return None
        split = r[col["split"]]
        if split not in ("train", "validation"):
            bad("split", f"expected 'train' or 'validation', got {split!r}")
            return None
        flags = []
        for name in ("is_query", "is_gallery"):
            try:
                flags.append(_flag(r[col[name]]))
            except ValueError:
                bad(name, f"expected True/False (or 1/0, empty on train rows), got {r[col[name]]!r}")
                return None
        is_query, is_gallery = flags
        if split == "train" and (is_query or is_gallery):
            bad("is_query" if is_query else "is_gallery", "train rows are neither query nor gallery; leave it empty")
            return None
        if split == "validation":
            if is_query is None or is_gallery is None:
                bad("is_query" if is_query is None else "is_gallery", "empty on a validation row; expected True/False")
                return None
            if not (is_query or is_gallery):
                bad("is_query", "a validation row must be a query, a gallery item or both (both flags are False)")
                return None
        category: Hashable | None = None
        if "category" in col:  # a label scale with category_as_scale; in any case the query's report category
            category = _id_cell(r[col["category"]])
            if category is None and category_as_scale:
                bad("category", "empty; give every row its category (or drop the column)")
                return None
        sequence: Hashable | None = None
        if "sequence" in col and split == "validation":  # only the validation metrics read it, as in OML
            sequence = _id_cell(r[col["sequence"]])
            if sequence is None:
                bad("sequence", "empty on a validation row; give every validation row its sequence id (or drop the "
                                "column)")
                return None
        box: Box | None = None
        if "x_1" in col:
            values = {}
            for name in BOX:
                try:
                    values[name] = _coordinate(r[col[name]])
                except ValueError:
                    bad(name, f"expected a pixel coordinate, got {r[col[name]]!r}")
                    return None
            given = [n for n in BOX if values[n] is not None]
            if given and len(given) != len(BOX):
                bad(next(n for n in BOX if values[n] is None), "a box needs all four of x_1, x_2, y_1, y_2 (or none)")
                return None
            if given:
                x1, x2, y1, y2 = (int(values[n]) for n in BOX)  # type: ignore[arg-type]
                for n, v in zip(BOX, (x1, x2, y1, y2)):
                    if v < 0:
                        bad(n, f"expected >= 0, got {v}")
                        return None
                if not x1 < x2:
                    bad("x_2", f"expected x_1 < x_2, got x_1={x1}, x_2={x2}")
                    return None
                if not y1 < y2:
                    bad("y_2", f"expected y_1 < y_2, got y_1={y1}, y_2={y2}")
                    return None
                box = (x1, y1, x2, y2)
        return label, category, split, is_query, is_gallery, box, sequence

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True, csv_file: str = "df.csv",
             image_root: str | Path | None = None, category_as_scale: bool = False) -> OMLRecords:
        if not isinstance(category_as_scale, bool):
            raise InputError(f"expected true or false, got {category_as_scale!r}", key="category_as_scale")
        path, report, header, rows, img_root = start_csv_read(self, root, split, SPLITS, csv_file, image_root)
        i_path = header.index("path")
        has_category = category_as_scale
        if category_as_scale and "category" not in header:
            raise InputError(f"option category_as_scale is true, but the header has no 'category' column: {header}",
                             file=path)
        if "category" in header and not category_as_scale:
            report.notes.append(f"column 'category' of {path.name} is not a label scale (as in OML, it splits the "
                                "metrics report by the query's category; the option category_as_scale: true makes it "
                                "the coarser scale too)")
        scales = ("label", "category") if has_category else ("label",)
        checked = []
        for number, r in rows:
            row = self._check_row(header, r, path, number, report, split, category_as_scale)
            if row is not None:
                checked.append((number, r, row))
        # OML's rule: every query label has at least one gallery item (a problem of the query and validation splits)
        gallery_labels = {row[0] for _, _, row in checked if row[2] == "validation" and row[4]}
        for number, _, row in checked:
            if split in ("validation", "query") and row[2] == "validation" and row[3] and row[0] not in gallery_labels:
                report.add(f"column 'label': query label {row[0]} has no gallery item", path, number)
        shared = split in ("query", "gallery")
        ids: list[set[Hashable]] = [set() for _ in scales]
        out_paths, raw, locs, boxes, sequences = [], [], [], [], []
        categories: list[Hashable | None] = []
        col = {h: i for i, h in enumerate(header)}
        # the id cells the split reads, for the note on merged spellings: a gallery's categories only as a label
        # scale (the per-category report goes by the query's category, as for the empty-category note), sequences
        # off the training rows (the gallery's: the same-sequence exclusion)
        read_ids = {"category": split != "gallery" or category_as_scale, "sequence": split != "train"}
        id_cells: dict[str, list[tuple[str, int]]] = {c: [] for c in ("category", "sequence") if c in col and
                                                      read_ids[c]}
        position: dict[str, int] = {}  # the validation split's items: their index in the split
        dup = DuplicateTracker(report)
        listed: dict[str, tuple[Any, int, Any]] = {}  # the validation split's items (path and box): labels, line, seq
        for number, r, (label, category, row_split, is_query, is_gallery, box, sequence) in checked:
            labels = (label, category) if has_category else (label,)
            if shared and row_split == "validation":
                for s, v in enumerate(labels):
                    ids[s].add(v)
            keep = {"train": row_split == "train", "validation": row_split == "validation",
                    "query": row_split == "validation" and is_query,
                    "gallery": row_split == "validation" and is_gallery}[split]
            if not keep:
                continue
            full = os.path.join(str(img_root), r[i_path])
            if not image_exists(full, report, path, number, check_files, listed=r[i_path]):
                continue
            for column, cells in id_cells.items():  # the split's id cells, for the note on merged spellings
                cells.append((r[col[column]], number))
            shown = f"{r[i_path]}" + ("" if box is None else f" box {box}")
            if split == "validation":  # one item may be a query-only row plus a gallery-only row (OML's own CSVs):
                item = os.path.normpath(shown)  # one item of the split; a repeat is the same role listed twice
                roles = [n for n, f in (("query", is_query), ("gallery", is_gallery)) if f]
                if not all(dup.accept(shown, labels, path, number, f"{item}\0{role}") for role in roles):
                    continue
                if item in listed:  # its other role: already the split's item, with the same labels and sequence
                    if is_query:  # the report goes by the query's category: its query row's
                        categories[position[item]] = category
                    first_labels, first_line, first_sequence = listed[item]
                    if (first_labels, first_sequence) != (labels, sequence):
                        what = "labels" if first_labels != labels else "sequence"
                        report.add(f"{shown}: listed with {what} {first_labels if what == 'labels' else first_sequence}"
                                   f" at line {first_line} and {labels if what == 'labels' else sequence} here: one "
                                   "item of the validation split (its query and gallery rows) has one label and "
                                   "sequence", path, number, "duplicate")
                    continue
                listed[item] = (labels, number, sequence)
                position[item] = len(categories)  # its index: the records kept so far
            elif not dup.accept(shown, labels, path, number):
                continue
            out_paths.append(full)
            raw.append(labels)
            locs.append((str(path), number))
            boxes.append(box)
            sequences.append(sequence)
            categories.append(category)
        report.records = len(out_paths)
        for column, cells in id_cells.items():  # '007' and '7' are one id, as pandas reads them: said, not hidden
            merged = merged_ids(cells)
            if merged:
                report.notes.append(f"column {column!r} of {path.name}, split {split!r}: "
                                    f"{merged_ids_note(merged, column)}")
        class_ids = [contiguous_ids(list(s))[1] for s in ids] if shared else None
        has_sequence = "sequence" in header and split != "train"
        split_categories, category_note = _split_categories(categories, locs, header, path, split, report)
        return OMLRecords(split, out_paths, raw, scales, locs, report, class_ids=class_ids, boxes=boxes,
                          sequences=sequences if has_sequence else None, categories=split_categories,
                          category_note=category_note)

