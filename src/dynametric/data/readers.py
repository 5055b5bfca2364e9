"""Shared helpers of the file readers: line and CSV reading with blank-line counting, file checks, path
confinement, the duplicate check."""

from __future__ import annotations

import csv
import io
import itertools
import os
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.data.base import LoadReport, Problem
from dynametric.errors import InputError
from dynametric.utils.readers import decode_utf8, integer_label


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise an :class:`InputError` naming it and what it should hold."""
    if not path.is_file():
        raise InputError(f"file not found (expected {what})", file=path)
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"directory not found (expected {what})", file=path)
    return path


def read_lines(path: Path, report: LoadReport) -> list[tuple[int, str]]:
    """The non-blank lines of a UTF-8 text file as ``(1-based line number, text without the line end)``.

    Blank lines are counted in ``report.blank_lines``; the empty string after a final newline is not a line.
    """
    lines = _read_text(path, report).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if not line.strip():
            report.blank_lines += 1
            continue
        out.append((number, line))
    return out


def _read_text(path: Path, report: LoadReport) -> str:
    """The text of a UTF-8 file (byte order mark dropped, line ends made ``\\n``); the file is listed in the report."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read ({exc})", file=path) from exc
    text = decode_utf8(data, path)
    if str(path) not in report.files:
        report.files.append(str(path))
    return text


def read_csv_rows(path: Path, report: LoadReport, *, skipinitialspace: bool = False) -> list[tuple[int, list[str]]]:
    """The records of a UTF-8 CSV file as ``(1-based line where the record starts, fields)``: :func:`parse_csv`."""
    return parse_csv(_read_text(path, report), path, report, skipinitialspace=skipinitialspace)


def parse_csv(text: str, path: str | Path, report: LoadReport, *,
              skipinitialspace: bool = False) -> list[tuple[int, list[str]]]:
    """The records of CSV ``text`` (from ``path``) as ``(1-based line where the record starts, fields)``.

    Standard CSV quoting: a quoted field may hold commas, doubled quotes and line breaks (the record then spans
    several lines and carries the number of its first one; the lines after it keep their true numbers). Lines are
    counted as :func:`read_lines` counts them. Blank lines (nothing but white space) are counted in
    ``report.blank_lines``. A quote still open at the end of the file, and a record the ``csv`` module cannot parse,
    are problems at the line where the record starts (marked ``split_unknown``: no field of them can be trusted);
    reading goes on with the next line.
    """
    last = text.count("\n") + (1 if text and not text.endswith("\n") else 0)  # the file's last line
    # one extra empty line after the file: it ends the last record, unless a quote is still open and swallows it
    reader = csv.reader(itertools.chain(io.StringIO(text, newline="\n"), ("\n",)), skipinitialspace=skipinitialspace)
    out: list[tuple[int, list[str]]] = []
    end = 0  # the line the previous record ended on
    while True:
        try:
            for row in reader:
                start, end = end + 1, reader.line_num
                if len(row) <= 1 and start == end and (not row or not row[0].strip()):
                    if start <= last:  # (the extra line is no blank line of the file)
                        report.blank_lines += 1
                    continue
                if end > last:
                    rest = f"; lines {start}-{last} (the end of the file) are one record" if last > start else ""
                    report.add(f"unterminated quoted field: a quote opened in this record is never closed{rest}", path,
                               start, split_unknown=True)
                    continue
                out.append((start, row))
            return out
        except csv.Error as exc:
            start, end = end + 1, reader.line_num
            lines = f"line {start}" if end <= start else f"lines {start}-{min(end, last)}"
            if "field limit" in str(exc):
                message = f"a field longer than {csv.field_size_limit()} characters on {lines}; is a quote left open?"
            elif "new-line character" in str(exc):
                message = f"a line break (\\r) inside an unquoted field on {lines} (quote the field)"
            else:
                message = f"not a valid CSV record ({exc})"
            report.add(message, path, start, split_unknown=True)


