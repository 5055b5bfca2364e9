"""Reading an index folder's files: ``index.json`` (:func:`_read_meta`, read with the identity of its file:
:func:`_read_index_json`, a load that meets a build: :class:`IndexChangedError`), ``items.csv`` (written with
:func:`csv_line`, read with :func:`csv_records`; ``embed``'s ``items.csv`` alike), ``labels.npy`` and the check that
``index.faiss`` is the kind ``index.json`` names. The folder's layout: :mod:`dynametric.retrieval.index_folder`; the
index: :mod:`dynametric.retrieval.index`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.errors import InputError
from dynametric.retrieval.faiss_ops import KINDS, METRICS
from dynametric.retrieval.index_folder import BUILD_MARKER, INDEX_FORMAT, INDEX_VERSION
from dynametric.utils.readers import (
    check_format_version,
    open_regular,
    read_plain_npy,
    read_regular_bytes,
    require_regular,
)

_META_TYPES: dict[str, tuple[type, ...]] = {"kind": (str,), "metric": (str,), "dim": (int,), "count": (int,)}

def _read_meta(meta_path: Path, data: bytes | None = None) -> dict[str, Any]:
    """``index.json`` (``data``: its content, already read), with every field the loader relies on present and of
    the right type."""
    try:
        meta = json.loads(read_regular_bytes(meta_path) if data is None else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable index metadata ({exc})", file=meta_path) from None
    except RecursionError:  # arrays or objects nested thousands deep: no index.json holds them
        raise InputError("unreadable index metadata (RecursionError: nested too deeply)", file=meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"not a dynametric index (format {found!r})", file=meta_path, key="format")
    check_format_version(meta, meta_path, newest=INDEX_VERSION, what="index format")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise InputError(f"expected {types[0].__name__}, found {value!r}", file=meta_path, key=key)
    if meta["kind"] not in KINDS or meta["metric"] not in METRICS:
        raise InputError(f"unknown kind/metric {meta['kind']!r}/{meta['metric']!r}; expected one of {list(KINDS)} / "
                         f"{list(METRICS)}", file=meta_path, key="kind")
    return meta


def _check_kind(index: Any, meta: dict[str, Any], fpath: Path, faiss: Any) -> None:
    """The faiss file must be the kind and metric ``index.json`` names (a swapped file is not searched as another)."""
    if isinstance(index, faiss.IndexHNSW):
        found = "hnsw"
    elif isinstance(index, faiss.IndexIVF):
        found = "ivf"
    elif isinstance(index, faiss.IndexFlat):
        found = "flat"
    else:
        found = type(index).__name__
    metric = "l2" if index.metric_type == faiss.METRIC_L2 else "ip"
    transform = meta.get("transform")
    want_metric = ("l2" if meta["metric"] == "l2" else "ip") if not isinstance(transform, dict) else \
        ("l2" if transform.get("kind") in ("l2", "cosine-l2") else "ip")
    if found != meta["kind"] or metric != want_metric:
        raise InputError(f"index.faiss holds a {found} index ({metric}), but index.json says {meta['kind']} "
                         f"({meta['metric']})", file=fpath)


def csv_line(fields: Iterable[Any]) -> str:
    """One CSV record ending in ``\n``, as ``csv.reader`` reads it back field for field: a field holding a comma, a
    double quote, ``\n`` or ``\r`` is quoted (its quotes doubled). ``csv.writer(lineterminator="\n")`` leaves a
    field with a ``\r`` unquoted, and a reader ends the record there (a file name with a carriage return split
    its row of ``items.csv`` in two)."""
    out = []
    for value in fields:
        text = str(value)
        if any(c in text for c in _CSV_SPECIAL):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return ",".join(out) + "\n"


_CSV_SPECIAL = (",", '"', "\n", "\r")


def csv_records(text: str, path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """The records after the header of an ``items.csv`` (``text``), each with the line it starts on; every record
    must have as many fields as the header (``what`` names them in the error: one line naming ``path`` and the
    line, e.g. a row split by a bare carriage return in a file an older dynametric wrote)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        width = len(header or [])
        start = reader.line_num + 1
        for row in reader:
            if len(row) != width:
                raise InputError(f"expected {width} fields ({what}), got {len(row)}: the file is damaged (a row "
                                 "split or cut); write it again (embed again / rebuild the index)", file=path,
                                 line=start)
            yield start, row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"unreadable CSV ({exc})", file=path, line=reader.line_num) from None


