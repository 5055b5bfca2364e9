"""Streaming, resumable embedding of image collections (``dynametric embed``).

Output folder ``EMB/``:

* ``items.csv`` — ``index,id,path,<scale...>``: one row per image, in embedding order (labels as integer ids).
* ``embed.json`` — the job: count, shard size, the model's identity (checkpoint, config hash, weights hash, head),
  scale names, class names of text labels, image roots, a fingerprint of the item list, a ``file_stamp`` of the
  files' sizes and modification times, ``status``; once complete ``embeddings_size`` and ``embeddings_sha256`` of
  ``embeddings.npy`` (hashed as it is written). ``format`` / ``version`` (:func:`check_job_format`): a job of a
  newer dynametric is refused. Every reader checks the files against it (:func:`check_job_folder`).
* ``file_stats.npy`` — ``[N, 2]`` int64: each image file's size and modification time (ns) when embedded; a
  changed file (another size or time) refuses the resume and is named.
* ``shards/shard_NNNNN.npy`` — ``[<=shard_size, D]`` float32, each written atomically when finished.
* when every shard is done: ``embeddings.npy`` ``[N, D]`` float32 (assembled through a memory map, so memory stays
  bounded by one shard) and ``labels.npy`` ``[N, S]`` int64 when the source has labels; shards are then removed
  unless ``keep_shards``.

Running the same job again skips every shard already on disk (a crash loses at most the shard being computed);
a different job in the same folder (other images, other weights, other shard size) is an error.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dynametric.data.base import (
    IMAGE_EXTENSIONS,
    LoadReport,
    Problem,
    contiguous_ids,
    image_read_error,
    load_rgb,
    raise_problems,
    unwrap_worker_error,
)
from dynametric.data.readers import (
    DuplicateTracker,
    backslash_hint,
    csv_image_root,
    non_utf8_name,
    not_an_image_file,
    parse_csv,
    printable_path,
    require_header,
)
from dynametric.engine.data import worker_init
from dynametric.errors import InputError, first_sentence
from dynametric.retrieval.index_files import (
    LOAD_TRIES,
    FolderChangedError,
    csv_line,
    csv_records,
    read_identified,
    utf8_text,
)
from dynametric.retrieval.index_folder import folder_lock, make_output_folder, other_entries
from dynametric.retrieval.reprs import repr_model, repr_names, repr_text
from dynametric.utils.ahead import RunAhead
from dynametric.utils.device import INFERENCE_BATCH_SIZE
from dynametric.utils.io import (
    StagedFiles,
    atomic_open,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_text,
    remove_stale_temps,
    replacement_mode,
    save_npy,
)
from dynametric.utils.output_locks import being_written
from dynametric.utils.processes import callers_start_method
from dynametric.utils.readers import (
    check_file,
    check_format_version,
    check_header_scale_names,
    check_npy_header,
    check_npy_size,
    decode_utf8,
    file_kind,
    integer_label,
    label_cell,
    merged_ids,
    merged_ids_note,
    open_regular,
    read_plain_npy,
    read_regular_bytes,
    refuse_beyond_float32,
    require_regular,
)

FORMAT = "dynametric-embeddings"
FORMAT_VERSION = 1
"""The ``version`` this code writes in ``embed.json`` and the newest it reads (:func:`check_job_format`)."""
RESERVED_COLUMNS = ("path", "id", "split")
_T = TypeVar("_T")


def check_job_format(meta: dict[str, Any], meta_path: Path) -> None:
    """``embed.json``'s ``format`` must be :data:`FORMAT` and its ``version`` an integer this code reads (at most
    :data:`FORMAT_VERSION`): a job written by a newer dynametric is one line naming the file and both versions,
    never read as if it were of this one."""
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise InputError(f"not a dynametric embed job file (format {fmt!r}, expected {FORMAT!r})", file=meta_path,
                         key="format")
    check_format_version(meta, meta_path, newest=FORMAT_VERSION, what="embed job format")


@dataclass
class ImageItems:
    """An ordered image collection: ids, absolute paths, optional labels ``[N, S]`` and the allowed roots."""

    ids: list[str]
    paths: list[Path]
    roots: list[Path]
    labels: np.ndarray | None = None
    scale_names: list[str] = field(default_factory=list)
    class_names: list[list[str]] | None = None

    part: tuple[int, int] | None = None  # (k, n): this is the k-th of n contiguous parts of a longer list
    source_count: int | None = None  # with ``part``: the whole list's length
    source_fingerprint: str | None = None  # with ``part``: the whole list's fingerprint
    source_file_stamp: str | None = None  # with ``part``: the whole list's file stamp
    _stats: np.ndarray | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)  # for the user (read_image_csv: how --image-root was read)

    def select_part(self, k: int, n: int) -> ImageItems:
        """The ``k``-th of ``n`` contiguous parts (``k = 0..n-1``; rows ``k*N//n`` to ``(k+1)*N//n``), for one
        ``dynametric embed`` process per GPU. Labels keep the whole list's ids (text labels are numbered over every
        row, not per part), so :func:`merge_embedding_parts` of the parts equals one run over the list."""
        total = len(self.ids)
        if self.part is not None:
            raise ValueError("already a part of a list")
        if not (n >= 1 and 0 <= k < n):
            raise InputError(f"expected K/N with 0 <= K < N, got {k}/{n}", key="--part")
        lo, hi = k * total // n, (k + 1) * total // n
        if hi == lo:
            raise InputError(f"part {k}/{n} of {total} images is empty (use at most {total} parts)", key="--part")
        return ImageItems(ids=self.ids[lo:hi], paths=self.paths[lo:hi], roots=self.roots,
                          labels=None if self.labels is None else self.labels[lo:hi], scale_names=self.scale_names,
                          class_names=self.class_names, part=(k, n), source_count=total,
                          source_fingerprint=self.fingerprint(), source_file_stamp=self.file_stamp(),
                          _stats=self.file_stats()[lo:hi])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, p in zip(self.ids, self.paths):
            h.update(f"{i}\0{p}\n".encode())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


    def file_stats(self) -> np.ndarray:
        """``[N, 2]`` int64: each file's size in bytes and modification time (ns), read once."""
        if self._stats is None:
            stats = np.zeros((len(self.paths), 2), dtype=np.int64)
            for i, p in enumerate(self.paths):
                try:
                    st = os.stat(p)
                except OSError as exc:
                    raise InputError(f"cannot read the image file ({exc.strerror or exc})", file=p) from None
                stats[i] = (st.st_size, st.st_mtime_ns)
            self._stats = stats
        return self._stats

    def file_stamp(self) -> str:
        """A digest of every file's size and modification time: another file content under the same path (with
        another size or time) gives another stamp. A change that keeps both is not seen."""
        return hashlib.sha256(np.ascontiguousarray(self.file_stats()).tobytes()).hexdigest()[:16]


_NON_UTF8_FOLDER = ("the folder's path is not UTF-8 text (image paths are written to UTF-8 files); rename it to "
                    "UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)")


_LISTED = 5  # file names a note spells out


