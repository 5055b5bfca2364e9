"""Readers of the files users hand to the tools: embeddings (``.npy``, ``.pt``/``.pth``, ``.safetensors``), integer
labels (a CSV with a header of scale names, one column per scale, finest first; or an ``.npy`` integer array
``[N]`` / ``[N, S]``) and id lists. Every error names the file (and line) and what was expected.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from dynametric.errors import InputError, first_sentence
from dynametric.labels import RESERVED_SCALE_NAMES

EMBEDDING_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def check_file(path: Path, key: str | None = None) -> None:
    """An InputError naming ``path`` (and ``key``, the option that gave it, where given) unless it is an existing,
    non-empty regular file."""
    if not path.exists():
        raise InputError("file not found", file=path, key=key)
    if path.is_dir():
        raise InputError("is a folder; expected a file", file=path, key=key)
    _refuse_irregular(path, path.stat().st_mode, key)
    if path.stat().st_size == 0:
        raise InputError("file is empty", file=path, key=key)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words (``"a regular file"``, ``"a FIFO (named pipe)"``, ...)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def _refuse_irregular(path: Path, mode: int, key: str | None) -> None:
    if not stat.S_ISREG(mode):
        what = file_kind(mode)
        if stat.S_ISDIR(mode):
            raise InputError("is a folder; expected a file", file=path, key=key)
        what = f"a symbolic link to {what}" if path.is_symlink() else what
        raise InputError(f"not a regular file: {what}; expected a file", file=path, key=key)


def open_regular(path: str | Path, *, missing: str = "file not found", key: str | None = None) -> IO[bytes]:
    """``path`` opened for reading in binary, only where it is a regular file (a symbolic link to one is fine): a
    FIFO, a device (``/dev/zero``), a socket or a folder is one line naming ``path`` and what it is, never read (a
    FIFO or ``/dev/zero`` would be read forever). ``missing``: the message for a path with nothing there (also a
    dangling link). What is read is the file checked: it is opened without blocking (a FIFO does not wait for a
    writer) and checked again once open."""
    path = Path(path)
    try:
        _refuse_irregular(path, os.stat(path).st_mode, key)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(missing, file=path, key=key) from None
    try:
        _refuse_irregular(path, os.fstat(fd).st_mode, key)  # replaced between the two looks
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | Path, *, missing: str = "file not found", key: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`: anything else is one line naming it)."""
    with open_regular(path, missing=missing, key=key) as fh:
        return fh.read()


def require_regular(path: str | Path, *, missing: str = "file not found", key: str | None = None) -> None:
    """One line naming ``path`` unless it is a regular file, or a symbolic link to one (:func:`open_regular`)."""
    open_regular(path, missing=missing, key=key).close()


def check_format_version(meta: dict[str, Any], path: str | Path, *, newest: int, what: str) -> int:
    """The ``version`` of a folder's metadata file ``meta`` (read from ``path``; none written, a file made by hand:
    1): an integer from 1 to ``newest`` (the newest this code reads), else one :class:`InputError` keyed ``version``
    naming the file; a newer one says so with both versions (``what``: the format's name, e.g. ``index format``)."""
    version = meta.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"expected an integer format version, found {version!r}", file=path, key="version")
    if version > newest:
        raise InputError(f"written by a newer dynametric ({what} version {version}; this dynametric reads up to "
                         f"version {newest}): upgrade dynametric", file=path, key="version")
    return version


def check_npy_size(path: str | Path) -> None:
    """An InputError naming ``path`` when the ``.npy`` file is shorter than its header says (a torn copy, a
    truncated download): ``np.load`` would fail with ``mmap length is greater than file size`` or a reshape error.
    A file that is not an ``.npy`` (or has a header numpy cannot parse) is left to the loader to report."""
    path = Path(path)
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                return
            shape, _fortran, dtype = read(fh)
            header = fh.tell()
        actual = path.stat().st_size
    except (OSError, ValueError, EOFError):
        return
    if dtype.hasobject:
        return
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if actual < expected:
        raise InputError(f"truncated .npy file: its header says {dtype} {list(shape)} ({expected} bytes), the file "
                         f"has {actual} bytes", file=path)


