"""The input and output files of ``dynametric evaluate``: embeddings and labels read from files or ``dynametric
embed`` folders and matched between query and gallery (:func:`read_evaluation_files`), the per-query category
file (:func:`load_query_categories`), and the check that the command's outputs never replace one of its inputs or
a file it did not write (:func:`check_outputs`).

Embeddings come from ``.npy``, ``.pt`` (a tensor, or a dict with one tensor / an ``embeddings`` key) or
``.safetensors`` (one tensor or an ``embeddings`` key), or from a ``dynametric embed`` output folder (or its
``embeddings.npy``), whose ``labels.npy`` and scale names are used unless labels are given; labels from a CSV file
with a header, one integer column per scale, finest first (the column names become the scale names), or from an
``.npy`` integer array ``[N]`` / ``[N, S]``. The per-query CSV itself is :mod:`dynametric.metrics.io`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dynametric.errors import ConfigError, InputError
from dynametric.metrics.io import is_per_query_csv, is_results_json
from dynametric.retrieval.embed import (
    check_job_items,
    embed_folder_of,
    load_job_embeddings,
    read_job_consistently,
)
from dynametric.utils.readers import (
    check_npy_header,
    checked_embeddings,
    id_cell,
    load_embeddings,
    load_ids,
    load_labels,
    merged_ids,
    merged_ids_note,
    refuse_beyond_float32,
)

__all__ = [
    "EvaluationFiles",
    "EvaluationSide",
    "check_output_place",
    "check_outputs",
    "common_class_ids",
    "embeddings_file",
    "excluded_pairs",
    "id_files_exclusion",
    "job_scale_names",
    "leave_one_out_excluded_pairs",
    "load_query_categories",
    "read_evaluation_files",
    "read_side",
]


@dataclass
class EvaluationSide:
    """One side of an evaluation read from files (:func:`read_side`): embeddings, labels and what names them."""

    emb: np.ndarray
    labels: np.ndarray
    names: list[str] | None  # scale names (None: an .npy array names none)
    class_names: list[list[str]] | None  # per scale, the text class of each label id (an embed folder's own labels)
    labels_file: str  # the file the labels came from (named in errors)
    names_file: str  # the file the scale names came from: the labels CSV (its line 1) or embed.json (scale_names)
    names_line: int | None = 1
    names_key: str | None = None
    model: dict[str, Any] | None = None  # an embed folder's recorded model (embed.json's model)


class EvaluationFiles(NamedTuple):
    """What :func:`read_evaluation_files` returns (a tuple: ``q, ql, g, gl, names, source = ...``)."""

    query: np.ndarray
    query_labels: np.ndarray  # in the gallery's label ids where the two sides number text classes differently
    gallery: np.ndarray | None  # None: leave-one-out
    gallery_labels: np.ndarray | None
    scale_names: list[str]
    source: str  # the files, for the command's first line: ``Q`` or ``Q -> G``


def job_scale_names(meta: dict[str, Any], folder: Path, scales: int) -> tuple[list[str], list[list[str]] | None]:
    """Scale names and text class names of an embed job's ``labels.npy`` with ``scales`` columns (``meta``: its
    ``embed.json``)."""
    names = meta.get("scale_names")
    if not (isinstance(names, list) and len(names) == scales and all(isinstance(n, str) and n for n in names)):
        raise InputError(f"expected {scales} scale names (the columns of labels.npy), got {names!r}",
                         file=folder / "embed.json", key="scale_names")
    classes = meta.get("class_names")
    if classes is not None and not (isinstance(classes, list) and len(classes) == scales
                                    and all(isinstance(c, list) for c in classes)):
        raise InputError(f"expected null or one list of class names per scale ({scales}), got {classes!r}",
                         file=folder / "embed.json", key="class_names")
    return list(names), classes


def read_side(emb_arg: str, labels_arg: str | None, emb_opt: str, labels_opt: str) -> EvaluationSide:
    """Embeddings from a file or a `dynametric embed` folder (or its ``embeddings.npy``), labels from
    ``labels_arg`` (a CSV or an ``.npy``) or else the folder's ``labels.npy``. ``emb_opt`` / ``labels_opt``: the
    options that named them (in errors)."""
    folder = embed_folder_of(emb_arg)
    if folder is None:
        if labels_arg is None:
            raise ConfigError(f"{labels_opt} is required with embeddings from a file ({emb_arg}); a `dynametric "
                              "embed` folder brings its own labels.npy", key=labels_opt)
        emb_file, meta = Path(emb_arg), None
    else:
        # its files are those embed.json describes (a lost labels.npy: refused), the rows those of the file checked
        # (another job renamed into the folder meanwhile: read again)
        meta, emb = read_job_consistently(
            folder, lambda meta: (check_job_items(folder, meta), load_job_embeddings(folder, meta, mmap=False))[1])
        emb_file = folder / "embeddings.npy"
        emb = checked_embeddings(emb, emb_file)
    if meta is None:
        if emb_file.suffix.lower() == ".npy" and emb_file.is_file():
            check_npy_header(emb_file)
        emb = load_embeddings(emb_file)  # float64 files stay float64 (the library's float64 preparation)
    # evaluate_embeddings refuses them for either distance (its scores are float32); said here, the line names the
    # file rather than the library's query_emb
    refuse_beyond_float32(emb, "an evaluation scores in float32 (either distance); scale them down", file=emb_file)
    model = dict(meta.get("model") or {}) if meta is not None else None
    own = None if folder is None else folder / "labels.npy"
    if labels_arg is None:
        assert own is not None
        if not own.is_file():
            raise InputError(f"this embed folder has no labels.npy (its images came without label columns); give "
                             f"{labels_opt} (a labels CSV or an .npy integer array)", file=folder)
        labels_file = own
    else:
        labels_file = Path(labels_arg)
    labels, names = load_labels(labels_file)
    if len(labels) != len(emb):
        raise InputError(f"{len(labels)} label rows but {len(emb)} embeddings in {emb_file}", file=labels_file)
    if meta is not None and own is not None and own.is_file() and own.resolve() == labels_file.resolve():
        assert folder is not None
        names, class_names = job_scale_names(meta, folder, labels.shape[1])  # the folder's own labels: its names
        return EvaluationSide(emb, labels, names, class_names, str(labels_file), str(folder / "embed.json"), None,
                              "scale_names", model)
    return EvaluationSide(emb, labels, names, None, str(labels_file), str(labels_file), model=model)


def common_class_ids(q: EvaluationSide, g: EvaluationSide, names: list[str]) -> np.ndarray:
    """The query labels in the gallery's label ids: an embed job numbers text classes by sorted name within its
    own images, so the same id can be another class in another job; ids of text scales are matched by class
    name (a query class absent from the gallery gets an id no gallery item has)."""
    out = q.labels.copy()
    for s, name in enumerate(names):
        qc = q.class_names[s] if q.class_names else []
        gc = g.class_names[s] if g.class_names else []
        if not qc and not gc:
            continue
        if not qc or not gc:
            text, plain = (q.labels_file, g.labels_file) if qc else (g.labels_file, q.labels_file)
            raise InputError(f"scale {name!r}: the labels of {text} are ids of text class names (from its embed "
                             f"job), those of {plain} are not; they cannot be matched", file=plain)
        col = q.labels[:, s]
        if col.min() < 0 or col.max() >= len(qc):
            raise InputError(f"scale {name!r}: label ids outside the {len(qc)} class names of embed.json",
                             file=q.labels_file)
        gid = {str(c): i for i, c in enumerate(gc)}
        unseen = sorted({str(c) for c in qc} - set(gid))
        gid.update({c: len(gc) + j for j, c in enumerate(unseen)})
        out[:, s] = np.array([gid[str(c)] for c in qc], dtype=np.int64)[col]
    return out


def embeddings_file(arg: str) -> Path:
    """The embeddings file ``arg`` names: itself, or an embed folder's ``embeddings.npy``."""
    folder = embed_folder_of(arg)
    return Path(arg) if folder is None else folder / "embeddings.npy"


