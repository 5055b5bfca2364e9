"""Readers for the four standard class-disjoint retrieval benchmarks (Musgrave et al., ECCV 2020).

* **CUB-200-2011** (``cub200``): ``images.txt`` (``image_id path``), ``image_class_labels.txt``
  (``image_id class_id``), optional ``classes.txt`` (``class_id name``); images under ``images/``. Classes 1–100
  are ``train``, 101–200 ``test`` (the per-image ``train_test_split.txt`` is a classification split, ignored).
  ``root`` may be the folder holding ``images.txt`` or its parent holding ``CUB_200_2011/``.
* **CARS196** (``cars196``): ``cars_annos.mat`` with the struct array ``annotations`` (``relative_im_path``,
  ``class`` 1-based, ``test`` ignored); classes 1–98 ``train``, 99–196 ``test``. Without it, the devkit layout
  of the common mirrors (``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``, ``cars_train/``,
  ``cars_test/``) is read into the same class ids.
* **Stanford Online Products** (``sop``): ``Ebay_train.txt`` / ``Ebay_test.txt``, a header row then
  ``image_id class_id super_class_id path``; labels ``[N, 2]`` = (class_id, super_class_id). An image_id listed
  on two rows of a file is a problem (kind ``duplicate``) of the second.
* **In-Shop Clothes** (``inshop``): ``list_eval_partition.txt`` (at the root or in ``Eval/``): line 1 the image
  count, line 2 the header, then ``image_name item_id evaluation_status``; splits ``train``, ``query``,
  ``gallery`` (query and gallery share one id map). ``with_category=True`` adds the garment category derived from
  the path (``img/<GENDER>/<Category>/<item>/<file>``) as a second, coarser scale (checked for consistency). A row
  whose image lies in an item folder (``id_...``) other than its ``item_id`` is a problem, and so are a query row
  whose item has no gallery row and an image listed as query and again as gallery (the protocol's query and
  gallery are disjoint, every query item has gallery images).
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.data.base import LoadReport, SplitRecords, contiguous_ids
from dynametric.data.readers import (
    DuplicateTracker,
    class_in_range,
    image_exists,
    image_folder,
    missing_images_summary,
    parse_int,
    read_lines,
    require_file,
    resolve_root,
)
from dynametric.errors import InputError


def _unknown_split(name: str, split: str, valid: list[str]) -> InputError:
    return InputError(f"unknown split {split!r} for {name}; expected one of {valid}", key="split")


class CUB200Format:
    name = "cub200"
    root_expected = "CUB_200_2011 with images.txt"
    options: dict[str, object] = {"image_root": None}
    TRAIN_MAX_CLASS = 100
    SCALES = ("fine",)

    def declared_scales(self, **_: object) -> tuple[str, ...]:
        """The scale names of every split (known without reading the data)."""
        return self.SCALES

    def _base(self, root: str | Path | None) -> Path:
        base = resolve_root(root, self.root_expected)
        if not (base / "images.txt").exists() and (base / "CUB_200_2011" / "images.txt").exists():
            base = base / "CUB_200_2011"
        return base

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        return ["train", "test"]

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True,
             image_root: str | Path | None = None) -> SplitRecords:
        if split not in ("train", "test"):
            raise _unknown_split(self.name, split, ["train", "test"])
        given = resolve_root(root, self.root_expected)
        base = self._base(root)
        report = LoadReport(split=split)
        images_txt = require_file(base / "images.txt", "'image_id relative_path' per line")
        labels_txt = require_file(base / "image_class_labels.txt", "'image_id class_id' per line")
        paths: dict[int, tuple[str, int]] = {}
        for number, text in read_lines(images_txt, report):
            parts = text.split(None, 1)
            iid = parse_int(parts[0]) if len(parts) == 2 else None
            if iid is None:
                report.add(f"expected 'image_id relative_path', got {text.strip()!r}", images_txt, number)
            elif iid in paths:
                report.add(f"image_id {iid} repeats line {paths[iid][1]}", images_txt, number, "duplicate")
            else:
                paths[iid] = (parts[1].strip(), number)
        classes: dict[int, tuple[int, int]] = {}
        out_of_range: set[int] = set()  # image ids whose class is reported as out of range (not also "no class")
        for number, text in read_lines(labels_txt, report):
            parts = text.split()
            ints = [parse_int(p) for p in parts]
            if len(parts) != 2 or None in ints:
                report.add(f"expected 'image_id class_id' (two integers), got {text.strip()!r}", labels_txt, number)
            elif ints[0] in classes:
                report.add(f"image_id {ints[0]} repeats line {classes[ints[0]][1]}", labels_txt, number, "duplicate")
            elif ints[0] not in paths:
                report.add(f"image_id {ints[0]} is not in images.txt", labels_txt, number)
            elif (cls := class_in_range(ints[1], 2 * self.TRAIN_MAX_CLASS, report, labels_txt, number,
                                        f"image_id {ints[0]}")) is None:
                out_of_range.add(ints[0])  # type: ignore[arg-type]
            else:
                classes[ints[0]] = (cls, number)  # type: ignore[index]
        for iid, (_, number) in paths.items():
            if iid not in classes and iid not in out_of_range:
                report.add(f"image_id {iid} has no class in image_class_labels.txt", images_txt, number)
        names: dict[Hashable, str] = {}
        classes_txt = base / "classes.txt"
        if classes_txt.is_file():
            for _, text in read_lines(classes_txt, LoadReport(split=split)):
                parts = text.split(None, 1)
                if len(parts) == 2 and parse_int(parts[0]) is not None:
                    names[int(parts[0])] = parts[1].strip()
        first = next(iter(paths.values()), None)
        images = image_folder(given, base / "images", image_root, first and first[0], report)
        out_paths, raw, locs = [], [], []
        dup = DuplicateTracker(report, check_links=check_files)
        checked = missing = 0
        for iid in sorted(classes):
            cls, _ = classes[iid]
            if (cls <= self.TRAIN_MAX_CLASS) != (split == "train"):
                continue
            rel, img_line = paths[iid]
            full = os.path.join(str(images), rel)
            checked += 1
            if not image_exists(full, report, images_txt, img_line, check_files, listed=rel):
                missing += 1
                continue
            if not dup.accept(rel, (cls,), images_txt, img_line, path=full):
                continue
            out_paths.append(full)
            raw.append((cls,))
            locs.append((str(images_txt), img_line))  # the file that lists the image's path
        if missing:
            missing_images_summary(report, images_txt, images, [rel for rel, _ in paths.values()], checked, missing)
        report.records = len(out_paths)
        return SplitRecords(split, out_paths, raw, self.SCALES, locs, report, class_names=[names] if names else None)


def _read_mat(mat_path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` (``squeeze_me``); a file it cannot read is one :class:`InputError` naming it, whatever
    scipy raised (versions differ: scipy 1.10 raises an ``IndexError`` on some garbage files)."""
    import struct

    import scipy.io

    try:
        return scipy.io.loadmat(str(mat_path), squeeze_me=True)
    except (ValueError, OSError, TypeError, NotImplementedError, IndexError, KeyError, EOFError, struct.error,
            scipy.io.matlab.MatReadError) as exc:
        raise InputError(f"cannot read MATLAB file ({type(exc).__name__}: {exc})", file=mat_path) from exc