def require_header(rows: Sequence[tuple[int, list[str]]], report: LoadReport, path: Path, expected: str) -> None:
    """An :class:`InputError` unless :func:`parse_csv` found a first record to be the header: an empty file, or
    a first record that cannot be parsed (a quote left open on the header line), stops the reader."""
    first = next((p for p in report.problems if p.file == str(path)), None)
    if first is not None and first.line is not None and (not rows or first.line < rows[0][0]):
        raise InputError(f"cannot read the header ({first.message})", file=path, line=first.line)
    if not rows:
        raise InputError(f"empty CSV (expected {expected})", file=path)


def image_exists(path: str, report: LoadReport, file: Path, line: int | None, check_files: bool,
                 at: str = "", listed: str | None = None) -> bool:
    """``True`` if ``path`` is a file (or checking is off); otherwise add a ``missing_image`` problem
    (:func:`not_an_image_file`; ``at`` prefixes it, e.g. ``annotation #7: ``). ``listed``: the path as the index
    file gives it, for the hint of :func:`backslash_hint`."""
    if not check_files or os.path.isfile(path):
        return True
    report.add(at + not_an_image_file(path) + backslash_hint(path if listed is None else listed), file, line,
               "missing_image")
    return False


def backslash_hint(listed: str) -> str:
    """`` (backslashes are not path separators here; write imgs/1.jpg)`` for a listed path written with Windows
    separators (``imgs\\1.jpg``) on a system whose separator is ``/``, else ``""``. The path is never converted: a
    backslash is a legal character of a POSIX file name, and the file meant may be another."""
    if "\\" not in listed or os.sep == "\\":
        return ""
    slashed = listed.replace("\\", "/")
    return f" (backslashes are not path separators here; write {slashed})"


MISSING_IMAGES = "missing_images"
"""The kind of the one summary problem of :func:`missing_images_summary` (``data inspect`` lists it first)."""


def missing_images_summary(report: LoadReport, index_file: Path, folder: Path, names: Sequence[str],
                           checked: int, missing: int, probes: Sequence[Path] = ()) -> None:
    """One problem before the split's ``missing_image`` ones when none, or almost none, of the images the index file
    lists is under ``folder`` (a dataset root one level too deep, In-Shop's ``Eval/``): ``names`` are every image
    path the index file lists (relative to ``folder``; all splits, so that each split's reading gives the same
    line), ``checked`` / ``missing`` the split's images looked for and not found. When the split's own images are
    missing (``missing`` at least 90 % of ``checked``), it looks for all of ``names`` (two or more)
    (at most 10 % found: the summary), and for the first one under ``probes`` (folders a root one level up would
    give, e.g. ``root/..`` and ``root/../Img``), which the message names. Each missing image stays a problem of its
    own (kind ``missing_image``); the summary is inserted first (kind :data:`MISSING_IMAGES`), so that a run's
    error and ``data inspect`` lead with it."""
    if not missing or missing * 10 < checked * 9 or len(names) < 2:
        return
    found = sum(os.path.isfile(os.path.join(folder, n)) for n in names)
    if found * 10 > len(names):
        return
    first = names[0]
    where = next((p for p in probes if os.path.isfile(os.path.join(p, first))), None)
    count = (f"none of the {len(names)} images" if found == 0
             else f"only {found} of the {len(names)} images")
    if where is None:
        hint = f"; the first, {first}, is not under {' or '.join(str(p) for p in probes)} either" if probes else ""
        advice = "is the dataset root right?"
    else:
        hint = f"; the first, {first}, is under {where}"
        advice = "is the dataset root one level up?"
    message = (f"{count} {index_file.name} lists {'is' if found == 0 else 'are'} under {folder}{hint}: {advice} "
               "(each missing image is listed too)")
    report.problems.insert(0, Problem(message, str(index_file), None, MISSING_IMAGES))


def not_an_image_file(path: str) -> str:
    """Why ``path``, which is no regular file, cannot be an image: ``image file not found: P``, ``P is a folder;
    expected an image file`` (never "not found"), or ``P is not a regular file`` (a FIFO, a socket)."""
    shown = path if path.isprintable() else repr(path)
    if os.path.isdir(path):
        return f"{shown} is a folder; expected an image file"
    if os.path.exists(path):
        return f"{shown} is not a regular file; expected an image file"
    return f"image file not found: {shown}"


