"""dynametric search: ranked neighbours of query images or embeddings from an index, as a table or JSON.

--scale NAME returns the k nearest classes at that scale (each shown by its nearest item): with scales
fine/middle/coarse = product/category/family, --scale coarse answers "which family is this?".
--same NAME keeps only items that share the query's label at that scale ("more from the same category"); the
query's label is its own when the queries carry labels (an embed folder with the index's scales, or
--query-labels), else that of its own indexed item when --exclude-self matched one, else the label of its nearest
item.
"""
# The docstring's paragraphs after the first are the command's --help description: plain text, no markup.

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.commands import path_arg, positive_int, refuse_closed_stdout, write_stdout
from dynametric.commands.options import add_inference_arguments, inference_options
from dynametric.errors import ConfigError, InputError
from dynametric.utils.text import text_table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="search an index with query images or embeddings",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=path_arg, required=True, help="index folder from `dynametric index build`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", type=path_arg, nargs="+", help="query image file(s), embedded with the index's model")
    q.add_argument("--embeddings", type=path_arg,
                   help="query embeddings: an .npy [Q, D] or a `dynametric embed` folder")
    p.add_argument("-k", "--k", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--scale", default=None, help="group by this scale: the k nearest classes at the scale")
    p.add_argument("--same", default=None, help="only items with the query's label at this scale")
    p.add_argument("--query-labels", type=path_arg, default=None,
                   help="CSV with a header of the index's scale names (any of them, the --same one included), one "
                        "row per query (for --same): class names as the index shows them, or integer class ids (not "
                        "on a scale with numeric class names, where a number is a name); or an .npy integer array "
                        "[Q, S] of class ids, its columns the index's scales in order")
    p.add_argument("--exclude-self", action="store_true",
                   help="drop each query's own item: the indexed item with the query's file (--image files, or "
                        "the items of an --embeddings embed folder), matched by path")
    p.add_argument("--checkpoint", type=path_arg, default=None,
                   help="with --image: checkpoint to embed with (default: the one recorded in the index; must have "
                        "the same weights)")
    p.add_argument("--config", type=path_arg, default=None, help="with --checkpoint: its config")
    add_inference_arguments(p, prefix="with --image: ", follow_index=True)
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="with --image: refuse a query image of more than N pixels, read from its header before it is "
                        "decoded (default: PIL's own limit of about 179 M pixels)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a table")
    # None = not given (the defaults stay those in the help: auto, 64, auto, cpu), so that run() can refuse them
    # with --embeddings, where no model runs
    p.set_defaults(func=run, device=None, batch_size=None, workers=None, decode=None)


_IMAGE_ONLY = ("--device", "--precision", "--batch-size", "--workers", "--decode", "--max-pixels")