NPY_MAGIC = b"\x93NUMPY"


def check_npy_header(path: Path, expected: str | None = None) -> None:
    """A file read as ``.npy`` must start with numpy's header (``\x93NUMPY``): an ``.npz`` archive, a text file or
    anything else so named is one line saying which, naming the file (and ``expected`` when given), instead of
    numpy's "This file contains pickled (object) data". An unreadable or empty file is left to the reader."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(NPY_MAGIC))
    except OSError:
        return
    if not head or head == NPY_MAGIC:
        return
    tail = f"; expected {expected}" if expected else ""
    if head.startswith(b"PK\x03\x04"):
        raise InputError(f"an .npz archive (or another zip file), not one .npy array{tail}", file=path)
    text = head.isascii() and all(c.isprintable() or c.isspace() for c in head.decode("ascii"))
    raise InputError(f"not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this file holds "
                     f"{'text' if text else 'other data'}){tail}", file=path)


def read_plain_npy(path: Path, expected: str) -> np.ndarray:
    """Read one plain (never unpickled) ``.npy`` array; every failure is one line naming ``path`` and ``expected``
    (e.g. ``"an integer array [N] or [N, S]"``): an ``.npz`` archive, a file without the NumPy header (a text file
    named ``.npy``), an object array, a truncated file, anything but a regular file (a FIFO, a
    device: :func:`require_regular`)."""
    require_regular(path)
    check_npy_header(path, expected)
    check_npy_size(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"an array of Python objects (would need unpickling); expected {expected}",
                             file=path) from None
        raise InputError(f"cannot read the .npy array ({first_sentence(exc)})", file=path) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read the .npy array ({first_sentence(exc)})", file=path) from None


def _pick_tensor(obj: Any, path: Path) -> Any:
    if isinstance(obj, dict):
        if "embeddings" in obj:
            return obj["embeddings"]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise InputError(f"expected one tensor or an 'embeddings' key, found keys {sorted(map(str, obj))}",
                             file=path)
        return tensors[0]
    return obj


FLOAT32_MAX = float(np.finfo(np.float32).max)


def beyond_float32(arr: np.ndarray, block: int = 65536) -> tuple[int, int, float] | None:
    """For a float array wider than float32 (float64, longdouble) with finite values beyond float32's range
    (``|x| > 3.4e38``, which a cast to float32 makes Inf): ``(rows holding one, the first such row, the largest
    magnitude)``; else None. Checked ``block`` rows at a time (a bounded copy)."""
    if arr.dtype.kind != "f" or arr.dtype.itemsize <= 4 or arr.size == 0:
        return None
    flat = arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1)
    rows, first, peak = 0, -1, 0.0
    for lo in range(0, len(flat), block):
        part = np.abs(flat[lo:lo + block])
        big = np.isfinite(part) & (part > FLOAT32_MAX)
        hit = big.any(axis=1)
        if hit.any():
            rows += int(hit.sum())
            first = lo + int(np.flatnonzero(hit)[0]) if first < 0 else first
            peak = max(peak, float(part[big].max()))
    return (rows, first, peak) if rows else None


def beyond_float32_text(beyond: tuple[int, int, float]) -> str:
    """The words of every error about :func:`beyond_float32`'s finding, up to the open parenthesis of its row:
    ``values beyond float32's range (up to 3.403e+38) in 2 row(s), first at row 1 (0-based``; the caller closes the
    parenthesis (adding the largest magnitude, or not) and says why float32 matters there."""
    rows, first, _ = beyond
    return f"values beyond float32's range (up to {FLOAT32_MAX:.4g}) in {rows} row(s), first at row {first} (0-based"


def refuse_beyond_float32(arr: np.ndarray, why: str, *, file: str | Path | None = None, key: str | None = None,
                          row_offset: int = 0) -> None:
    """One line (:class:`~dynametric.errors.InputError` naming ``file`` / ``key``) where ``arr`` holds finite values
    beyond float32's range (:func:`beyond_float32`): their rows, the first (``row_offset`` added: a block of a
    longer array), the largest magnitude, then ``why`` (what stores or scores them in float32)."""
    beyond = beyond_float32(arr)
    if beyond is not None:
        rows, first, peak = beyond
        raise InputError(f"{beyond_float32_text((rows, first + row_offset, peak))}; largest magnitude {peak:.4g}): "
                         f"{why}", file=file, key=key)


def embedding_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype :func:`load_embeddings` gives embeddings stored as ``dtype`` (integer or floating point), the rule
    of :func:`dynametric.metrics.evaluate_embeddings`: float64 stays float64, and so do the integers float32 cannot
    hold exactly (32 and 64 bits, signed or not), so the library's float64 preparation sees every digit the file
    holds; a wider float (longdouble) becomes float64; float32 stays float32, and float16 and the 8/16-bit integers
    (all exact in float32) become float32."""
    dtype = np.dtype(dtype)
    wide = dtype.itemsize >= 8 if dtype.kind == "f" else dtype.itemsize >= 4
    return np.dtype(np.float64 if wide else np.float32)