class PathResolver:
    """The file an image path names, resolved cheaply: folders are resolved once and cached, so the cost per image is
    one ``lstat`` (for a link of the file itself; none with ``check_links=False``) and a string concatenation."""

    def __init__(self, check_links: bool = True) -> None:
        self.check_links = check_links
        self._dirs: dict[str, str] = {}

    def resolve(self, path: str) -> str:
        head, name = os.path.split(path)
        real = self._dirs.get(head)
        if real is None:
            real = self._dirs[head] = os.path.realpath(head or ".")
        full = os.path.join(real, name)
        if name in ("", ".", "..") or (self.check_links and os.path.islink(full)):
            full = os.path.realpath(full)
        return full


class RootGuard(PathResolver):
    """Keeps a reader's image paths inside the dataset root (one check shared by the csv, folder and DyML readers).

    :meth:`resolve` follows ``..``, absolute paths and symbolic links (:class:`PathResolver`; with
    ``check_links=False``, i.e. ``check_files=False``, links of the files themselves are not looked at).
    :meth:`admit` reports a path that ends outside ``root`` as a problem of kind ``outside_root`` and refuses it,
    unless the format option ``allow_outside_root`` is set.
    """

    def __init__(self, root: str | Path, allow: bool = False, check_links: bool = True) -> None:
        super().__init__(check_links)
        self.root = os.path.realpath(root)
        self.allow = bool(allow)
        self._prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep

    def resolve_rel(self, rel: str) -> str:
        """``root/rel`` resolved like :meth:`resolve`; a plain file name costs one string concatenation (DyML)."""
        if rel and "/" not in rel and os.sep not in rel and rel not in (".", ".."):
            full = self._prefix + rel
            return os.path.realpath(full) if self.check_links and os.path.islink(full) else full
        return self.resolve(os.path.join(self.root, rel))

    def admit(self, real: str, shown: str, report: LoadReport, file: Path, line: int | None) -> bool:
        if self.allow or real.startswith(self._prefix) or real == self.root:
            return True
        report.add(f"image path leaves the dataset root {self.root}: {shown} -> {real} (set the format option "
                   "allow_outside_root: true to allow it)", file, line, "outside_root")
        return False


class DuplicateTracker:
    """The one duplicate check of every reader: an image file listed twice in one split is a problem of kind
    ``duplicate`` naming both listings, and the repeat is skipped (lenient mode keeps the first listing).

    With the same labels a repeat is no less wrong: in a leave-one-out evaluation the second listing is the first's
    guaranteed rank-1 match, and in training it silently doubles the image's weight. Two listings are the same image
    when they name the same file: :meth:`accept`'s ``identity`` (a resolved path the reader has already computed),
    else ``path`` resolved here (``a.png``, ``./a.png``, ``x/../a.png`` and a link to it are one file), else
    ``key`` normalised (``oml`` passes the path plus its crop box: two boxes of one image are two items). Different
    files that share a base name are not duplicates.
    """

    def __init__(self, report: LoadReport, check_links: bool = True) -> None:
        self.report = report
        self.resolver = PathResolver(check_links)
        self.seen: dict[str, tuple[str, int | None, tuple[Hashable, ...], str, str | None]] = {}

    def accept(self, key: str, labels: Sequence[Hashable], file: str | Path, line: int | None,
               identity: str | None = None, *, path: str | None = None, at: str | None = None) -> bool:
        """``True`` for the first listing of an image in this split; ``False``, with a problem, for a repeat.

        ``key`` is the path as the index file gives it (shown in the message); ``at`` names a record that has no
        line (``annotation #7`` of a MATLAB file)."""
        labels = tuple(labels)
        if identity is None:
            identity = self.resolver.resolve(path) if path is not None else os.path.normpath(key)
        first = self.seen.get(identity)
        if first is None:
            self.seen[identity] = (str(file), line, labels, key, at)
            return True
        first_file, first_line, first_labels, first_key, first_at = first
        if first_line is None:
            where = first_at or first_file
        else:
            where = f"line {first_line}" if first_file == str(file) else f"{first_file}:{first_line}"
        prefix = f"{at}: " if at is not None else ""
        same = "" if first_key == key else f" (the same file as {first_key!r})"
        if first_labels == labels:
            self.report.add(f"{prefix}{key}{same} listed again with the same labels as {where}: a split lists each "
                            "image once (a second listing would be its own rank-1 match when evaluating)", file,
                            line, "duplicate")
        else:
            self.report.add(f"{prefix}{key}{same} listed again with labels {list(labels)} but {where} gives "
                            f"{list(first_labels)}", file, line, "duplicate")
        return False


