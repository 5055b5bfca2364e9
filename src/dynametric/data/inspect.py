"""The dataset check behind ``dynametric data inspect``: counts per split and scale, and every problem a dataset has.

:func:`inspect_dataset` reads every split of a dataset (or those named), counts images and classes per scale and
lists every problem: missing index files, missing images, unreadable images (each decoded as training decodes it),
malformed rows (with line numbers), images listed twice in a split, empty splits, hierarchy violations, and the
images or finest classes that ``train`` shares with another split or ``val`` with a test split. It returns the
document ``dynametric data inspect --json`` prints. :func:`write_sample_grid` draws the first images of a split into
one PNG (a visual colour check). The command (``dynametric.commands.data``) only parses its options and prints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image

from dynametric.data.base import (
    BoxOutsideImage,
    Problem,
    check_hierarchy,
    contiguous_ids,
    decode_problem,
    jpeg_damage,
    load_rgb,
)
from dynametric.data.oml import box_problem
from dynametric.data.readers import MISSING_IMAGES, resolve_root
from dynametric.data.registry import SYNTHETIC, get_format, list_splits, root_expected, split_options
from dynametric.errors import InputError
from dynametric.utils.io import atomic_open, remove_stale_temps_of

__all__ = ["check_grid_target", "inspect_dataset", "is_sample_grid", "write_sample_grid"]

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _decode(path: str, box: Any = None) -> tuple[str | None, str | None, str | None]:
    """``(None, None, None)`` for an image that loads as training and embedding load it (:func:`load_rgb`, with the
    oml crop ``box`` if any); ``(the error, None, None)`` for one that cannot be decoded, ``(None, why, None)`` for a
    box past the stored image's edge (:func:`~dynametric.data.oml.box_problem`), ``(None, None, libjpeg's
    warning)`` for a JPEG whose compressed data is damaged although Pillow decodes it without an error
    (:func:`~dynametric.data.base.jpeg_damage`: a second decoding, by libjpeg through torchvision)."""
    try:
        load_rgb(path, box=box)
    except BoxOutsideImage as exc:
        return None, box_problem(exc.box, exc.size, exc.oriented), None
    except _DECODE_ERRORS as exc:
        return decode_problem(path, exc), None, None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:  # it was read a moment ago
        return None, None, None
    if not data.startswith(b"\xff\xd8\xff"):
        return None, None, None
    return None, None, jpeg_damage(data)


#: a split listing more images than this gets a note that ``--no-verify-images`` skips decoding them
LARGE_LISTING = 50_000
#: seconds between two progress lines of the decoding
PROGRESS_EVERY = 5.0


class _DecodeProgress:
    """Progress lines of one split's decoding on ``stream``: ``n/N`` images and the rate, at most one line every
    :data:`PROGRESS_EVERY` seconds (and one when the split is done, if any was printed), so a log file or a pipe gets
    a few lines, not a bar's every redraw; a note first when the split lists more than :data:`LARGE_LISTING`
    images. ``clock``: seconds (``time.monotonic``)."""

    def __init__(self, stream: TextIO, split: str, total: int, workers: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.split, self.total, self.clock = stream, split, total, clock
        self.start = self.last = clock()
        self.printed = False
        if total > LARGE_LISTING:
            self._line(f"data inspect: decoding the {total} images of split {split!r} to verify them ({workers} "
                       "thread(s); each JPEG twice, milliseconds per image): --no-verify-images skips the decoding "
                       "and only checks that the files exist")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _report(self, done: int, now: float) -> None:
        rate = done / (now - self.start) if now > self.start else 0.0
        left = f", about {(self.total - done) / rate:.0f} s left" if rate > 0 and done < self.total else ""
        self._line(f"data inspect: split {self.split!r}: decoded {done}/{self.total} images ({rate:.0f}/s{left})")
        self.last, self.printed = now, True

    def track(self, results: Iterable[Any]) -> Iterator[Any]:
        """``results`` passed through, reporting as they come."""
        done = reported = 0
        for result in results:
            done += 1
            now = self.clock()
            if now - self.last >= PROGRESS_EVERY:
                self._report(done, now)
                reported = done
            yield result
        if self.printed and reported < done:  # the last line says the split is done
            self._report(done, self.clock())


def inspect_dataset(format: str, root: str | Path | None, splits: Sequence[str] | None = None,
                    options: dict[str, Any] | None = None, verify_images: bool = True,
                    workers: int = 4, *, files: set[str] | None = None,
                    progress: TextIO | None = None) -> dict[str, Any]:
    """Inspect a dataset; returns the ``--json`` document (``problems`` empty means the dataset is clean). ``files``:
    a set the paths of the dataset's files are added to (the index files read or missing, the images listed): what
    ``--grid`` never replaces (:func:`check_grid_target`). ``progress``: a stream (the command's stderr) that gets a
    line every few seconds while images are decoded (images done, of how many, and the rate) and, for a split of
    more than :data:`LARGE_LISTING` images, a note that ``--no-verify-images`` skips the decoding."""
    files = set() if files is None else files
    options = dict(options or {})
    if format != SYNTHETIC:  # a missing root is a usage error (exit 2), not a dataset problem
        resolve_root(root, root_expected(format))
    result: dict[str, Any] = {"format": format, "root": None if root is None else str(root), "splits": {},
                              "problems": [], "details": {}}
    problems: list[tuple[Problem, str | None]] = []  # (problem, the split whose reading found it: None if none)
    try:
        names = list(splits) if splits else list_splits(format, root, **options)
    except InputError as exc:  # a missing or unreadable index file (csv, oml read theirs to list the splits): a
        if exc.file is None:   # dataset problem (exit 1), as when a reader meets it; other errors are usage errors
            raise
        problems.append((Problem(exc.message, exc.file, exc.line, "missing_file"), None))
        files.add(str(exc.file))
        names = []
    raw_ids: dict[str, dict[str, set[Hashable]]] = {}  # split -> scale -> raw ids
    items: dict[str, Any] = {}  # split -> its records (paths, oml crop boxes)
    if format == SYNTHETIC:
        from dynametric.data.registry import build_dataset

        for split in names:
            ds = build_dataset(SYNTHETIC, root, split, **options)
            labels = ds.labels.numpy()
            result["splits"][split] = {"images": len(ds), "classes": ds.class_counts()}
            ids = [sorted(set(labels[:, s].tolist())) for s in range(labels.shape[1])]
            found, notes = check_hierarchy(labels, ds.scale_names, ids)
            problems += [(p, split) for p in found]
            result["details"][split] = {"notes": notes}
            raw_ids[split] = {n: set(labels[:, s].tolist()) for s, n in enumerate(ds.scale_names)}
    else:
        fmt = get_format(format)
        common, reader = split_options(fmt, options)
        missing = getattr(fmt, "missing_splits", None)  # splits a format lists only when present (DyML's tests)
        if missing is not None and not splits:
            for split, where in missing(root, **{k: v for k, v in reader.items() if k != "check_files"}):
                problems.append((Problem(f"not found: split {split!r} of the {format} release is missing (its test "
                                         "protocol evaluates it)", str(where), None, "missing_file"), split))
                files.add(str(where))
        for split in names:
            try:
                rec = fmt.read(root, split, **reader)
            except InputError as exc:
                if exc.file is None:  # a usage error (unknown split, bad option value): exit status 2
                    raise
                problems.append((Problem(exc.message, exc.file, exc.line, "missing_file"), split))
                files.add(str(exc.file))
                continue
            files.update(dataset_files(rec))
            problems += [(p, split) for p in rec.report.problems]
            if not rec.paths:  # build_dataset refuses an empty split
                where = rec.report.files[0] if rec.report.files else None
                problems.append((Problem(f"split {split!r} has no records", where, None, "empty_split"), split))
            columns = list(zip(*rec.raw_labels)) if rec.raw_labels else [() for _ in rec.scale_names]
            result["splits"][split] = {"images": len(rec.paths),
                                       "classes": {n: len(set(columns[s])) for s, n in enumerate(rec.scale_names)}}
            raw_ids[split] = {n: set(columns[s]) for s, n in enumerate(rec.scale_names)}
            items[split] = rec  # its paths and crop boxes (image_identities)
            notes = list(rec.report.notes)
            if rec.paths and len(rec.scale_names) > 1 and common["check_hierarchy"]:
                mats, ids = zip(*(contiguous_ids(columns[s]) for s in range(len(rec.scale_names))))
                found, nest = check_hierarchy(np.stack(mats, 1), rec.scale_names, ids, rec.locations,
                                              nested=rec.nested)
                problems += [(p, split) for p in found]
                notes += nest
            if verify_images and rec.paths:
                boxes = getattr(rec, "boxes", None) or [None] * len(rec.paths)  # oml crop boxes
                with ThreadPoolExecutor(max(1, workers)) as pool:
                    results = pool.map(_decode, rec.paths, boxes)
                    if progress is not None:
                        results = _DecodeProgress(progress, split, len(rec.paths), max(1, workers)).track(results)
                    decoded = list(results)
                for path, loc, (err, bad, damage) in zip(rec.paths, rec.locations, decoded):
                    listed = f" (listed at {loc[0]}:{loc[1]})" if loc[1] is not None else ""
                    if err is not None:
                        problems.append((Problem(f"unreadable image: {err}{listed}", path, None,
                                                 "unreadable_image"), split))
                    elif bad is not None:
                        problems.append((Problem(f"{bad}: {path}", loc[0], loc[1]), split))
                    elif damage is not None:
                        problems.append((Problem(f"damaged JPEG data (libjpeg: {damage}): Pillow decodes it without "
                                                 f"an error, grey where the data is damaged, and training and embed "
                                                 f"take it so{listed}", path, None, "damaged_image"), split))
            details = rec.report.as_dict()
            details.pop("problems")
            details["notes"] = notes
            result["details"][split] = details
    overlap: dict[str, dict[str, int]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for scale in sorted(set(raw_ids.get(a, {})) & set(raw_ids.get(b, {}))):
                overlap.setdefault(scale, {})[f"{a} & {b}"] = len(raw_ids[a][scale] & raw_ids[b][scale])
    result["details"]["raw_id_overlap"] = overlap
    problems += _held_out_problems(format, names, raw_ids, items)
    found_in: dict[Problem, list[str]] = {}  # a file shared by several splits reports its bad rows once
    for problem, where in problems:
        found_in.setdefault(problem, [])
        if where is not None and where not in found_in[problem]:
            found_in[problem].append(where)
    # a summary of missing images first (none of the listed images under the root); then in file order: by file,
    # then line (a file's problems without a line after its lines; those naming no file last), else in the order
    # found; the readers found them split by split, a shared file's rows out of order
    ordered = sorted(found_in.items(), key=lambda item: (item[0].kind != MISSING_IMAGES, item[0].file is None,
                                                         str(item[0].file or ""), item[0].line is None,
                                                         item[0].line or 0))
    result["problems"] = [{"file": p.file, "line": p.line, "message": p.message, "kind": p.kind,
                           "split_unknown": p.split_unknown, "splits": splits} for p, splits in ordered]
    return result


TRAINING_SPLIT, VALIDATION_SPLIT = "train", "val"


def _held_out_problems(format: str, names: Sequence[str], raw_ids: dict[str, dict[str, set[Hashable]]],
                       items: dict[str, Any]) -> list[tuple[Problem, str]]:
    """Problems of the splits a run holds out from training (``items``: split -> its records): the same image (a
    resolved path and its crop box, :func:`~dynametric.data.splits.image_identities`, as a run checks it) in
    ``train`` and another split, or in ``val`` and a test split (kind ``shared_file``); finest classes shared by
    those splits (kind ``class_overlap``; the benchmarks' protocols are class-disjoint), where the format's class
    ids mean the same class in every split. Test splits among themselves (``query`` and ``gallery``) may share
    anything."""
    from dynametric.data.registry import class_ids_comparable
    from dynametric.data.splits import dataset_identities, shared_identities

    comparable = class_ids_comparable(format)

    out: list[tuple[Problem, str]] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            roles = {a, b}
            if TRAINING_SPLIT not in roles and VALIDATION_SPLIT not in roles:
                continue
            files = shared_identities(dataset_identities(items.get(a)), dataset_identities(items.get(b)))
            if files:
                problem = Problem(f"splits {a!r} and {b!r} list {len(files)} of the same image file(s), e.g. "
                                  f"{files[0]}: training, validation and test images must differ", None, None,
                                  "shared_file")
                out += [(problem, a), (problem, b)]
            scales_a, scales_b = list(raw_ids.get(a, {})), list(raw_ids.get(b, {}))
            if not comparable or not scales_a or not scales_b or scales_a[0] != scales_b[0]:
                continue
            classes = sorted(raw_ids[a][scales_a[0]] & raw_ids[b][scales_b[0]], key=str)
            if classes:
                shown = ", ".join(repr(c) for c in classes[:3]) + (", ..." if len(classes) > 3 else "")
                problem = Problem(f"splits {a!r} and {b!r} share {len(classes)} {scales_a[0]} class(es) ({shown}): "
                                  "the protocols hold out whole classes, so a shared class is not unseen",
                                  None, None, "class_overlap")
                out += [(problem, a), (problem, b)]
    return out


GRID_SOFTWARE = "dynametric data inspect"
"""The ``Software`` text chunk of every PNG :func:`write_sample_grid` writes: what tells an earlier grid, which a
new one replaces, from any other file, which is never overwritten."""


def is_sample_grid(path: str | Path) -> bool:
    """Whether ``path`` is a regular file (not a link) holding a PNG whose ``Software`` text is :data:`GRID_SOFTWARE`,
    a grid an earlier :func:`write_sample_grid` wrote (only the PNG's header chunks are read)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == GRID_SOFTWARE
    except Exception:  # noqa: BLE001 - whatever opening a file that is not such a PNG raises
        return False


def check_grid_target(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``--grid``'s file: a new file or an earlier grid (:func:`is_sample_grid`), never a folder, a symbolic link,
    any other file, nor one of ``inputs``, the dataset's own files (its index files and images, also one that is an
    earlier grid or does not exist yet). An :class:`InputError` naming the path and ``--grid`` otherwise."""
    out = Path(out)
    if out.is_symlink():
        raise InputError("is a symbolic link; --grid names a PNG file to write", file=out, key="--grid")
    if out.is_dir():
        raise InputError("is a folder; expected the path of a PNG file to write", file=out, key="--grid")
    exists = out.exists()
    if exists and not is_sample_grid(out):
        raise InputError("exists and is not a sample grid an earlier data inspect --grid wrote (a PNG whose "
                         f"Software text is {GRID_SOFTWARE!r}); it is not overwritten: choose another --grid, or "
                         "remove the file yourself", file=out, key="--grid")
    if _is_one_of(out, exists, inputs):
        raise InputError("is one of the dataset's own files (an index file or an image it lists); it is never "
                         "overwritten: choose another --grid", file=out, key="--grid")
    return out


def _is_one_of(out: Path, exists: bool, inputs: Iterable[str | Path]) -> bool:
    """Whether ``out`` is one of the files ``inputs``: the same file (device and inode: links, ``..``, hard links)
    where ``out`` exists, else the same absolute path (a listed file that is missing)."""
    if exists:
        own = out.stat()
        for name in inputs:
            try:
                st = os.stat(name)
            except (OSError, ValueError):  # missing, unreadable, or a name the OS refuses
                continue
            if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
                return True
        return False
    targets = {os.path.abspath(out), os.path.realpath(out)}
    return any(os.path.abspath(name) in targets for name in inputs)


def dataset_files(records: Any) -> list[str]:
    """The files of one split's records (a reader's ``SplitRecords`` or a built dataset): its index files and the
    images it lists."""
    report = getattr(records, "report", None)
    return [*(getattr(report, "files", None) or []), *(str(p) for p in (getattr(records, "paths", None) or []))]


def write_sample_grid(format: str, root: str | Path | None, split: str, out: str | Path, count: int = 16,
                      options: dict[str, Any] | None = None, cell: int = 96, *,
                      inputs: Iterable[str | Path] = ()) -> int:
    """Write a PNG grid of the first ``count`` items of ``split`` (``swap_rb`` honoured; an item cropped from its
    image, an ``oml`` row's box, drawn as that crop, as training sees it); returns the items drawn. ``out`` must be
    new or an earlier grid, and neither a file of ``split`` nor one of ``inputs`` (the files of the dataset's other
    splits: :func:`check_grid_target`); the PNG carries the text ``Software`` = :data:`GRID_SOFTWARE`, which is
    how the next call knows it; what a killed write of ``out`` left beside it is removed."""
    from PIL.PngImagePlugin import PngInfo

    from dynametric.data.registry import build_dataset

    check_grid_target(out, inputs)  # before the dataset is read
    opts = dict(options or {})
    if format != SYNTHETIC:
        opts.setdefault("mode", "lenient")
    ds = build_dataset(format, root, split, **opts)
    out = check_grid_target(out, [*inputs, *dataset_files(ds)])
    n = min(count, len(ds))
    cols = max(1, math.ceil(math.sqrt(n)))
    grid = Image.new("RGB", (cols * cell, max(1, math.ceil(n / cols)) * cell), (0, 0, 0))
    swap = bool(opts.get("swap_rb", False))
    boxes = getattr(ds, "boxes", None)  # oml crops (CroppedImageDataset): the item is the box, not the image
    for i in range(n):
        if ds.paths is not None:
            try:
                img = load_rgb(str(ds.paths[i]), swap, box=None if boxes is None else boxes[i])
            except (*_DECODE_ERRORS, BoxOutsideImage):  # the inspection lists it (a box past the edge too)
                continue
        else:
            img = Image.fromarray(ds.images[i])
        grid.paste(img.resize((cell, cell)), ((i % cols) * cell, (i // cols) * cell))
    text = PngInfo()
    text.add_text("Software", GRID_SOFTWARE)
    remove_stale_temps_of(out)  # a killed write of this grid's (its own name and pattern only)
    with atomic_open(out, "wb", key="--grid") as fh:  # Python's file IO: a full disk is one line naming out
        grid.save(fh, format="PNG", pnginfo=text)
    return n