def _load_struct(mat_path: Path, var: str, fields: tuple[str, ...]) -> tuple[dict[str, Any], np.ndarray]:
    """Load a MATLAB file and return it with its struct array ``var`` (1-D), checking the required fields."""
    mat = _read_mat(mat_path)
    arr = mat.get(var)
    if arr is None or getattr(arr, "dtype", None) is None or arr.dtype.names is None:
        raise InputError(f"expected a struct array {var!r}", file=mat_path, key=var)
    arr = np.atleast_1d(arr)
    names = arr.dtype.names or ()  # not None: checked above
    for fld in fields:
        if fld not in names:
            raise InputError(f"{var!r} lacks the field {fld!r} (has {list(names)})", file=mat_path,
                             key=f"{var}.{fld}")
    return mat, arr


class Cars196Format:
    """CARS196 from the official ``cars_annos.mat`` or, failing that, the devkit layout of the common mirrors
    (``devkit/cars_train_annos.mat`` + ``cars_test_annos_withlabels.mat`` with images in ``cars_train/`` and
    ``cars_test/``; also under ``stanford_cars/``). Both give the same 1–196 class ids; the DML split is by class."""

    name = "cars196"
    root_expected = "CARS196 with cars_annos.mat"
    options: dict[str, object] = {}
    TRAIN_MAX_CLASS = 98
    SCALES = ("fine",)

    def declared_scales(self, **_: object) -> tuple[str, ...]:
        """The scale names of every split (known without reading the data)."""
        return self.SCALES

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        return ["train", "test"]

    @staticmethod
    def _devkit_sources(base: Path) -> list[tuple[Path, Path]] | None:
        for top in (base, base / "stanford_cars"):
            train = top / "devkit" / "cars_train_annos.mat"
            test = next((p for p in (top / "cars_test_annos_withlabels.mat",
                                     top / "devkit" / "cars_test_annos_withlabels.mat") if p.is_file()), None)
            if train.is_file() and test is not None:
                return [(train, top / "cars_train"), (test, top / "cars_test")]
        return None

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True) -> SplitRecords:
        if split not in ("train", "test"):
            raise _unknown_split(self.name, split, ["train", "test"])
        base = resolve_root(root, self.root_expected)
        report = LoadReport(split=split)
        entries: list[tuple[Path, int, str, Any, Path]] = []  # (mat file, record #, relative path, class, image dir)
        names: dict[Hashable, str] = {}
        devkit = None if (base / "cars_annos.mat").is_file() else self._devkit_sources(base)
        if devkit is None:
            mat_path = require_file(base / "cars_annos.mat", "the CARS196 annotation file with 'annotations' (or "
                                    "the devkit layout devkit/cars_train_annos.mat + cars_test_annos_withlabels.mat)")
            mat, ann = _load_struct(mat_path, "annotations", ("relative_im_path", "class"))
            report.files.append(str(mat_path))
            entries += [(mat_path, i, str(r["relative_im_path"]).strip(), r["class"], base)
                        for i, r in enumerate(ann, 1)]
            if "class_names" in mat:
                names = {i: str(n) for i, n in enumerate(np.atleast_1d(mat["class_names"]).tolist(), 1)}
        else:
            for mat_path, image_dir in devkit:
                _, ann = _load_struct(mat_path, "annotations", ("fname", "class"))
                report.files.append(str(mat_path))
                entries += [(mat_path, i, str(r["fname"]).strip(), r["class"], image_dir) for i, r in enumerate(ann, 1)]
            meta = devkit[0][0].parent / "cars_meta.mat"
            if meta.is_file():
                classes = _read_mat(meta).get("class_names")
                if classes is not None:
                    names = {i: str(n) for i, n in enumerate(np.atleast_1d(classes).tolist(), 1)}
        out_paths, raw, locs = [], [], []
        dup = DuplicateTracker(report, check_links=check_files)
        for mat_path, i, rel, cls_value, image_dir in entries:
            if not rel:
                report.add(f"annotation #{i}: expected an image path, got {rel!r}", mat_path, None,
                           split_unknown=True)
                continue
            cls = class_in_range(cls_value, 2 * self.TRAIN_MAX_CLASS, report, mat_path, None, f"annotation #{i}")
            if cls is None:
                continue
            if (cls <= self.TRAIN_MAX_CLASS) != (split == "train"):
                continue
            full = os.path.join(str(image_dir), rel)
            if (image_exists(full, report, mat_path, None, check_files, f"annotation #{i}: ", listed=rel)
                    and dup.accept(rel, (cls,), mat_path, None, path=full, at=f"annotation #{i}")):
                out_paths.append(full)
                raw.append((cls,))
                locs.append((f"{mat_path} annotation #{i}", None))
        report.records = len(out_paths)
        return SplitRecords(split, out_paths, raw, self.SCALES, locs, report, class_names=[names] if names else None)