def class_in_range(value: object, classes: int, report: LoadReport, file: str | Path, line: int | None,
                   what: str) -> int | None:
    """The class id ``value`` as an ``int`` if it is one in ``1..classes`` (the 1-based ids of the official CUB and
    CARS files), else ``None`` with a problem at ``file:line`` (``what`` says which record, e.g. ``"image_id 7"``).

    The problem is ``split_unknown``: these formats derive the split from the class id, so a record whose id is out
    of range belongs to no split that could be named."""
    fraction = False
    try:
        item = np.asarray(value).item() if not isinstance(value, str) else int(value)
        number = int(item)
        fraction = number != item  # 1.5 (a MATLAB double) is no class id, not class 1
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is not None and not fraction and 1 <= number <= classes:
        return number
    hint = (" (the ids are 1-based; is the file 0-based?)" if number == 0 and not fraction
            else " (not an integer)" if fraction else "")
    shown = repr(value) if isinstance(value, str) else str(value)
    report.add(f"{what}: expected a class id in 1..{classes}, got {shown}{hint}", file, line,
               split_unknown=True)
    return None


def parse_int(text: str) -> int | None:
    """An integer field of an index file (:func:`~dynametric.utils.readers.integer_label`: ASCII digits that fit in
    int64), else ``None``."""
    return integer_label(text)


def printable_path(path: str | Path) -> str:
    """``path`` as text that can be printed and written: bytes of a file name that are not UTF-8 (which Python
    holds as surrogate escapes) are shown as ``\\xNN`` (``caf\\xe9.png``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def nameable(path: str | Path) -> bool:
    """Whether ``path`` can be given to the operating system. A path ``index.json`` records (UTF-8 text) may hold
    characters the file system encoding lacks (``ascii`` under ``LC_ALL=C`` with ``PYTHONUTF8=0``, Latin-1), which
    Python cannot encode: ``Path.is_dir()`` then says ``False``, as if the folder were gone."""
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        return False
    return True


def locale_hint() -> str:
    """What :func:`nameable` refusing a path means, for a message."""
    return (f"cannot be named in this locale's encoding ({sys.getfilesystemencoding()}); run with a UTF-8 locale "
            "(LC_ALL=C.UTF-8) or PYTHONUTF8=1")


def non_utf8_name(path: str | Path) -> str | None:
    """``None`` if ``path`` is UTF-8 text, else the problem (to be reported at :func:`printable_path` of it):
    dynametric needs UTF-8 file names (paths are printed, logged and written to UTF-8 files)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not UTF-8 text; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)"
    return None


def resolve_root(root: str | Path | None, what: str) -> Path:
    """The dataset root ``root`` (``~`` expanded) of a reader that expects ``what`` there. Unset, not found or not
    named in UTF-8 is an :class:`InputError` keyed ``root`` that shows the path (``key 'root': dataset root not
    found: /data/cub (expected ...)``): a run names the config key instead, ``data.root`` with the file and line
    that set it (:func:`dynametric.engine.builders.load_split`)."""
    if root is None:
        raise InputError(f"a dataset root directory is required (expected {what})", key="root")
    if (bad := non_utf8_name(root)) is not None:
        raise InputError(f"dataset root {printable_path(root)}: {bad}", key="root")
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"dataset root not found: {path} (expected {what})", key="root")
    return path


def csv_in_root(root: str | Path | None, csv_file: str, what: str) -> Path:
    """The CSV a ``csv`` / ``oml`` reader reads: ``root`` itself when it is a file, else ``root/csv_file``
    (:func:`resolve_root` checks the root first)."""
    base = resolve_root(root, what)
    return base if base.is_file() else base / csv_file