def read_evaluation_files(embeddings: str | None, labels: str | None = None, gallery_embeddings: str | None = None,
                          gallery_labels: str | None = None) -> EvaluationFiles:
    """The query side (``--embeddings`` / ``--labels``) and, with ``gallery_embeddings``, the gallery side
    (``--gallery-embeddings`` / ``--gallery-labels``), checked against each other (dimension, number of scales,
    scale names) and with the query labels in the gallery's class ids (:func:`common_class_ids`); scale names from
    the labels, else :func:`dynametric.labels.default_scale_names`."""
    from dynametric.labels import default_scale_names

    if not embeddings:
        raise ConfigError("--embeddings is required (or use --example or --checkpoint)", key="--embeddings")
    if gallery_labels is not None and gallery_embeddings is None:
        raise ConfigError("--gallery-labels needs --gallery-embeddings", key="--gallery-labels")
    q = read_side(embeddings, labels, "--embeddings", "--labels")
    names = q.names
    ql, g, gl = q.labels, None, None
    if gallery_embeddings is not None:
        gs = read_side(gallery_embeddings, gallery_labels, "--gallery-embeddings", "--gallery-labels")
        if q.model and gs.model:  # two embed folders: made by one model, computed alike (input size, config)
            from dynametric.retrieval.model import model_mismatch

            found = model_mismatch(gs.model, q.model)
            if found is not None:
                what = found[0].replace("the index's", "the gallery's")
                raise InputError(f"the query embeddings come from another model than the gallery embeddings "
                                 f"({gallery_embeddings}): {what}; {found[1].replace('index', 'gallery')}",
                                 file=embeddings, key="--embeddings")
        if gs.emb.shape[1] != q.emb.shape[1]:
            raise InputError(f"dimension {gs.emb.shape[1]} differs from the query embeddings' {q.emb.shape[1]}",
                             file=gallery_embeddings)
        if gs.labels.shape[1] != q.labels.shape[1]:
            raise InputError(f"{gs.labels.shape[1]} label scale(s), but the query labels ({q.labels_file}) have "
                             f"{q.labels.shape[1]}", file=gs.labels_file)
        if q.names is not None and gs.names is not None and gs.names != q.names:
            raise InputError(f"scale names {gs.names} differ from the query labels' {q.names} ({q.names_file})",
                             file=gs.names_file, line=gs.names_line, key=gs.names_key)
        names = q.names or gs.names
        g, gl = gs.emb, gs.labels
        ql = common_class_ids(q, gs, names or default_scale_names(q.labels.shape[1]))
    names = names or default_scale_names(q.labels.shape[1])
    source = embeddings if g is None else f"{embeddings} -> {gallery_embeddings}"
    return EvaluationFiles(q.emb, ql, g, gl, names, source)