def list_image_folder(root: str | Path) -> ImageItems:
    """Every image file under ``root`` (recursive, sorted by relative path); ids are the relative POSIX paths.

    File names must be UTF-8 text, as the dataset readers require (ids and paths are written to UTF-8 files): a
    folder whose path is not, or image files whose names are not, are one :class:`InputError` naming the folder or
    the first such file (its bytes escaped, ``caf\\xe9.png``) and how many there are.

    What is not embedded is said, never an error: one note in ``notes`` (:func:`_not_embedded_note`) counts the files
    whose names lack an image extension (a README, ``.heic`` photos) and names the first five, hidden ones (a name or
    folder starting with ``.``: ``.DS_Store``, ``.git/``) counted but not named, and one names the entries with an
    image name that are not files (a broken symbolic link). A hidden file with an image name is embedded, as before."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("image folder not found" if not root.exists() else "not a folder", file=printable_path(root))
    base = root.resolve()
    if non_utf8_name(base) is not None:
        raise InputError(_NON_UTF8_FOLDER, file=printable_path(base))

    def unreadable(exc: OSError) -> None:  # Path.rglob / os.walk would skip the folder without a word
        raise InputError(f"cannot read folder ({exc.strerror or exc}); its images would be missing",
                         file=None if exc.filename is None else printable_path(exc.filename))

    files: list[Path] = []
    other: list[str] = []  # relative paths of files without an image extension (not hidden)
    hidden = 0  # of those, the hidden ones (a name or folder starting with '.')
    # an image name that is not a file: a broken link, a FIFO or socket so named. Not a folder named x.jpg: os.walk
    # lists it among the folders and descends into it, so the images inside are embedded (a link to a folder is
    # listed among the folders too, and not followed)
    not_files: list[str] = []
    for d, _, names in os.walk(base, onerror=unreadable):
        for f in names:
            p = Path(d, f)
            rel = p.relative_to(base).as_posix()
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                if any(part.startswith(".") for part in rel.split("/")):
                    hidden += 1
                else:
                    other.append(rel)
            elif p.is_file():
                files.append(p)
            else:
                not_files.append(rel)
    files.sort(key=lambda p: p.relative_to(base).as_posix())
    other.sort()
    not_files.sort()
    if not files:
        found = ([f"{len(other) + hidden} other file(s): {_other_files(other, hidden)}"] if other or hidden else []) \
            + ([f"{len(not_files)} broken link(s) or other non-files: {_listed(not_files)}"] if not_files else [])
        raise InputError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under the folder"
                         + (f" (found {'; '.join(found)})" if found else ""), file=printable_path(root))
    named = [p for p in files if non_utf8_name(p) is not None]
    if named:
        more = f" ({len(named)} such file names under {printable_path(root)})" if len(named) > 1 else ""
        raise InputError(f"{non_utf8_name(named[0])}{more}", file=printable_path(named[0]))
    return ImageItems(ids=[p.relative_to(base).as_posix() for p in files], paths=files, roots=[base],
                      notes=_not_embedded_note(printable_path(root), other, hidden, not_files))


def _listed(names: list[str]) -> str:
    """The first :data:`_LISTED` of ``names``, then how many more."""
    shown = ", ".join(printable_path(n) for n in names[:_LISTED])
    return shown + (f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _other_files(other: list[str], hidden: int) -> str:
    """``other`` files named (:func:`_listed`), ``hidden`` ones counted."""
    what = _listed(other)
    if hidden:
        what += (" and " if other else "") + f"{hidden} hidden file(s) (a name or folder starting with '.', e.g. " \
                                             ".DS_Store)"
    return what


def _not_embedded_note(root: str, other: list[str], hidden: int, not_files: list[str]) -> list[str]:
    """The notes :func:`list_image_folder` gives about what under ``root`` it leaves out: ``other`` (files without an
    image extension, not hidden; the first :data:`_LISTED` named), ``hidden`` (how many hidden ones: counted, not
    named) and ``not_files`` (entries with an image name that are not files)."""
    notes = []
    if other or hidden:
        notes.append(f"{len(other) + hidden} file(s) under {root} not embedded, their names lacking an image "
                     f"extension ({' '.join(sorted(IMAGE_EXTENSIONS))}): {_other_files(other, hidden)}")
    if not_files:
        notes.append(f"{len(not_files)} entr{'y' if len(not_files) == 1 else 'ies'} under {root} with an image "
                     f"name not embedded, not being a readable file (a broken symbolic link?): {_listed(not_files)}")
    return notes


def read_image_csv(path: str | Path, image_root: str | Path | None = None, *, key: str = "image_root") -> ImageItems:
    """A CSV with a header: ``path`` (required), optional ``id`` (default: the path as written) and ``split``
    (ignored), every other column a label scale, finest first, named (not empty, not ``mean``). A label cell that is
    an integer (:func:`~dynametric.utils.readers.label_cell`: ``01``, ``1`` and ``+1`` are 1) is that integer
    whatever the rest of its column holds, any other cell its text; a column of integers gives the integers
    themselves as labels, any other column ids ``0..C-1`` by sorted class (integers by value, then text by name),
    named in ``class_names``; two spellings of one integer in a column get a note in ``notes``. Relative paths
    are resolved against ``image_root`` (default: the CSV's folder; a relative ``image_root`` is relative to the
    CSV's folder, not to the working directory: :func:`csv_image_root`, whose note, when another folder of that name
    is under the working directory, is in ``notes``; ``key`` names the option in its errors; ``dynametric embed
    --image-root`` passes its folder made absolute against the working directory, as a command-line path). Standard
    CSV quoting (line breaks inside quotes too; a record is numbered by the line it starts on). Every bad row is
    found before anything is raised: one :class:`InputError` lists them all (``file:line: message``, the first 20
    spelled out, as the dataset readers' strict mode does). An image file listed twice (``a.png``, ``./a.png``, a link
    to it) is a problem at the second listing, as in the dataset readers
    (:class:`~dynametric.data.readers.DuplicateTracker`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("CSV file not found" if not path.exists() else "not a regular file", file=path)
    text = decode_utf8(path.read_bytes(), path)  # a byte that is not UTF-8: an error at its line and column
    report = LoadReport(split="*")
    rows = parse_csv(text, path, report)
    require_header(rows, report, path, "a header with a 'path' column")
    header_line, first = rows[0]
    if not any(c.strip() for c in first):
        raise InputError("empty CSV; expected a header with a 'path' column", file=path, line=header_line)
    header = [c.strip() for c in first]
    if "path" not in header:
        raise InputError(f"header has no 'path' column (found {header})", file=path, line=header_line)
    check_header_scale_names([c for c in header if c not in RESERVED_COLUMNS], header, path, header_line)
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(f"duplicate column(s) {dup} in the header", file=path, line=header_line)
    notes: list[str] = []
    root = csv_image_root(path, image_root, notes, key=key).resolve()
    if non_utf8_name(root) is not None:
        raise InputError(_NON_UTF8_FOLDER, file=printable_path(root))
    scales = [c for c in header if c not in RESERVED_COLUMNS]
    col = {c: header.index(c) for c in header}
    ids: list[str] = []
    paths: list[Path] = []
    raw: list[list[str]] = [[] for _ in scales]
    lines: list[int] = []  # the line of each row kept
    seen: dict[str, int] = {}
    problems = list(report.problems)  # records the csv module could not read (a quote left open)
    repeats = DuplicateTracker(LoadReport(split="*"))  # the dataset readers' rule: one file listed twice

    def bad(message: str, lineno: int) -> None:
        problems.append(Problem(message, str(path), lineno))

    for lineno, row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            bad(f"expected {len(header)} fields ({','.join(header)}), found {len(row)}", lineno)
            continue
        values = [c.strip() for c in row]
        rel = values[col["path"]]
        if not rel:
            bad("empty 'path'", lineno)
            continue
        item_id = values[col["id"]] if "id" in col else rel
        if not item_id:
            bad("empty 'id'", lineno)
            continue
        if item_id in seen:
            bad(f"duplicate id {item_id!r} (first on line {seen[item_id]})", lineno)
            continue
        seen[item_id] = lineno
        full = Path(rel) if Path(rel).is_absolute() else root / rel
        if not full.is_file():  # a folder, a FIFO or a socket is said as such, never "not found"
            why = not_an_image_file(str(full))
            bad(why + (backslash_hint(rel) if why.startswith("image file not found") else ""), lineno)
            continue
        empty = next((s for s in scales if not values[col[s]]), None)
        if empty is not None:
            bad(f"empty label in column {empty!r}", lineno)
            continue
        resolved = full.resolve()
        if (name := non_utf8_name(resolved)) is not None:  # a link to such a file, or an absolute path
            bad(f"{printable_path(resolved)}: {name}", lineno)
            continue
        if not repeats.accept(rel, [label_cell(values[col[s]]) for s in scales], path, lineno, str(resolved)):
            continue
        for j, s in enumerate(scales):
            raw[j].append(values[col[s]])
        lines.append(lineno)
        ids.append(item_id)
        paths.append(resolved)
    problems += repeats.report.problems
    problems.sort(key=lambda p: p.line or 0)
    raise_problems(problems, f"the image list {path.name}")
    if not ids:
        raise InputError("no rows after the header", file=path, line=header_line + 1)
    labels = None
    class_names = None
    if scales:
        cols, class_names = [], []
        for scale, values in zip(scales, raw):
            cells = [label_cell(v) for v in values]  # each cell by itself: '01' is 1 whatever else the column holds
            merged = merged_ids(zip(values, lines), integer_label)
            if merged:
                notes.append(f"column {scale!r} of {path.name}: {merged_ids_note(merged, 'class')}")
            if all(isinstance(c, int) for c in cells):  # integers: the labels are the values themselves
                cols.append(np.array(cells, dtype=np.int64))
                class_names.append([])
            else:  # text (or integers and text): ids by sorted class, integers by value first, each named
                ids_col, names = contiguous_ids(cells)
                cols.append(ids_col)
                class_names.append([str(n) for n in names])
        labels = np.stack(cols, axis=1)
        if not any(class_names):
            class_names = None
    return ImageItems(ids=ids, paths=paths, roots=[root], labels=labels, scale_names=scales,
                      class_names=class_names, notes=notes)


def check_pixels(path: str | Path, max_pixels: int) -> None:
    """An InputError naming ``path`` when its image has more than ``max_pixels`` pixels, read from its header before
    anything is decoded (a small file can hold a huge image: a 117 KB PNG of 11,000 x 11,000 pixels decodes to
    363 MB); a file that cannot be opened is :func:`~dynametric.data.base.image_read_error`'s line."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's own limit: refused before the check below
        from dynametric.retrieval.explorer import header_size

        size = header_size(path)
        if size is None:
            raise image_read_error(path, exc) from None
        width, height = size
    except Exception as exc:  # PIL raises many types for bad files
        raise image_read_error(path, exc) from None
    if width * height > max_pixels:
        raise InputError(f"image has {width}x{height} pixels, more than max_pixels {max_pixels}", file=path)


class ImageFiles(Dataset):
    """``paths[i]`` decoded as RGB and passed through ``transform``; unreadable files raise an InputError, and so
    does an image of more than ``max_pixels`` pixels (:func:`check_pixels`; ``None``: PIL's own limit only).

    A transform with a ``read_file(path, fh)`` method (:class:`dynametric.data.device_decode.DeviceDecoder`) reads
    the file opened here itself (JPEG bytes for decoding on the device) and its ``collate`` method is the loader's
    :attr:`collate_fn`."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor], *,
                 max_pixels: int | None = None, stats: np.ndarray | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.max_pixels = max_pixels
        self.stats = stats
        self._read = getattr(transform, "read_file", None)
        self.collate_fn = getattr(transform, "collate", None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        """The ``i``-th image decoded and transformed. Only a regular file is opened (a FIFO, a device: one line,
        never waited on or read: :func:`~dynametric.utils.readers.open_regular`). With ``stats`` (``[N, 2]``: each
        file's size and modification time as the job recorded them) the file decoded must be the one recorded: the
        stats of the file that was open (after decoding; a transform that reads the file itself, ``read_file(path,
        fh)``, reads this open file), must be those; else ``<path>: changed while it was embedded; run the same
        command again``."""
        path = self.paths[i]
        with _open_image(path) as fh:
            if self.max_pixels is not None:
                check_pixels(path, self.max_pixels)
            if self._read is not None:  # the file open here is the one read (not the path opened again)
                out = self._read(path, fh)
                self._same_as_recorded(i, os.fstat(fh.fileno()))  # what was read, even if replaced since
                return out
            try:
                img = load_rgb(fh)
            except Exception as exc:  # PIL raises many types for bad files
                raise image_read_error(path, exc) from None
            self._same_as_recorded(i, os.fstat(fh.fileno()))  # what was decoded, even if replaced since
        return self.transform(img)

    def _same_as_recorded(self, i: int, st: os.stat_result) -> None:
        if self.stats is not None and (st.st_size, st.st_mtime_ns) != tuple(int(v) for v in self.stats[i]):
            raise InputError("changed while it was embedded (another size or modification time than when the job "
                             "started); run the same command again", file=self.paths[i])


class _ImageReader(io.BufferedReader):
    """An open image file that PIL names by its path (``cannot identify image file '<path>'``, as when it opens the
    path itself), not as ``<_io.BufferedReader name=12>``."""

    def __init__(self, raw: Any, path: Path) -> None:
        super().__init__(raw)
        self.shown = str(path)

    def __repr__(self) -> str:
        return repr(self.shown)


def _open_image(path: Path) -> IO[bytes]:
    """``path`` opened when it is a regular file (:func:`~dynametric.utils.readers.open_regular`), the error of a
    missing one as the decoder says it (:func:`~dynametric.data.base.image_read_error`: a dangling link names its
    target)."""
    try:
        fh = open_regular(path)
        return _ImageReader(fh.detach(), path)  # type: ignore[attr-defined]
    except InputError as exc:
        if os.path.isdir(path):
            raise image_read_error(path, IsADirectoryError(str(exc))) from None
        if os.path.lexists(path) and not (os.path.islink(path) and not os.path.exists(path)):
            raise  # a FIFO, a device, a socket: what it is
        raise image_read_error(path, FileNotFoundError(str(exc))) from None


def _comparable(key: str, value: Any, other: Any = None) -> Any:
    """Job fields as compared on resume (``value`` against ``other``, the other side's entry): the model by what it
    computes (hashes, head, input size), not by where its files are (a moved run folder resumes);
    ``embedding_hash`` only where both sides recorded it (a job started before it was recorded resumes; one that
    recorded another digest of the same config is another embedding: the run's ``data.options.swap_rb``, applied
    at inference since, changes it and not ``config_hash``)."""
    if key == "model" and isinstance(value, dict):
        both = isinstance(other, dict) and "embedding_hash" in value and "embedding_hash" in other
        left_out = ("checkpoint", "config") if both else ("checkpoint", "config", "embedding_hash")
        return {k: v for k, v in value.items() if k not in left_out}
    return value


def _model_change(old: Any, new: Any) -> str:
    """What differs inside the job's ``model`` entry (``: model.precision fp32 -> bf16``), '' when nothing does; a
    changed precision says how to resume the job as it was started (the default precision is the run's)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return ""
    unrecorded = {"precision": "fp32", "decode": "cpu"}  # what an entry without the key means (identity())
    old, new = ({**unrecorded, **_comparable("model", m, o)} for m, o in ((old, new), (new, old)))
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    if not keys:
        return ""
    text = ": " + ", ".join(f"model.{k} {old.get(k)} -> {new.get(k)}" for k in keys)
    if "precision" in keys:
        text += f"; --precision {old['precision']} resumes the job as it was started"
    return text


def _worker_error(exc: InputError) -> InputError:
    """A DataLoader worker's InputError as one line (:func:`~dynametric.data.base.unwrap_worker_error`)."""
    out = unwrap_worker_error(exc)
    return out if isinstance(out, InputError) else exc


def shard_path(out: Path, s: int) -> Path:
    """The file of shard ``s`` of the embed job writing to ``out``: ``out/shards/shard_<s, 5 digits>.npy``."""
    return out / "shards" / f"shard_{s:05d}.npy"


JOB_FILES = ("embed.json", "items.csv", "embeddings.npy", "labels.npy", "file_stats.npy")


def _is_shard_name(name: str) -> bool:
    return len(name) == 15 and name.startswith("shard_") and name.endswith(".npy") and name[6:11].isdigit()


def remove_job_temps(out: Path) -> None:
    """Remove what killed atomic writes of an embed job left in its folder ``out`` (a job folder: checked by the
    caller): ``.<job file>.<8 characters>.tmp`` in ``out`` and ``.shard_NNNNN.npy.<8 characters>.tmp`` in
    ``shards/``; nothing else."""
    check_shards_folder(out)  # never through a link to a folder elsewhere
    remove_stale_temps(out, lambda name: name in JOB_FILES)
    remove_stale_temps(out / "shards", _is_shard_name)


def _shard_ok(path: Path, rows: int) -> bool:
    """A finished shard: a readable ``.npy`` of ``rows`` float32 rows (a torn or foreign file is recomputed, and so
    is anything but a regular file: a FIFO or a device there is never read, the new shard replaces it)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return arr.ndim == 2 and arr.shape[0] == rows and arr.dtype == np.float32 and arr.shape[1] > 0


def _items_csv_text(items: ImageItems) -> str:
    """``items.csv``'s text (:func:`~dynametric.retrieval.index_files.csv_line`: every id and path reads back as
    written, a carriage return or a line break in a file name included)."""
    lines = [csv_line(["index", "id", "path", *items.scale_names])]
    for i, (item_id, p) in enumerate(zip(items.ids, items.paths)):
        labels = [] if items.labels is None else [int(v) for v in items.labels[i]]
        lines.append(csv_line([i, item_id, str(p), *labels]))
    return "".join(lines)


def _write_items_csv(out: Path, items: ImageItems) -> None:
    """``items.csv`` (:func:`_items_csv_text`)."""
    atomic_write_text(out / "items.csv", _items_csv_text(items))


def read_job_items(path: Path, scales: int) -> Iterator[tuple[int, list[str]]]:
    """The rows of an embed job's ``items.csv`` (``index,id,path`` and one column per scale), each with the line it
    starts on; a missing or foreign header or a row of another number of fields (a file damaged, or written by an
    older dynametric with a carriage return in a file name) is one line naming the file and the line."""
    if path.is_dir():
        raise InputError("is a folder; expected the job's items.csv", file=path)
    data = read_regular_bytes(path, missing="items.csv missing (the embed folder is incomplete)")
    text = utf8_text(data, path)  # as written: a \r inside a quoted field is kept
    header = next(csv.reader(io.StringIO(text, newline="")), [])
    if header[:3] != ["index", "id", "path"] or len(header) != 3 + scales:
        raise InputError(f"expected the header index,id,path and {scales} scale column(s) (embed.json's "
                         f"scale_names), found {','.join(header)[:80]!r}", file=path, line=1)
    yield from csv_records(text, path, "index,id,path" + "".join(f",{h}" for h in header[3:]))


@dataclass
class EmbedResult:
    """What an embed job did: ``out``, its output folder; ``count`` items embedded, of ``dim`` dimensions;
    ``computed_shards`` (embedded in this call) and ``skipped_shards`` (found finished and kept: a resumed job), by
    shard number; ``restored``: the files of a finished job written again from the item list (``items.csv``,
    ``labels.npy``, ``file_stats.npy`` where missing or different)."""

    out: Path
    count: int
    dim: int
    computed_shards: list[int]
    skipped_shards: list[int]
    restored: list[str] = field(default_factory=list)  # files of a finished job written again from the list


def _finished_job(out: Path, meta: dict[str, Any], items: ImageItems, num_shards: int) -> EmbedResult:
    """The same job run again over its finished folder ``out`` (``meta``: its ``embed.json``): ``embeddings.npy``
    is checked (:func:`check_embeddings_file`, its digest included: a damaged one is one line saying to use
    --overwrite), and ``items.csv``, ``labels.npy`` and ``file_stats.npy``, which come from the list, are written
    again where missing or not what the list gives (named in ``restored``)."""
    emb_file = out / "embeddings.npy"
    try:
        emb = load_job_embeddings(out, meta)
        if emb.ndim != 2 or emb.shape[0] != len(items.ids):
            raise InputError(f"has shape {list(emb.shape)}, expected [{len(items.ids)}, D]", file=emb_file)
        dim = int(emb.shape[1])
    except InputError as exc:
        raise InputError(f"{exc.message}; this job's output is damaged: use --overwrite to embed again",
                         file=exc.file) from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read the embeddings ({first_sentence(exc)}); this job's output is damaged: use "
                         "--overwrite to embed again", file=emb_file) from None
    restored = []
    want_items = _items_csv_text(items).encode("utf-8")
    try:
        same = read_regular_bytes(out / "items.csv") == want_items
    except (OSError, InputError):
        same = False
    if not same:
        atomic_write_bytes(out / "items.csv", want_items)
        restored.append("items.csv")
    for name, want in (("labels.npy", items.labels), ("file_stats.npy", items.file_stats())):
        if want is None:
            continue
        try:
            same = np.array_equal(read_plain_npy(out / name, "an integer array"), want)
        except (OSError, InputError):
            same = False
        if not same:
            atomic_save_npy(out / name, np.ascontiguousarray(want, dtype=np.int64))
            restored.append(name)
    return EmbedResult(out, len(items.ids), dim, [], list(range(num_shards)), restored)


def _moved_roots(old: dict[str, Any], job: dict[str, Any], items: ImageItems) -> str | None:
    """The error for a job whose images moved (the project folder renamed): the image roots differ and the list,
    with the old roots in place of the new, has the job's fingerprint. ``None`` otherwise."""
    before, now = old.get("image_roots"), job["image_roots"]
    if not (isinstance(before, list) and len(before) == len(now) and before != now
            and all(isinstance(r, str) for r in before)):
        return None
    rebased = []
    for p in items.paths:
        for a, b in zip(now, before):
            if p.is_relative_to(a):
                rebased.append(str(Path(b) / p.relative_to(a)))
                break
        else:
            rebased.append(str(p))
    if _fingerprint(items.ids, rebased, items.labels) != old.get("fingerprint"):
        return None
    moves = ", ".join(f"{b} -> {a}" for a, b in zip(now, before) if a != b)
    return (f"the images moved since this job was started (image roots {moves}): the job records them by absolute "
            "path (items.csv, its fingerprint), so it cannot resume here; move the images back to resume it, or use "
            "--overwrite (or another --out) to embed them again from their new place")


def embed_items(items: ImageItems, embed_batch: Callable[[torch.Tensor], torch.Tensor],
                transform: Callable[[Any], torch.Tensor], out: str | Path, *, model_identity: dict[str, Any],
                batch_size: int = INFERENCE_BATCH_SIZE, shard_size: int = 4096, num_workers: int = 0,
                progress: bool = False, keep_shards: bool = False, overwrite: bool = False,
                pin_memory: bool = False, max_pixels: int | None = None,
                prepare: Callable[[Any], Any] | None = None) -> EmbedResult:
    """Embed ``items`` into the folder ``out`` shard by shard (see the module docstring); resumable.

    ``embed_batch`` maps an image batch ``[B, C, H, W]`` to ``[B, D]`` embeddings on any device (e.g.
    :meth:`LoadedEmbedder.embed_on_device`, which runs on the loaded model's device and precision and does not wait
    for the forward pass: each batch is copied to the host after the next one was handed over, so on a GPU the
    loading / decoding of batch ``i + 1`` overlaps the forward pass of batch ``i``; with a
    :class:`~dynametric.data.device_decode.DeviceDecoder` as ``transform`` the batches are
    :class:`~dynametric.data.device_decode.EncodedImages` for it to decode); ``model_identity`` is
    recorded and must match when resuming. One loader serves every shard still to compute (``num_workers``
    decoding processes, ``pin_memory`` for a non-blocking copy to a GPU). ``max_pixels``: an image of more pixels
    stops the job before it is decoded (:func:`check_pixels`; finished shards are kept); ``None``: PIL's own limit.
    ``prepare``: a step run on each loader batch in a background thread, up to two batches ahead of ``embed_batch``,
    which gets its result (:attr:`LoadedEmbedder.prepare`: the JPEGs decoded on the GPU while the model runs on the
    batch before; :class:`~dynametric.utils.ahead.RunAhead`); an error it raises stops the job at that batch, as
    if ``embed_batch`` had raised it.
    """
    if batch_size < 1 or shard_size < 1:
        raise InputError(f"batch size and shard size must be >= 1, got {batch_size}, {shard_size}",
                         key="--batch-size" if batch_size < 1 else "--shard-size")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder (--out names a folder)", file=out)
    make_output_folder(out, "--out")
    with folder_lock(out, "embed"), callers_start_method():  # one embed at a time in a folder
        return _embed_locked(items, embed_batch, transform, out, model_identity=model_identity,
                             batch_size=batch_size, shard_size=shard_size, num_workers=num_workers,
                             progress=progress, keep_shards=keep_shards, overwrite=overwrite, pin_memory=pin_memory,
                             max_pixels=max_pixels, prepare=prepare)


def _embed_locked(items: ImageItems, embed_batch: Callable[[torch.Tensor], torch.Tensor],
                  transform: Callable[[Any], torch.Tensor], out: Path, *, model_identity: dict[str, Any],
                  batch_size: int, shard_size: int, num_workers: int, progress: bool, keep_shards: bool,
                  overwrite: bool, pin_memory: bool, max_pixels: int | None,
                  prepare: Callable[[Any], Any] | None) -> EmbedResult:
    """:func:`embed_items` in its folder ``out``, holding the folder's lock."""
    n = len(items.ids)
    num_shards = (n + shard_size - 1) // shard_size
    job = {"format": FORMAT, "version": FORMAT_VERSION, "count": n, "shard_size": shard_size,
           "num_shards": num_shards, "fingerprint": items.fingerprint(), "file_stamp": items.file_stamp(),
           "model": model_identity,
           "scale_names": items.scale_names, "class_names": items.class_names,
           "image_roots": [str(r) for r in items.roots]}
    if items.part is not None:
        job.update({"part": list(items.part), "source_count": items.source_count,
                    "source_fingerprint": items.source_fingerprint, "source_file_stamp": items.source_file_stamp})
    meta_path = out / "embed.json"
    check_shards_folder(out)  # a shards link: refused before anything is read, written or removed
    if overwrite:
        # the files this job writes again stay until replaced (atomically, keeping their permission bits)
        discard_job(out, keep={"embed.json", "items.csv", "file_stats.npy", "embeddings.npy",
                               *(["labels.npy"] if items.labels is not None else [])})
    elif meta_path.exists():  # (a FIFO or a device too: refused, never read)
        try:
            old = json.loads(read_regular_bytes(meta_path).decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise InputError(f"unreadable job file ({_json_problem(exc)}); {_corrupt_job_advice(out)}",
                             file=meta_path) from None
        if not isinstance(old, dict):
            raise InputError(f"expected a JSON object, got {type(old).__name__}; {_corrupt_job_advice(out)}",
                             file=meta_path)
        if isinstance(old.get("version"), int) and old["version"] > FORMAT_VERSION:
            check_job_format(old, meta_path)  # a job of a newer dynametric: said as such (upgrade)
        # a job written before file stamps were recorded has none: its files' times are unknown, not changed
        changed = sorted(k for k in job if _comparable(k, old.get(k), job[k]) != _comparable(k, job[k], old.get(k))
                         and not (k in ("file_stamp", "source_file_stamp") and old.get(k) is None))
        if changed == ["file_stamp"] or changed == ["file_stamp", "source_file_stamp"]:
            # a file changed since the job started: refused where its row was embedded (a finished shard, a
            # complete job), else the job goes on, recording the files as they are now
            if old.get("status") == "complete" or not _changed_only_unembedded(out, items, shard_size):
                raise InputError(_changed_files(out, items), file=meta_path)
            changed = []
        moved = _moved_roots(old, job, items)
        if moved is not None:
            raise InputError(moved, file=meta_path)
        if changed:
            raise InputError(f"the folder holds a different embedding job (differs in {changed}"
                             f"{_model_change(old.get('model'), job['model'])}); use another --out or --overwrite",
                             file=meta_path)
        remove_job_temps(out)  # the same job: what a killed write left is removed
        if old.get("status") == "complete" and (out / "embeddings.npy").is_file():
            return _finished_job(out, old, items, num_shards)
    elif other_entries(out):
        raise InputError("output folder is not empty and holds no embedding job (embed.json)", file=out)
    check_job_replaceable(out)  # resuming: the same, before the first write
    atomic_write_json(meta_path, {**job, "status": "in_progress"})
    _write_items_csv(out, items)
    atomic_save_npy(out / "file_stats.npy", items.file_stats())

    from dynametric.utils.text import progress_bar

    # each file's size and time as recorded: a file decoded otherwise (replaced meanwhile) stops the job
    dataset = ImageFiles(items.paths, transform, max_pixels=max_pixels, stats=items.file_stats())
    computed, skipped = [], []
    dim: int | None = None
    bar = progress_bar()(total=n, unit="img", desc="embedding", disable=not progress)
    pending: list[tuple[int, int, int]] = []
    for s in range(num_shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        if _shard_ok(shard_path(out, s), hi - lo):
            skipped.append(s)
            bar.update(hi - lo)
        else:
            pending.append((s, lo, hi))
    # one loader over every pending shard (workers start once); no batch crosses a shard boundary
    batches = [list(range(b, min(hi, b + batch_size))) for _, lo, hi in pending for b in range(lo, hi, batch_size)]
    # the config's imports in each worker (spawn / forkserver start them afresh)
    extra: dict[str, Any] = {"prefetch_factor": 4, "worker_init_fn": worker_init()} if num_workers > 0 else {}
    # a generator of its own: without one the loader draws its workers' seed from torch's global generator each
    # time it is iterated (whatever num_workers), which moved the caller's random state on; nothing else is drawn
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory,
                        collate_fn=dataset.collate_fn, generator=torch.Generator(), **extra)

    def to_host(emb: torch.Tensor, parts: list[np.ndarray]) -> None:
        parts.append(emb.detach().float().cpu().numpy())
        bar.update(len(emb))

    runner: RunAhead[Any, Any] | None = None
    try:
        it: Iterator[Any] = iter(loader)
        if prepare is not None:  # each batch prepared (decoded on the GPU) in a background thread
            it = runner = RunAhead(it, prepare, depth=1)  # one batch queued, one in hand: two ahead
        for s, lo, hi in pending:
            parts: list[np.ndarray] = []
            rows = 0
            ahead: torch.Tensor | None = None  # the previous batch's embeddings, maybe still being computed
            try:
                with torch.no_grad():
                    while rows < hi - lo:
                        batch = next(it)
                        result = embed_batch(batch)
                        # copy the previous batch to the host only now: a GPU computes this batch meanwhile
                        if ahead is not None:
                            to_host(ahead, parts)
                        ahead = result
                        rows += len(batch)
                    if ahead is not None:  # a shard has at least one batch
                        to_host(ahead, parts)
            except InputError as exc:
                raise _worker_error(exc) from None
            arr = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
            if not np.isfinite(arr).all():
                bad = lo + int(np.nonzero(~np.isfinite(arr).all(axis=1))[0][0])
                raise InputError(f"the model produced a non-finite embedding for item {bad}", file=items.paths[bad])
            atomic_save_npy(shard_path(out, s), arr)
            computed.append(s)
    finally:
        if runner is not None:
            runner.close()
        bar.close()
    dim, written = _assemble(out, num_shards, n)
    if items.labels is not None:
        atomic_save_npy(out / "labels.npy", np.ascontiguousarray(items.labels, dtype=np.int64))
    atomic_write_json(meta_path, {**job, "status": "complete", "dim": dim, **written})
    if not keep_shards:  # every shard file of the job's pattern, also one beyond num_shards
        shards = out / "shards"
        check_shards_folder(out)  # (checked before the job: a link planted since is not followed either)
        for p in sorted(shards.iterdir()) if shards.is_dir() else []:
            if _is_shard_name(p.name) and not p.is_symlink() and p.is_file():
                p.unlink()
        if shards.is_dir() and not any(shards.iterdir()):
            shards.rmdir()
    return EmbedResult(out, n, dim, computed, skipped)


def check_shards_folder(out: Path, key: str = "--out") -> None:
    """The job's ``shards`` entry in ``out``, where there is one, must be a real folder inside ``out``: a symbolic
    link (to a folder elsewhere, where shards would be written and files of the job's names removed) or anything
    else is one line keyed ``key``, before anything is written or removed; nothing outside ``out`` is touched."""
    shards = out / "shards"
    try:
        mode = os.lstat(shards).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot be looked at ({first_sentence(exc)})", file=shards, key=key) from None
    if stat.S_ISLNK(mode):
        raise InputError("is a symbolic link; an embed job writes and removes its shards only in a real shards/ "
                         f"folder inside {key}, never through a link: remove the link or use another {key}",
                         file=shards, key=key)
    if not stat.S_ISDIR(mode):
        raise InputError(f"is {file_kind(mode)}, not a folder; an embed job keeps its shards in a shards/ folder "
                         f"here: move it away or use another {key}", file=shards, key=key)


def check_job_replaceable(out: Path, key: str = "--out") -> None:
    """Every file of an embedding job in ``out`` (:data:`JOB_FILES`) that a new or resumed job replaces or removes
    must be one this tool may replace: a read-only one (``chmod 444``) is one line keyed ``key``
    (:func:`~dynametric.utils.io.replacement_mode`), asked before anything is removed, written or computed; its
    ``shards`` entry must be a real folder (:func:`check_shards_folder`)."""
    check_shards_folder(out, key)
    for name in JOB_FILES:
        replacement_mode(out / name, key)


def discard_job(out: Path, keep: Collection[str] = ()) -> None:
    """``--overwrite``: remove the files of the embedding job in ``out`` and nothing else.

    The job's own ``embed.json`` says it is one (``format: dynametric-embeddings``); its files are ``embed.json``,
    ``items.csv``, ``file_stats.npy``, ``embeddings.npy``, ``labels.npy`` and ``shards/shard_NNNNN.npy`` (plus
    their ``.*.tmp`` leftovers). Any other file stays. An empty folder is fine; a non-empty folder that is not a
    job is refused, and so is a job one of whose files is read-only (:func:`check_job_replaceable`), before
    anything is removed. ``keep``: names of those files that the new job writes again; they are left for it to replace
    atomically, so that each keeps its permission bits (a private ``embeddings.npy`` of mode 0600 stays 0600; a
    removed file would come back with the umask's mode). Until the new job is complete its ``embed.json`` says
    ``in_progress``, so no reader takes a kept file for the new job's.
    """
    if not other_entries(out):
        return
    meta_path = out / "embed.json"
    check_shards_folder(out)  # before embed.json is read: a shards link is refused whatever the folder holds
    try:
        meta = json.loads(read_regular_bytes(meta_path).decode("utf-8"))  # a FIFO or a device: refused, not read
        is_job = isinstance(meta, dict) and meta.get("format") == "dynametric-embeddings"
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # a torn or emptied job file
        if not _holds_job_files(out):
            raise InputError(f"unreadable job file ({_json_problem(exc)}); {_corrupt_job_advice(out)}",
                             file=meta_path) from None
        is_job = True
    except InputError as exc:
        if not (out / "embed.json").exists():  # none there (or a dangling link): not a job
            is_job = False
        else:
            raise exc from None
    except OSError:
        is_job = False
    if not is_job:
        raise InputError("not an embedding job (no dynametric embed.json): --overwrite only replaces a job this "
                         "tool wrote; use another --out or empty the folder yourself", file=out)
    check_job_replaceable(out)  # a file the user protected: refused before anything is removed
    names = ("items.csv", "file_stats.npy", "embeddings.npy", "labels.npy", "embed.json")  # embed.json last
    shards = out / "shards"
    victims = sorted(shards.glob("shard_[0-9][0-9][0-9][0-9][0-9].npy")) if shards.is_dir() else []
    for folder, stems in ((shards, ("shard_",)), (out, names)):
        if folder.is_dir():
            victims += [p for p in folder.glob(".*.tmp") if p.name[1:].startswith(stems)]
    victims += [out / n for n in names if (out / n).is_file() and n not in keep]
    for p in victims:
        p.unlink(missing_ok=True)
    if shards.is_dir() and not any(shards.iterdir()):
        shards.rmdir()


def _json_problem(exc: Exception) -> str:
    """What is wrong with a job file that ``json.loads`` refused, in a few words: a ``RecursionError`` (arrays or
    objects nested thousands deep, which no job file holds) is named as one, not printed as a traceback."""
    if isinstance(exc, RecursionError):
        return "RecursionError: nested too deeply"
    return first_sentence(exc)


def _changed_rows(out: Path, items: ImageItems) -> np.ndarray | None:
    """The rows whose image file's size or modification time differs from the job's ``file_stats.npy``; ``None``
    where that file cannot be read (or is not of the list's shape)."""
    now = items.file_stats()
    try:
        with open_regular(out / "file_stats.npy") as fh:  # a FIFO planted there is not waited on
            then = np.load(fh, allow_pickle=False)
    except (OSError, ValueError, EOFError, InputError):
        return None
    if then.shape != now.shape:
        return None
    return np.flatnonzero((then != now).any(axis=1))


def _changed_only_unembedded(out: Path, items: ImageItems, shard_size: int) -> bool:
    """Whether every image file that changed since the job started (:func:`_changed_rows`) is in a shard not yet
    computed: its row was never embedded (a bad image repaired after the run stopped at it), so the job goes on
    with the files as they are now, their sizes and times recorded afresh."""
    rows = _changed_rows(out, items)
    if rows is None or not len(rows):
        return False
    n = len(items.ids)
    for s in {int(r) // shard_size for r in rows}:
        if _shard_ok(shard_path(out, s), min(n, (s + 1) * shard_size) - s * shard_size):
            return False
    return True


def _changed_files(out: Path, items: ImageItems) -> str:
    """The message for a job whose image files changed since they were embedded (size or modification time),
    naming the first few from the job's ``file_stats.npy``."""
    found = _changed_rows(out, items)
    rows = np.zeros(0, dtype=np.int64) if found is None else found
    head = "the image files changed since they were embedded (size or modification time)"
    if len(rows):
        names = ", ".join(str(items.paths[i]) for i in rows[:3]) + (", ..." if len(rows) > 3 else "")
        head = (f"{len(rows)} image file(s) changed since they were embedded (size or modification time): "
                f"{names}")
    return f"{head}; their embeddings would be stale: use --overwrite to embed again"


def _holds_job_files(out: Path) -> bool:
    """Whether ``out`` holds files only an embed job writes: an ``items.csv`` with the header ``index,id,path...``
    or ``shards/shard_NNNNN.npy``. Evidence that an unreadable ``embed.json`` beside them is the job's own."""
    try:
        with open_regular(out / "items.csv") as fh:  # a FIFO or a device is no evidence (and is not read)
            if fh.read(4096).decode("utf-8", "replace").startswith("index,id,path"):
                return True
    except (OSError, ValueError, InputError):
        pass
    shards = out / "shards"
    return shards.is_dir() and not shards.is_symlink() and any(_is_shard_name(p.name) for p in shards.iterdir())


def _corrupt_job_advice(out: Path) -> str:
    """What to do about an unreadable ``embed.json`` in ``out``: ``--overwrite`` replaces it only beside the job's
    own files (:func:`_holds_job_files`); otherwise it may be the user's file, which is never removed."""
    if _holds_job_files(out):
        return "it sits beside this tool's items.csv or shards: use --overwrite to start the job again"
    return ("the folder holds no other file of an embed job, so this tool does not replace it (not even with "
            "--overwrite): remove it yourself or use another --out")


def _field_change(key: str, there: Any, here: Any) -> str:
    """``'model': model.precision bf16 here, fp32 there`` — the fields of a job entry that differ between two
    parts, each with both values (the model entry field by field, as :func:`_model_change` compares it)."""
    if key == "model" and isinstance(there, dict) and isinstance(here, dict):
        unrecorded = {"precision": "fp32", "decode": "cpu"}
        a, b = ({**unrecorded, **_comparable("model", m, o)} for m, o in ((there, here), (here, there)))
        keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
        if keys:
            return "'model': " + ", ".join(f"model.{k} {b.get(k)} here, {a.get(k)} there" for k in keys)
    return f"{key!r}: {here!r} here, {there!r} there"


def _stamp_mismatch(paths: Sequence[Path], metas: Sequence[dict[str, Any]], ref: Path, part: Path) -> str:
    """The merge error for parts embedded while the image files differed (another ``source_file_stamp``): each
    part's ``file_stats.npy`` against the files now names the files changed since that part was embedded, and the
    parts whose stamp is not the files' stamp now are those to embed again."""
    changed: list[str] = []
    stale: list[str] = []
    stats_now: list[tuple[int, np.ndarray]] = []
    try:
        for p, meta in zip(paths, metas):
            with open(p / "items.csv", encoding="utf-8", newline="") as fh:
                files = [row[2] for row in list(csv.reader(fh))[1:] if len(row) > 2]
            now = np.array([[st.st_size, st.st_mtime_ns] for st in (os.stat(f) for f in files)], dtype=np.int64)
            stats_now.append((int(meta["part"][0]), now))
            then = np.load(p / "file_stats.npy", allow_pickle=False)
            if then.shape == now.shape:
                changed += [f"{files[i]} (since {p} was embedded)" for i in np.flatnonzero((then != now).any(axis=1))]
        whole = np.concatenate([a for _, a in sorted(stats_now, key=lambda t: t[0])])
        stamp = hashlib.sha256(np.ascontiguousarray(whole).tobytes()).hexdigest()[:16]
        stale = [str(p) for p, m in zip(paths, metas) if m.get("source_file_stamp") not in (None, stamp)]
    except (OSError, ValueError, EOFError, KeyError, IndexError):
        pass
    text = (f"differs from {ref} in 'source_file_stamp': the image files changed between the parts' embeddings "
            "(a file's size or modification time)")
    if changed:
        text += ": " + ", ".join(changed[:3]) + (f", ... ({len(changed) - 3} more)" if len(changed) > 3 else "")
    if stale:
        text += f"; embed again the part(s) embedded before the change: {', '.join(stale)}"
    else:
        text += f"; embed {part} and {ref} again"
    return text


def load_job_labels(path: Path, rows: int, scales: int) -> np.ndarray:
    """An embed job's ``labels.npy``: ``[rows, scales]`` integers (rows = the job's items, columns = its scale
    names), read without unpickling; anything else is one line naming the file, its shape and dtype, and the
    expected ones."""
    if path.is_dir():
        raise InputError("is a folder; expected the job's labels file", file=path)
    labels = read_plain_npy(path, f"an [{rows}, {scales}] integer array")
    if labels.ndim != 2 or labels.shape != (rows, scales) or labels.dtype.kind not in "iu":
        raise InputError(f"has shape {list(labels.shape)} and dtype {labels.dtype}, expected [{rows}, {scales}] "
                         f"integers (one row per item of items.csv, one column per scale name of embed.json)",
                         file=path)
    return labels.astype(np.int64, copy=False)


def _fingerprint(ids: Sequence[str], paths: Sequence[str], labels: np.ndarray | None) -> str:
    """:meth:`ImageItems.fingerprint` of recorded ids, paths and labels (as ``items.csv`` and ``labels.npy``
    hold them)."""
    h = hashlib.sha256()
    for i, p in zip(ids, paths):
        h.update(f"{i}\0{p}\n".encode())
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _read_part(path: Path, seen: dict[Path, tuple[bytes, tuple[int, ...]]]) -> dict[str, Any]:
    """The ``embed.json`` of a finished part job (``dynametric embed --part K/N``), checked (``seen``: where its
    bytes and identity are kept, :func:`_read_job_json`)."""
    seen[path] = _read_job_json(path)
    meta = read_finished_job(path, seen[path][0])  # its format and version too
    meta_path = path / "embed.json"
    if not isinstance(meta.get("part"), list) or len(meta["part"]) != 2:
        raise InputError("not a part job (embedded without --part K/N)", file=meta_path, key="part")
    return meta


@contextmanager
def _unchanged_part(part: Path, seen: tuple[bytes, tuple[int, ...]]) -> Iterator[None]:
    """An error reading a file of the part folder ``part`` is :class:`_PartChanged` where its ``embed.json`` is no
    longer the one read (``seen``): a command rewrote the part meanwhile, the files were not damaged (the merge reads
    the parts again)."""
    try:
        yield
    except InputError:
        if _job_changed(part, seen):
            raise _PartChanged(part) from None
        raise


_SAME_IN_EVERY_PART = ("source_fingerprint", "source_file_stamp", "source_count", "model", "scale_names",
                       "class_names", "image_roots")


class _PartChanged(Exception):
    """A part folder of a merge that a command rewrote while it was read (:func:`_read_parts`)."""

    def __init__(self, part: Path) -> None:
        super().__init__(str(part))
        self.part = part


_PartsRead = tuple[list[Path], dict[Path, dict[str, Any]], dict[str, Any], int, int, list[tuple[Path, dict[str, Any]]],
                   list[str], list[np.ndarray], list[np.ndarray] | None, np.ndarray | None]


def _read_parts(paths: list[Path]) -> _PartsRead:
    """:func:`merge_embedding_parts`'s reading and checking of its part folders ``paths``: the parts in order, each
    one's ``embed.json``, the first one's, the number of parts, the list's length, the parts with a file stamp, the
    merged ``items.csv`` lines, the embeddings, the file stats (``None``: a part has none) and the merged labels. A
    part whose ``embed.json`` was replaced while it was read (its files then fail their checks, or it is another
    file at the end) is :class:`_PartChanged`; any other problem an :class:`InputError`."""
    seen: dict[Path, tuple[bytes, tuple[int, ...]]] = {}
    metas = [_read_part(p, seen) for p in paths]
    first = metas[0]
    num = int(first["part"][1])
    # a part embedded before file stamps existed has none: it is compared with the others in everything else
    stamped = [(p, m) for p, m in zip(paths, metas) if m.get("source_file_stamp") is not None]
    for p, meta in zip(paths, metas):
        for key in _SAME_IN_EVERY_PART:
            ref_path, ref = paths[0], first
            if key == "source_file_stamp":
                if meta.get(key) is None:
                    continue
                ref_path, ref = stamped[0]
            if _comparable(key, meta.get(key), ref.get(key)) != _comparable(key, ref.get(key), meta.get(key)):
                if key == "source_file_stamp":
                    raise InputError(_stamp_mismatch(paths, metas, ref_path, p), file=p / "embed.json", key=key)
                raise InputError(f"differs from {ref_path} in {_field_change(key, ref.get(key), meta.get(key))}: "
                                 "the parts must come from one list embedded by one model", file=p / "embed.json",
                                 key=key)
        if int(meta["part"][1]) != num:
            raise InputError(f"is part {meta['part'][0]}/{meta['part'][1]}, but {paths[0]} is one of {num} parts",
                             file=p / "embed.json", key="part")
    by_k: dict[int, Path] = {}
    for p, meta in zip(paths, metas):
        k = int(meta["part"][0])
        if k in by_k:
            raise InputError(f"part {k}/{num} given twice (also {by_k[k]})", file=p, key="part")
        by_k[k] = p
    missing = [k for k in range(num) if k not in by_k]
    if missing:
        raise InputError(f"missing part(s) {', '.join(f'{k}/{num}' for k in missing)}", key="parts")
    order = [by_k[k] for k in range(num)]
    meta_of = {p: m for p, m in zip(paths, metas)}
    total = int(first["source_count"])
    if sum(int(meta_of[p]["count"]) for p in order) != total:
        raise InputError(f"the parts hold {sum(int(meta_of[p]['count']) for p in order)} images, the list {total}",
                         key="parts")
    # every part's files are checked before anything is written: a refused merge leaves no --out behind
    arrays = []
    stats_parts: list[np.ndarray] | None = []
    for p in order:
        with _unchanged_part(p, seen[p]):  # the rows of the very file whose digest was compared
            arrays.append(load_job_embeddings(p, meta_of[p]))
            stats_file = p / "file_stats.npy"
            if stats_parts is not None and (stats_file.exists() or stats_file.is_symlink()):
                count = int(meta_of[p]["count"])
                stats = read_plain_npy(stats_file, f"an [{count}, 2] integer array (each image's size and time)")
                if stats.shape != (count, 2) or stats.dtype.kind not in "iu":
                    raise InputError(f"has shape {list(stats.shape)} and dtype {stats.dtype}, expected [{count}, "
                                     "2] integers (each image file's size and modification time)", file=stats_file)
                stats_parts.append(stats)
            else:  # a part without one (embedded by an older dynametric): the merged folder has none
                stats_parts = None
    for p, arr in zip(order, arrays):
        if arr.ndim != 2 or arr.shape[0] != int(meta_of[p]["count"]) or arr.shape[1] != arrays[0].shape[1]:
            raise InputError(f"embeddings.npy has shape {tuple(arr.shape)}, expected [{meta_of[p]['count']}, "
                             f"{arrays[0].shape[1]}]", file=p / "embeddings.npy")
    lines: list[str] = []
    index = 0
    has_labels = [(p / "labels.npy").exists() for p in order]
    if any(has_labels) and not all(has_labels):
        raise InputError("labels.npy is missing", file=order[has_labels.index(False)])
    scales = len(first.get("scale_names") or [])
    part_labels: list[np.ndarray] = []
    all_ids: list[str] = []
    all_paths: list[str] = []
    for i, p in enumerate(order):
        ids, item_paths = [], []
        if i == 0:
            lines.append(csv_line(["index", "id", "path", *(first.get("scale_names") or [])]))
        with _unchanged_part(p, seen[p]):
            for _, row in read_job_items(p / "items.csv", scales):
                lines.append(csv_line([index, *row[1:]]))
                ids.append(row[1])
                item_paths.append(row[2])
                index += 1
            # the part's own files must be those its embed.json describes (items and labels: its list fingerprint)
            labels = check_job_items(p, meta_of[p])[2]
        if labels is not None:
            part_labels.append(labels)
        all_ids += ids
        all_paths += item_paths
    if index != total:
        raise InputError(f"the parts' items.csv hold {index} rows, the list {total} images", key="parts")
    merged_labels = np.concatenate(part_labels) if part_labels else None
    for p in order:  # no part was written while it was read (a part of an older dynametric has no digest)
        if _job_changed(p, seen[p]):
            raise _PartChanged(p)
    if _fingerprint(all_ids, all_paths, merged_labels) != first["source_fingerprint"]:
        raise InputError("the parts' items and labels together are not the list they were cut from (their fingerprint "
                         f"differs from source_fingerprint {first['source_fingerprint']!r})", key="parts")
    return order, meta_of, first, num, total, stamped, lines, arrays, stats_parts, merged_labels


def merge_embedding_parts(parts: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> EmbedResult:
    """Join the folders of ``dynametric embed --part K/N`` jobs (all ``N`` parts of one list, any order) into one
    embed output folder ``out``, equal to what one ``dynametric embed`` run over the whole list writes
    (``embeddings.npy``, ``labels.npy``, ``items.csv``, ``embed.json``); memory stays bounded by one part.

    The parts must come from the same list (its fingerprint), the same model (its identity: weights, config, head,
    input size, precision, decoder) and the same labels (scale and class names); parts that both record the list's
    file stamp must agree on it (a part embedded by a dynametric older than file stamps has none and is merged
    with the others); a missing, repeated, unfinished or foreign part is an error naming it. ``out`` must be new
    or empty (``overwrite``: replace an earlier embedding job there, as ``embed --overwrite`` does). A part
    rewritten while it was read (its ``embed.json`` another file) makes every part read again, up to
    :data:`~dynametric.retrieval.index_files.LOAD_TRIES` times, then :class:`FolderChangedError` (naming the
    command writing it where its lock says so: :func:`job_changing_error`)."""
    out = Path(out)
    paths = [Path(p) for p in parts]
    if not paths:
        raise InputError("no part folders given", key="parts")
    changed: Path | None = None
    for _ in range(LOAD_TRIES):  # a part rewritten while it was read (embed --overwrite): every part read again
        try:
            parts_read = _read_parts(paths)
        except _PartChanged as exc:
            changed = exc.part  # the part only: the exception's traceback would keep the failed read's arrays alive
            continue
        break
    else:
        assert changed is not None
        raise job_changing_error(changed, f"{_JOB_CHANGING} (run the merge again)")
    order, meta_of, first, num, total, stamped, lines, arrays, stats_parts, merged_labels = parts_read
    resolved = out.resolve()
    if any(p.resolve() == resolved for p in paths):
        raise InputError("--out is one of the parts; merge into a new folder", file=out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder (--out names a folder)", file=out)
    created = not out.exists()
    make_output_folder(out, "--out")
    try:
        with folder_lock(out, "merge-embeddings"):  # no embed or other merge writes there meanwhile
            return _merge_locked(out, overwrite, order, meta_of, first, num, total, stamped, lines, arrays,
                                 stats_parts, merged_labels)
    finally:
        if created and out.is_dir() and not any(out.iterdir()):  # a merge that wrote nothing leaves no --out
            out.rmdir()


def _merge_locked(out: Path, overwrite: bool, order: list[Path], meta_of: dict[Path, dict[str, Any]],
                  first: dict[str, Any], num: int, total: int, stamped: list[tuple[Path, dict[str, Any]]],
                  lines: list[str], arrays: list[np.ndarray], stats_parts: list[np.ndarray] | None,
                  merged_labels: np.ndarray | None) -> EmbedResult:
    """:func:`merge_embedding_parts`'s writing, its parts checked, holding ``out``'s lock. Where ``out`` was empty,
    a failure while writing (a full disk) removes what this merge wrote there."""
    was_empty = not other_entries(out)
    try:
        return _merge_write(out, overwrite, order, meta_of, first, num, total, stamped, lines, arrays, stats_parts,
                            merged_labels)
    except BaseException:
        if was_empty:
            for name in JOB_FILES:
                (out / name).unlink(missing_ok=True)
            remove_stale_temps(out, lambda name: name in JOB_FILES)
        raise


def _merge_write(out: Path, overwrite: bool, order: list[Path], meta_of: dict[Path, dict[str, Any]],
                 first: dict[str, Any], num: int, total: int, stamped: list[tuple[Path, dict[str, Any]]],
                 lines: list[str], arrays: list[np.ndarray], stats_parts: list[np.ndarray] | None,
                 merged_labels: np.ndarray | None) -> EmbedResult:
    """:func:`_merge_locked`'s writes (the parts checked): ``out`` made a merged job folder.

    Every file is first written to a temporary file beside its target; only once all are written are they renamed
    into place: an ``embed.json`` saying ``in_progress`` first (a merge killed between the renames leaves a folder
    every reader refuses and ``--overwrite`` knows as a job), then the data files (an earlier job's file this merge
    does not write, ``labels.npy`` or ``file_stats.npy``, is removed), the complete ``embed.json`` last. A failed write
    (a full disk) leaves an earlier job in ``out`` as it was, readable."""
    if other_entries(out):
        if not overwrite:
            raise InputError("output folder is not empty (use another --out, or --overwrite to replace an "
                             "embedding job there)", file=out)
        # a job this tool wrote, none of its files read-only: checked, and its shards removed; its other files stay
        # until the new ones are written
        discard_job(out, keep=JOB_FILES)
        remove_job_temps(out)
    dim = int(arrays[0].shape[1])
    # the parts' own shards, as they were embedded; shard_size / num_shards say the layout of the one run over the
    # list this folder equals (rerunning it finds the folder complete) when the parts share a shard size, else null
    sizes = {int(meta_of[p]["shard_size"]) for p in order}
    shard_size: int | None = sizes.pop() if len(sizes) == 1 else None
    part_shards = [{"part": f"{k}/{num}", "count": int(meta_of[p]["count"]),
                    "shard_size": int(meta_of[p]["shard_size"]), "num_shards": int(meta_of[p]["num_shards"])}
                   for k, p in enumerate(order)]
    job = {"format": FORMAT, "version": FORMAT_VERSION, "count": total, "shard_size": shard_size,
           "num_shards": None if shard_size is None else (total + shard_size - 1) // shard_size,
           "part_shards": part_shards, "fingerprint": first["source_fingerprint"],
           "file_stamp": stamped[0][1]["source_file_stamp"] if stamped else None,
           "model": first["model"], "scale_names": first["scale_names"], "class_names": first["class_names"],
           "image_roots": first["image_roots"], "merged_parts": num}
    meta_path = out / "embed.json"
    with StagedFiles() as staged:  # what a failed write left unrenamed is removed
        staged.write("in_progress", meta_path, json_text({**job, "status": "in_progress"}).encode("utf-8"))
        staged.write("items.csv", out / "items.csv", "".join(lines).encode("utf-8"))
        with staged.open("embeddings.npy", out / "embeddings.npy") as fh:
            written = _write_rows_into(fh, out / "embeddings.npy", arrays, total, dim)
        for name, array in (("file_stats.npy", None if stats_parts is None else np.concatenate(stats_parts)),
                            ("labels.npy", merged_labels)):
            if array is not None:
                with staged.open(name, out / name) as fh:
                    save_npy(fh, np.ascontiguousarray(array, dtype=np.int64))
        staged.write("embed.json", meta_path, json_text(
            {**job, "status": "complete", "dim": dim, **written}).encode("utf-8"))

        def absent(name: str) -> None:
            if name in JOB_FILES:  # an earlier job's file that this merge does not write
                (out / name).unlink(missing_ok=True)

        # every file written: the renames (they need no space), the unfinished embed.json first, the complete last
        staged.commit(("in_progress", "items.csv", "embeddings.npy", "file_stats.npy", "labels.npy", "embed.json"),
                      absent=absent)
    return EmbedResult(out, total, dim, [], [])


def _write_rows(path: Path, blocks: Iterable[np.ndarray], n: int, dim: int) -> dict[str, Any]:
    """``path`` = the ``[n, dim]`` float32 concatenation of ``blocks`` (the bytes ``np.save`` writes), written
    atomically block by block with Python's file IO (one block in memory at a time; a full disk is one error naming
    ``path``: a memory map of the file was killed by SIGBUS instead). Returns what ``embed.json`` records of the file
    (:func:`check_embeddings_file`): ``embeddings_size`` (bytes) and ``embeddings_sha256``, the digest of the bytes
    as they were written (streamed: the file is not read again)."""
    with atomic_open(path, "wb") as fh:
        return _write_rows_into(fh, path, blocks, n, dim)


def _write_rows_into(fh: IO[bytes], path: Path, blocks: Iterable[np.ndarray], n: int, dim: int) -> dict[str, Any]:
    """:func:`_write_rows` into the open file ``fh`` (a temporary file of ``path``)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, dim)}
    digest = hashlib.sha256()
    size = 0
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)

    def write(data: Any) -> None:  # the bytes written are the bytes hashed, the header's too
        nonlocal size
        digest.update(data)
        size += memoryview(data).nbytes
        fh.write(data)

    write(head.getvalue())
    rows = 0
    for block in blocks:
        # float64 rows the cast would make Inf (a caller checks first)
        refuse_beyond_float32(np.asarray(block), "embeddings.npy stores float32", file=path, row_offset=rows)
        write(np.ascontiguousarray(block, dtype=np.float32).data)
        rows += len(block)
    if rows != n:  # the header names n rows
        raise RuntimeError(f"{path}: {rows} rows were written, the header says {n}")
    return {"embeddings_size": size, "embeddings_sha256": digest.hexdigest()}


def _assemble(out: Path, num_shards: int, n: int) -> tuple[int, dict[str, Any]]:
    """Concatenate the shards into ``embeddings.npy`` (:func:`_write_rows`); its dimension and digest."""
    dim = int(np.load(shard_path(out, 0), mmap_mode="r").shape[1])

    def shards() -> Iterator[np.ndarray]:
        for s in range(num_shards):
            shard = np.load(shard_path(out, s), mmap_mode="r")
            if shard.shape[1] != dim:
                raise InputError(f"shard has dimension {shard.shape[1]}, expected {dim}", file=shard_path(out, s))
            yield shard

    return dim, _write_rows(out / "embeddings.npy", shards(), n, dim)


_RESTORE = "re-run the `dynametric embed` command that wrote the folder (it restores what it can) or embed again"
_DERIVE = ("; embeddings changed on purpose (PCA, whitening) go into a new folder with their items and labels: "
           "dynametric.retrieval.embed.derive_embedding_folder")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a regular file's bytes, read in blocks (a FIFO or a device: refused, never read)."""
    with open_regular(path) as fh:
        return _sha256_of(fh)


def _sha256_of(fh: IO[bytes]) -> str:
    """The SHA-256 of what is left to read of the open file ``fh``, read in blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _embeddings_path(folder: Path) -> Path:
    """A finished job's ``embeddings.npy``, there (a missing one is said as lost, its job being complete), a
    non-empty regular ``.npy`` no shorter than its header says."""
    emb_file = folder / "embeddings.npy"
    if not emb_file.exists() and not emb_file.is_symlink():
        raise InputError(f"embeddings.npy missing, though embed.json says the job is complete (the folder lost a "
                         f"file); {_RESTORE}", file=emb_file)
    check_file(emb_file)
    check_npy_header(emb_file, "the job's [N, D] float32 embeddings")
    check_npy_size(emb_file)
    return emb_file


def _check_embeddings_bytes(fh: IO[bytes], emb_file: Path, meta: dict[str, Any], digest: bool) -> None:
    """The open ``embeddings.npy`` (``fh``, at its start) has the size and, with ``digest``, the SHA-256 that
    ``meta`` records (what is checked is the file that is open, not whatever the name holds by now)."""
    size, want_size = os.fstat(fh.fileno()).st_size, meta.get("embeddings_size")
    if isinstance(want_size, int) and size != want_size:
        raise InputError(f"has {size} bytes, embed.json's embeddings_size says {want_size}: not the file this job "
                         f"wrote; {_RESTORE}{_DERIVE}", file=emb_file)
    want = meta.get("embeddings_sha256")
    if digest and isinstance(want, str) and _sha256_of(fh) != want:
        raise InputError("not the file this job wrote (its SHA-256 differs from embed.json's embeddings_sha256): "
                         f"a file was replaced or edited; {_RESTORE}{_DERIVE}", file=emb_file)


def check_embeddings_file(folder: Path, meta: dict[str, Any], *, digest: bool = True) -> Path:
    """A finished job's ``embeddings.npy`` (``meta``: its ``embed.json``), checked before it is read: there (a
    missing one is said as lost, its job being complete), a non-empty regular ``.npy`` no shorter than its header
    says, of the size ``embed.json`` records (``embeddings_size``: a stat, no read) and, with ``digest``, of the
    SHA-256 it records (``embeddings_sha256``: the file is read once more, about 1 GB/s; the readers that use
    every row read it anyway). A job written before these were recorded has neither and is read as before.
    Each failure is one line naming the file. A reader of the rows uses :func:`load_job_embeddings`, which loads
    the very file it checked."""
    emb_file = _embeddings_path(folder)
    with open_regular(emb_file) as fh:
        _check_embeddings_bytes(fh, emb_file, meta, digest)
    return emb_file


def load_job_embeddings(folder: Path, meta: dict[str, Any], *, mmap: bool = True) -> np.ndarray:
    """A finished job's ``embeddings.npy`` checked as :func:`check_embeddings_file` checks it and loaded from the
    same open file (memory-mapped with ``mmap``, else read into memory once): the rows are the bytes whose digest
    was compared with ``meta``'s, even when a command replaces the file meanwhile (``embed --overwrite`` renaming
    its new one into place). Not a 2-D float array: one line naming the file."""
    emb_file = _embeddings_path(folder)
    with open_regular(emb_file) as fh:
        _check_embeddings_bytes(fh, emb_file, meta, True)
        fh.seek(0)
        try:
            emb = _memmap_npy(fh) if mmap else np.load(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"cannot read the embeddings ({first_sentence(exc)})", file=emb_file) from None
    if emb.ndim != 2 or emb.dtype.kind != "f":
        raise InputError(f"expected a 2-D float array [N, D], found {emb.dtype} {list(emb.shape)}", file=emb_file)
    return emb


def _memmap_npy(fh: IO[bytes]) -> np.ndarray:
    """The array of the open ``.npy`` file ``fh`` (at its start), memory-mapped read-only from that file: the map
    holds the file, whatever its name holds later."""
    from numpy.lib import format as npy

    version = npy.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("the array holds Python objects")
    if not shape or int(np.prod(shape)) == 0:  # mmap cannot map nothing
        return np.zeros(shape, dtype=dtype)
    return np.memmap(fh, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                     order="F" if fortran else "C")


def check_job_items(folder: Path, meta: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray | None]:
    """The ids, paths and labels of a finished job's ``items.csv`` and ``labels.npy``, checked against its
    ``embed.json`` (``meta``): a job that names label scales must have its ``labels.npy`` (a folder that lost it is
    refused, never read as unlabelled), and the two files must be those the job embedded (their
    :func:`_fingerprint` is ``embed.json``'s ``fingerprint``: rows reordered, swapped or edited are refused). One
    line naming the file."""
    scales = list(meta.get("scale_names") or [])
    rows = [row for _, row in read_job_items(folder / "items.csv", len(scales))]
    ids = [row[1] for row in rows]
    paths = [row[2] for row in rows]
    count = meta.get("count")
    if isinstance(count, int) and len(ids) != count:
        raise InputError(f"has {len(ids)} rows, embed.json says {count} images; {_RESTORE}", file=folder / "items.csv")
    lpath = folder / "labels.npy"
    labels = None
    if lpath.exists() or lpath.is_symlink():  # a dangling link is said, not skipped
        labels = load_job_labels(lpath, len(ids), len(scales))
    elif scales:
        raise InputError(f"labels.npy missing: embed.json names the label scale(s) {scales}, so the job wrote one "
                         f"and the folder lost it; {_RESTORE}", file=lpath)
    want = meta.get("fingerprint")
    if isinstance(want, str) and _fingerprint(ids, paths, labels) != want:
        if labels is not None and scales:  # items.csv writes each row's labels too: which file is the odd one
            try:  # the label cells, read only here (a folder that passes never needs them)
                written = np.array([row[3:] for row in rows], dtype=np.int64).reshape(len(ids), len(scales))
            except (ValueError, OverflowError):
                written = None
            if written is not None and not np.array_equal(written, labels):
                row = int(np.flatnonzero((written != labels).any(axis=1))[0])
                raise InputError(f"its rows differ from the label columns of items.csv (first at row {row}): not the "
                                 f"labels this job embedded; {_RESTORE}", file=lpath)
        raise InputError(f"items.csv is not what this job embedded (the fingerprint of its ids, paths and labels "
                         f"differs from embed.json's {want!r}): a file was replaced or edited; {_RESTORE}",
                         file=folder / "items.csv")
    return ids, paths, labels


def check_job_folder(folder: Path, meta: dict[str, Any], *,
                     digest: bool = True) -> tuple[list[str], list[str], np.ndarray | None]:
    """Every file of a finished job in ``folder`` against its ``embed.json`` (``meta``): :func:`check_job_items`
    and :func:`check_embeddings_file`. What a reader of an embed folder calls before it uses any of them."""
    found = check_job_items(folder, meta)
    check_embeddings_file(folder, meta, digest=digest)
    return found


@dataclass
class EmbeddingSet:
    """A finished ``dynametric embed`` output (or a bare ``.npy`` with optional sidecars), as
    :func:`load_embedding_set` reads it, or made by hand (then give every field, ``source`` a ``str`` or a ``Path``).

    ``embeddings`` ``[N, D]``; ``ids`` and ``paths`` (``""`` where none), one per row; ``labels`` ``[N, S]`` or
    ``None``, with ``scale_names`` (``[]`` without labels) and ``class_names`` (per scale, or ``None``);
    ``image_roots``: the folders the images lie under; ``model``: the embedding model's description
    (``{}`` if unknown); ``source``: where the set was read from (named in messages).
    """

    embeddings: np.ndarray
    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None
    scale_names: list[str]
    class_names: list[list[str]] | None
    image_roots: list[str]
    model: dict[str, Any]
    source: str | Path

    def __repr__(self) -> str:
        """Short whatever the size (the generated one listed every id and path: megabytes at 100k items)."""
        emb = self.embeddings
        shape = "x".join(str(n) for n in getattr(emb, "shape", ()))
        labels = f"labels {repr_names(self.scale_names)}" if self.labels is not None else "no labels"
        return (f"EmbeddingSet({len(self.ids)} items, embeddings {shape} {getattr(emb, 'dtype', '?')}, {labels}, "
                f"model {repr_model(self.model)}, source {repr_text(self.source)})")


def embed_folder_of(path: str | Path) -> Path | None:
    """The ``dynametric embed`` output folder ``path`` names: the folder itself, or the folder of its
    ``embeddings.npy`` (a file of that name beside an ``embed.json``); ``None`` for any other file."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.name == "embeddings.npy" and (path.parent / "embed.json").is_file():
        return path.parent
    return None


def derive_embedding_folder(source: str | Path, out: str | Path, embeddings: Any, how: str) -> Path:
    """A new embed folder ``out`` holding ``embeddings`` (``[N, D']``, any width: PCA, whitening, a learned
    projection of ``source``'s rows, in the same order) with ``source``'s items, labels and file stamps, so that
    ``index build``, ``evaluate`` and ``search`` read them with their ids and labels. ``embed.json`` records the new
    file's size and digest, ``derived_from`` (``source``) and ``model.derived`` (``how``, after what ``source`` was
    already derived by): queries are comparable only when derived the same way, so an index of such a folder
    refuses image queries embedded by the model (:func:`dynametric.retrieval.model.model_mismatch`). ``source`` is
    checked as every reader checks it; ``out`` must be new or empty. Editing ``embeddings.npy`` in place is refused
    by the readers (its digest): derive a folder instead."""
    import shutil

    source, out = Path(source), Path(out)
    how = str(how).strip()
    if not how:
        raise InputError("say how the embeddings were derived (e.g. 'pca 64', 'whitening'): recorded in embed.json "
                         "and compared with the queries'", key="how")
    meta = read_finished_job(source)
    ids = check_job_folder(source, meta)[0]  # every file of the source checked, as the readers check them
    x = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings)
    if x.ndim != 2 or x.shape[0] != len(ids) or x.shape[1] < 1:
        raise InputError(f"expected [{len(ids)}, D] embeddings (one row per item of {source}, in its order), "
                         f"got {list(x.shape)}", key="embeddings")
    if x.dtype.kind not in "fiu" or not np.isfinite(x).all():
        raise InputError(f"expected finite numbers, got {x.dtype}" + ("" if x.dtype.kind not in "fiu" else
                         " with NaN or infinite values"), key="embeddings")
    # before anything is written: the folder stores float32 (the cast made them Inf)
    refuse_beyond_float32(x, f"the derived folder's {out / 'embeddings.npy'} stores float32; scale them down",
                          key="embeddings")
    if out.resolve() == source.resolve():
        raise InputError("out is the source folder; derive into a new folder", file=out)
    if out.exists() and (not out.is_dir() or other_entries(out)):
        raise InputError("output exists and is not a new or empty folder", file=out)
    make_output_folder(out, "out")
    with folder_lock(out, "derive"):
        for name in ("items.csv", "labels.npy", "file_stats.npy"):
            if (source / name).is_file():
                with open_regular(source / name) as src, atomic_open(out / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        n, dim = x.shape
        written = _write_rows(out / "embeddings.npy", [x[i:i + _DERIVE_ROWS] for i in range(0, n, _DERIVE_ROWS)],
                              n, dim)
        model = dict(meta.get("model") or {})
        model["derived"] = f"{model['derived']}; then {how}" if model.get("derived") else how
        derived = {**meta, **written, "model": model, "derived_from": str(source.resolve()), "status": "complete"}
        atomic_write_json(out / "embed.json", derived)
    return out


_DERIVE_ROWS = 65536  # rows converted to float32 and written at a time


def _read_job_json(folder: Path) -> tuple[bytes, tuple[int, ...]]:
    """``embed.json``'s bytes and the identity of its file (:func:`~dynametric.retrieval.index_files.read_identified`:
    ``embed`` and ``merge-embeddings`` write a new one, ``in_progress``, before they replace any other file of the
    folder, and the complete one last)."""
    meta_path = folder / "embed.json"
    if not meta_path.exists():
        raise InputError("not an embeddings folder (no embed.json); give a `dynametric embed` --out folder or an "
                         ".npy file", file=folder)
    return read_identified(meta_path)  # a FIFO or a device (/dev/zero) is refused, never read


_JOB_CHANGING = ("the embed folder changed while it was read: a `dynametric embed` or `merge-embeddings` wrote it "
                 "meanwhile; try again")


def job_changing_error(folder: Path, message: str = _JOB_CHANGING) -> FolderChangedError:
    """The :class:`FolderChangedError` of the embed folder ``folder`` that changed while it was read: where a
    command writes it right now (its lock: :func:`~dynametric.utils.output_locks.being_written`), ``is being written
    by <command> (process N) right now; wait for it to finish``; else ``message``."""
    return FolderChangedError(being_written(folder) or message, file=folder)


def _job_changed(folder: Path, seen: tuple[bytes, tuple[int, ...]]) -> bool:
    """Whether ``folder``'s ``embed.json`` is no longer the file read as ``seen`` (:func:`_read_job_json`): a command
    wrote the folder since (or is writing it)."""
    try:
        return _read_job_json(folder) != seen
    except (InputError, OSError):
        return True


def read_job_consistently(folder: Path, read: Callable[[dict[str, Any]], _T]) -> tuple[dict[str, Any], _T]:
    """A finished job's ``embed.json`` (:func:`read_finished_job`) and what ``read`` reads of the folder with it,
    both of one job: when ``embed.json`` was replaced while ``read`` ran (an ``embed --overwrite`` or a
    ``merge-embeddings --overwrite`` into the folder) the folder is read again, up to
    :data:`~dynametric.retrieval.index_files.LOAD_TRIES` times, then :class:`FolderChangedError`. An error of
    ``read`` while ``embed.json`` stayed the same is raised as it is."""
    for _ in range(LOAD_TRIES):
        seen = _read_job_json(folder)
        meta = read_finished_job(folder, seen[0])
        try:
            found = read(meta)
        except InputError:
            if not _job_changed(folder, seen):
                raise
            continue
        if not _job_changed(folder, seen):
            return meta, found
        del found  # (a copy of the rows read into memory: gone before the next is read)
    raise job_changing_error(folder)


def read_finished_job(folder: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The ``embed.json`` of a finished ``dynametric embed`` folder (``data``: its bytes, already read); one-line
    errors for a folder that is not one, an unreadable job file or an unfinished job."""
    folder = Path(folder)
    meta_path = folder / "embed.json"
    if data is None:
        data = _read_job_json(folder)[0]
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = _json_problem(exc) if isinstance(exc, RecursionError) else exc
        raise InputError(f"unreadable job file ({why})", file=meta_path) from None
    if not isinstance(meta, dict):
        raise InputError(f"expected a JSON object, got {type(meta).__name__}", file=meta_path)
    check_job_format(meta, meta_path)
    if meta.get("status") != "complete":
        writing = being_written(folder)
        if writing is not None:  # not stopped: a command writes the folder this moment
            raise InputError(writing, file=folder)
        if meta.get("merged_parts") is not None:  # a merge-embeddings folder: no embed command resumes it
            raise InputError("the merge into this folder is not finished (a `dynametric merge-embeddings` was "
                             "stopped while it wrote it); run it again with all its part folders: `dynametric "
                             f"merge-embeddings PART... --out {folder} --overwrite`", file=meta_path, key="status")
        raise InputError("embedding job is not finished; run the same `dynametric embed` command again to resume",
                         file=meta_path, key="status")
    return meta


def load_embedding_set(path: str | Path, mmap: bool = True) -> EmbeddingSet:
    """Read an embed output folder or its ``embeddings.npy`` (:func:`embed_folder_of`; its ``embed.json`` must say
    ``complete`` and every file is checked against it: :func:`check_job_folder`; float32, memory-mapped unless
    ``mmap`` is false) or a bare ``[N, D]`` file (:func:`~dynametric.utils.readers.load_embeddings`: a float64
    file stays float64, for the index's float64 preparation; values beyond float32's range are left to the
    index, which refuses them for ``l2`` / ``ip`` and takes them for cosine)."""
    path = Path(path)
    if not path.exists():
        raise InputError("embeddings not found", file=path)
    if not path.is_dir():
        require_regular(path)  # a FIFO or a device: one line, never read
    path = embed_folder_of(path) or path
    if path.is_file():
        from dynametric.utils.readers import load_embeddings

        if path.suffix.lower() == ".npy":
            check_npy_header(path)
        emb = load_embeddings(path)
        n = len(emb)
        return EmbeddingSet(emb, [str(i) for i in range(n)], [""] * n, None, [], None, [], {}, path)
    folder = path
    # every file read with the embed.json it is checked against (another job renamed into the folder meanwhile: read
    # again), the rows from the very file whose digest was compared
    meta, ((ids, paths, labels), emb) = read_job_consistently(
        folder, lambda meta: (check_job_items(folder, meta), load_job_embeddings(folder, meta, mmap=mmap)))
    scales = list(meta.get("scale_names") or [])
    if len(ids) != len(emb):
        raise InputError(f"items.csv has {len(ids)} rows but embeddings.npy {len(emb)}", file=path / "items.csv")
    return EmbeddingSet(emb, ids, paths, labels, scales, meta.get("class_names"),
                        list(meta.get("image_roots") or []), dict(meta.get("model") or {}), path)
