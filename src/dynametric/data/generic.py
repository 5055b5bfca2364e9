"""Generic formats for users' own data: a hierarchical CSV and a folder tree of any depth.

**CSV** (``csv``)::

    path,split,fine,middle,coarse
    imgs/0001.jpg,train,3,1,0
    imgs/0002.jpg,query,brown_bear,bear,mammal

A header row naming ``path``, ``split`` and one column per scale, **finest first** (the column names become the
scale names: none empty, each once, none ``mean``). Splits are ``train``, ``val``, ``test``, ``query``,
``gallery``. A label cell that is an integer (``[+-]?[0-9]+`` within int64: ``01``, ``1`` and ``+1`` are the class
1) is that integer, any other cell its text (``1.0``, ``x``), whatever the rest of the column holds; where two
spellings of one integer occur in a split's id space, its load report notes them with their lines. Classes are
numbered by sorted raw id: integers by value, then text by name. Relative paths are resolved against
``image_root`` (default: the CSV's folder; a relative ``image_root`` is relative to the CSV's folder,
:func:`~dynametric.data.readers.csv_image_root`). ``root`` is the CSV file, or a folder holding ``csv_file``
(default ``labels.csv``). ``query`` and ``gallery`` share one id map. Standard CSV quoting, line breaks inside
quotes included (a record is numbered by the line it starts on). A bad row is a problem of the split its ``split``
cell names; one whose split cannot be read is a problem of every split.

**Folder** (``folder``)::

    root/[<split>/]<coarse>/<middle>/<fine>/*.jpg

Every image must sit at the same depth; the depth is the number of scales. If ``root`` holds split folders
(``train``, ``val``, ``test``, ``query``, ``gallery``) those are the splits, otherwise the whole tree is the split
``all``. ``class_key="path"`` (default) identifies a class by its full path (``mammal/bear``), so the tree is
consistent by construction; ``class_key="name"`` identifies it by the folder name alone, and then the same fine
name under two parents is a hierarchy violation.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

from dynametric.data.base import IMAGE_EXTENSIONS, LoadReport, SplitRecords, contiguous_ids
from dynametric.data.readers import (
    DuplicateTracker,
    RootGuard,
    csv_in_root,
    image_exists,
    non_utf8_name,
    printable_path,
    read_csv_rows,
    require_file,
    require_header,
    resolve_root,
    start_csv_read,
)
from dynametric.errors import InputError
from dynametric.labels import check_scale_names, default_scale_names
from dynametric.utils.readers import check_header_scale_names, integer_label, label_cell, merged_ids, merged_ids_note

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "query", "gallery")
_LISTED = 5  # file names a warning spells out


class CSVFormat:
    name = "csv"
    root_expected = "a CSV file with columns path, split, <scales...> or a folder holding it"
    options: dict[str, object] = {"csv_file": "labels.csv", "image_root": None, "allow_outside_root": False}

    def _csv_path(self, root: str | Path | None, csv_file: str) -> Path:
        return csv_in_root(root, csv_file, self.root_expected)

    def _parse(self, path: Path, report: LoadReport) -> tuple[list[str], list[tuple[int, list[str]]]]:
        require_file(path, "a CSV with a header 'path,split,<finest scale>,...,<coarsest scale>'")
        rows = read_csv_rows(path, report, skipinitialspace=True)
        require_header(rows, report, path, "a header 'path,split,<scales...>'")
        header = [h.strip() for h in rows[0][1]]
        report.header[str(path)] = "own_line"
        missing = [c for c in ("path", "split") if c not in header]
        scales = [h for h in header if h not in ("path", "split")]
        if missing or not scales:
            raise InputError(f"header must name 'path', 'split' and at least one scale column (finest first), each "
                             f"once; got {header}", file=path, line=rows[0][0])
        check_header_scale_names(scales, header, path, rows[0][0])  # none empty (or blank), repeated, or 'mean'
        if len(set(header)) != len(header):
            raise InputError(f"header must name 'path', 'split' and at least one scale column (finest first), each "
                             f"once; got {header}", file=path, line=rows[0][0])
        return header, [(n, [f.strip() for f in r]) for n, r in rows[1:]]

    def splits(self, root: str | Path | None, csv_file: str = "labels.csv", **_: object) -> list[str]:
        """The splits the rows name (a malformed row too, where its split cell can be read); ``["train"]`` when no
        row names one (a header-only file, every split cell unreadable), so that reading it reports why."""
        path = self._csv_path(root, csv_file)
        header, rows = self._parse(path, LoadReport(split="*"))
        col = header.index("split")
        found = {r[col] for _, r in rows if len(r) > col}
        return [s for s in SPLIT_NAMES if s in found] or ["train"]

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True, csv_file: str = "labels.csv",
             image_root: str | Path | None = None, allow_outside_root: bool = False) -> SplitRecords:
        path, report, header, rows, img_root = start_csv_read(self, root, split, SPLIT_NAMES, csv_file, image_root)
        i_path, i_split = header.index("path"), header.index("split")
        scale_cols = [i for i, h in enumerate(header) if h not in ("path", "split")]
        scales = tuple(header[i] for i in scale_cols)
        good: list[tuple[int, list[str]]] = []
        for number, r in rows:  # a bad row is a problem of its own split, or of every split if that is unknown
            if len(r) != len(header):
                owner = r[i_split] if len(r) > i_split and r[i_split] in SPLIT_NAMES else None
                if owner is None or owner == split:
                    report.add(f"expected {len(header)} fields {header}, got {len(r)}: {r}"
                               + (" (its split cannot be read)" if owner is None else ""), path, number,
                               split_unknown=owner is None)
            elif r[i_split] not in SPLIT_NAMES:
                report.add(f"split must be one of {list(SPLIT_NAMES)}, got {r[i_split]!r}", path, number,
                           split_unknown=True)
            elif not r[i_path] or any(not r[i] for i in scale_cols):
                if r[i_split] == split:
                    report.add(f"empty path or label in {r}", path, number)
            else:
                good.append((number, r))
        group = ("query", "gallery") if split in ("query", "gallery") else (split,)
        out_paths, raw, locs = [], [], []
        ids: list[set[Hashable]] = [set() for _ in scale_cols]
        dup = DuplicateTracker(report)
        guard = RootGuard(img_root, allow_outside_root, check_links=check_files)
        for number, r in good:
            if r[i_split] not in group:  # another split's row: its labels are read when that split is (reading a
                continue                 # label is never a problem: a cell that is no integer is a text class)
            labels = tuple(label_cell(r[i]) for i in scale_cols)  # each cell by itself, never by its column
            for s, v in enumerate(labels):
                ids[s].add(v)
            if r[i_split] != split:
                continue
            full = os.path.join(str(img_root), r[i_path])
            real = guard.resolve_rel(r[i_path])
            if not guard.admit(real, r[i_path], report, path, number):
                continue
            if not image_exists(full, report, path, number, check_files, listed=r[i_path]):
                continue
            if not dup.accept(r[i_path], labels, path, number, identity=real):
                continue
            out_paths.append(full)
            raw.append(labels)
            locs.append((str(path), number))
        report.records = len(out_paths)
        if split == "query":
            _queries_without_gallery(good, i_split, scale_cols, header, raw, locs, path, report)
        for i in scale_cols:  # '01' and '1' are one class (the split's id space: query and gallery share one)
            merged = merged_ids(((r[i], n) for n, r in good if r[i_split] in group), integer_label)
            if merged:
                report.notes.append(f"column {header[i]!r} of {path.name}, split {split!r}: "
                                    f"{merged_ids_note(merged, 'class')}")
        class_ids = [contiguous_ids(list(s))[1] for s in ids] if len(group) == 2 else None
        return SplitRecords(split, out_paths, raw, scales, locs, report, class_ids=class_ids)


def _queries_without_gallery(good: list[tuple[int, list[str]]], i_split: int, scale_cols: list[int],
                              header: list[str], raw: Sequence[tuple[Hashable, ...]],
                              locs: Sequence[tuple[str, int | None]], path: Path, report: LoadReport) -> None:
    """A warning per scale at which queries (``raw``, at ``locs``) have no gallery row of their class: the metrics
    can score no such query at that scale, and count it in ``excluded_queries`` (``eval.empty_queries: exclude``) or
    score it 0 (``count_as_zero``). A warning, not a problem: the csv is the user's own, whose queries may lack
    matches on purpose (distractors, a coarse-only match); OML, In-Shop and DyML define every query as matched."""
    for s, i in enumerate(scale_cols):
        gallery = {label_cell(r[i]) for _, r in good if r[i_split] == "gallery"}
        lacking = [k for k, labels in enumerate(raw) if labels[s] not in gallery]
        if lacking:
            first = lacking[0]
            report.warnings.append(
                f"{len(lacking)} of the {len(raw)} queries of {path.name} have no gallery row of their "
                f"{header[i]!r} class (first: line {locs[first][1]}, class {raw[first][s]!r}): at that scale the "
                "evaluation cannot score them and counts them in excluded_queries (eval.empty_queries: exclude) or "
                "scores them 0 (count_as_zero)")


def _images_under(folder: str, top: Path) -> list[str]:
    """The files with an image extension under the hidden ``folder`` (a ``folder`` tree does not read it), as paths
    relative to ``top``; a link to a folder is not followed (nor is ``folder`` itself when it is one), and a folder
    that cannot be listed is passed over (its images are not read either way)."""
    if os.path.islink(folder):
        return []
    return [printable_path(os.path.relpath(os.path.join(d, f), top)) for d, _, names in os.walk(folder)
            for f in names if Path(f).suffix.lower() in IMAGE_EXTENSIONS]


class FolderFormat:
    name = "folder"
    root_expected = "a folder tree root/[<split>/]<coarse>/.../<fine>/<image>"
    options: dict[str, object] = {"class_key": "path", "scale_names": None, "allow_outside_root": False}

    @staticmethod
    def declared_scales(scale_names: list[str] | None = None, **_: object) -> tuple[str, ...] | None:
        """The option ``scale_names`` when given (checked: distinct strings, no ``mean``); otherwise the names follow
        from the tree's depth (``None``)."""
        if isinstance(scale_names, (list, tuple)):
            return check_scale_names(scale_names)
        return None

    def _base(self, root: str | Path | None) -> Path:
        """The tree's root folder: a file there is a usage error keyed ``root`` (was read as a tree without split
        folders, and then found no split ``train`` in it)."""
        base = resolve_root(root, self.root_expected)
        if not base.is_dir():
            hint = ("for a CSV file use the format csv (or oml for an OML dataset CSV)" if base.suffix.lower() == ".csv"
                    else "give the tree's folder, or the format that reads this file")
            raise InputError(f"{base} is a file, not a folder (the folder format reads {self.root_expected}; {hint})",
                             key="root")
        return base

    def splits(self, root: str | Path | None, **_: object) -> list[str]:
        base = self._base(root)
        found = [s for s in SPLIT_NAMES if (base / s).is_dir()]
        return found or ["all"]

    @staticmethod
    def _beside_splits(base: Path, splits: list[str], report: LoadReport) -> None:
        """A folder or image beside the split folders is in no split: a problem (of every split) naming it."""
        try:
            names = sorted(n for n in os.listdir(base) if not n.startswith(".") and n not in splits)
        except OSError as exc:
            report.add(f"cannot read folder ({exc.strerror or exc})", printable_path(base), None, "unreadable_folder")
            return
        where = f"beside the split folders {', '.join(s + '/' for s in splits)}"
        for name in names:
            path = base / name
            if path.is_dir():
                case = f"; split folders are lower case ({name.lower()}/)" if name.lower() in SPLIT_NAMES else ""
                report.add(f"folder {printable_path(name)}/ {where} is in no split, so its images would be left out "
                           f"(move it into a split folder{case})", printable_path(path), None, "outside_split",
                           split_unknown=True)
            elif Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                report.add(f"image {printable_path(name)} {where} is in no split (move it into a split folder)",
                           printable_path(path), None, "outside_split", split_unknown=True)

    def read(self, root: str | Path | None, split: str, *, check_files: bool = True, class_key: str = "path",
             scale_names: list[str] | None = None, allow_outside_root: bool = False) -> SplitRecords:
        if class_key not in ("path", "name"):
            raise InputError(f"class_key must be 'path' or 'name', got {class_key!r}", key="class_key")
        if scale_names is not None:  # before any folder is read: a repeated name merges two scales' results
            scale_names = list(check_scale_names(scale_names))
        base = self._base(root)
        valid = self.splits(base)
        if split not in valid:
            raise InputError(f"unknown split {split!r} for the folder tree {base}; found {valid}", key="split")
        top = base if split == "all" else base / split
        report = LoadReport(split=split, files=[str(top)])
        if split != "all":
            self._beside_splits(base, valid, report)
        entries: list[tuple[str, ...]] = []
        ignored: list[str] = []

        def unreadable(exc: OSError) -> None:  # os.walk would skip the folder without a word
            report.add(f"cannot read folder ({exc.strerror or exc}); its images are missing",
                       None if exc.filename is None else printable_path(exc.filename), None, "unreadable_folder")

        guard = RootGuard(top, allow_outside_root)
        hidden: list[str] = []  # image files not read for a name, or a folder above them, starting with '.'
        for dirpath, dirnames, filenames in os.walk(top, onerror=unreadable, followlinks=allow_outside_root):
            hidden += [rel for d in sorted(dirnames) if d.startswith(".")
                       for rel in _images_under(os.path.join(dirpath, d), top)]
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in [d for d in dirnames if not allow_outside_root and os.path.islink(os.path.join(dirpath, d))]:
                dirnames.remove(d)  # a linked folder may lead anywhere (or loop): reported, not followed
                report.add(f"symbolic link to a folder, not followed: -> {os.path.realpath(os.path.join(dirpath, d))} "
                           "(set the format option allow_outside_root: true to follow links)",
                           os.path.join(dirpath, d), None, "outside_root")
            for fn in sorted(filenames):
                if fn.startswith("."):
                    if Path(fn).suffix.lower() in IMAGE_EXTENSIONS:
                        hidden.append(printable_path(os.path.relpath(os.path.join(dirpath, fn), top)))
                    continue
                if Path(fn).suffix.lower() not in IMAGE_EXTENSIONS:
                    ignored.append(printable_path(os.path.relpath(os.path.join(dirpath, fn), top)))
                    continue
                if (bad := non_utf8_name(os.path.join(dirpath, fn))) is not None:
                    report.add(bad, printable_path(os.path.join(dirpath, fn)), None, "non_utf8_name")
                    continue
                entries.append(Path(dirpath, fn).relative_to(top).parts)
        if ignored:
            shown = ", ".join(ignored[:_LISTED]) + (f", ... ({len(ignored) - _LISTED} more)"
                                                   if len(ignored) > _LISTED else "")
            report.warnings.append(f"{len(ignored)} file(s) in {printable_path(top)} not read, their names lacking an "
                                   f"image extension ({' '.join(sorted(IMAGE_EXTENSIONS))}): {shown}")
        if hidden:
            hidden.sort()
            shown = ", ".join(hidden[:_LISTED]) + (f", ... ({len(hidden) - _LISTED} more)"
                                                  if len(hidden) > _LISTED else "")
            report.warnings.append(f"{len(hidden)} image file(s) in {printable_path(top)} not read, being hidden (a "
                                   f"name or a folder above it starting with '.'; rename to read them): {shown}")
        if not entries:
            return SplitRecords(split, [], [], tuple(scale_names or ["fine"]), [], report)
        counts = Counter(len(e) - 1 for e in entries if len(e) > 1)
        if not counts:
            raise InputError("images lie directly in the root; expected one folder per scale "
                             "(<coarse>/.../<fine>/<image>)", file=top)
        depth = counts.most_common(1)[0][0]  # the majority depth; images at any other depth are problems
        if scale_names is not None and len(scale_names) != depth:
            raise InputError(f"{len(scale_names)} scale names given for a tree of depth {depth}", key="scale_names")
        names = tuple(scale_names) if scale_names is not None else tuple(default_scale_names(depth))
        out_paths, raw, locs = [], [], []
        dup = DuplicateTracker(report)  # a link to an image already listed (allow_outside_root follows links)
        for e in entries:
            rel = "/".join(e)
            if len(e) - 1 != depth:
                report.add(f"image at depth {len(e) - 1}, but the tree's images are at depth {depth} "
                           f"(one folder per scale): {rel}", top / rel, None)
                continue
            dirs = e[:-1]  # coarsest first
            if class_key == "path":
                labels = tuple("/".join(dirs[: depth - s]) for s in range(depth))
            else:
                labels = tuple(dirs[depth - 1 - s] for s in range(depth))
            full = str(top / rel)
            real = guard.resolve(full)
            if not guard.admit(real, rel, report, top / rel, None):
                continue
            if not image_exists(full, report, top / rel, None, check_files):
                continue
            if not dup.accept(rel, labels, top / rel, None, identity=real):
                continue
            out_paths.append(full)
            raw.append(labels)
            locs.append((full, None))
        report.records = len(out_paths)
        return SplitRecords(split, out_paths, raw, names, locs, report)