def load_query_categories(path: str, expected: int, notes: list[str] | None = None) -> list[int | str]:
    """``--query-categories``: one category per query row (:func:`~dynametric.utils.readers.load_ids`: none of
    them empty), each read as an OML CSV's ``category`` cell is (:func:`~dynametric.utils.readers.id_cell`: ``10``
    is the int 10, so the report orders ``2``, ``10``, ``bird`` as for the CSV). Where two different lines read as
    one int (``007`` and ``7``) a note saying so is appended to ``notes``."""
    lines = load_ids(path, expected, "categories", key="--query-categories")  # no empty one before the end
    merged = merged_ids((text, number) for number, text in enumerate(lines, 1))
    if merged and notes is not None:
        notes.append(f"--query-categories {path}: {merged_ids_note(merged, 'category', 'line')}")
    return [id_cell(text) for text in lines]


def excluded_pairs(query_ids: Sequence[Hashable] | None, gallery_ids: Sequence[Hashable] | None) -> int:
    """The (query, gallery item) pairs a query -> gallery evaluation with these ids excludes: those of equal ids
    (0 without ids), as :meth:`dynametric.engine.protocols.QueryGallery.exclusion_ids` counts its own."""
    if query_ids is None or gallery_ids is None:
        return 0
    in_gallery = Counter(gallery_ids)
    return sum(in_gallery[k] for k in query_ids)


