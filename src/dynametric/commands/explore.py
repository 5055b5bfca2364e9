"""``dynametric explore``: a local web page to browse an index's neighbours at every scale."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from dynametric.commands import path_arg, positive_float
from dynametric.commands.options import add_inference_arguments, inference_options

#: The most neighbours per column: :data:`dynametric.retrieval.explorer.MAX_K`, written out here because the explorer
#: imports torch and building the parser must not (tests/commands/test_cli_usage.py checks that they are equal).
MAX_K = 100


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explore", help="browse an index in the browser: neighbours at every scale side by side",
        description="Serve a small page (default http://127.0.0.1:8765/) to pick a gallery image or upload one and "
                    "see its nearest items and nearest classes at every scale, with distances and labels. Only "
                    "files inside the index's image roots are served.")
    p.add_argument("--index", type=path_arg, required=True, help="index folder from `dynametric index build`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind, IPv4 or IPv6 (default 127.0.0.1: this machine only; 0.0.0.0 or :: for "
                        "every interface)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests that name this host (repeatable): a name this machine is reached by "
                        "when exposed with --host 0.0.0.0 (its addresses, localhost and --host are always accepted; "
                        "other names are refused against DNS rebinding); '*' accepts any")
    p.add_argument("--port", type=port_number, default=8765, help="port, 0 to 65535 (default 8765; 0: any free port)")
    p.add_argument("-k", "--k", type=neighbours, default=8,
                   help=f"neighbours per column, 1 to {MAX_K} (default 8)")
    p.add_argument("--checkpoint", type=path_arg, default=None,
                   help="checkpoint for uploads (default: the one recorded in the index; uploads are disabled if "
                        "it is missing)")
    p.add_argument("--config", type=path_arg, default=None, help="with --checkpoint: its config")
    add_inference_arguments(p, batch=False, workers=False, decode=False, prefix="uploads: ", follow_index=True)
    p.add_argument("--image-root", type=path_arg, action="append", default=None, metavar="DIR",
                   help="serve only image files inside DIR (repeatable) instead of inside the roots the index "
                        "records in its own index.json (an index from someone else can record any folder, / too)")
    p.add_argument("--max-upload-mb", type=positive_float, default=8.0, help="largest accepted upload (default 8 MiB)")
    p.set_defaults(func=run)


def neighbours(text: str) -> int:
    """``--k``: an integer from 1 to :data:`MAX_K`, refused while the arguments are parsed (it was refused only once
    the index and the model had loaded)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_K}, got {text!r}") from None
    if not 1 <= value <= MAX_K:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_K}, got {value}")
    return value


def port_number(text: str) -> int:
    """``--port``: an integer from 0 to 65535 (argparse's one-line error otherwise; was an OverflowError)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from dynametric.errors import ConfigError, DynametricError
    from dynametric.retrieval.explorer import Explorer, exposure_warning, make_server
    from dynametric.retrieval.index import RetrievalIndex
    from dynametric.retrieval.model import load_index_model, query_precision

    options = inference_options(args)
    run = options.resolve()  # a bad --device / --precision is an error, not "uploads disabled"
    for root in args.image_root or []:  # before the index and the model are loaded
        if not root.is_dir():
            raise ConfigError(f"{root} is not a folder (expected one of the folders whose images to serve)",
                              key="--image-root")
    roots = [str(r.resolve()) for r in args.image_root] if args.image_root else None
    index = RetrievalIndex.load(args.index)
    precision, note = query_precision(index.model, args.precision, run.device)  # default: the index's
    embedder = None
    try:
        embedder = load_index_model(index, args.checkpoint, args.config, replace(options, precision=precision))
        if note:
            print(f"note: uploads: {note}", file=sys.stderr)
    except DynametricError as exc:
        if args.checkpoint is not None:
            raise
        print(f"uploads disabled: {exc}", file=sys.stderr)
    explorer = Explorer(index, embedder, k=args.k, max_upload_bytes=int(args.max_upload_mb * 2**20), roots=roots)
    server = make_server(explorer, args.host, args.port, allow_hosts=args.allow_host)
    # from the moment the server exists, Ctrl-C is the normal way to stop it (status 0), also while the lines below
    # are printed (it exited 130 between the URL line and serve_forever)
    try:
        for note in explorer.notes:  # e.g. the index's image roots are missing (the folders moved)
            print(f"note: {note}", file=sys.stderr, flush=True)
        warning = exposure_warning(args.host)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host  # an IPv6 address in a URL
        print(f"dynametric explorer: http://{shown}:{port}/  ({index.size} items; Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