def load_embeddings(path: str | Path) -> np.ndarray:
    """Load a 2-D ``[N, D]`` float array, naming ``path`` in every error (missing, empty, shape, dtype, NaN/Inf).

    float64 files (and int32 / int64 / uint32 / uint64 ones) are read as float64, everything else as float32
    (:func:`embedding_dtype`): the precision a float64 file holds is kept up to the library's float64
    preparation. A contiguous float32 or float64 ``.npy`` in the machine's byte order is returned as read (no
    copy). Values beyond float32's range are not checked here: whether they are allowed depends on the use (a
    cosine index normalises in float64 and takes them; an evaluation, an ``l2`` / ``ip`` index or an embed
    folder, which hold float32, refuse them), so the callers check them (:func:`beyond_float32`)."""
    path = Path(path)
    check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr: Any = read_plain_npy(path, "a float array [N, D] of embeddings")
        elif suffix in (".pt", ".pth"):
            arr = _pick_tensor(torch.load(path, map_location="cpu", weights_only=True), path)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            arr = _pick_tensor(load_file(str(path)), path)
        else:
            raise InputError(f"unknown embeddings format {suffix!r}; expected one of {', '.join(EMBEDDING_SUFFIXES)}",
                             file=path)
    except InputError:
        raise
    except Exception as exc:  # numpy/torch/safetensors raise many types for corrupt files
        raise InputError(f"cannot read embeddings: {first_sentence(exc)}", file=path) from exc
    return checked_embeddings(arr, path)


def checked_embeddings(arr: Any, path: Path) -> np.ndarray:
    """What :func:`load_embeddings` read from ``path`` (an array or a tensor) checked and cast as it says (shape,
    dtype, NaN/Inf: one line naming ``path``)."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu()
        if arr.dtype in (torch.bfloat16, torch.float16):
            arr = arr.float()
        arr = arr.numpy()
    if not isinstance(arr, np.ndarray):
        raise InputError(f"expected an array of embeddings, got {type(arr).__name__}", file=path)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D [N, D] array, got shape {arr.shape}", file=path)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"no embeddings (shape {arr.shape})", file=path)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"expected numeric embeddings, got dtype {arr.dtype}", file=path)
    bad = ~np.isfinite(arr).all(axis=1)  # before the cast: a longdouble beyond float64's range is said below
    if bad.any():
        raise InputError(f"NaN or Inf in {int(bad.sum())} row(s), first at row {int(np.flatnonzero(bad)[0])} "
                         "(0-based)", file=path)
    dtype = embedding_dtype(arr.dtype)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        big = (np.abs(arr) > np.finfo(np.float64).max).any(axis=1)
        if big.any():
            raise InputError(f"values beyond float64's range in {int(big.sum())} row(s), first at row "
                             f"{int(np.flatnonzero(big)[0])} (0-based); scale them down", file=path)
    return np.ascontiguousarray(arr, dtype=dtype)


def decode_utf8(data: bytes, path: str | Path, key: str | None = None) -> str:
    """The text of a UTF-8 file's bytes as ``read_text`` gives it (byte order mark dropped, ``\\r\\n`` and ``\\r``
    made ``\\n``); bytes that are not UTF-8 are an :class:`InputError` at their line and column (not a byte
    offset), the line numbered as the dataset readers number it
    (``dynametric.data.readers.read_lines``), naming ``key`` (the option that gave the file) where given."""
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        raise InputError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {len(before[-1]) + 1} cannot be "
                         "decoded (save the file as UTF-8)", file=path, line=len(before), key=key) from None


def load_labels_csv(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read ``[N, S]`` integer labels and the ``S`` column names from a CSV with a header (finest scale first)."""
    path = Path(path)
    check_file(path)
    text = decode_utf8(path.read_bytes(), path)  # an Excel export starts with a byte order mark
    if "\0" in text:
        raise InputError("contains NUL bytes: not a text CSV", file=path)
    reader = csv.reader(io.StringIO(text, newline=""))
    done = [0]  # the last line of the last record read

    def records() -> Iterator[list[str]]:
        for row in reader:
            done[0] = reader.line_num
            yield row

    try:
        return _parse_labels_csv(records(), path)
    except csv.Error as exc:  # said as the dataset and embed --csv readers say it, at the record's first line
        start, end = done[0] + 1, reader.line_num
        lines = f"line {start}" if end <= start else f"lines {start}-{end}"
        if "field limit" in str(exc):
            message = f"a field longer than {csv.field_size_limit()} characters on {lines}; is a quote left open?"
        else:
            message = f"malformed CSV on {lines} ({exc})"
        raise InputError(message, file=path, line=start) from None