def leave_one_out_excluded_pairs(ids: Sequence[Hashable] | None) -> int:
    """The ordered (query, item) pairs a leave-one-out evaluation with these ids excludes besides each query
    itself: those of two items of one id, ``sum n (n - 1)`` over the ids (0 without ids), as
    :meth:`dynametric.engine.protocols.LeaveOneOut.exclusion_ids` counts a split's sequences."""
    if ids is None:
        return 0
    return sum(n * (n - 1) for n in Counter(ids).values())


def id_files_exclusion(query_ids: Sequence[Hashable], gallery_ids: Sequence[Hashable] | None, query_file: str,
                       gallery_file: str | None = None) -> dict[str, Any]:
    """What a results' ``protocol`` block records of an exclusion by ``evaluate --query-ids`` / ``--gallery-ids``:
    ``excluded_pairs`` (:func:`excluded_pairs` with gallery ids, else :func:`leave_one_out_excluded_pairs`) and
    ``id_files``, the files by option (``{"query_ids": ...}``, plus ``"gallery_ids"`` for query -> gallery)."""
    if gallery_ids is None:
        return {"excluded_pairs": leave_one_out_excluded_pairs(query_ids), "id_files": {"query_ids": query_file}}
    return {"excluded_pairs": excluded_pairs(query_ids, gallery_ids),
            "id_files": {"query_ids": query_file, "gallery_ids": gallery_file}}


_JOB_FILES = ("embed.json", "items.csv", "embeddings.npy", "labels.npy")
"""The files of an embed folder given as an input that an output may not name."""


def check_output_place(path: str | Path, key: str) -> None:
    """Before any work: the folders ``path`` (an output file or folder) goes in must be folders or not yet exist;
    a regular file where one of them goes is one line naming it and ``key`` (the option), as writing it would say
    only after the work is done; so is a read-only file at ``path`` (:func:`~dynametric.utils.io.replacement_mode`)."""
    path = Path(path)
    above = path.parent
    while not (above.exists() or above.is_symlink()) and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise InputError(f"is a file, not a folder; expected a folder to hold {path}", file=above, key=key)
    from dynametric.utils.io import replacement_mode

    replacement_mode(path, key)  # a read-only file there: refused now, not after the work


def check_outputs(inputs: Iterable[tuple[str, str | Path | None]], *, json_out: str | Path | None = None,
                  per_query_out: str | Path | None = None) -> None:
    """Before any work: ``--json`` (``json_out``) / ``--per-query`` (``per_query_out``) may name a new file or an
    earlier output of the same option (recognised by its content: :func:`~dynametric.metrics.io.is_results_json`,
    :func:`~dynametric.metrics.io.is_per_query_csv`), never a folder, a symbolic link, another existing file, or
    one of the command's inputs (an embed folder's files included). ``inputs``: ``(option, path or None)`` of each
    input, the first option of a path named in errors."""
    named: dict[Path, str] = {}
    for opt, value in inputs:
        if not value:
            continue
        path = Path(value)
        named.setdefault(path.resolve(), opt)
        if path.is_dir():
            for name in _JOB_FILES:
                named.setdefault((path / name).resolve(), f"{opt} (its {name})")
    seen: dict[Path, str] = {}
    for opt, out, ours, what in (
            ("--json", json_out, is_results_json, "an earlier evaluate --json result (a JSON object with a 'mean' "
                                                  "entry)"),
            ("--per-query", per_query_out, is_per_query_csv, "an earlier evaluate --per-query CSV "
                                                             "(header query,scale,num_relevant,...)")):
        if not out:
            continue
        path = Path(out)
        if path.is_symlink():
            raise InputError(f"is a symbolic link; {opt} names a file to write", file=path, key=opt)
        if path.is_dir():
            raise InputError("is a folder; expected the path of a file to write", file=path, key=opt)
        check_output_place(path, opt)
        real = path.resolve()
        if real in named:
            raise InputError(f"is one of the command's inputs ({named[real]}); it is never overwritten: choose "
                             f"another {opt}", file=path, key=opt)
        if real in seen:
            raise InputError(f"is also the {seen[real]} output; give two different files", file=path, key=opt)
        seen[real] = opt
        if path.exists() and not ours(path):
            raise InputError(f"exists and is not {what}; it is not overwritten: choose another {opt}, or remove the "
                             "file yourself", file=path, key=opt)
