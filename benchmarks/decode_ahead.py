"""Embedding JPEG files with ``decode gpu``: the next batches decoded in a background thread (``decode_ahead``) or
in the main thread, alternately, on the same files.

Runs ``gpu_suite.py``'s part (c) (the same photo-like JPEGs, the same ``embed_items`` job and steady rate, the same
model-only floor) at the sizes given here, ``--repeats`` times; each repeat times both ways one after the other.
On a CUDA device it is what the suite measures at full size; on the CPU device (libjpeg decodes in the calling
thread, torch runs the model) it shows whether the decoding overlaps the forward pass at all: with ``--threads 1``
the model takes one core and the decoding thread can take another.

    python benchmarks/decode_ahead.py --images 256 --backbone resnet18 --size 96 --threads 1   # the CPU as a proxy
    python benchmarks/decode_ahead.py --device cuda --images 8192 --backbone resnet50 --size 224 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:  # the source tree's dynametric, on a machine where it is not installed
    sys.path.insert(1, str(ROOT / "src"))
from gpu_suite import SMALL, make_jpegs, part_c  # noqa: E402
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, write_json  # noqa: E402

SCRIPT = "decode_ahead.py"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--wh", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=96, help="input size in pixels")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="1", help="loader workers, or auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=None, help="folder for the JPEGs (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    from dynametric.errors import ConfigError
    from dynametric.utils.device import resolve_device

    try:
        device = resolve_device(args.device, key="--device")
    except ConfigError as exc:  # e.g. cuda without a GPU: one line, status 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg: dict[str, Any] = dict(SMALL, images=args.images, image_wh=tuple(args.wh), backbone=args.backbone,
                               size=args.size, precision=args.precision, embed_batch=args.batch, decode="gpu",
                               workers=args.workers if args.workers == "auto" else int(args.workers))
    rows = []
    with tempfile.TemporaryDirectory(prefix="decode_ahead_") as tmp:
        root = args.data or Path(tmp) / "jpegs"
        make_jpegs(root, args.images, tuple(args.wh), 10)
        for rep in range(args.repeats):
            r = part_c(cfg, device, root, Path(tmp) / "work")
            rows.append({"ahead_img_s": r["ours_img_s"], "plain_img_s": r["without_decode_ahead_img_s"],
                         "floor_img_s": r["floor_img_s"]})
            print(f"repeat {rep + 1}: decoded ahead {r['ours_img_s']:.1f} img/s, in the main thread "
                  f"{r['without_decode_ahead_img_s']:.1f} img/s, model-only floor {r['floor_img_s']:.1f} img/s",
                  flush=True)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    res = {"command": "python benchmarks/decode_ahead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "device": str(device), "images": args.images, "wh": list(args.wh), "backbone": args.backbone,
           "size": args.size, "precision": args.precision, "batch": args.batch, "threads": torch.get_num_threads(),
           "rows": rows, "median": med, "machine": machine_line()}
    print(f"median: decoded ahead {med['ahead_img_s']:.1f} img/s, in the main thread {med['plain_img_s']:.1f} "
          f"img/s ({med['ahead_img_s'] / med['plain_img_s']:.2f}x), floor {med['floor_img_s']:.1f} img/s")
    print(res["machine"])
    if args.json is not None:
        write_json(args.json, res, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