_INT64 = np.iinfo(np.int64)


def _parse_labels_csv(reader: Any, path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        header = next(reader)
    except StopIteration:
        raise InputError("file is empty", file=path) from None
    names = [h.strip() for h in header]
    if not names:
        raise InputError(f"header must name every column, got {header}", file=path, line=1)
    # numbers first: a header-less file whose first row repeats a label (0,0) is a missing header, not a repeated name
    if any(n.lstrip("-").isdigit() for n in names):
        raise InputError(f"expected a header of scale names, got {names} (numbers: a missing header?)",
                         file=path, line=1)
    check_header_scale_names(names, names, path, 1)
    if names[:3] == ["index", "id", "path"]:
        raise InputError("this is the items.csv of a `dynametric embed` folder (index,id,path,<scales>), not a labels "
                         "CSV; give the folder itself (evaluate --embeddings EMB reads its labels.npy) or "
                         "EMB/labels.npy", file=path, line=1)
    rows: list[list[int]] = []
    blank: int | None = None  # the first blank line since the last row: an error unless only blank lines follow
    for lineno, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):  # nothing but white space (a bare ',' is a row)
            blank = lineno if blank is None else blank
            continue
        if blank is not None:
            raise InputError("blank line between label rows (row k labels embedding k, and in a one-column file a "
                             "blank line is an empty label; blank lines are allowed only at the end of the file)",
                             file=path, line=blank)
        if len(row) != len(names):
            raise InputError(f"expected {len(names)} fields, got {len(row)}", file=path, line=lineno)
        vals = []
        for name, field in zip(names, row):
            text = field.strip()
            value = integer_label(text)
            if value is None:
                if _LABEL_INTEGER.fullmatch(text):
                    raise InputError(f"column '{name}': label {text[:40]}{'...' if len(text) > 40 else ''} does "
                                     "not fit in int64 (labels are signed 64-bit integers)", file=path, line=lineno)
                raise InputError(f"column '{name}': expected an integer label, got {field[:60]!r}", file=path,
                                 line=lineno)
            vals.append(value)
        rows.append(vals)
    if not rows:
        raise InputError("no label rows after the header", file=path)
    return np.asarray(rows, dtype=np.int64), names


