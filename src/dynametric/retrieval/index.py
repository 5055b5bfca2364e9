"""A faiss nearest-neighbour index with its metadata (``dynametric index build`` / ``dynametric search``).

Index folder ``INDEX/``: ``index.faiss`` (the faiss index), ``items.csv`` (``index,id,path``), ``labels.npy``
(``[N, S]`` int64, when the embeddings carry labels) and ``index.json``: kind and parameters, metric, dimension, count,
scale names, class names of text labels, the image roots, and the producing model's identity (checkpoint, config
hash, weights hash, head). While a build runs (and after one was killed) the folder also holds ``index.build.json``,
the build's marker: written first, removed once ``index.json`` is written, and the lock file ``dynametric.lock``
(:func:`~dynametric.retrieval.index_folder.folder_lock`; ``embed`` and ``merge-embeddings`` hold it in their folders
too).

Metrics: ``cosine`` (vectors L2-normalised, inner product; reported distance ``1 - cos``), ``l2`` (reported
distance: the Euclidean distance) and ``ip`` (inner product; reported distance ``-<q, x>``). Smaller is closer for
every reported distance. The items are stored transformed
(:class:`~dynametric.retrieval.index_transform.InputTransform`, decided at build time in float64 and recorded in
``index.json``; queries alike): faiss finds candidates in float32, their distances are computed again in float64
with the transform undone, equal distances ordered by item position.

Kinds: ``flat`` (exact), ``ivf`` (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` visited per query;
Jégou et al. 2011), ``hnsw`` (``IndexHNSWFlat``: ``M`` links, ``ef_construction``, ``ef_search``; Malkov &
Yashunin 2018).

Beside this module: the folder's layout and its lock (:mod:`dynametric.retrieval.index_folder`), the reading of its
files (:mod:`dynametric.retrieval.index_files`), the input transform (:mod:`dynametric.retrieval.index_transform`),
faiss's build and search (:mod:`dynametric.retrieval.faiss_ops`) and the short reprs
(:mod:`dynametric.retrieval.reprs`). ``build_faiss_index``, ``IndexBuildWarning``, ``require_faiss``, ``folder_lock``,
``LOCK_NAME``, ``other_entries`` and ``IndexChangedError`` are importable from here too, their former home.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.errors import ConfigError, DynametricError, InputError, first_sentence
from dynametric.retrieval.faiss_ops import (  # noqa: F401  (IndexBuildWarning: re-exported, its former home)
    METRICS,
    IndexBuildWarning,
    build_faiss_index,
    faiss_search,
    require_faiss,
    to_distance,
)
from dynametric.retrieval.index_files import (
    _CHANGING,
    LOAD_TRIES,
    IndexChangedError,
    _change_during_load,
    _check_kind,
    _labels_sha256,
    _read_index_json,
    _read_items,
    _read_labels,
    _read_meta,
    csv_line,
    utf8_text,
)
from dynametric.retrieval.index_folder import (  # noqa: F401  (LOCK_NAME, other_entries: re-exported, former home)
    BUILD_FORMAT,
    BUILD_MARKER,
    INDEX_FILES,
    INDEX_FORMAT,
    INDEX_VERSION,
    LOCK_NAME,
    _is_build_file,
    check_build_folder,
    folder_lock,
    make_output_folder,
    other_entries,
)
from dynametric.retrieval.index_transform import (
    _PREPARE_ROWS,
    QUERY_REACH,
    InputTransform,
    _prepare,
    _Queries,
    _rows_of,
)
from dynametric.retrieval.reprs import repr_model, repr_names, repr_text
from dynametric.utils.io import StagedFiles, json_text, remove_stale_temps, require_new_folder, save_npy
from dynametric.utils.output_locks import being_written
from dynametric.utils.readers import (
    beyond_float32,
    beyond_float32_text,
    open_regular,
    read_regular_bytes,
    refuse_zero_rows,
)

TIE_CANDIDATES = 4096
"""A flat search grows its candidate list until the ``k``-th result is settled (no item beyond the list can tie with
it or come before it), but not past ``max(16 x the first list, TIE_CANDIDATES)`` candidates once every query has its
results: a tie group larger than that (thousands of items on one point: a collapsed model) is settled by position
among the candidates found, so such data cost at most that many float64 distances per query."""
QUERY_CHUNK = 64


def first_per_group(groups: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence (leftmost column) of each group value in every row, among ``valid`` cells.

    Vectorised over rows: a stable argsort of the row's group values puts equal values next to each other in
    column order, so the first of each run is the first occurrence.
    """
    g = np.where(valid, groups, np.iinfo(np.int64).min)
    order = np.argsort(g, axis=1, kind="stable")
    sg = np.take_along_axis(g, order, axis=1)
    first_sorted = np.ones_like(sg, dtype=bool)
    first_sorted[:, 1:] = sg[:, 1:] != sg[:, :-1]
    mask = np.zeros_like(first_sorted)
    np.put_along_axis(mask, order, first_sorted, axis=1)
    return mask & valid


def take_first_k(keep: np.ndarray, k: int) -> np.ndarray:
    """Column positions ``[Q, k]`` of the first ``k`` True cells of every row (``-1`` where a row has fewer)."""
    rank = np.cumsum(keep, axis=1)
    sel = keep & (rank <= k)
    q = keep.shape[0]
    pos = np.full((q, k), -1, dtype=np.int64)
    rows, cols = np.nonzero(sel)
    pos[rows, rank[rows, cols] - 1] = cols
    return pos


def _copied_class_names(names: Any) -> list[list[str]] | None:
    """The index's own copy of an embedding set's ``class_names`` (per scale a list of names): the caller's lists may
    change after the build."""
    return None if names is None else [list(scale) for scale in names]


@dataclass
class SearchResult:
    """Ranked results per query: item positions ``ids`` ``[Q, k]`` (``-1``: no result) and ``distances`` (``nan``
    there), nearest first, in the index's metric: ``1 - cos`` for ``cosine``, the Euclidean distance for ``l2``,
    ``-<q, x>`` for ``ip`` (smaller is nearer for all three). ``mode``: ``"items"`` (plain search),
    ``"classes"`` (``scale=``: one item per class, its nearest) or ``"same"`` (``same=``: items of the query's class);
    ``scale``: the scale name of those two modes; ``query_groups``: ``[Q]`` the class each query was matched to
    under ``same=`` (its given or predicted label), else ``None``."""

    ids: np.ndarray
    distances: np.ndarray
    mode: str = "items"
    scale: str | None = None
    query_groups: np.ndarray | None = None
    short_queries: int = 0
    """Queries with fewer results than the index holds for them (an ``ivf`` index ranks only the items of the
    ``nprobe`` cells it visits; ``hnsw`` only what its beam reaches)."""


def _refuse_beyond_float32(x: np.ndarray, metric: str, what: str, action: str, file: str | Path | None) -> None:
    """Refuse finite values beyond float32's range (:func:`~dynametric.utils.readers.beyond_float32`) for an
    ``l2`` / ``ip`` index, which is built and searched in float32 (the cast made them Inf: "NaN or Inf"); a cosine
    index normalises the rows in float64 first and takes them. ``action``: what the index does in float32."""
    beyond = beyond_float32(x) if metric != "cosine" else None
    if beyond is not None:
        raise InputError(f"{what} hold {beyond_float32_text(beyond)}); an {metric} index {action} in float32",
                         file=file)