def format_distance(d: float) -> str:
    """A distance with 4 decimals; one that rounds to zero is ``0.0000``, never ``-0.0000`` (a query's own item
    is at ``1 - cos`` a few float32 roundings below 0)."""
    text = f"{d:.4f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_results(entries: list[dict[str, Any]], scale_names: list[str]) -> str:
    lines: list[str] = []
    for e in entries:
        head = f"query {e['query']}"
        if e["mode"] == "classes":
            head += f": nearest {e['scale']} classes"
        elif e["mode"] == "same":
            head += f": same {e['scale']} ({e.get('query_label', '?')})"
        lines.append(head)
        cols = ["rank", "distance", "id", *scale_names]
        rows = [[str(h["rank"]), format_distance(h["distance"]), h["id"],
                 *[str(h.get("labels", {}).get(s, "")) for s in scale_names]] for h in e["results"]]
        if not rows:  # nothing to put under a header (an index of no items, a --same class the index lacks)
            lines.append("  (no results)")
        else:  # padded by terminal columns, not characters: an id or class name in CJK takes two columns a character
            lines += ["  " + line for line in text_table([cols, *rows], left=len(cols))]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run(args: argparse.Namespace) -> int:
    from dynametric.retrieval.index import RetrievalIndex, read_query_labels, self_items

    refuse_closed_stdout("search prints its results there")
    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}", key="-k")
    if args.checkpoint is not None and args.image is None:
        raise ConfigError("--checkpoint goes with --image", key="--checkpoint")
    if args.image is None:
        given = [flag for flag in _IMAGE_ONLY if getattr(args, flag[2:].replace("-", "_")) is not None]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise ConfigError(f"{' and '.join(given)} {verb} with --image (how query images are embedded); "
                              "--embeddings are searched as they are", key=given[0])
    run_opts = inference_options(args, workers="auto").resolve()  # --device / --precision / ... errors first
    index = RetrievalIndex.load(args.index)
    for opt, name in (("--scale", args.scale), ("--same", args.same)):
        if name is not None and index.labels is None:
            raise InputError(f"scale {name!r} asked for, but this index has no labels", key=opt)
        if name is not None and name not in index.scale_names:
            raise InputError(f"unknown scale {name!r}; this index has scales {index.scale_names}", key=opt)
    qlabels = None
    qnames: list[list[str]] | None = None  # each query's own class at every scale, as text
    exclude, unmatched = None, 0
    notes: list[str] = []
    if args.image is not None:
        from dynametric.retrieval.model import decoder_note, embed_image_files, load_index_model, query_precision

        if args.exclude_self:  # before the model is loaded: an index without paths is an error
            exclude, unmatched = self_items(index, [str(p) for p in args.image], "--image files")
        precision, note = query_precision(index.model, args.precision, run_opts.device)
        notes += [note] if note else []
        loaded = load_index_model(index, args.checkpoint, args.config,
                                  replace(inference_options(args, workers="auto"), precision=precision))
        notes += loaded.notes
        note = decoder_note(index.model, loaded.decode, "the query images")
        notes += [note] if note else []
        q = embed_image_files(loaded, args.image, max_pixels=args.max_pixels)
        names = [str(p) for p in args.image]
    else:
        from dynametric.retrieval.embed import load_embedding_set
        from dynametric.retrieval.evaluate_io import embeddings_file
        from dynametric.retrieval.model import check_same_model, decoder_note, precision_note

        qs = load_embedding_set(args.embeddings)
        check_same_model(index.model, qs.model, args.embeddings)
        if qs.model:
            note = decoder_note(index.model, str(qs.model.get("decode") or "cpu"),
                                f"the query embeddings' ({args.embeddings})")
            notes += [note] if note else []
        q = np.asarray(qs.embeddings)  # float64 stays float64: the index checks and prepares it for its metric
        index.check_queries(q, f"query embeddings {args.embeddings}", source=embeddings_file(args.embeddings))
        names = qs.ids
        if args.same is not None and args.query_labels is None and qs.labels is not None:
            # qs.source: the embed folder, also when --embeddings named its embeddings.npy
            where = str(Path(qs.source) / "labels.npy")
            if args.same in qs.scale_names:  # its --same column, by name: the folder may hold fewer (or other) scales
                j = list(qs.scale_names).index(args.same)
                # in the index's class ids: each embed job numbers its text classes within its own list
                qlabels, qnames = index.query_class_ids(
                    qs.labels[:, [j]], [qs.class_names[j]] if qs.class_names and j < len(qs.class_names) else None,
                    where, scales=[args.same])
            else:
                own = ("that of its own indexed item where --exclude-self matched one, else that of its nearest item"
                       if args.exclude_self else "that of its nearest item (the predicted class)")
                notes.append(f"--same {args.same}: the query labels ({where}) are at scales "
                             f"{list(qs.scale_names)}, not the index's {index.scale_names}, and hold no "
                             f"{args.same!r}: each query's {args.same} class is {own}")
        if qs.model:  # an embed folder: the precision its embeddings were computed in
            note = precision_note(index.model, str(qs.model.get("precision") or "fp32"),
                                  f"the query embeddings ({args.embeddings}) were computed")
            notes += [note] if note else []
        if args.exclude_self:
            exclude, unmatched = self_items(index, list(qs.paths), f"the query embeddings {args.embeddings}")
    if exclude is not None and unmatched:
        notes.append(f"--exclude-self: {unmatched} of {len(exclude)} queries are not items of this index (no indexed "
                     "item has their file); nothing is excluded for them")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.query_labels is not None:
        qlabels, qnames = read_query_labels(args.query_labels, index, len(q), scale=args.same)
    if args.same is not None and qlabels is not None and qnames is not None:
        col = index.scale_names.index(args.same)
        missing = ~np.isin(qlabels[:, col], index.labels[:, col])  # type: ignore[index]
        absent = sorted({qnames[col][i] for i in np.flatnonzero(missing)})
        if absent:  # a text class the index does not hold has id -1: no item has it
            count = int(missing.sum())
            shown = ", ".join(absent[:5]) + (f", ... ({len(absent) - 5} more)" if len(absent) > 5 else "")
            print(f"note: --same {args.same}: {count} of {len(q)} queries have a {args.same} label the index "
                  f"does not hold ({shown}): they get no results", file=sys.stderr)
    res = index.search(q, args.k, scale=args.scale, same=args.same, query_labels=qlabels, exclude=exclude)
    entries = index.describe(res, names)
    if args.same is not None and qnames is not None:  # the query's own class name (also one the index lacks)
        col = index.scale_names.index(args.same)
        text = bool(index.class_names and col < len(index.class_names) and index.class_names[col])
        for i, entry in enumerate(entries):
            entry["query_label"] = qnames[col][i] if text else int(qlabels[i, col])  # type: ignore[index]
    if res.short_queries:
        how = {"ivf": f"it ranks only the items of the nprobe={index.params.get('nprobe')} cells it visits "
                      f"(of nlist={index.params.get('nlist')}); build it with a larger --nprobe",
               "hnsw": "its graph search stops at the ef_search beam; build it with a larger --ef-search"}
        print(f"note: {res.short_queries} of {len(q)} queries got fewer than -k {args.k} results from this "
              f"{index.kind} index: {how.get(index.kind, 'the index returned fewer')}", file=sys.stderr)
    if args.as_json:
        write_stdout(json.dumps({"index": str(args.index), "metric": index.metric, "kind": index.kind, "k": args.k,
                                 "queries": entries}, indent=2) + "\n")
    else:
        write_stdout(format_results(entries, index.scale_names if index.labels is not None else []))
    return 0