class SOPFormat:
    name = "sop"
    root_expected = "Stanford_Online_Products with Ebay_train.txt"
    options: dict[str, object] = {"image_root": None}
    SCALES = ("product", "category")
    _FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}

    def declared_scales(self, **_: object) -> tuple[str, ...]:
        """The scale names of every split (known without reading the data)."""
        return self.SCALES

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        return ["train", "test"]

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True,
             image_root: str | Path | None = None) -> SplitRecords:
        if split not in self._FILES:
            raise _unknown_split(self.name, split, list(self._FILES))
        base = resolve_root(root, self.root_expected)
        path = require_file(base / self._FILES[split], "'image_id class_id super_class_id path' rows after a header")
        report = LoadReport(split=split)
        out_paths, raw, locs = [], [], []
        dup = DuplicateTracker(report, check_links=check_files)
        lines = read_lines(path, report)
        first = next((p[3] for p in (t.split() for _, t in lines) if len(p) == 4 and p[3] != "path"), None)
        prefix = os.path.join(str(image_folder(base, base, image_root, first, report)), "")
        report.header[str(path)] = "none"
        image_ids: dict[int, tuple[int, str]] = {}  # image_id -> (line, path) of its first row
        checked = missing = 0
        for k, (number, text) in enumerate(lines):
            parts = text.split()
            if k == 0 and parts[:3] == ["image_id", "class_id", "super_class_id"]:
                report.header[str(path)] = "own_line"
                continue
            image_id, *ints = [parse_int(p) for p in parts[:3]]
            if len(parts) != 4 or image_id is None or None in ints:
                report.add(f"expected 'image_id class_id super_class_id path', got {text.strip()!r}", path, number)
                continue
            earlier = image_ids.setdefault(image_id, (number, parts[3]))
            if earlier[0] != number:  # two rows, one id: one of them is not what the file's author meant
                report.add(f"image_id {image_id} listed again ({parts[3]}); line {earlier[0]} gives it to "
                           f"{earlier[1]}: each row has its own image_id", path, number, "duplicate")
                continue
            full = prefix + parts[3]
            checked += 1
            if not image_exists(full, report, path, number, check_files, listed=parts[3]):
                missing += 1
                continue
            if not dup.accept(parts[3], tuple(ints), path, number, path=full):
                continue
            out_paths.append(full)
            raw.append((ints[0], ints[1]))
            locs.append((str(path), number))
        if missing:
            folder = Path(prefix)
            missing_images_summary(report, path, folder, [p for _, p in image_ids.values()], checked, missing,
                                   [folder.parent])
        report.records = len(out_paths)
        return SplitRecords(split, out_paths, raw, self.SCALES, locs, report)