def _query_array(q: Any) -> np.ndarray:
    """Queries as a numpy array: a torch tensor detached (one that requires grad) and moved to the CPU, bf16 and
    fp16 (which numpy cannot hold, or holds with too little range) as float32."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported: not imported for it here
    if torch is not None and isinstance(q, torch.Tensor):
        t = q.detach()
        if t.is_floating_point() and t.element_size() < 4:
            t = t.float()
        q = t.cpu().numpy()
    return np.asarray(q)


def _build_items(emb: Any, rows: int) -> tuple[list[str], list[str], np.ndarray | None, list[str]]:
    """:meth:`RetrievalIndex.build`'s ids, paths, ``[N, S]`` int64 labels (or ``None``) and scale names of ``emb``
    for ``rows`` embeddings, checked: one id and one path per row, labels through
    :func:`~dynametric.labels.as_label_matrix` (``[S, N]`` labels, NaN or fractional class ids, another row count are
    one line keyed ``labels``), one scale name per label column (an empty list takes the default names)."""
    from dynametric.labels import as_label_matrix, check_scale_names, default_scale_names

    ids, paths = list(emb.ids), list(emb.paths)
    for what, values in (("ids", ids), ("paths", paths)):
        if len(values) != rows:
            raise InputError(f"{len(values)} {what} for {rows} embeddings (one per embedding row)", key=what)
    names = list(emb.scale_names)
    if emb.labels is None:
        return ids, paths, None, names
    torch = sys.modules.get("torch")
    given = emb.labels.detach() if torch is not None and isinstance(emb.labels, torch.Tensor) else emb.labels
    shape = tuple(getattr(given, "shape", ()))
    if len(shape) == 2 and shape[0] != rows and shape[1] == rows:
        raise InputError(f"labels have shape {list(shape)}: {shape[0]} rows for {rows} embeddings; they look "
                         "[S, N] (one row per scale): give [N, S], one row per embedding (transpose them)",
                         key="labels")
    # a copy: the caller's array (or tensor, which as_label_matrix and .numpy() share memory with) may change later
    labels = np.array(as_label_matrix(given, num_rows=rows).cpu().numpy(), dtype=np.int64, copy=True)
    if not names:
        names = default_scale_names(labels.shape[1])
    elif len(names) != labels.shape[1]:
        raise InputError(f"{len(names)} scale names {[str(n) for n in names]} for {labels.shape[1]} label "
                         "column(s) (one name per column, finest first)", key="scale_names")
    return ids, paths, labels, list(check_scale_names(names, reserved=()))


def _changing(path: Path) -> IndexChangedError:
    """The error of an index folder that changed while it was read: where a build writes it right now (its lock),
    ``is being written by index build (process N) right now; wait for it to finish``
    (:func:`~dynametric.utils.output_locks.being_written`), else :data:`_CHANGING`."""
    return IndexChangedError(being_written(path) or _CHANGING, file=path)


@dataclass
class RetrievalIndex:
    """A faiss index plus the item metadata it answers with."""

    index: Any
    kind: str
    metric: str
    dim: int
    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None
    scale_names: list[str]
    class_names: list[list[str]] | None = None
    image_roots: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    _direct_map: bool = field(default=False, repr=False)
    _map_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    digest: str = field(default="", compare=False)
    """SHA-256 of the ``index.json`` :meth:`load` read and checked every file against (it holds the digests of
    ``index.faiss``, ``items.csv`` and the labels, so it names the build), or :meth:`save` wrote; ``""`` for an
    index neither loaded nor saved."""
    loaded_from: Path | None = field(default=None, compare=False)
    """The folder :meth:`load` read or :meth:`save` wrote (``None`` for an index neither loaded nor saved)."""
    transform: InputTransform | None = field(default=None, compare=False)
    """How the items are stored and the queries transformed (:class:`InputTransform`); ``None`` for an index of
    an older dynametric (``index.json`` without ``transform``), searched exactly as that version did."""

    @property
    def size(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        """Short whatever the size (the generated one listed every id and path: megabytes at 100k items)."""
        labels = f"labels {repr_names(self.scale_names)}" if self.labels is not None else "no labels"
        where = f", loaded from {repr_text(self.loaded_from)}" if self.loaded_from is not None else \
            (f", source {repr_text(self.source)}" if self.source else "")
        params = f", params {repr_text(self.params)}" if self.params else ""
        return (f"RetrievalIndex(kind {repr_text(self.kind, 20)}, metric {repr_text(self.metric, 20)}, "
                f"{self.size} items, dim {self.dim}, {labels}, model {repr_model(self.model)}{params}{where})")

    # ------------------------------------------------------------------------------------------ building, IO
    @classmethod
    def build(cls, emb: Any, kind: str = "flat", metric: str = "cosine", **kwargs: Any) -> RetrievalIndex:
        """Index an :class:`~dynametric.retrieval.embed.EmbeddingSet` (``kwargs``: :func:`build_faiss_index`).
        Raises :class:`~dynametric.errors.InputError` for embeddings that cannot be indexed (none, non-finite, an
        all-zero row under cosine) and :class:`~dynametric.errors.ConfigError` for an unknown kind, metric or
        option; faiss missing is one line naming the extra to install. The embeddings are read as queries are (a
        torch tensor detached and moved to the CPU, bf16 / fp16 as float32); the labels as every loss and metric
        reads them (:func:`~dynametric.labels.as_label_matrix`: ``[N]`` or ``[N, S]`` integer class ids, one row per
        embedding); ``ids`` and ``paths`` must have one entry per embedding and ``scale_names`` one name per label
        column (none: the default names) - each refused with one line otherwise."""
        raw = _query_array(emb.embeddings)
        if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:  # as the command line refuses such a file
            raise InputError(f"no embeddings (shape {raw.shape})" if raw.ndim == 2 else
                             f"expected a 2-D [N, D] array of embeddings, got shape {raw.shape}", file=emb.source)
        if metric == "cosine":
            src = Path(emb.source)
            refuse_zero_rows(raw, src / "embeddings.npy" if src.is_dir() else src)
        _refuse_beyond_float32(raw, metric, "embeddings", "is built", emb.source)
        if raw.dtype.kind not in "fiub" or not all(np.isfinite(b).all() for _, b in _rows_of(raw, False)):
            raise InputError("embeddings contain NaN or Inf" if raw.dtype.kind in "fiub" else
                             f"embeddings must be numbers, got dtype {raw.dtype}", file=emb.source)
        if metric not in METRICS:  # before the transform is planned for it
            raise ConfigError(f"unknown metric {metric!r}; expected one of {list(METRICS)}", key="--metric")
        ids, paths, labels, names = _build_items(emb, len(raw))
        plan = InputTransform.plan(raw, metric)
        x = plan.apply(raw)
        if not np.isfinite(x).all():
            raise InputError("embeddings contain NaN or Inf", file=emb.source)
        norm = max((float(np.linalg.norm(np.asarray(x[lo:lo + _PREPARE_ROWS], np.float64), axis=1).max())
                    for lo in range(0, len(x), _PREPARE_ROWS)), default=0.0)
        plan = InputTransform(plan.kind, plan.factor, plan.centre, norm)
        index, params = build_faiss_index(x, kind, plan.faiss_metric, **kwargs)
        return cls(index, kind, metric, int(x.shape[1]), ids, paths, labels, names,
                   _copied_class_names(emb.class_names), list(emb.image_roots), dict(emb.model), params,
                   str(emb.source), transform=plan)

    def save(self, out: str | Path) -> Path:
        """Write the index folder: every file is first written to a temporary file beside its target (the build's
        marker :data:`BUILD_MARKER`, the index files, ``index.json``), and only once all are written are they renamed
        into place: the marker first, ``index.json`` last (it marks a complete index), then the marker is removed. A
        failed write (a full disk, a file size limit) leaves an earlier index in the folder as it was, usable, and no
        temporary file; a build killed between its renames leaves its marker, which the next build knows."""
        faiss = require_faiss()
        out = Path(out)
        if out.exists() and not out.is_dir():
            require_new_folder(out, "--out", "dynametric index (index.json)")  # refused
        make_output_folder(out, "--out")
        with folder_lock(out, "index build"):  # one build at a time in a folder
            return self._save(out, faiss)

    def _save(self, out: Path, faiss: Any) -> Path:
        check_build_folder(out)  # before anything is written: the folder as it was when refused
        marker = out / BUILD_MARKER
        remove_stale_temps(out, _is_build_file)  # left by a killed build of this index
        with StagedFiles() as staged:  # what a failed write left unrenamed is removed
            # the marker says that a build is under way and which files it writes (labels.npy: or removes), so a
            # build killed between the renames leaves a folder the next build knows as its own
            staged.write(BUILD_MARKER, marker, json_text(
                {"format": BUILD_FORMAT, "version": INDEX_VERSION, "files": list(INDEX_FILES)}).encode("utf-8"))
            digest = hashlib.sha256()

            def write(data: Any) -> int:  # the bytes written are the bytes hashed (never another build's file)
                digest.update(data)
                return fh.write(data)

            with staged.open("index.faiss", out / "index.faiss") as fh:  # Python's file IO: a full disk is an OSError
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))  # (faiss's own: a RuntimeError)
            items_text = csv_line(["index", "id", "path"]) + "".join(
                csv_line([i, item_id, p]) for i, (item_id, p) in enumerate(zip(self.ids, self.paths)))
            items_bytes = items_text.encode("utf-8")
            staged.write("items.csv", out / "items.csv", items_bytes)
            hashes = {"faiss_sha256": digest.hexdigest(), "items_sha256": hashlib.sha256(items_bytes).hexdigest()}
            if self.labels is not None:
                labels = np.ascontiguousarray(self.labels, dtype=np.int64)
                with staged.open("labels.npy", out / "labels.npy") as fh:
                    save_npy(fh, labels)
                hashes["labels_sha256"] = _labels_sha256(labels)
            meta_bytes = json_text({
                "format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": self.kind, "metric": self.metric,
                "dim": self.dim, "count": self.size, "params": self.params, "scale_names": self.scale_names,
                "has_labels": self.labels is not None, "class_names": self.class_names,
                "image_roots": self.image_roots, "model": self.model, "source": self.source, **hashes,
                **({"transform": self.transform.to_json()} if self.transform is not None else {})}).encode("utf-8")
            staged.write("index.json", out / "index.json", meta_bytes)

            def absent(name: str) -> None:
                if name == "labels.npy" and (out / name).exists():  # an earlier index's labels: this one has none
                    (out / name).unlink()

            # every file written: the renames (they need no space), the marker first, index.json last
            staged.commit((BUILD_MARKER, "index.faiss", "items.csv", "labels.npy", "index.json"), absent=absent)
        marker.unlink(missing_ok=True)  # the index is complete
        # this object is now the folder's index, as if loaded from it (its index.json, written under the folder's
        # lock: no other build can have replaced it): a service that builds and saves can poll changed_on_disk() as
        # after load()
        self.digest = hashlib.sha256(meta_bytes).hexdigest()
        self.loaded_from = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Open an index folder; errors (:class:`~dynametric.errors.InputError`) name the missing or inconsistent
        file.

        The files are those ``index.json`` describes or the load is refused: each file is opened once and what was
        read from it is checked against ``index.json``'s digests (``faiss_sha256``, ``items_sha256``,
        ``labels_sha256``), so a ``dynametric index build`` rewriting the folder meanwhile cannot pair one build's
        ``items.csv`` with another's ``index.faiss`` (wrong ids). When a check fails and ``index.json`` changed
        while the files were read, the new index is read again (up to :data:`LOAD_TRIES` times); while a build's
        marker is there (a build running, or one stopped before it finished) the error says so."""
        path = Path(path)
        if not path.exists():
            raise InputError("index not found", file=path)
        if not path.is_dir():
            raise InputError("not an index folder (expected the --out folder of `dynametric index build`)", file=path)
        meta_path = path / "index.json"
        for _ in range(LOAD_TRIES):
            try:
                seen = _read_index_json(meta_path)
            except InputError as exc:
                if meta_path.exists() or meta_path.is_symlink():  # a folder, a FIFO, a device there: said as such
                    raise
                raise InputError(exc.message, file=path) from None
            try:
                loaded = cls._load_files(path, seen[0])
            except InputError:
                change = _change_during_load(path, seen)
                if change is None:
                    raise
                if change == "built":
                    continue  # a build finished meanwhile: read its index
                raise _changing(path) from None
            loaded[0].digest = hashlib.sha256(seen[0]).hexdigest()
            loaded[0].loaded_from = path
            if "items_sha256" in loaded[1]:
                return loaded[0]  # every file checked against the index.json it was read with: consistent
            # an index.json of an older dynametric has no digest of items.csv and labels.npy: the folder must not
            # have changed meanwhile
            change = _change_during_load(path, seen)
            if change is None:
                return loaded[0]
            if change == "building":
                raise _changing(path)
        raise _changing(path)

    def changed_on_disk(self) -> bool:
        """Whether the folder this index was loaded from now holds another build: its ``index.json`` is no longer
        the one :meth:`load` checked the files against (:attr:`digest`), or is gone. Cheap (reads ``index.json``
        only), for a long-running service to poll and then :meth:`load` again; a build still writing the folder
        is not a change until it wrote its ``index.json``, its last file."""
        if self.loaded_from is None:
            raise DynametricError("changed_on_disk(): this index was not loaded from a folder (RetrievalIndex.load)")
        try:
            data = read_regular_bytes(self.loaded_from / "index.json")
        except (OSError, InputError):  # removed, a folder, a FIFO, unreadable: not the index that was loaded
            return True
        return hashlib.sha256(data).hexdigest() != self.digest

    @classmethod
    def _load_files(cls, path: Path, meta_bytes: bytes) -> tuple[RetrievalIndex, dict[str, Any]]:
        """One reading of the folder against the ``index.json`` content ``meta_bytes``; the index and its meta."""
        meta_path = path / "index.json"
        meta = _read_meta(meta_path, meta_bytes)
        faiss = require_faiss()
        fpath = path / "index.faiss"
        if fpath.is_dir():
            raise InputError("is a folder; expected the faiss index file", file=fpath)
        # one open file: what is hashed is what is read (a FIFO or a device: refused, never read)
        with open_regular(fpath, missing="index file missing") as fh:
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            faiss_sha256 = digest.hexdigest()
            want = meta.get("faiss_sha256")
            if want is not None and faiss_sha256 != want:
                raise InputError("index.faiss is not the file this index was built with (its SHA-256 differs from "
                                 "index.json's faiss_sha256); rebuild the index", file=fpath)
            fh.seek(0)
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
            except RuntimeError as exc:
                raise InputError(f"cannot read the faiss index ({first_sentence(exc)})", file=fpath) from None
        # the transform first (a damaged one is said as such, not as a swapped faiss file); an index.json of format 2
        # or newer with items always records one (one without it would search transformed rows with raw queries)
        if "transform" not in meta and isinstance(meta.get("version"), int) and meta["version"] >= 2 \
                and int(meta["count"]) > 0:  # (an index of no items has nothing to transform)
            raise InputError(f"has no 'transform' although its format version is {meta['version']}; the file is "
                             "damaged: rebuild the index", file=meta_path, key="transform")
        transform = None if "transform" not in meta else \
            InputTransform.from_json(meta["transform"], meta["metric"], int(meta["dim"]), meta_path)
        _check_kind(index, meta, fpath, faiss)
        ipath = path / "items.csv"
        items_bytes = read_regular_bytes(ipath, missing="items.csv missing (the index folder is incomplete)")
        ids, paths = _read_items(ipath, utf8_text(items_bytes, ipath))
        labels = _read_labels(path / "labels.npy", len(ids)) if meta.get("has_labels") else None
        n = int(meta["count"])
        counts = {"index.faiss": int(index.ntotal), "items.csv": len(ids)}
        if labels is not None:
            counts["labels.npy"] = len(labels)
        wrong = [name for name, c in counts.items() if c != n]
        if wrong:
            found = ", ".join(f"{name} {c}" for name, c in counts.items())
            raise InputError(f"inconsistent index: index.json says {n} items; {found} ({' and '.join(wrong)} "
                             f"{'does' if len(wrong) == 1 else 'do'} not match)", file=path / wrong[0])
        names = list(meta.get("scale_names") or [])
        if labels is not None and labels.shape[1] != len(names):
            raise InputError(f"has {labels.shape[1]} label column(s), but index.json names {len(names)} scale(s) "
                             f"{names}", file=path / "labels.npy")
        if index.d != int(meta["dim"]):
            raise InputError(f"index.faiss has dimension {index.d}, index.json says {meta['dim']}", file=path)
        # an index.json of an older dynametric records no digest of items.csv / labels.npy: those are not checked
        for name, key, got in (("items.csv", "items_sha256", lambda: hashlib.sha256(items_bytes).hexdigest()),
                               ("labels.npy", "labels_sha256", lambda: _labels_sha256(labels))):
            want = meta.get(key)
            if want is not None and (name == "items.csv" or labels is not None) and got() != want:
                raise InputError(f"{name} is not the file this index was built with (its SHA-256 differs from "
                                 f"index.json's {key}); rebuild the index", file=path / name)
        params = dict(meta.get("params") or {})
        if meta["kind"] == "ivf" and "nprobe" in params:
            index.nprobe = int(params["nprobe"])
        if meta["kind"] == "hnsw" and "ef_search" in params:
            index.hnsw.efSearch = int(params["ef_search"])
        return cls(index, meta["kind"], meta["metric"], int(meta["dim"]), ids, paths, labels,
                   list(meta.get("scale_names") or []), meta.get("class_names"), list(meta.get("image_roots") or []),
                   dict(meta.get("model") or {}), params, str(meta.get("source", "")), transform=transform), meta

    # ------------------------------------------------------------------------------------------------ search
    def scale_index(self, name: str | None) -> int | None:
        """Column of the scale ``name`` (``None`` -> ``None``); unknown names are an error listing the choices."""
        if name is None:
            return None
        if self.labels is None:
            raise InputError(f"scale {name!r} asked for, but this index has no labels (embed with a CSV that has "
                             "label columns)", key="--scale")
        if name not in self.scale_names:
            raise InputError(f"unknown scale {name!r}; this index has scales {self.scale_names}", key="--scale")
        return self.scale_names.index(name)

    def check_queries(self, q: np.ndarray, what: str = "queries", *, source: str | Path | None = None) -> np.ndarray:
        """``q`` (``[Q, D]`` or one ``[D]`` row) checked and prepared for this index's metric (rows L2-normalised
        for cosine). Refused with one line: another dimension, a non-numeric array, NaN or Inf, and for a cosine
        index all-zero rows (a zero vector has no direction, so its neighbours would be arbitrary; counted, with
        the first one, as ``index build`` and ``evaluate`` refuse them). ``what`` names the queries in the errors,
        ``source`` the file they came from (the command line's ``--embeddings``), named by the zero-row error as
        ``index build`` names its file. A torch tensor is detached and moved to the CPU, bf16 / fp16 read as
        float32; booleans and integers are refused (embeddings are floats: a mask ``q > 0`` or integer codes are
        a mistake, searched as 0/1 they gave neighbours of something else). An index with an
        :class:`InputTransform` returns the queries transformed as its items (float32)."""
        q = self._checked_queries(q, what, source)
        if self.transform is None:
            return _prepare(q, self.metric)
        return self._prepare_queries(q, what, source).faiss

    def _checked_queries(self, q: Any, what: str, source: str | Path | None) -> np.ndarray:
        """:meth:`check_queries`' checks; the queries as given (a ``[Q, D]`` float array)."""
        q = _query_array(q)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"{what} have dimension {q.shape[-1] if q.ndim else 'scalar'} (shape {q.shape}), but "
                             f"the index has dimension {self.dim}")
        if q.dtype.kind != "f":
            raise InputError(f"{what} must be a floating-point array (embeddings), got dtype {q.dtype}")
        if not np.isfinite(q).all():
            raise InputError(f"{what} contain NaN or Inf")
        _refuse_beyond_float32(q, self.metric, what, "searches", source)
        if self.metric == "cosine":
            zero = ~q.any(axis=1)
            if zero.any():
                raise InputError(f"{'' if source is not None else what + ': '}{int(zero.sum())} all-zero row(s), "
                                 f"first at row {int(np.flatnonzero(zero)[0])} (0-based): a zero vector has no "
                                 "direction for cosine; fix the embeddings or search an index built with --metric l2",
                                 file=source)
        return q

    def _prepare_queries(self, q: np.ndarray, what: str = "queries",
                         source: str | Path | None = None) -> _Queries:
        """Checked queries (:meth:`check_queries`' checks done) transformed as the items were
        (:class:`InputTransform`), in float64 and rounded to float32. An ``l2`` query so far from the items that its
        float32 squared distances could overflow (:data:`QUERY_REACH`) is one line."""
        tr = self.transform
        assert tr is not None
        exact = np.empty(q.shape, dtype=np.float64)
        for lo in range(0, len(q), _PREPARE_ROWS):
            block = q[lo:lo + _PREPARE_ROWS]  # ip: the query's own factor below, not the items'
            exact[lo:lo + _PREPARE_ROWS] = block if tr.kind == "ip" else tr.rows64(block)
        if tr.kind == "ip":  # each query scaled by its own power of two: its ranking does not change
            peak = np.abs(exact).max(axis=1) if self.dim else np.zeros(len(exact))
            own = np.ldexp(1.0, -np.frexp(peak)[1])  # 1 for an all-zero row
            exact *= own[:, None]
            divisor = own * tr.factor
        else:
            # (factor ** 2 only for cosine-l2, whose factor is at most 2^40: an l2 factor may exceed 2^512)
            divisor = np.full(len(exact), tr.factor if tr.kind == "l2" else
                              2.0 * tr.factor ** 2 if tr.kind == "cosine-l2" else 1.0)
        if tr.kind == "l2" and len(exact) and self.dim:
            far = np.abs(exact).max(axis=1) > QUERY_REACH / math.sqrt(self.dim)
            if far.any():
                raise InputError(f"{'' if source is not None else what + ': '}{int(far.sum())} row(s), first at row "
                                 f"{int(np.flatnonzero(far)[0])} (0-based), lie more than "
                                 f"{QUERY_REACH / math.sqrt(self.dim) / 2:.3g} times farther from the indexed "
                                 "items' centre than the farthest item does: their float32 distances would overflow",
                                 file=source)
        rounded = exact.astype(np.float32)
        exact = rounded.astype(np.float64)  # rounded once, as the items are: an item's own vector is at 0
        if tr.kind == "cosine":  # renormalised, as the items' rows are (:meth:`_exact_keys`)
            norms = np.linalg.norm(exact, axis=1, keepdims=True)
            exact /= np.where(norms > 0, norms, 1.0)
        return _Queries(rounded, exact, divisor)

    def _ensure_direct_map(self) -> None:
        """An ``ivf`` index builds faiss's id map on the first reconstruction, under a lock (threads that came first
        wait for it, then all read)."""
        if self.kind == "ivf" and not self._direct_map:
            with self._map_lock:
                if not self._direct_map:
                    self.index.make_direct_map()
                    self._direct_map = True

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """The stored float32 rows of the items ``ids`` (valid positions), ``[len(ids), D]``: a view of a ``flat``
        or ``hnsw`` index's vectors (no copy of the index), ``ivf`` rows through faiss's id map."""
        if self.kind == "ivf":
            self._ensure_direct_map()
            uniq, inverse = np.unique(ids, return_inverse=True)
            return np.asarray(self.index.reconstruct_batch(uniq.astype(np.int64)))[inverse.reshape(-1)]
        faiss = require_faiss()
        flat = self.index if self.kind == "flat" else faiss.downcast_index(self.index.storage)
        xb = faiss.rev_swig_ptr(flat.get_xb(), int(flat.ntotal) * self.dim).reshape(int(flat.ntotal), self.dim)
        return xb[ids]

    def reconstruct(self, i: int) -> np.ndarray:
        """The vector of item ``i`` (an integer in ``[0, size)``; anything else is an
        :class:`~dynametric.errors.InputError` keyed ``i``: faiss reads outside its arrays for a negative one): the
        stored row with the index's :class:`InputTransform` undone, float64 (for ``cosine`` the unit row; an index
        of an older dynametric: its stored float32 row, unit for cosine). Searching it finds the item itself. Safe
        from several threads: an ``ivf`` index builds faiss's id map on the first call, under a lock (threads that
        came first wait for it, then all read)."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise InputError(f"expected an item position (an integer), got {i!r} ({type(i).__name__})", key="i")
        if not 0 <= int(i) < self.size:
            raise InputError(f"item {int(i)} out of range [0, {self.size})", key="i")
        if self.transform is not None:
            return self.transform.undo(self._stored(np.array([int(i)], dtype=np.int64)))[0]
        self._ensure_direct_map()
        return self.index.reconstruct(int(i))

    def search(self, q: Any, k: int = 10, *, scale: str | None = None, same: str | None = None,
               query_labels: Any = None, exclude: Any = None) -> SearchResult:
        """Top-``k`` results for every query row (``q``: ``[Q, D]`` or one ``[D]`` query, a numpy array or a torch
        tensor, any float dtype; returns a :class:`SearchResult`; bad input is one
        :class:`~dynametric.errors.InputError` keyed by the argument).

        * plain: the ``k`` nearest items;
        * ``scale=NAME``: the ``k`` nearest *classes* at that scale, each represented by its nearest item
          ("which product / category / family is this?");
        * ``same=NAME``: the ``k`` nearest items whose label at that scale equals the query's ("more from the same
          category"); the query's label is ``query_labels[:, scale]`` when given, else the label of its excluded
          item (``exclude[q] >= 0``: the query is that item), else the label of its nearest item (the predicted
          class).
        ``query_labels`` and ``exclude`` are numpy arrays, torch tensors (any device) or lists.
        ``exclude`` (``[Q]`` item positions, ``-1`` for none) drops one item per query (the query itself).
        Queries go in chunks of ``QUERY_CHUNK``; per chunk the candidate list grows 4x at a time until every row
        has ``k`` results, or as many as it can have (the number of classes at the scale, the size of its class),
        or the whole index is searched: the results are exact for a ``flat`` index. A ``k`` above the index size
        is taken as the index size (the result arrays are ``[Q, min(k, size)]``).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}", key="k")
        # no query can have more results than the index has items: the result arrays ([Q, k]) are as wide as the
        # index at most (a k of 10**9 allocated [Q, 10**9] arrays and died of a MemoryError)
        k = min(int(k), self.size)
        if scale is not None and same is not None:
            raise InputError("give either --scale (group by class) or --same (filter to the query's class), not both",
                             key="--same")
        qs: Any = self.check_queries(q) if self.transform is None else \
            self._prepare_queries(self._checked_queries(q, "queries", None))
        ql = None if query_labels is None else self._check_query_labels(query_labels, len(qs))
        si = self.scale_index(scale)
        sa = self.scale_index(same) if same is not None else None
        ex = None if exclude is None else _query_array(exclude).reshape(-1)
        if ex is not None:
            if len(ex) != len(qs):
                raise InputError(f"exclude has {len(ex)} entries for {len(qs)} queries", key="exclude")
            if ex.dtype.kind not in "iu":
                raise InputError(f"exclude must hold integer item positions, got dtype {ex.dtype}", key="exclude")
            # checked before the cast to int64: an unsigned value >= 2**63 would wrap to a negative one (2**64 - 1 to
            # -1, "none")
            wrong = (ex >= self.size) if ex.dtype.kind == "u" else (ex < -1) | (ex >= self.size)
            if wrong.any():
                at = int(np.flatnonzero(wrong)[0])
                raise InputError(f"exclude[{at}] is {int(ex[at])}: expected an item position 0..{self.size - 1} or "
                                 f"-1 for none ({int(wrong.sum())} such entries)", key="exclude")
            exclude = ex.astype(np.int64)
        if k == 0:  # an index of no items (an older build could write one): [Q, 0] results
            groups = None if same is None else (ql[:, sa] if ql is not None else np.full(len(qs), -1, np.int64))
            return SearchResult(np.empty((len(qs), 0), np.int64), np.empty((len(qs), 0), np.float64),
                                "classes" if si is not None else "same" if same is not None else "items",
                                scale if si is not None else same, groups)
        if same is not None:
            sa_idx = int(sa)  # type: ignore[arg-type]
            if ql is not None:
                target = ql[:, sa_idx]
            else:  # a query that is an item of the index (exclude >= 0) has that item's label; the others the label
                # of their nearest item (the predicted class)
                target = np.full(len(qs), -1, dtype=np.int64)
                own = np.zeros(len(qs), dtype=bool) if ex is None else np.asarray(exclude) >= 0
                if own.any():
                    target[own] = self.labels[np.asarray(exclude)[own], sa_idx]  # type: ignore[index]
                rest = np.flatnonzero(~own)
                if len(rest):
                    target[rest] = self._nearest_labels(qs, rest, sa_idx)
        # the most results a query can have: classes at the scale / items of its class (minus an excluded item)
        achievable = np.full(len(qs), self.size - (0 if ex is None else 1), dtype=np.int64)
        if si is not None or same is not None:
            col = self.labels[:, si if si is not None else sa_idx]  # type: ignore[index]
            uniq, inverse, counts = np.unique(col, return_inverse=True, return_counts=True)
            ex_ok = None if ex is None else ex >= 0
            ex_group = None if ex is None else inverse[np.maximum(ex, 0)]
            if si is not None:
                achievable[:] = len(uniq)
                if ex is not None:
                    achievable -= (ex_ok & (counts[ex_group] == 1)).astype(np.int64)
            else:
                where = np.searchsorted(uniq, target)
                found = (where < len(uniq)) & (uniq[np.minimum(where, len(uniq) - 1)] == target)
                achievable = np.where(found, counts[np.minimum(where, len(uniq) - 1)], 0).astype(np.int64)
                if ex is not None:
                    achievable -= (ex_ok & found & (col[np.maximum(ex, 0)] == target)).astype(np.int64)
        ids = np.full((len(qs), k), -1, dtype=np.int64)
        dist = np.full((len(qs), k), np.nan, dtype=np.float64)
        for lo in range(0, len(qs), QUERY_CHUNK):  # bounded memory: chunk x candidates
            sl = slice(lo, lo + QUERY_CHUNK)
            ids[sl], dist[sl] = self._search_block(
                qs[sl], k, np.minimum(achievable[sl], k), si, sa_idx if same is not None else None,
                None if same is None else target[sl], None if ex is None else ex[sl])
        bad = (ids >= 0) & ~np.isfinite(dist)
        if bad.any():  # never into JSON (-Infinity is no JSON) or a table
            rows_bad = bad.any(axis=1)
            raise InputError(f"{int(rows_bad.sum())} queries, first at row {int(np.flatnonzero(rows_bad)[0])} "
                             f"(0-based), have distances beyond float range ({float(dist[bad][0])})"
                             + (": this index was built by an earlier dynametric, which searched in float32 "
                                "as given; build it again with `dynametric index build`" if self.transform is None
                                else ""), key="queries")
        mode = "classes" if si is not None else "same" if same is not None else "items"
        short = int(((ids >= 0).sum(axis=1) < np.minimum(achievable, k)).sum())
        return SearchResult(ids, dist, mode, scale if si is not None else same, target if same is not None else None,
                            short)

    def _nearest_labels(self, qs: Any, rows: np.ndarray, sa: int) -> np.ndarray:
        """The label at scale ``sa`` of the nearest item of each query in ``rows`` (positions into ``qs``, ascending;
        ``-1`` where the index returns none): ``same=``'s class of a query without labels of its own."""
        if self.transform is None:
            pick = faiss_search(self.index, np.ascontiguousarray(qs[rows]), 1)[1][:, 0]
        else:  # the nearest item by the same rule as the results (ties by id)
            sub = _Queries(qs.faiss[rows], qs.exact[rows], qs.divisor[rows])
            picks = []
            for lo in range(0, len(sub), QUERY_CHUNK):
                part = sub[lo:lo + QUERY_CHUNK]
                picks.append(self._search_block(part, 1, np.ones(len(part), np.int64), None, None, None, None)[0])  # type: ignore[arg-type]
            pick = np.concatenate(picks)[:, 0]
        return np.where(pick >= 0, self.labels[np.maximum(pick, 0), sa], -1)  # type: ignore[index]

    def _check_query_labels(self, query_labels: Any, rows: int) -> np.ndarray:
        """``search``'s ``query_labels`` as ``[Q, S]`` int64: ``[Q]`` (one scale) or ``[Q, S]`` integer class ids
        (floats with integral values too), one row per query and one column per scale of the index; anything else
        is one line keyed ``query_labels``."""
        ql = _query_array(query_labels)
        if ql.ndim == 1:
            ql = ql[:, None]
        if ql.ndim != 2 or ql.shape[0] != rows:
            raise InputError(f"query_labels must be [Q] or [Q, S] with one row per query: got shape {ql.shape} for "
                             f"{rows} queries", key="query_labels")
        if ql.shape[1] != len(self.scale_names):
            raise InputError(f"query labels have {ql.shape[1]} scales, the index {len(self.scale_names)}",
                             key="query_labels")
        if ql.dtype.kind == "f":
            if not (np.isfinite(ql) & (ql == np.round(ql))).all():
                raise InputError("query_labels must be integer class ids (floats only with integral values)",
                                 key="query_labels")
        elif ql.dtype.kind not in "iu":
            raise InputError(f"query_labels must be integer class ids, got dtype {ql.dtype}", key="query_labels")
        return ql.astype(np.int64)

    def query_class_ids(self, labels: np.ndarray, class_names: list[list[str]] | None, what: str, *,
                        scales: list[str] | None = None) -> tuple[np.ndarray, list[list[str]]]:
        """Labels of queries from another embed job (``labels`` ``[Q, S']`` in that job's ids, ``class_names`` its
        ``embed.json`` class names, ``what`` its ``labels.npy``, named in errors) in this index's ids ``[Q, S]``,
        and each query's class at every scale as text (``names[s][q]``).

        ``scales`` names the columns of ``labels`` (default: the index's scales, in order); they are matched to the
        index's scales by name: a column of a scale the index lacks is ignored, a scale of the index without a
        column has labels ``-1`` and no names (``names[s] == []``).

        Each embed job numbers the text classes of a scale by sorted name within its own list, so the same id can be
        another class in another job: text classes are matched by name. A query class the index does not hold gets
        id ``-1`` (no item has it: ``same=`` finds nothing for it, never another class). Integer scales are their
        values on both sides; a scale of text on one side and integers on the other cannot be matched (one line)."""
        labels = np.asarray(labels)
        scales = list(self.scale_names) if scales is None else list(scales)
        if labels.ndim != 2 or labels.shape[1] != len(scales):
            raise InputError(f"expected [Q, {len(scales)}] labels, found shape {labels.shape}", file=what)
        out = np.full((len(labels), len(self.scale_names)), -1, dtype=np.int64)
        names: list[list[str]] = [[] for _ in self.scale_names]
        for j, scale in enumerate(scales):
            if scale not in self.scale_names:
                continue
            s = self.scale_names.index(scale)
            qc = [str(c) for c in class_names[j]] if class_names and j < len(class_names) else []
            ic = [str(c) for c in self.class_names[s]] if self.class_names and s < len(self.class_names) else []
            col = labels[:, j].astype(np.int64)
            if not qc and not ic:
                names[s] = [str(int(v)) for v in col]
                out[:, s] = col
                continue
            if not qc or not ic:
                raise InputError(f"scale {scale!r}: the labels of "
                                 f"{'the queries' if qc else 'the index'} are ids of text class names, those of "
                                 f"{'the index' if qc else 'the queries'} are integers; they cannot be matched",
                                 file=what)
            if len(col) and (col.min() < 0 or col.max() >= len(qc)):
                raise InputError(f"scale {scale!r}: label ids outside the {len(qc)} class names of the queries' "
                                 "embed.json", file=what)
            pos = {c: i for i, c in enumerate(ic)}
            mapping = np.array([pos.get(c, -1) for c in qc], dtype=np.int64)
            names[s] = [qc[int(v)] for v in col]
            out[:, s] = mapping[col] if len(col) else col
        return out, names

    def _search_block(self, qs: np.ndarray, k: int, need: np.ndarray, si: int | None, sa: int | None,
                      target: np.ndarray | None, ex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Grow the candidate list 4x at a time until every row has ``need`` kept results (or all items).

        With an :class:`InputTransform` (``qs``: :class:`_Queries`) the candidates' distances are computed again in
        float64 from the stored rows, each row is ordered by (distance, item position), and the list also grows
        until the ``need``-th kept result lies closer than faiss's last candidate by more than faiss's float32
        rounding bound (:meth:`_settled`): every item the search did not return is then farther, so ties at the
        ``k``-th place are decided by position, as ``evaluate`` decides them."""
        if self.transform is not None:
            return self._search_block_exact(qs, k, need, si, sa, target, ex)  # type: ignore[arg-type]
        n = self.size
        cand = min(n, max(4 * k, 32))
        while True:
            scores, nn = faiss_search(self.index, qs, cand)
            keep = self._kept(nn, si, sa, target, ex)
            if (keep.sum(axis=1) >= need).all() or cand >= n:
                break
            cand = min(n, cand * 4)
        pos = take_first_k(keep, k)
        rows = np.arange(len(qs))[:, None]
        got = pos >= 0
        ids = np.where(got, nn[rows, np.maximum(pos, 0)], -1)
        dist = np.where(got, to_distance(scores[rows, np.maximum(pos, 0)], self.metric), np.nan)
        return ids, dist

    def _kept(self, nn: np.ndarray, si: int | None, sa: int | None, target: np.ndarray | None,
              ex: np.ndarray | None) -> np.ndarray:
        """Which candidates ``nn`` (``[Q, C]`` item positions, -1 for none) a search keeps: not missing, not the
        excluded item ``ex``; with a scale ``si`` the first of each class, with ``sa`` those of class ``target``."""
        valid = nn >= 0
        if ex is not None:
            valid &= nn != ex[:, None]
        safe = np.maximum(nn, 0)
        if si is not None:
            return first_per_group(self.labels[safe, si], valid)  # type: ignore[index]
        if sa is not None:
            return valid & (self.labels[safe, sa] == target[:, None])  # type: ignore[index]
        return valid

    def _search_block_exact(self, qs: _Queries, k: int, need: np.ndarray, si: int | None, sa: int | None,
                            target: np.ndarray | None, ex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = self.size
        # a plain search needs k results (k + 1 with an excluded item) and a margin to see the k-th settled; grouping
        # by class or filtering by one needs more candidates per result. The float64 keys of every candidate are
        # computed, so the list starts short
        first = k + max(16, k // 8) + (ex is not None) if si is None and sa is None else 4 * k
        cand = min(n, max(first, 32))
        cap = max(16 * cand, TIE_CANDIDATES)  # beyond it a tie group is settled among the candidates already found
        rows = np.arange(len(qs))[:, None]
        while True:
            scores, found = faiss_search(self.index, qs.faiss, cand)
            keys = self._exact_keys(qs, found)
            order = np.lexsort((found, keys), axis=-1)  # by key, equal keys by item position (-1: key inf, last)
            nn = np.take_along_axis(found, order, axis=1)
            keys = np.take_along_axis(keys, order, axis=1)
            keep = self._kept(nn, si, sa, target, ex)
            enough = keep.sum(axis=1) >= need
            if cand >= n or (enough & (cand >= cap)).all() or \
                    (enough & self._settled(qs, scores, found, keys, keep, need)).all():
                break
            cand = min(n, cand * 4 if cand >= cap else min(cand * 4, cap))  # past the cap only for missing results
        pos = take_first_k(keep, k)
        got = pos >= 0
        ids = np.where(got, nn[rows, np.maximum(pos, 0)], -1)
        dist = np.where(got, self._key_distance(keys[rows, np.maximum(pos, 0)], qs.divisor), np.nan)
        return ids, dist

    def _exact_keys(self, qs: _Queries, nn: np.ndarray) -> np.ndarray:
        """float64 keys ``[Q, C]`` of the candidates ``nn`` (``inf`` at ``-1``), smaller is closer, from the float64
        queries and the stored float32 rows: the squared distance (``l2``, ``cosine-l2``), ``1 - cos`` as
        ``||u - w||^2 / 2`` with ``w`` the stored row renormalised (``cosine``; no cancellation near 1), ``-<q', x'>``
        (``ip``). In blocks of candidates (a bounded float64 gather)."""
        tr = self.transform
        assert tr is not None
        b, c = nn.shape
        keys = np.full((b, c), np.inf)
        step = max(1, (1 << 22) // max(1, b * self.dim))  # about 32 MiB of float64 rows at a time
        for a in range(0, c, step):
            part = nn[:, a:a + step]
            x = self._stored(np.maximum(part, 0).reshape(-1)).astype(np.float64).reshape(b, part.shape[1], self.dim)
            if tr.kind == "ip":
                key = -np.einsum("bd,bcd->bc", qs.exact, x)
            else:
                if tr.kind == "cosine":
                    norms = np.linalg.norm(x, axis=2, keepdims=True)
                    x /= np.where(norms > 0, norms, 1.0)
                diff = qs.exact[:, None, :] - x
                key = np.einsum("bcd,bcd->bc", diff, diff)
                if tr.kind == "cosine":
                    key *= 0.5
            keys[:, a:a + step] = np.where(part >= 0, key, np.inf)
        return keys

    def _settled(self, qs: _Queries, scores: np.ndarray, found: np.ndarray, keys: np.ndarray, keep: np.ndarray,
                 need: np.ndarray) -> np.ndarray:
        """Per row: whether no item beyond faiss's candidates can come before or tie with the ``need``-th kept one:
        faiss returned fewer than asked (all it reaches), or that result's float64 key is below the key of faiss's
        last candidate by more than a bound of faiss's float32 rounding (``(D + 8) 2^-22`` times the squared norms,
        about four times the worst-case bound of a length-``D`` float32 sum), so every item faiss ranked later is
        farther in float64 too."""
        tr = self.transform
        assert tr is not None
        last = scores[:, -1].astype(np.float64)
        qn = np.linalg.norm(qs.exact, axis=1)
        bound = (self.dim + 8) * 2.0 ** -22
        if tr.kind in ("l2", "cosine-l2"):
            last_key, tol = last, bound * (qn ** 2 + tr.max_norm ** 2 + 1.0)
        elif tr.kind == "cosine":
            last_key, tol = 1.0 - last, np.full(len(last), 2.0 * bound)
        else:
            last_key, tol = -last, bound * (qn * tr.max_norm + 1e-30)
        reach = (np.cumsum(keep, axis=1) >= need[:, None]) & (need[:, None] > 0)
        at = reach.argmax(axis=1)
        key_at = keys[np.arange(len(keys)), at]
        return (need <= 0) | (found[:, -1] < 0) | (reach.any(axis=1) & (key_at < last_key - tol))

    def _key_distance(self, keys: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        """:meth:`_exact_keys`' keys as reported distances (the transform undone): ``sqrt(key) / factor``
        (``l2``), ``key / (2 factor^2)`` (``cosine-l2``: ``1 - cos = d^2 / 2`` for unit rows), ``key``
        (``cosine``), ``key / (query factor x item factor)`` (``ip``). ``1 - cos`` is at most 2: a narrow-cone
        index's scaled query, rounded to float32, could come out a few roundings beyond it for an opposite query."""
        tr = self.transform
        assert tr is not None
        if tr.kind == "l2":
            return np.sqrt(np.maximum(keys, 0.0)) / divisor[:, None]
        if tr.kind == "cosine-l2":
            return np.minimum(keys / divisor[:, None], 2.0)
        return keys / divisor[:, None]

    def label_name(self, scale: int, label: int) -> str:
        names = self.class_names[scale] if self.class_names and scale < len(self.class_names) else []
        return str(names[label]) if names and 0 <= label < len(names) else str(label)

    def label_value(self, scale: int, label: int) -> int | str:
        """A label as results report it: the class name (a string) on a scale of text classes, else the integer
        label itself (an ``int``, as ``items.csv`` and ``labels.npy`` hold it)."""
        names = self.class_names[scale] if self.class_names and scale < len(self.class_names) else []
        return str(names[label]) if names and 0 <= label < len(names) else int(label)

    def describe(self, result: SearchResult, queries: list[str]) -> list[dict[str, Any]]:
        """JSON-ready results: one entry per query with its ranked hits (rank, id, path, distance, labels)."""
        out = []
        for qi, qname in enumerate(queries):
            hits = []
            for r, (i, d) in enumerate(zip(result.ids[qi], result.distances[qi]), start=1):
                if i < 0:
                    continue
                hit: dict[str, Any] = {"rank": r, "index": int(i), "id": self.ids[i], "path": self.paths[i],
                                       "distance": float(d)}
                if self.labels is not None:
                    hit["labels"] = {s: self.label_value(j, int(self.labels[i, j]))
                                     for j, s in enumerate(self.scale_names)}
                hits.append(hit)
            # every key in every mode: scale null for plain items, query_label null unless --same
            entry: dict[str, Any] = {"query": qname, "mode": result.mode, "scale": result.scale,
                                     "query_label": None, "results": hits}
            if result.query_groups is not None and result.scale is not None:
                j = self.scale_names.index(result.scale)
                entry["query_label"] = self.label_value(j, int(result.query_groups[qi]))
            out.append(entry)
        return out