def _read_items(path: Path, text: str | None = None) -> tuple[list[str], list[str]]:
    """``items.csv``: header ``index,id,path``, then one row of three fields per item (``text``: the file's
    content, already read)."""
    if text is None:
        data = read_regular_bytes(path, missing="items.csv missing (the index folder is incomplete)")
        text = utf8_text(data, path)
    if not text.startswith("index,id,path"):
        raise InputError(f"expected the header index,id,path, found {text.partition(chr(10))[0][:60]!r}", file=path,
                         line=1)
    ids, paths = [], []
    for _, row in csv_records(text, path, "index,id,path"):
        ids.append(row[1])
        paths.append(row[2])
    return ids, paths


def utf8_text(data: bytes, path: Path) -> str:
    """The text of a file this tool wrote, line ends as written (a ``\r`` inside a quoted CSV field stays one)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None


LOAD_TRIES = 3
"""How many times :meth:`~dynametric.retrieval.index.RetrievalIndex.load` reads a folder whose ``index.json`` a build
replaced meanwhile."""
_CHANGING = ("the index changed while it was read: a `dynametric index build` into this folder is running (or was "
             f"stopped before it finished: its {BUILD_MARKER} is there); try again once the build finished, or run "
             "the build again")


class FolderChangedError(InputError):
    """A reader of a folder that a command of this tool rewrote while it was read (its job or index file is
    another file now), more often than :data:`LOAD_TRIES` times, or that such a command is writing: try again
    later. :class:`IndexChangedError` for index folders; ``load_embedding_set`` and ``merge-embeddings`` raise it for
    embed folders."""


class IndexChangedError(FolderChangedError):
    """:meth:`~dynametric.retrieval.index.RetrievalIndex.load` of a folder that a ``dynametric index build`` rewrote
    while it was read, more often than :data:`LOAD_TRIES` times, or that a build is writing (or was stopped in): try
    again later."""


def read_identified(path: Path, missing: str = "file not found") -> tuple[bytes, tuple[int, ...]]:
    """A small file's bytes and the identity of the file they were read from (inode, size, modification time): the
    commands of this tool replace their files by new ones (atomic writes), so a file written again with the same
    bytes is another file. A FIFO or a device (/dev/zero): refused, never read (``missing``: the line for a file
    that is not there)."""
    with open_regular(path, missing=missing) as fh:
        st = os.fstat(fh.fileno())
        return fh.read(), (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_index_json(path: Path) -> tuple[bytes, tuple[int, ...]]:
    """``index.json``'s bytes and the identity of the file they were read from (:func:`read_identified`)."""
    return read_identified(path, missing="not an index folder: no index.json (was `dynametric index build` "
                           "interrupted?)")


def _change_during_load(path: Path, seen: tuple[bytes, tuple[int, ...]]) -> str | None:
    """Whether the folder changed since its ``index.json`` was read (``seen``: :func:`_read_index_json`):
    ``"built"`` (another ``index.json`` now), ``"building"`` (a build's marker there: a build running or one
    stopped), ``None``.

    The marker is looked at first: when there was none and ``index.json`` is still the file read, no build ran when
    the marker was looked for, and none had finished since ``index.json`` was read (each writes a new one).
    (``index.json`` first would miss a build that wrote it and removed its marker in between.)"""
    marker = path / BUILD_MARKER
    building = marker.exists() or marker.is_symlink()
    try:
        if _read_index_json(path / "index.json") != seen:
            return "built"
    except InputError:  # gone (as OSError before), or no regular file now: read again, and refused then
        return "built" if (path / "index.json").exists() else "building"
    except OSError:
        return "building"
    return "building" if building else None


def _labels_sha256(labels: np.ndarray | None) -> str:
    """The digest ``index.json`` records of the labels: SHA-256 of their int64 values, row by row."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _read_labels(path: Path, n: int) -> np.ndarray:
    """``labels.npy``: an ``[N, S]`` integer array (never unpickled)."""
    require_regular(path, missing="labels.npy missing, but index.json says the index has labels")
    labels = read_plain_npy(path, "an [N, S] integer array")
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise InputError(f"expected an [N, S] integer array, found {labels.dtype} {labels.shape}", file=path)
    return labels.astype(np.int64, copy=False)