def check_header_scale_names(names: Sequence[str], header: Sequence[str], path: str | Path, line: int) -> None:
    """An :class:`InputError` at ``path:line`` (a CSV header, ``header`` its stripped cells) unless the label
    columns ``names`` (a part of ``header``) each have a name: not empty or blank, each once, none named ``mean``
    (an evaluation reports the mean over the scales under it); the rule of
    :func:`dynametric.labels.check_scale_names`, said where the names come from rather than as the key
    ``scale_names``, which the user never set. The error names the column by its position in the header."""
    for k, cell in enumerate(header, 1):
        if not cell and cell in names:
            raise InputError(f"header column {k} has no name (empty or blank); every label column needs a scale name "
                             f"(it names the scale in results), got {list(header)}", file=path, line=line)
    repeated = sorted({n for n in names if list(header).count(n) > 1}, key=list(header).index)
    if repeated:
        raise InputError(f"duplicate column name(s) {repeated} in header {list(header)}", file=path, line=line)
    for name, what in RESERVED_SCALE_NAMES.items():
        if name in names:
            raise InputError(f"a scale column cannot be named {name!r} (an evaluation reports {what} under it); got "
                             f"{list(header)}", file=path, line=line)


def load_labels_npy(path: str | Path) -> np.ndarray:
    """Read ``[N]`` or ``[N, S]`` integer labels from an ``.npy`` file (never unpickled) as int64 ``[N, S]``."""
    path = Path(path)
    check_file(path)
    arr = read_plain_npy(path, "an integer array [N] or [N, S]")
    if arr.dtype.kind not in "iu":
        raise InputError(f"expected integer labels, got dtype {arr.dtype}", file=path)
    if arr.ndim not in (1, 2):
        raise InputError(f"expected labels of shape [N] or [N, S], got shape {arr.shape}", file=path)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"no labels (shape {arr.shape})", file=path)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64.max:
        raise InputError(f"label {int(arr.max())} does not fit in int64 (labels are signed 64-bit integers, at most "
                         f"{_INT64.max})", file=path)
    return np.ascontiguousarray(arr, dtype=np.int64)


def is_npy_file(path: Path) -> bool:
    """Whether ``path`` is read as an ``.npy`` array: named ``*.npy``, or starting with the NumPy header."""
    if path.suffix.lower() == ".npy":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(len(NPY_MAGIC)) == NPY_MAGIC
    except OSError:
        return False  # the CSV reader names the problem


