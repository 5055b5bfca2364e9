"""``dynametric data inspect``: counts per split and scale, and every problem a dataset has.

``dynametric data inspect --format NAME --root DIR [--split S ...] [--json]`` reads every split (or those named),
reports images and classes per scale, and lists every problem: missing index files, missing images, unreadable
images, malformed rows (with line numbers), images listed twice in a split, empty splits and hierarchy violations. The
exit status is 1 when there is any problem, 0 otherwise (2 for a usage error such as an unknown format). ``--json``
prints ``{"splits": {"<split>": {"images": n, "classes": {"<scale>": n}}}, "problems": [{"file", "line",
"message", "kind", "split_unknown", "splits"}], "details": {...}}`` (``splits``: the splits whose reading found the
problem; ``split_unknown``: a row of a file shared by several splits whose split cannot be read, a problem of every
split); ``details`` holds each split's load report, nesting notes and the raw-id overlap
between splits per scale (reported, not interpreted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from dynametric.commands import positive_int
from dynametric.commands.options import worker_threads
from dynametric.data.base import Problem, check_hierarchy, contiguous_ids, load_rgb
from dynametric.data.oml import box_problem
from dynametric.data.readers import resolve_root
from dynametric.data.registry import FORMAT_NAMES, SYNTHETIC, get_format, list_splits, split_options
from dynametric.errors import ConfigError, InputError
from dynametric.utils.device import MAX_WORKERS
from dynametric.utils.io import atomic_write_with

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _decode(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """``(None, (width, height))`` for an image that loads as training and embedding load it (:func:`load_rgb`:
    the size after EXIF orientation), else ``(the error, None)``."""
    try:
        return None, load_rgb(path).size
    except _DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}", None


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}", key="--option")
        out[key.strip()] = yaml.safe_load(value)
    return out


def inspect_dataset(format: str, root: str | Path | None, splits: Sequence[str] | None = None,
                    options: dict[str, Any] | None = None, verify_images: bool = True,
                    workers: int = 4) -> dict[str, Any]:
    """Inspect a dataset; returns the ``--json`` document (``problems`` empty means the dataset is clean)."""
    options = dict(options or {})
    if format != SYNTHETIC:  # a missing root is a usage error (exit 2), not a dataset problem
        resolve_root(root, f"the {format} dataset root")
    result: dict[str, Any] = {"format": format, "root": None if root is None else str(root), "splits": {},
                              "problems": [], "details": {}}
    problems: list[tuple[Problem, str | None]] = []  # (problem, the split whose reading found it: None if none)
    try:
        names = list(splits) if splits else list_splits(format, root, **options)
    except InputError as exc:  # a missing or unreadable index file (csv, oml read theirs to list the splits): a
        if exc.file is None:   # dataset problem (exit 1), as when a reader meets it; other errors are usage errors
            raise
        problems.append((Problem(exc.message, exc.file, exc.line, "missing_file"), None))
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
        for split in names:
            try:
                rec = fmt.read(root, split, **reader)
            except InputError as exc:
                if exc.file is None:  # a usage error (unknown split, bad option value): exit status 2
                    raise
                problems.append((Problem(exc.message, exc.file, exc.line, "missing_file"), split))
                continue
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
                found, nest = check_hierarchy(np.stack(mats, 1), rec.scale_names, ids, rec.locations)
                problems += [(p, split) for p in found]
                notes += nest
            if verify_images and rec.paths:
                with ThreadPoolExecutor(max(1, workers)) as pool:
                    decoded = list(pool.map(_decode, rec.paths))
                boxes = getattr(rec, "boxes", None) or [None] * len(rec.paths)  # oml crop boxes
                for path, loc, (err, size), box in zip(rec.paths, rec.locations, decoded, boxes):
                    if err is not None:
                        listed = f" (listed at {loc[0]}:{loc[1]})" if loc[1] is not None else ""
                        problems.append((Problem(f"unreadable image: {err}{listed}", path, None,
                                                 "unreadable_image"), split))
                    elif box is not None and size is not None and (bad := box_problem(box, size)) is not None:
                        problems.append((Problem(f"{bad}: {path}", loc[0], loc[1]), split))
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
    result["problems"] = [{"file": p.file, "line": p.line, "message": p.message, "kind": p.kind,
                           "split_unknown": p.split_unknown, "splits": splits} for p, splits in found_in.items()]
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
    from dynametric.data.splits import shared_files

    comparable = class_ids_comparable(format)
    out: list[tuple[Problem, str]] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            roles = {a, b}
            if TRAINING_SPLIT not in roles and VALIDATION_SPLIT not in roles:
                continue
            files = shared_files(items.get(a), items.get(b))
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


def format_report(result: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_dataset`'s result."""
    lines = [f"{result['format']}" + (f" at {result['root']}" if result["root"] else "")]
    for split, info in result["splits"].items():
        classes = ", ".join(f"{k}={v}" for k, v in info["classes"].items())
        lines.append(f"  {split}: {info['images']} images; classes: {classes}")
        det = result["details"].get(split, {})
        extra = []
        if det.get("header"):
            extra.append("header " + ", ".join(f"{Path(f).name}={m}" for f, m in det["header"].items()))
        if det.get("blank_lines"):
            extra.append(f"{det['blank_lines']} blank line(s) ignored")
        extra += [f"warning: {w}" for w in det.get("warnings", [])]
        extra += det.get("notes", [])
        lines += [f"      {e}" for e in extra]
    overlap = result["details"].get("raw_id_overlap", {})
    for scale, pairs in overlap.items():
        lines.append(f"  raw {scale} ids shared: " + ", ".join(f"{k}: {v}" for k, v in pairs.items()))
    probs = result["problems"]
    if probs:
        lines.append(f"{len(probs)} problem(s):")
        for p in probs:
            where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
            lines.append(f"  {where}: {p['message']}" if where else f"  {p['message']}")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def write_sample_grid(format: str, root: str | Path | None, split: str, out: str | Path, count: int = 16,
                      options: dict[str, Any] | None = None, cell: int = 96) -> int:
    """Write a PNG grid of the first ``count`` images of ``split`` (``swap_rb`` honoured); returns images drawn."""
    from dynametric.data.registry import build_dataset

    opts = dict(options or {})
    if format != SYNTHETIC:
        opts.setdefault("mode", "lenient")
    ds = build_dataset(format, root, split, **opts)
    n = min(count, len(ds))
    cols = max(1, math.ceil(math.sqrt(n)))
    grid = Image.new("RGB", (cols * cell, max(1, math.ceil(n / cols)) * cell), (0, 0, 0))
    swap = bool(opts.get("swap_rb", False))
    for i in range(n):
        if ds.paths is not None:
            try:
                img = load_rgb(str(ds.paths[i]), swap)
            except _DECODE_ERRORS:
                continue
        else:
            img = Image.fromarray(ds.images[i])
        grid.paste(img.resize((cell, cell)), ((i % cols) * cell, (i // cols) * cell))
    atomic_write_with(out, lambda tmp: grid.save(tmp, format="PNG"))
    return n


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="inspect datasets", description="Dataset tools.")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("inspect", help="counts per split and scale, and every problem (exit 1 if any)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMAT_NAMES, metavar="NAME",
                   help=f"dataset format: {', '.join(FORMAT_NAMES)}")
    p.add_argument("--root", help="dataset root directory (CSV format: the CSV file or its folder)")
    p.add_argument("--split", nargs="+", help="splits to inspect (default: all that exist)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="format option (repeatable), e.g. -o csv_file=my.csv -o swap_rb=true")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="do not decode every image (only check that the files exist)")
    p.add_argument("--workers", type=worker_threads, default=4,
                   help=f"threads decoding images, 0 to {MAX_WORKERS} (default 4)")
    p.add_argument("--grid", metavar="PNG", help="also write a grid of sample images (visual colour check)")
    p.add_argument("--grid-count", type=positive_int, default=16, help="images in the sample grid (default 16)")
    p.set_defaults(func=run, command_name="data inspect")  # errors say `dynametric data inspect: error: ...`


def run(args: argparse.Namespace) -> int:
    options = _parse_options(args.option)
    result = inspect_dataset(args.format, args.root, args.split, options, args.verify_images, args.workers)
    if args.grid and result["splits"]:
        split = next(iter(result["splits"]))
        grid_opts = {k: v for k, v in options.items() if k != "mode"}
        drawn = write_sample_grid(args.format, args.root, split, args.grid, args.grid_count, grid_opts)
        print(f"wrote {args.grid}: a grid of {drawn} image(s) of split {split!r}", file=sys.stderr)
    elif args.grid:
        print(f"no grid written to {args.grid}: no split to draw from", file=sys.stderr)
    print(json.dumps(result, indent=2, default=str) if args.json else format_report(result))
    return 1 if result["problems"] else 0
