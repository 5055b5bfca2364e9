"""``dynametric embed``: embed a folder of images or a CSV list with a trained checkpoint (streaming, resumable);
``dynametric merge-embeddings``: join the parts of ``embed --part K/N`` jobs (one process per GPU).

See :mod:`dynametric.retrieval.embed` for the output folder and docs/retrieval.md for the workflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dynametric.commands import is_terminal, path_arg, positive_int, write_stdout
from dynametric.commands.options import add_inference_arguments, add_model_arguments, inference_options
from dynametric.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed", help="embed images with a trained checkpoint (batched, sharded, resumable)",
        description="Embed every image of --images DIR (recursive) or of a --csv list (columns path, optional id "
                    "and split, other columns = label scales, finest first) into the folder --out: "
                    "embeddings.npy [N, D] float32, items.csv (index,id,path,labels), labels.npy, embed.json. "
                    "Shards are written as they finish; running the same command again resumes.")
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=path_arg, help="folder of images (searched recursively)")
    src.add_argument("--csv", type=path_arg, help="CSV list of images with optional labels")
    p.add_argument("--image-root", type=path_arg, default=None,
                   help="with --csv: folder the listed relative paths are resolved against (default: the CSV's "
                        "folder); a relative --image-root is relative to the working directory, as any path on "
                        "the command line")
    p.add_argument("--out", type=path_arg, required=True, help="output folder")
    p.add_argument("--part", type=part_of, default=None, metavar="K/N",
                   help="embed only the K-th of N contiguous parts of the list (K = 0..N-1), e.g. one process per "
                        "GPU; labels keep the whole list's ids; join the parts with `dynametric merge-embeddings`")
    add_inference_arguments(p)
    p.add_argument("--shard-size", type=positive_int, default=4096,
                   help="images per shard (the unit of resumption; default 4096)")
    p.add_argument("--keep-shards", action="store_true", help="keep shards/ after assembling embeddings.npy")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="refuse an image of more than N pixels, read from its header before it is decoded (images "
                        "from others; default: PIL's own limit of about 179 M pixels)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing job in --out")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none where stderr is not a terminal: a file or a pipe)")
    p.set_defaults(func=run)
    register_merge(subparsers)


def part_of(text: str) -> tuple[int, int]:
    """``K/N`` -> ``(K, N)`` with ``0 <= K < N``."""
    k, sep, n = text.partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        kk, nn = -1, 0
    if not sep or not (nn >= 1 and 0 <= kk < nn):
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N (e.g. 0/4), got {text!r}")
    return kk, nn


def register_merge(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge-embeddings", help="join the folders of `embed --part K/N` jobs into one embeddings folder",
        description="Join the output folders of `dynametric embed --part K/N` (all N parts of one list, any order) "
                    "into --out, equal to one `dynametric embed` run over the whole list: embeddings.npy, "
                    "labels.npy, items.csv, embed.json. The parts must come from one list and one model; a missing, "
                    "repeated or unfinished part is an error.")
    p.add_argument("parts", nargs="+", type=path_arg, metavar="PART", help="output folders of the part jobs")
    p.add_argument("--out", type=path_arg, required=True, help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an embedding job already in --out")
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    from dynametric.retrieval.embed import check_job_replaceable, merge_embedding_parts
    from dynametric.retrieval.evaluate_io import check_output_place

    check_output_place(args.out, "--out")
    if args.overwrite and (args.out / "embed.json").is_file():  # a read-only file of the job: refused now
        check_job_replaceable(args.out)
    res = merge_embedding_parts(args.parts, args.out, overwrite=args.overwrite)
    write_stdout(f"{len(args.parts)} parts, {res.count} images -> {res.out}/embeddings.npy [{res.count}, {res.dim}]\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from dynametric.errors import Interrupted

    try:
        return _run(args)
    except Interrupted:
        raise
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: finished shards are kept, the same command goes on from them
        raise Interrupted("run the same command again to resume from the finished shards") from None


def _run(args: argparse.Namespace) -> int:
    from dynametric.retrieval.embed import check_job_replaceable, embed_items, list_image_folder, read_image_csv
    from dynametric.retrieval.evaluate_io import check_output_place
    from dynametric.retrieval.model import load_embedder

    if args.image_root is not None and args.csv is None:
        raise ConfigError("--image-root goes with --csv", key="--image-root")
    check_output_place(args.out, "--out")  # before the images are listed and the model is loaded
    if args.overwrite and (args.out / "embed.json").is_file():  # a read-only file of the job it replaces: the same
        check_job_replaceable(args.out)
    options = inference_options(args)
    run_opts = options.resolve()  # flag errors before the images are listed
    # resolved once: `--workers auto` lowered under the open-file limit is said once, not again by the loading below
    options = dataclasses.replace(options, workers=run_opts.workers)
    items = list_image_folder(args.images) if args.images is not None else read_image_csv(
        args.csv, None if args.image_root is None else args.image_root.absolute(), key="--image-root")
    for note in items.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.part is not None:
        items = items.select_part(*args.part)
    loaded = load_embedder(args.checkpoint, args.config, overrides=args.overrides, head=args.head,
                           image_size=args.image_size, options=options)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    res = embed_items(items, loaded.embed_on_device, loaded.loader_transform, args.out,
                      model_identity=loaded.identity(),
                      batch_size=args.batch_size, shard_size=args.shard_size, num_workers=run_opts.workers,
                      pin_memory=run_opts.pin_memory,
                      progress=not args.no_progress and is_terminal(sys.stderr),
                      keep_shards=args.keep_shards, overwrite=args.overwrite, max_pixels=args.max_pixels,
                      prepare=loaded.prepare)
    if res.restored:  # a finished job's files that were missing or not the list's, written again from it
        print(f"note: {', '.join(res.restored)} written again from the list (missing or changed in {res.out})",
              file=sys.stderr)
    part = "" if args.part is None else f" (part {args.part[0]}/{args.part[1]} of {items.source_count} images)"
    write_stdout(f"{res.count} images{part} -> {res.out}/embeddings.npy [{res.count}, {res.dim}] "
                 f"({len(res.computed_shards)} shard(s) computed, {len(res.skipped_shards)} already done)\n")
    if items.labels is not None:
        print(f"labels: {', '.join(items.scale_names)}", file=sys.stderr)
    return 0
