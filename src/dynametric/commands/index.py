"""``dynametric index build``: a faiss index (flat / ivf / hnsw) over embeddings, with its metadata."""

from __future__ import annotations

import argparse
import sys
import warnings

from dynametric.commands import path_arg, positive_int31, seed_int, write_stdout
from dynametric.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build a nearest-neighbour index over embeddings (faiss)",
                              description="Index operations. `dynametric index build --help` for the options.")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)  # no action: usage + error, 2
    b = sub.add_parser(
        "build", help="build an index folder from a `dynametric embed` output (or an .npy)",
        description="Write INDEX/ (index.faiss, index.json with kind, metric, dimension, scale names, the model's "
                    "config and weights hashes, image roots; items.csv; labels.npy).")
    b.add_argument("--embeddings", type=path_arg, required=True, help="`dynametric embed` --out folder or an .npy file")
    b.add_argument("--kind", choices=["flat", "ivf", "hnsw"], default="flat",
                   help="flat (exact), ivf (inverted lists) or hnsw (graph) (default flat)")
    b.add_argument("--metric", choices=["cosine", "l2", "ip"], default="cosine",
                   help="cosine (L2-normalised inner product), l2 or ip (default cosine)")
    b.add_argument("--nlist", type=positive_int31, default=None, help="ivf: number of cells (default round(4 sqrt(N)))")
    b.add_argument("--nprobe", type=positive_int31, default=None, help="ivf: cells visited per query (default 8)")
    b.add_argument("--m", type=positive_int31, default=None, help="hnsw: links per node (default 32)")
    b.add_argument("--ef-construction", type=positive_int31, default=None,
                   help="hnsw: build-time beam width (default 80)")
    b.add_argument("--ef-search", type=positive_int31, default=None, help="hnsw: search-time beam width (default 64)")
    b.add_argument("--seed", type=seed_int, default=None, help="ivf: k-means seed, 0 to 2147483647 (default 0)")
    b.add_argument("--out", type=path_arg, required=True, help="index folder")
    b.set_defaults(func=run_build, command_name="index build")  # errors say `dynametric index build: error: ...`


def run_build(args: argparse.Namespace) -> int:
    from dynametric.retrieval.embed import load_embedding_set
    from dynametric.retrieval.evaluate_io import check_output_place
    from dynametric.retrieval.faiss_ops import IndexBuildWarning
    from dynametric.retrieval.index import RetrievalIndex
    from dynametric.retrieval.index_folder import check_build_folder

    if args.out.resolve() == args.embeddings.resolve():
        raise ConfigError("--out must differ from --embeddings", key="--out")
    check_output_place(args.out, "--out")  # before the embeddings are read and indexed
    check_build_folder(args.out)  # a foreign folder or a read-only index file: refused now, not after the build
    options = {"ivf": ("nlist", "nprobe", "seed"), "hnsw": ("m", "ef_construction", "ef_search")}
    kwargs = {}  # the options given; the others take build_faiss_index's defaults
    for kind, names in options.items():
        for name in names:
            value = getattr(args, name)
            if value is None:
                continue
            if kind != args.kind:  # an option the index kind would ignore
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} applies to --kind {kind} indexes, not to --kind {args.kind}", key=flag)
            kwargs[name] = value
    emb = load_embedding_set(args.embeddings)
    with warnings.catch_warnings(record=True) as caught:  # the build's own warnings: one note line each
        warnings.simplefilter("always", IndexBuildWarning)
        idx = RetrievalIndex.build(emb, args.kind, args.metric, **kwargs)
    for w in caught:
        if issubclass(w.category, IndexBuildWarning):
            print(f"note: {w.message}", file=sys.stderr)
        else:  # another library's warning: as Python shows it
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    idx.save(args.out)
    params = ", ".join(f"{k}={v}" for k, v in idx.params.items())
    scales = f"; scales: {', '.join(idx.scale_names)}" if idx.labels is not None else ""
    write_stdout(f"{args.kind} index ({args.metric}{', ' + params if params else ''}) of {idx.size} x {idx.dim} "
                 f"-> {args.out}{scales}\n")
    return 0
