"""dynametric data inspect: counts per split and scale, and every problem a dataset has.

dynametric data inspect --format NAME [--root DIR] [--split S ...] [--json] reads every split (or those named),
reports images and classes per scale, and lists every problem: missing index files, missing images, unreadable
images, malformed rows (with line numbers), images listed twice in a split, empty splits and hierarchy violations. The
exit status is 1 when there is any problem, 0 otherwise (2 for a usage error such as an unknown format). --json
prints {"format": name, "root": dir or null, "splits": {"<split>": {"images": n, "classes": {"<scale>": n}}},
"problems": [{"file", "line", "message", "kind", "split_unknown", "splits"}], "details": {...}} (splits: the splits
whose reading found the problem; split_unknown: a row of a file shared by several splits whose split cannot be
read, a problem of every split); details holds each split's load report, nesting notes and the raw-id overlap
between splits per scale (reported, not interpreted).
"""
# The docstring above is the command's --help description (register: description=__doc__): plain text, no markup.

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynametric.commands import path_text, positive_int, refuse_closed_stdout, write_stdout
from dynametric.commands.options import worker_threads
from dynametric.errors import ConfigError, InputError
from dynametric.utils.device import MAX_WORKERS

#: The built-in dataset formats, for ``--format``'s help: :data:`dynametric.data.registry.FORMAT_NAMES`, written out
#: here because the registry imports torch and building the parser must not (``dynametric --help``;
#: tests/test_cli_imports.py checks that the two lists are equal). ``--format`` is checked against the live registry
#: when the command runs (:func:`_check_format`), so a format a user's module registered (``dynametric --import``)
#: is taken too.
FORMAT_NAMES = ("cub200", "cars196", "sop", "inshop", "dyml-vehicle", "dyml-animal", "dyml-product", "csv", "folder",
                "oml", "synthetic")


#: Missing images spelt out after the summary line that says none (or almost none) of the listed images is there.
MISSING_SHOWN = 10


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs, each value read as a ``data.options.KEY=VALUE`` override reads it
    (:func:`~dynametric.config.loader.parse_option_value`: YAML 1.2, ``012`` is 12, ``1:30`` a string; a plain
    ``yes`` / ``no`` / ``on`` / ``off`` refused as ambiguous)."""
    from dynametric.config.loader import parse_option_value

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}", key="--option")
        out[key.strip()] = parse_option_value(value, f"--option {key.strip()}")
    return out


def _check_format(name: str) -> None:
    """``--format`` must name a format of the registry as it is now (the built-in ones and those a module imported
    with ``dynametric --import`` registered); else a usage error with the closest names."""
    import difflib

    from dynametric.data.registry import format_names
    from dynametric.utils.registry import with_import_hint

    names = format_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid formats: {', '.join(names)}"
        raise ConfigError(with_import_hint(f"unknown dataset format {name!r}{hint}"), key="--format")


def format_report(result: dict[str, Any]) -> str:
    """The human-readable form of :func:`~dynametric.data.inspect.inspect_dataset`'s result."""
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
        # after a summary of missing images (none of the listed images under the root), the first few of them
        capped = any(p["kind"] == "missing_images" for p in probs)
        missing = 0
        for p in probs:
            if capped and p["kind"] == "missing_image":
                missing += 1
                if missing > MISSING_SHOWN:
                    continue
            where = p["file"] if p["line"] is None else f"{p['file']}:{p['line']}"
            lines.append(f"  {where}: {p['message']}" if where else f"  {p['message']}")
        if missing > MISSING_SHOWN:
            lines.append(f"  ... and {missing - MISSING_SHOWN} more missing image(s) (--json lists every problem)")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="inspect datasets", description="Dataset tools.")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("inspect", help="counts per split and scale, and every problem (exit 1 if any)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, metavar="NAME",
                   help=f"dataset format: {', '.join(FORMAT_NAMES)}, or one a module given to dynametric --import "
                        "registers")
    p.add_argument("--root", type=path_text, help="dataset root directory (CSV format: the CSV file or its folder)")
    p.add_argument("--split", nargs="+", help="splits to inspect (default: all that exist)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="format option (repeatable), e.g. -o csv_file=my.csv -o swap_rb=true")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="do not decode every image (only check that the files exist)")
    p.add_argument("--workers", type=worker_threads, default=4,
                   help=f"threads decoding images, 0 to {MAX_WORKERS} (default 4)")
    p.add_argument("--grid", metavar="PNG", help="also write a grid of sample images (visual colour check) to this "
                        "new PNG file, or over a grid an earlier --grid wrote; never over another file")
    p.add_argument("--grid-count", type=positive_int, default=16, help="images in the sample grid (default 16)")
    p.set_defaults(func=run, command_name="data inspect")  # errors say `dynametric data inspect: error: ...`


def run(args: argparse.Namespace) -> int:
    from dynametric.data.inspect import check_grid_target, inspect_dataset, write_sample_grid

    refuse_closed_stdout("data inspect prints its report there" + (" (--json: the JSON)" if args.json else ""))
    _check_format(args.format)
    options = _parse_options(args.option)
    if args.grid:  # before any work: a new file or an earlier grid, never another file
        check_grid_target(args.grid)
    dataset_files: set[str] = set()  # the dataset's own files, which the grid never replaces
    try:
        result = inspect_dataset(args.format, args.root, args.split, options, args.verify_images, args.workers,
                                 files=dataset_files, progress=sys.stderr)
    except InputError as exc:  # the data layer's error about its root (key 'root') is about --root here
        if exc.file is None and exc.key == "root":
            raise ConfigError(exc.message, key="--root") from None
        raise
    if args.grid and result["splits"]:
        split = next(iter(result["splits"]))
        grid_opts = {k: v for k, v in options.items() if k != "mode"}
        drawn = write_sample_grid(args.format, args.root, split, args.grid, args.grid_count, grid_opts,
                                  inputs=dataset_files)
        print(f"wrote {args.grid}: a grid of {drawn} image(s) of split {split!r}", file=sys.stderr)
    elif args.grid:
        print(f"no grid written to {args.grid}: no split to draw from", file=sys.stderr)
    write_stdout((json.dumps(result, indent=2, default=str) if args.json else format_report(result)) + "\n")
    return 1 if result["problems"] else 0
