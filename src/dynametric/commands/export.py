"""``dynametric export``: the embedder of a checkpoint as TorchScript (``.pt``) or ONNX (``.onnx``), verified."""

from __future__ import annotations

import argparse
import sys

from dynametric.commands import path_arg, positive_float, write_stdout
from dynametric.commands.options import add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the embedder to TorchScript or ONNX (checked against the eager model)",
        description="Write images [B, C, H, W] -> embeddings [B, D] as TorchScript or ONNX (dynamic batch), plus "
                    "<out>.json (input size, preprocessing, model hashes, measured max difference). The exported "
                    "model is run on random inputs and compared with the eager model (--atol, default 1e-4).")
    add_model_arguments(p)
    p.add_argument("--format", choices=["torchscript", "onnx"], default=None,
                   help="default: onnx for a .onnx --out, else torchscript")
    p.add_argument("--out", type=path_arg, required=True, help="output file (.pt / .onnx)")
    p.add_argument("--atol", type=positive_float, default=1e-4,
                   help="largest allowed absolute difference (default 1e-4)")
    p.add_argument("--no-local-paths", action="store_true",
                   help="record the checkpoint and config in <out>.json by their file names, not as absolute paths "
                        "of this machine")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the eager model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dynametric.engine.inference import InferenceOptions
    from dynametric.retrieval.export import export_embedder
    from dynametric.retrieval.model import load_embedder

    loaded = load_embedder(args.checkpoint, args.config, overrides=args.overrides, head=args.head,
                           image_size=args.image_size,  # exported on the CPU, as a float32 graph
                           options=InferenceOptions(device="cpu", precision="fp32", flags=True))
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    info = export_embedder(loaded, args.out, args.format, atol=args.atol, check=not args.no_check,
                           key="--out", local_paths=not args.no_local_paths)
    shape = "x".join(str(s) for s in info["input"]["shape"])
    check = f", max |diff| {info['max_abs_diff']:.2e} <= {info['tolerance']:g}" if "max_abs_diff" in info else ""
    write_stdout(f"{info['format']} -> {args.out} (input {shape}{check})\n")
    return 0