class InShopFormat:
    name = "inshop"
    root_expected = "In-Shop Clothes with list_eval_partition.txt and img/"
    options: dict[str, object] = {"with_category": False, "image_root": None}
    SPLITS = ("train", "query", "gallery")

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        return list(self.SPLITS)

    @staticmethod
    def declared_scales(with_category: bool = False, **_: object) -> tuple[str, ...]:
        """The scale names of every split: ``item`` (and ``category`` with ``with_category``)."""
        return ("item", "category") if with_category else ("item",)

    def _partition_file(self, base: Path) -> Path:
        for cand in (base / "list_eval_partition.txt", base / "Eval" / "list_eval_partition.txt"):
            if cand.is_file():
                return cand
        return require_file(base / "list_eval_partition.txt",
                            "line 1 = image count, line 2 = header, then 'image_name item_id evaluation_status'")

    def _parse(self, base: Path, report: LoadReport, split: str | None = None
               ) -> tuple[Path, list[tuple[int, str, str, str]]]:
        """The partition file and its well-formed rows; a malformed row is a problem of the split its last field
        names (of ``split`` only when that is the one), or of every split when it names none. Line 1's image count
        is checked against the data rows, well-formed or not (a bad row is its own problem, not a missing one)."""
        path = self._partition_file(base)
        lines = read_lines(path, report)
        rows: list[tuple[int, str, str, str]] = []
        declared: int | None = None
        data_rows = 0
        report.header[str(path)] = "none"
        for k, (number, text) in enumerate(lines):
            parts = text.split()
            if k == 0 and len(parts) == 1 and parse_int(parts[0]) is not None:
                declared = int(parts[0])
                continue
            if k <= 1 and parts == ["image_name", "item_id", "evaluation_status"]:
                report.header[str(path)] = "own_line"
                continue
            data_rows += 1
            if len(parts) != 3 or parts[2] not in self.SPLITS:
                owner = parts[-1] if parts[-1] in self.SPLITS else None
                if owner is None or split in (None, owner):
                    report.add(f"expected 'image_name item_id evaluation_status' with status in {list(self.SPLITS)}, "
                               f"got {text.strip()!r}", path, number, split_unknown=owner is None)
                continue
            rows.append((number, parts[0], parts[1], parts[2]))
        if declared is not None and declared != data_rows:
            report.add(f"line 1 declares {declared} images but {data_rows} rows follow", path, 1, "count_mismatch")
        return path, rows

    @staticmethod
    def _category(image_name: str) -> str | None:
        parts = image_name.split("/")
        return "/".join(parts[1:3]) if len(parts) >= 5 else None  # img/<GENDER>/<Category>/<item>/<file>

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True,
             with_category: bool = False, image_root: str | Path | None = None) -> SplitRecords:
        if split not in self.SPLITS:
            raise _unknown_split(self.name, split, list(self.SPLITS))
        base = resolve_root(root, self.root_expected)
        report = LoadReport(split=split)
        path, rows = self._parse(base, report, split)
        images = image_folder(base, base, image_root, rows[0][1] if rows else None, report,
                              [(base / "Img", "the release's Img/img.zip extracted in Img/")])
        out_paths, raw, locs = [], [], []
        dup = DuplicateTracker(report, check_links=check_files)
        gallery_items = {item for _, _, item, status in rows if status == "gallery"} if split == "query" else set()
        roles: dict[str, tuple[str, int]] = {}  # a query or gallery image -> (its status, line) at its first listing
        checked = missing = 0
        for number, name, item, status in rows:
            if split != "train" and status in ("query", "gallery"):
                first = roles.setdefault(os.path.normpath(name), (status, number))
                if first[0] != status and status == split:  # the later listing is the problem (as a repeat is)
                    report.add(f"{name} is listed as {first[0]} (line {first[1]}) and as {status}: In-Shop's query "
                               "and gallery images are disjoint, each image has one evaluation_status (a listing "
                               "mistake; eval.query_in_gallery does not apply)", path, number, "duplicate")
                    continue
            if status != split:
                continue
            if status == "query" and item not in gallery_items:
                report.add(f"query item {item} has no gallery image: In-Shop's protocol lists gallery images of every "
                           "query item (a query without one cannot be scored)", path, number)
                continue
            folder = name.split("/")[-2] if "/" in name else None
            if folder is not None and folder.startswith("id_") and folder != item:
                report.add(f"item_id {item} contradicts the image's path {name}, which lies in the folder of item "
                           f"{folder} (the release keeps each item's images in a folder named by its item_id)", path,
                           number)
                continue
            labels: tuple[Hashable, ...] = (item,)
            if with_category:
                cat = self._category(name)
                if cat is None:
                    report.add(f"cannot derive a category from {name!r} (expected img/<GENDER>/<Category>/<item>/"
                               f"<file>)", path, number)
                    continue
                labels = (item, cat)
            full = os.path.join(str(images), name)
            checked += 1
            if not image_exists(full, report, path, number, check_files, listed=name):
                missing += 1
                continue
            if not dup.accept(name, labels, path, number, path=full):
                continue
            out_paths.append(full)
            raw.append(labels)
            locs.append((str(path), number))
        if missing:  # a root one level too deep (Eval/, which holds the partition file): one line says so first
            missing_images_summary(report, path, images, [r[1] for r in rows], checked, missing,
                                   [base.parent, base.parent / "Img"])
        report.records = len(out_paths)
        scales = self.declared_scales(with_category)
        class_ids = None
        if split in ("query", "gallery"):  # one id space for query and gallery
            pair = [r for r in rows if r[3] in ("query", "gallery")]
            class_ids = [contiguous_ids(sorted({r[2] for r in pair}))[1]]
            if with_category:
                cats = {self._category(r[1]) for r in pair} - {None}
                class_ids.append(contiguous_ids(sorted(cats))[1])  # type: ignore[type-var]  # None removed above
        return SplitRecords(split, out_paths, raw, scales, locs, report, class_ids=class_ids)