def self_items(index: RetrievalIndex, query_paths: list[str], what: str) -> tuple[np.ndarray, int]:
    """``search --exclude-self``: for each query the indexed item with the same file (``-1`` for none) and how many
    queries have none (``exclude=`` of :meth:`RetrievalIndex.search`). ``what`` names the queries in errors.

    ``embed`` records absolute paths (resolved for ``--csv`` items; under the resolved folder for ``--images``), so
    a query file matches by its absolute path (``..`` removed) or its resolved path (links followed); the index's
    paths are taken as recorded (no file-system call per indexed item)."""
    if not any(index.paths):
        raise InputError("queries are matched to indexed items by file path, but this index records no "
                         "paths (built from a bare .npy)", key="--exclude-self")
    if not all(query_paths):
        raise InputError(f"queries are matched to indexed items by file path, but {what} name no files "
                         "(a bare .npy); use --image files or a `dynametric embed` folder", key="--exclude-self")
    pos: dict[str, int] = {}
    for i, p in enumerate(index.paths):
        if p:
            pos.setdefault(p, i)
    found = []
    for p in query_paths:
        hit = pos.get(p, pos.get(os.path.abspath(p), -1))
        found.append(hit if hit >= 0 else pos.get(str(Path(p).resolve()), -1))
    exclude = np.array(found, dtype=np.int64)
    return exclude, int((exclude < 0).sum())


