"""DyML-Vehicle, DyML-Animal and DyML-Product in their released layout (Sun et al., CVPR 2021).

Layout::

    <root>/train/label.csv                fname, coarse, middle, fine   (coarsest first in the file)
    <root>/train/imgs/<fname>
    <root>/bmk_<level>/query.csv          fname, label                 (Vehicle, Animal; level = fine|middle|coarse)
    <root>/bmk_<level>/gallery.csv
    <root>/bmk_<level>/{query,gallery}/<fname>
    <root>/mini-bmk_all_in_one/label.csv  fname, coarse, middle, fine   (Product's test set, leave-one-out)
    <root>/mini-bmk_all_in_one/imgs/<fname>

Fields are separated by comma + space. The released files carry a header with **no line terminator**, glued to
the first record (``fname, coarse_id, middle_id, fine_id0.jpg, 3, 17, 250``). This reader strips the known header
from the start of the file and keeps the rest of that line as the first record; one code path handles a glued
header, a header on its own line and no header, and the load report records which one it met.

Splits: ``train``; Vehicle/Animal ``query_<level>`` and ``gallery_<level>`` (labels ``[N, 1]`` at that level,
query and gallery of a level share one id map); Product ``test`` (``mini-bmk_all_in_one``, labels ``[N, 3]``).
Labels are reordered to finest first: ``(fine, middle, coarse)``. The benchmark's scales nest (fine ⊂ middle ⊂
coarse): a middle class with two coarse parents is a hierarchy violation here (``SplitRecords.nested``), not only a
note as for a ``csv``. A query whose label has no item in its level's gallery is a problem of the query split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path

from dynametric.data.base import LoadReport, SplitRecords, contiguous_ids
from dynametric.data.readers import (
    DuplicateTracker,
    RootGuard,
    image_exists,
    read_lines,
    require_file,
    resolve_root,
)
from dynametric.errors import InputError
from dynametric.utils.readers import integer_label

SCALES: tuple[str, str, str] = ("fine", "middle", "coarse")
VARIANTS: tuple[str, ...] = ("vehicle", "animal", "product")
TRAIN_HEADER = "fname, coarse_id, middle_id, fine_id"
BMK_HEADER = "fname, labels"
_HEADER_RE = {
    4: re.compile(r"^\s*fname\s*,\s*coarse_id\s*,\s*middle_id\s*,\s*fine_id", re.IGNORECASE),
    2: re.compile(r"^\s*fname\s*,\s*labels?", re.IGNORECASE),
}
_FIELDS = {4: "fname, coarse, middle, fine", 2: "fname, label"}


def benchmark_protocol(variant: str) -> list[tuple[str, str, str | None]]:
    """The DyML test protocol (Sun et al., CVPR 2021) as ``(scale, query split, gallery split)`` triples.

    Vehicle/Animal: per scale, ``query_<scale>`` ranks ``gallery_<scale>``. Product: one leave-one-out run over
    ``test`` at all three scales (gallery ``None``).
    """
    if variant not in VARIANTS:
        raise InputError(f"unknown DyML variant {variant!r}; expected one of {list(VARIANTS)}", key="variant")
    if variant == "product":
        return [("all", "test", None)]
    return [(level, f"query_{level}", f"gallery_{level}") for level in SCALES]


def strip_header(first_line: str, n_fields: int) -> tuple[str, str]:
    """Split the first line into ``(header mode, remaining record text)``.

    Mode ``glued`` (header then a record on the same line), ``own_line`` (header alone) or ``none``.
    """
    match = _HEADER_RE[n_fields].match(first_line)
    if match is None:
        return "none", first_line
    rest = first_line[match.end():]
    return ("own_line", "") if not rest.strip() else ("glued", rest)


def parse_dyml_csv(path: Path, n_fields: int, image_dir: Path, report: LoadReport, check_files: bool = True,
                   allow_outside_root: bool = False) -> list[tuple[int, str, tuple[int, ...]]]:
    """Parse a DyML csv into ``(line, image path, labels finest first)`` records; bad rows go to ``report``."""
    require_file(path, f"a DyML csv with {n_fields} fields '{_FIELDS[n_fields]}'")
    lines = read_lines(path, report)
    out: list[tuple[int, str, tuple[int, ...]]] = []
    dup = DuplicateTracker(report)
    guard = RootGuard(image_dir, allow_outside_root, check_links=check_files)
    report.header[str(path)] = "none"
    prefix = os.path.join(str(image_dir), "")  # plain string joins: pathlib costs ~10 µs per row
    for k, (number, text) in enumerate(lines):
        if k == 0:
            mode, text = strip_header(text, n_fields)
            report.header[str(path)] = mode
            if mode == "own_line":
                continue
        fields = text.split(",")
        if len(fields) != n_fields:
            report.add(f"expected {n_fields} comma-separated fields '{_FIELDS[n_fields]}', got {len(fields)}: "
                       f"{text.strip()!r}", path, number)
            continue
        fname = fields[0].strip()
        parsed = [integer_label(v) for v in fields[1:]]  # surrounding spaces allowed
        ints = [] if any(v is None for v in parsed) else [v for v in parsed if v is not None]
        if not fname or not ints:
            report.add(f"expected '{_FIELDS[n_fields]}' with a file name and integer labels, got {text.strip()!r}",
                       path, number)
            continue
        labels = tuple(reversed(ints)) if n_fields == 4 else tuple(ints)  # file is coarsest first
        full = prefix + fname
        real = guard.resolve_rel(fname)
        if not guard.admit(real, fname, report, path, number):
            continue
        if not image_exists(full, report, path, number, check_files, listed=fname):
            continue
        if not dup.accept(fname, labels, path, number, identity=real):
            continue
        out.append((number, full, labels))
    return out


class DyMLFormat:
    """Reader for one DyML variant (``vehicle``, ``animal`` or ``product``)."""

    options: dict[str, object] = {"allow_outside_root": False}
    #: the benchmark files (``bmk_<level>``, ``mini-bmk_all_in_one``) number their classes on their own: a raw id
    #: shared with ``train`` is not known to be the same class (:func:`dynametric.data.registry.class_ids_comparable`)
    class_ids_comparable = False

    def __init__(self, variant: str) -> None:
        if variant not in VARIANTS:
            raise InputError(f"unknown DyML variant {variant!r}; expected one of {list(VARIANTS)}", key="variant")
        self.variant = variant
        self.name = f"dyml-{variant}"
        self.root_expected = f"the {self.name} release with train/label.csv"

    def _split_files(self, root: Path) -> dict[str, tuple[Path, int, Path]]:
        """Split name → (csv, number of fields, image directory) for every split this variant defines."""
        files = {"train": (root / "train" / "label.csv", 4, root / "train" / "imgs")}
        if self.variant == "product":
            files["test"] = (root / "mini-bmk_all_in_one" / "label.csv", 4, root / "mini-bmk_all_in_one" / "imgs")
        else:
            for level in SCALES:
                for part in ("query", "gallery"):
                    d = root / f"bmk_{level}"
                    files[f"{part}_{level}"] = (d / f"{part}.csv", 2, d / part)
        return files

    @staticmethod
    def declared_scales(**_: object) -> tuple[str, ...]:
        """The scale names of the training split (known without reading the data; a ``query_<level>`` /
        ``gallery_<level>`` split has the one scale ``<level>``)."""
        return SCALES

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        """Splits whose csv exists under ``root`` (``train`` is always listed so a missing one is reported)."""
        base = resolve_root(root, self.root_expected)
        return [s for s, (csv, _, _) in self._split_files(base).items() if s == "train" or csv.is_file()]

    def missing_splits(self, root: str | Path | None, **_: object) -> list[tuple[str, Path]]:
        """The splits of the release that :meth:`splits` leaves out because their csv is not under ``root``
        (``mini-bmk_all_in_one`` of Product, a ``bmk_<level>`` of Vehicle/Animal): ``(split, the missing csv)``.
        The test protocol needs every one of them (``dynametric data inspect`` reports them)."""
        base = resolve_root(root, self.root_expected)
        return [(s, csv) for s, (csv, _, _) in self._split_files(base).items() if s != "train" and not csv.is_file()]

    def root_notes(self, root: str | Path | None, **_: object) -> list[str]:
        """What the run and ``data inspect`` say about the root itself: a folder named for another DyML release
        (``dyml_vehicle`` read as ``dyml-animal``) is read as this one, as asked, but most likely by mistake."""
        base = resolve_root(root, self.root_expected)
        named = re.fullmatch(r".*dyml[_-](vehicle|animal|product)", base.resolve().name, re.IGNORECASE)
        if named and named.group(1).lower() != self.variant:
            return [f"the root is named {base.name!r} but is read as {self.name}"]
        return []

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True,
             allow_outside_root: bool = False) -> SplitRecords:
        base = resolve_root(root, self.root_expected)
        files = self._split_files(base)
        if split not in files:
            raise InputError(f"unknown split {split!r} for {self.name}; expected one of {list(files)}", key="split")
        csv, n_fields, image_dir = files[split]
        report = LoadReport(split=split)
        report.notes.extend(self.root_notes(base))
        rows = parse_dyml_csv(csv, n_fields, image_dir, report, check_files, allow_outside_root)
        if n_fields == 4:  # the benchmark's scales nest: fine in one middle class, a middle class in one coarse one
            report.records = len(rows)
            return SplitRecords(split, [full for _, full, _ in rows], [labels for _, _, labels in rows], SCALES,
                                [(str(csv), number) for number, _, _ in rows], report, nested=True)
        level = split.split("_", 1)[1]
        other = f"{'gallery' if split.startswith('query') else 'query'}_{level}"
        ids = {labels[0] for _, _, labels in rows}
        other_csv, _, other_dir = files[other]
        if other_csv.is_file():  # query and gallery of one level share one id space
            scratch = LoadReport(split=other)
            other_ids = {labels[0] for _, _, labels in parse_dyml_csv(other_csv, 2, other_dir, scratch, False)}
            ids |= other_ids
            if split.startswith("query"):  # the protocol ranks each query's gallery: one without a match is a mistake
                kept = []
                for row in rows:
                    if row[2][0] in other_ids:
                        kept.append(row)
                    else:
                        report.add(f"query label {row[2][0]} has no gallery item in {other_csv.name} (every query of "
                                   f"the DyML benchmark has matches in its gallery)", csv, row[0])
                rows = kept
        report.records = len(rows)
        locations = [(str(csv), number) for number, _, _ in rows]
        raw: list[tuple[Hashable, ...]] = [labels for _, _, labels in rows]
        _, class_ids = contiguous_ids(sorted(ids))  # type: ignore[type-var]  # ids of one kind (str or int)
        return SplitRecords(split, [full for _, full, _ in rows], raw, (level,), locations, report,
                            class_ids=[class_ids])