def load_labels(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """``[N, S]`` int64 labels and their scale names from a labels CSV, or ``(labels, None)`` from an ``.npy``
    integer array (``[N]`` or ``[N, S]``; a file named ``*.npy`` or starting with the NumPy header; an array names
    no scales)."""
    path = Path(path)
    if is_npy_file(path):
        return load_labels_npy(path), None
    return load_labels_csv(path)


_INTEGER_CELL = re.compile(r"-?[0-9]+")
_LABEL_INTEGER = re.compile(r"[+-]?[0-9]+")


def _ascii_int64(text: str, pattern: re.Pattern[str]) -> int | None:
    """The int ``text`` is where ``pattern`` (ASCII digits and a sign) matches all of it and the value fits in
    int64, else ``None``. The digits are counted before ``int`` reads them: a field of thousands of digits is
    ``None``, not Python's ``ValueError: Exceeds the limit (4300 digits) for integer string conversion``."""
    if not pattern.fullmatch(text) or len(text.lstrip("+-").lstrip("0")) > 19:
        return None
    value = int(text)
    return value if _INT64.min <= value <= _INT64.max else None


def _integer_id(text: str) -> int | None:
    """The int an id cell's text is (an ASCII ``-?[0-9]+`` whose value fits in int64), else ``None``."""
    return _ascii_int64(text, _INTEGER_CELL)


def integer_label(text: str) -> int | None:
    """The class id a label field holds: ASCII ``[+-]?[0-9]+`` (spaces around it allowed) whose value fits in int64,
    else ``None``. Stricter than ``int()``, which also takes ``1_000``, non-ASCII digits (``٣``) and numbers of any
    length."""
    return _ascii_int64(text.strip(), _LABEL_INTEGER)


def id_cell(text: str) -> int | str:
    """The id a non-empty cell of an id column holds (OML's ``category`` and ``sequence``, a ``--query-categories``
    line): an int where the text is an ASCII integer, ``-?[0-9]+``, that fits in int64 (``7``, ``-3``; ``007`` is 7,
    as pandas reads an integer column), else the text itself (``bird``, ``--1``, ``²``, ``1.5``, ``+7``, and
    ``9223372036854775808`` or any longer number)."""
    value = _integer_id(text)
    return text if value is None else value


def label_cell(text: str) -> int | str:
    """The class a label cell of a CSV whose label columns may hold integers or text holds (the ``csv`` dataset
    format, ``dynametric embed --csv``): the int where the cell is an integer field (:func:`integer_label`: ASCII
    ``[+-]?[0-9]+`` within int64; ``01``, ``1`` and ``+1`` are all 1), else the text itself (``1.0``, ``x``,
    ``1_000``). A cell's class never depends on the other cells of its column."""
    value = integer_label(text)
    return text if value is None else value


def merged_ids(cells: Iterable[tuple[str, int | None]], parse: Callable[[str], int | None] | None = None
               ) -> list[tuple[int, list[tuple[str, int | None]]]]:
    """The ids that several different texts read as (:func:`id_cell`: ``007`` and ``7`` are both 7; with
    ``parse=integer_label``, :func:`label_cell`'s rule: ``+7`` too), each with those texts and the line of the
    first of each, from ``(text, line)`` pairs; ``[]`` when none is."""
    read = _integer_id if parse is None else parse
    first: dict[int, dict[str, int | None]] = {}
    for text, line in cells:
        value = read(text)
        if value is not None:
            first.setdefault(value, {}).setdefault(text, line)
    return [(value, list(spellings.items())) for value, spellings in first.items() if len(spellings) > 1]


def merged_ids_note(merged: list[tuple[int, list[tuple[str, int | None]]]], what: str, unit: str = "cell") -> str:
    """The note on :func:`merged_ids`' result: ``cells '007' (line 3) and '7' (line 5) are one category 7 ...``,
    plus how many other ids are spelt several ways; ``what`` names the id (``category``), ``unit`` what holds one
    (``cell``, ``line``)."""
    value, spellings = merged[0]
    cells = " and ".join(f"{text!r}" + ("" if line is None else f" (line {line})") for text, line in spellings)
    more = f"; {len(merged) - 1} other {what} id(s) spelt more than one way too" if len(merged) > 1 else ""
    return (f"{unit}s {cells} are one {what} {value} (a {unit} that is an integer is read by its value, as pandas "
            f"reads an integer column){more}")


def load_ids(path: str | Path, expected: int, what: str = "ids", key: str | None = None) -> list[str]:
    """``expected`` ids, one per line of a UTF-8 text file (blank lines at the end of the file are ignored, as an
    editor may leave them; a blank line before the last id is an error at its line, since line k is row k's id and
    an empty id would be one id shared by every such row; a byte order mark, as an editor or Excel may write, is not
    part of the first id; ``\r\n`` and ``\r`` end lines too, and nothing else: a form feed or U+2028 inside a line
    is part of its id, unlike ``str.splitlines``). ``what`` names the lines in the errors, ``key`` the option that
    gave the file."""
    path = Path(path)
    check_file(path, key)
    ids = [line.strip() for line in decode_utf8(path.read_bytes(), path, key).split("\n")]
    while ids and ids[-1] == "":
        ids.pop()
    if "" in ids:
        line = ids.index("") + 1
        raise InputError(f"line {line} is empty; expected {expected} {what}, one per line (blank lines only at the "
                         "end of the file)", file=path, line=line, key=key)
    if len(ids) != expected:
        raise InputError(f"expected {expected} {what} (one per line), got {len(ids)}", file=path, key=key)
    return ids


def refuse_zero_rows(emb: np.ndarray, source: str | Path, key: str | None = None) -> None:
    """For cosine: an all-zero row has no direction (the metrics library scores it 0 with everything, which ranks
    it arbitrarily); the command line refuses such a file, naming it and the first zero row."""
    zero = ~np.asarray(emb).any(axis=1)
    if zero.any():
        raise InputError(f"{int(zero.sum())} all-zero row(s), first at row {int(np.flatnonzero(zero)[0])} (0-based): "
                         "a zero vector has no direction for cosine; fix the embeddings or use a Euclidean "
                         "distance", file=source, key=key)