def read_query_labels(path: Path, index: RetrievalIndex, rows: int,
                      scale: str | None = None) -> tuple[np.ndarray, list[list[str]]]:
    """``search --query-labels``: the labels ``[rows, S]`` of the queries (in the index's class ids) and each
    query's class as text (``names[s][q]``), from a CSV whose header names scales of the index, one row per query.

    The header names any of the index's scales, each once, in any order (the queries labelled at fewer scales than
    the index: ``fine`` alone against ``fine,coarse``); a scale it does not name has labels ``-1`` and no names
    (``names[s] == []``). ``scale`` (``--same``'s) must be among them: without its column the file cannot say the
    queries' class there (one line naming the file and its columns).

    A cell of a scale with text class names (``index.json``'s ``class_names``) is a class name of the index, or
    else an integer class id (``0..C-1``, as ``labels.npy`` holds them) -- except on a scale some of whose class
    names are integers (``7``, ``42``, ``99``, as a label column mixing numbers and text gives): there an integer
    cell is read as a class name only, by its value (``007`` is the class ``7``, as the data readers read it), and
    one that names no class is refused rather than taken as an id (``1`` was class id 1, the class ``42``). A cell
    of an integer scale is an integer. Anything else is one line naming the file, line and column. A file named
    ``*.npy`` (or starting with the NumPy header) is an integer array ``[rows, S]`` of class ids instead, every
    scale in the index's order: an array has no column names (:func:`_query_labels_npy`)."""
    from dynametric.data.base import LoadReport, raise_problems
    from dynametric.data.readers import parse_csv
    from dynametric.utils.readers import check_file, decode_utf8, integer_label, is_npy_file

    names = list(index.scale_names)
    path = Path(path)
    check_file(path)
    classes = [[str(c) for c in index.class_names[s]] if index.class_names and s < len(index.class_names) else []
               for s in range(len(names))]
    if is_npy_file(path):
        return _query_labels_npy(path, names, classes, rows)
    text = decode_utf8(path.read_bytes(), path)
    if "\0" in text:
        raise InputError("contains NUL bytes: not a text CSV", file=path)
    report = LoadReport(split="*")
    records = parse_csv(text, path, report)
    raise_problems(list(report.problems), f"the labels CSV {path.name}")
    records = [(n, r) for n, r in records if any(c.strip() for c in r)]
    # rows are positional (row q is query q): a blank line between them (parse_csv skips it; a gap in the records'
    # first lines beyond the lines a record spans) is no row, and refused rather than skipped
    for (n, row), (following, _) in zip(records, records[1:]):
        if following > n + 1 + sum(c.count("\n") for c in row):
            raise InputError("blank line between rows: the file has one row per query, in the queries' order "
                             "(trailing blank lines are ignored)", file=path,
                             line=n + 1 + sum(c.count("\n") for c in row))
    if not records:
        raise InputError(f"file is empty; expected a header of the index's scales {names}", file=path)
    header_line, header = records[0]
    cols = [c.strip() for c in header]
    for c in cols:
        if c not in names:
            raise InputError(f"column {c[:60]!r} is not a scale of the index: the header names scales of the index "
                             f"{names} (any of them, each once)", file=path, line=header_line)
        if cols.count(c) > 1:
            raise InputError(f"column {c!r} appears {cols.count(c)} times; name each scale once", file=path,
                             line=header_line)
    if scale is not None and scale not in cols:
        raise InputError(f"no column {scale!r}: --same {scale} needs the queries' {scale} labels (the file has "
                         f"{cols}; the index's scales are {names})", file=path, line=header_line)
    at = [names.index(c) for c in cols]  # the index scale of each column
    pos = [{c: i for i, c in enumerate(cl)} for cl in classes]
    # scales some of whose class names are integers: an integer cell is a class name there, matched by its value
    by_value = [{v: i for i, c in enumerate(cl) if (v := integer_label(c)) is not None} for cl in classes]
    body = records[1:]
    if len(body) != rows:
        raise InputError(f"{len(body)} label rows for {rows} queries", file=path)
    out = np.full((rows, len(names)), -1, dtype=np.int64)
    shown: list[list[str]] = [[] for _ in names]
    for r, (lineno, row) in enumerate(body):
        if len(row) != len(cols):
            raise InputError(f"expected {len(cols)} fields, got {len(row)}", file=path, line=lineno)
        for s, cell in zip(at, row):
            value = cell.strip()
            if classes[s] and value in pos[s]:
                out[r, s] = pos[s][value]
                shown[s].append(value)
                continue
            number = integer_label(value)
            known = ", ".join(classes[s][:8]) + (", ..." if len(classes[s]) > 8 else "")
            if by_value[s] and number is not None:
                if number not in by_value[s]:
                    raise InputError(f"column {names[s]!r}: {value[:60]!r} is none of the index's "
                                     f"{len(classes[s])} {names[s]} classes ({known}); some of them are numbers, "
                                     "so a number here is a class name, never a class id: write the class name "
                                     "(or give class ids in an .npy)", file=path, line=lineno)
                out[r, s] = by_value[s][number]
                shown[s].append(classes[s][by_value[s][number]])
                continue
            if number is None or (classes[s] and not 0 <= number < len(classes[s])):
                expected = (f"one of the index's {len(classes[s])} {names[s]} classes ({known})"
                            + ("" if by_value[s] else f" or a class id 0..{len(classes[s]) - 1}")
                            if classes[s] else "an integer label")
                raise InputError(f"column {names[s]!r}: expected {expected}, got {value[:60]!r}", file=path,
                                 line=lineno)
            out[r, s] = number
            shown[s].append(classes[s][number] if classes[s] else str(number))
    return out, shown


