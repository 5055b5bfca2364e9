"""Input-pipeline throughput: JPEG decode + standard train transform with 0/1/2 DataLoader workers vs the decode floor.

Writes ``--images`` JPEG files (``--width`` x ``--height``, quality 90; content: upscaled ``SyntheticHierarchy``
images plus mild noise, so the files are photo-like in size) into a temporary folder (not timed), then measures
side by side in one process, each a full pass over the files, median of ``--repeats``:

* ``decode floor``       – ``PIL.Image.open(path).convert("RGB")`` in a plain loop (nothing else);
* ``decode + transform`` – ``HierarchicalImageDataset[i]`` in a plain loop (decode, then ``build_transform(preset,
  train=True)``: RandomResizedCrop 224 + flip + ToTensor + ImageNet normalisation for ``standard``);
* ``DataLoader w=K``     – the same dataset through ``DataLoader(batch_size=32, num_workers=K)`` (worker start-up
  included, so short passes understate the steady-state rate of K > 0).

Also reported: ``SyntheticHierarchy`` generation time (train + test splits at the default size) and the time to
build one epoch of batches for each sampler at a given dataset size.

Usage::

    python benchmarks/data_throughput.py --images 512 --workers 0 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    from dynametric.data.synthetic import SyntheticHierarchy

    src = SyntheticHierarchy("train", seed=seed, image_size=64, images_per_class=max(1, -(-n // 180)),
                             transform=None)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = Image.fromarray(src.images[i % len(src)]).resize((width, height), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def decode_floor(paths: list[str]) -> None:
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--sampler-images", type=int, default=60000)
    ap.add_argument("--sampler-classes", type=int, default=11000)
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()

    from dynametric.data.base import HierarchicalImageDataset
    from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler
    from dynametric.data.synthetic import SyntheticHierarchy
    from dynametric.data.transforms import build_transform

    results: dict[str, object] = {"images": args.images, "size": f"{args.width}x{args.height}",
                                  "preset": args.preset, "batch_size": args.batch_size, "repeats": args.repeats}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, args.width, args.height)
        mb = sum(os.path.getsize(p) for p in paths) / 2**20
        labels = torch.arange(len(paths)).remainder(16).unsqueeze(1)
        ds = HierarchicalImageDataset(paths, labels, ("fine",), "train", class_ids=[list(range(16))],
                                      transform=build_transform(args.preset, train=True), name="bench")

        def loop_items() -> None:
            for i in range(len(ds)):
                ds[i]

        floor = timed(lambda: decode_floor(paths), args.repeats)
        rows.append(("decode floor (PIL open + RGB)", floor))
        rows.append(("decode + transform, plain loop", timed(loop_items, args.repeats)))
        for w in args.workers:
            def run_loader(w: int = w) -> None:
                loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=w, shuffle=False)
                for _ in loader:
                    pass

            rows.append((f"DataLoader num_workers={w}", timed(run_loader, args.repeats)))

    t0 = time.perf_counter()
    syn_train = SyntheticHierarchy("train", seed=0)
    syn_test = SyntheticHierarchy("test", seed=0)
    syn_s = time.perf_counter() - t0
    syn_n = len(syn_train) + len(syn_test)

    rng = np.random.default_rng(0)
    n, c = args.sampler_images, args.sampler_classes
    fine = np.sort(rng.integers(0, c, n))
    big_labels = torch.from_numpy(np.stack([fine, fine // 10, fine // 1000], 1))
    samplers = {
        "MPerClassSampler(m=4, batch 128)": MPerClassSampler(big_labels, m=4, batch_size=128),
        "ThreeScaleSampler(k=4, 8 items)": ThreeScaleSampler(big_labels, k=4, items_per_batch=8),
        "HierarchicalSampler(batch 128, k=4, 2 parents)": HierarchicalSampler(big_labels, batch_size=128,
                                                                              samples_per_class=4),
    }
    sampler_rows = []
    for name, s in samplers.items():
        sampler_rows.append((name, len(s), timed(s.epoch_batches, 1)))

    print(f"# data_throughput: {args.images} JPEGs {args.width}x{args.height} ({mb:.1f} MiB), preset "
          f"{args.preset!r}, batch {args.batch_size}, median of {args.repeats}; {platform.machine()} "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, main-process threads {args.threads}, "
          f"load average at start {load[0]:.1f}")
    print()
    print("| pipeline | s per pass | images/s | vs decode floor |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {args.images / t:.0f} | {floor / t:.2f}x |")
    print()
    print(f"SyntheticHierarchy train + test (defaults, 32x32): {syn_n} images in {syn_s:.2f} s "
          f"({syn_n / syn_s:.0f} images/s)")
    print()
    print(f"Sampler epoch build ({n} images, {len(np.unique(fine))} fine classes):")
    print()
    print("| sampler | batches/epoch | s per epoch build |")
    print("|---|---:|---:|")
    for name, nb, t in sampler_rows:
        print(f"| {name} | {nb} | {t:.2f} |")
    results.update({"pipeline": {name: {"seconds": t, "images_per_s": args.images / t} for name, t in rows},
                    "synthetic": {"images": syn_n, "seconds": syn_s},
                    "samplers": {name: {"batches": nb, "seconds": t} for name, nb, t in sampler_rows}})
    if args.json:
        from dynametric.utils.io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