def image_folder(root: Path, default: Path, image_root: str | Path | None, first: str | None,
                 report: LoadReport, nested: Sequence[tuple[Path, str]] = ()) -> Path:
    """The folder an index file's relative image paths are joined to (the ``image_root`` option of the ``cub200``,
    ``sop`` and ``inshop`` readers).

    ``image_root`` (relative to ``root``, the dataset root as given, or absolute) must be a folder, else a usage
    error keyed ``image_root``. Without it the format's ``default`` is used, unless the first listed image
    (``first``) is missing there but found under one of the ``nested`` candidates ``(folder, layout)``, a common way
    an archive gets extracted (In-Shop's ``img.zip`` into ``Img/``): then that folder is used and one note in the
    report says so."""
    if image_root is not None:
        folder = root / Path(image_root).expanduser()  # ~ is the home folder, as in the config's path keys
        if not folder.is_dir():
            raise InputError(f"folder not found: {folder} (image_root is the folder the listed image paths are "
                             f"relative to, itself relative to the dataset root {root})", key="image_root")
        return folder
    if first is None or (default / first).is_file():
        return default
    for folder, layout in nested:
        if (folder / first).is_file():
            report.notes.append(f"images read from {folder} ({layout}): the first listed image, {first}, is there "
                                f"and not in {default} (set the option image_root to choose another folder)")
            return folder
    return default


def start_csv_read(fmt: Any, root: str | Path | None, split: str, splits: Sequence[str], csv_file: str,
                   image_root: str | Path | None) -> tuple[Path, LoadReport, list[str], list[tuple[int, list[str]]],
                                                           Path]:
    """The start every CSV format's ``read`` shares: ``split`` checked against ``splits``, the CSV found
    (``fmt._csv_path``) and parsed (``fmt._parse``, problems into a fresh report), the image root resolved
    (:func:`csv_image_root`: the CSV's folder, or ``image_root`` relative to it). Returns ``(csv path, report,
    header, numbered rows, image root)``."""
    if split not in splits:
        raise InputError(f"unknown split {split!r} for {fmt.name}; expected one of {list(splits)}", key="split")
    path = fmt._csv_path(root, csv_file)
    report = LoadReport(split=split)
    header, rows = fmt._parse(path, report)
    return path, report, header, rows, csv_image_root(path, image_root, report.notes)


def csv_image_root(csv_path: Path, image_root: str | Path | None, notes: list[str], key: str = "image_root") -> Path:
    """The folder the relative image paths of the CSV ``csv_path`` are joined to: the CSV's folder, or
    ``image_root`` (the option of the ``csv`` and ``oml`` formats, ``dynametric embed --image-root``), absolute or
    relative to the CSV's folder (as the ``cub200`` / ``sop`` / ``inshop`` readers take it relative to the dataset
    root), never to the working directory: a run started elsewhere reads the same images.

    A folder that does not exist is a one-line :class:`InputError` keyed ``key``; when the same relative path does
    exist under the working directory (where ``image_root`` was once resolved), the error names both folders and
    what to write, so that such a config is not silently read from another folder. When both exist and differ, the
    CSV's is used and ``notes`` gets one line naming both."""
    if image_root is None:
        return csv_path.parent
    given = Path(image_root).expanduser()  # ~ is the home folder, as in the config's path keys
    folder = csv_path.parent / given  # an absolute image_root stays as it is
    cwd_folder = None if given.is_absolute() else os.path.abspath(given)
    other = (cwd_folder is not None and os.path.isdir(cwd_folder)
             and os.path.realpath(cwd_folder) != os.path.realpath(folder))
    base = os.path.abspath(csv_path.parent)
    if folder.is_dir():
        if other:
            notes.append(f"{key} {str(given)!r} is read as {os.path.abspath(folder)} (relative to the CSV's folder), "
                         f"not as {cwd_folder} (relative to the working directory)")
        return folder
    if other:
        raise InputError(f"folder not found: {os.path.abspath(folder)} (a relative {key} is relative to the CSV's "
                         f"folder {base}, not to the working directory, where {cwd_folder} exists); write the folder "
                         f"as an absolute path or as a path relative to {base}", key=key)
    where = "" if given.is_absolute() else f": an absolute path or one relative to the CSV's folder {base}"
    raise InputError(f"folder not found: {os.path.abspath(folder)} ({key} is the folder the listed image paths are "
                     f"relative to{where})", key=key)