def _query_labels_npy(path: Path, names: list[str], classes: list[list[str]],
                      rows: int) -> tuple[np.ndarray, list[list[str]]]:
    """:func:`read_query_labels` of an ``.npy`` integer array ``[Q, S]`` (``[Q]`` for a one-scale index): its
    columns the index's scales in order, its values class ids as the index's ``labels.npy`` holds them (``0..C-1``
    on a scale with text classes). The checks of :func:`~dynametric.utils.readers.load_labels_npy` (integer dtype,
    never unpickled, fits int64), then one line naming the file for a shape or a class id that does not fit."""
    from dynametric.utils.readers import load_labels_npy

    out = load_labels_npy(path)  # [N, S] int64
    shape = f"[{rows}, {len(names)}]" + (f" or [{rows}]" if len(names) == 1 else "")
    if out.shape[1] != len(names):
        raise InputError(f"expected an integer array of shape {shape} (one column per scale of the index, "
                         f"{names} in order), got {out.shape[1]} column(s)", file=path)
    if len(out) != rows:
        raise InputError(f"{len(out)} label rows for {rows} queries", file=path)
    shown: list[list[str]] = []
    for s, cl in enumerate(classes):
        col = out[:, s]
        if cl:
            bad = np.flatnonzero((col < 0) | (col >= len(cl)))
            if len(bad):
                known = ", ".join(cl[:8]) + (", ..." if len(cl) > 8 else "")
                raise InputError(f"column {s} ({names[s]!r}), row {int(bad[0])} (0-based): expected a class id "
                                 f"0..{len(cl) - 1} of the index's {len(cl)} {names[s]} classes ({known}), got "
                                 f"{int(col[bad[0]])}", file=path)
            shown.append([cl[int(v)] for v in col])
        else:
            shown.append([str(int(v)) for v in col])
    return out, shown
