"""Command-line options shared by every command that runs a model over images (``embed``, ``evaluate
--checkpoint``, ``search --image``, ``explore``): ``--device``, ``--precision``, ``--batch-size``, ``--workers``,
``--decode``; and the model options of ``embed`` and ``export``."""

from __future__ import annotations

import argparse
from typing import Any

from dynametric.commands import path_arg, positive_int, positive_int31
from dynametric.errors import ConfigError
from dynametric.utils.device import INFERENCE_BATCH_SIZE, MAX_WORKERS, PRECISIONS, check_workers


def _workers(text: str, *, auto: bool = True) -> int | str:
    """``--workers``: :func:`~dynametric.utils.device.check_workers` of the number or word given (the rule of the
    config's ``data.workers``)."""
    try:
        value: int | str = int(text)
    except ValueError:
        value = text
    try:
        return check_workers(value, "--workers", auto=auto)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def worker_threads(text: str) -> int:
    """``--workers`` of ``data inspect`` (threads decoding images): a count in the range of :func:`_workers`, no
    ``auto``."""
    return int(_workers(text, auto=False))


def add_inference_arguments(p: argparse.ArgumentParser, *, batch_size: int | None = INFERENCE_BATCH_SIZE,
                            batch: bool = True, workers: bool = True, device: bool = True, decode: bool = True,
                            prefix: str = "", follow_index: bool = False) -> None:
    """Add ``--device``, ``--precision`` and (unless disabled) ``--batch-size`` / ``--workers`` / ``--decode`` to ``p``.
    ``batch_size=None`` leaves batch size and workers to the config (``None`` defaults); ``prefix`` starts each
    help text. ``--precision`` defaults to ``None``: the precision the checkpoint's run trained in
    (:func:`dynametric.engine.inference.checkpoint_precision`), or with ``follow_index`` the one the index was built
    with (:func:`dynametric.retrieval.model.query_precision`)."""
    if device:
        p.add_argument("--device", default="auto",
                       help=f"{prefix}auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps (default auto)")
    if follow_index:
        p.add_argument("--precision", default=None, choices=PRECISIONS,
                       help=f"{prefix}fp32, or bf16 / fp16 autocast (fp16 needs CUDA; default: the precision the "
                            "index's embeddings were computed in, fp32 where fp16 cannot run)")
    else:
        p.add_argument("--precision", default=None, choices=PRECISIONS,
                       help=f"{prefix}fp32, or bf16 / fp16 autocast (fp16 needs CUDA; default: the precision the run "
                            "trained in, trainer.precision: bf16 for bf16-mixed, fp16 for 16-mixed where CUDA runs "
                            "it, else fp32)")
    if batch:
        p.add_argument("--batch-size", type=positive_int31, default=batch_size,
                       help=f"{prefix}images per forward pass (default {batch_size or 'data.eval_batch_size'})")
    if workers:
        p.add_argument("--workers", type=_workers, default=None if batch_size is None else "auto",
                       help=f"{prefix}image-decoding worker processes, 0 to {MAX_WORKERS}, or auto (min(16, CPUs-1) "
                            f"on CUDA, 0 on the CPU; default {'data.workers' if batch_size is None else 'auto'})")
    if decode:
        p.add_argument("--decode", default="cpu", choices=("cpu", "gpu", "auto"),
                       help=f"{prefix}where image files are decoded: cpu (PIL in the workers), gpu (JPEGs decoded and "
                            "resized on the device; values differ slightly from PIL's), auto (gpu on CUDA when "
                            "torchvision can, else cpu; default cpu)")


def inference_options(args: argparse.Namespace, *, batch_size: int | None = None, workers: Any = None,
                      progress: bool = False) -> Any:
    """:class:`~dynametric.engine.inference.InferenceOptions` from the parsed options (``batch_size`` /
    ``workers``: fallbacks where the command has no such option or it was left to the config; no ``--precision``
    leaves it unset, for the run's or the index's)."""
    from dynametric.engine.inference import InferenceOptions

    bs = getattr(args, "batch_size", None)
    w = getattr(args, "workers", None)
    return InferenceOptions(device=getattr(args, "device", None) or "auto", precision=args.precision,
                            batch_size=bs if bs is not None else batch_size,
                            workers=w if w is not None else workers, progress=progress,
                            decode=getattr(args, "decode", None) or "cpu", flags=True)


def add_model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the options naming a trained model: ``--checkpoint``, ``--config``, ``--set``, ``--head``,
    ``--image-size`` (``embed``, ``export``)."""
    p.add_argument("--checkpoint", type=path_arg, required=required,
                   help="a `dynametric train` checkpoint (RUN/best.ckpt or RUN/last.ckpt)")
    p.add_argument("--config", type=path_arg, default=None, help="the run config (default: config.yaml beside it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override (repeatable)")
    p.add_argument("--head", default=None, help="head to use for multi-head models (default: the evaluated head)")
    p.add_argument("--image-size", type=positive_int, default=None, help="override the evaluation crop size")
