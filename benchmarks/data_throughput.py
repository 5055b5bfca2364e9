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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, write_json  # noqa: E402
from timing import median_seconds  # noqa: E402

SCRIPT = "data_throughput.py"


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


def decode_floor(paths: list[str]) -> None:
    for p in paths:
        with Image.open(p) as im:
            im.convert("RGB")


def learnability_curve(steps: int, eval_every: int, seed: int = 0) -> list[dict[str, float]]:
    """Train the 4-layer CNN of ``tests/data/test_synthetic_learnable.py`` (all-triplets loss summed over the three
    scales, P×K = 16 × 4, Adam 3e-3) and record leave-one-out R@1 per scale on the test and train splits."""
    import torch.nn.functional as F
    from torch import nn

    from dynametric.data.samplers import MPerClassSampler
    from dynametric.data.synthetic import SyntheticHierarchy

    def block(cin: int, cout: int, pool: bool) -> nn.Module:
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

    def r1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        model.eval()
        with torch.no_grad():
            e = F.normalize(model(x), dim=1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return (y[sim.argmax(1)] == y).float().mean(0).tolist()

    torch.manual_seed(seed)
    train = SyntheticHierarchy("train", seed=seed)
    test = SyntheticHierarchy("test", seed=seed, images_per_class=8)
    xtr, ytr, xte, yte = train.tensors(), train.labels, test.tensors(), test.labels
    model = nn.Sequential(block(3, 16, True), block(16, 32, True), block(32, 64, True), block(64, 64, False),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    curve = []
    t0 = time.perf_counter()
    for step, batch in enumerate(MPerClassSampler(ytr, m=4, batch_size=64, iterations_per_epoch=steps, seed=seed)):
        if step % eval_every == 0:
            curve.append({"step": step, "seconds": time.perf_counter() - t0, "test": r1(model, xte, yte),
                          "train": r1(model, xtr, ytr)})
        model.train()
        e = F.normalize(model(xtr[batch]), dim=1)
        y = ytr[batch]
        d = torch.cdist(e, e)
        eye = torch.eye(len(e), dtype=torch.bool)
        loss = e.new_zeros(())
        for s in range(3):
            same = y[:, s, None] == y[None, :, s]
            hinge = F.relu(d[:, :, None] - d[:, None, :] + 0.2) * ((same & ~eye)[:, :, None] & ~same[:, None, :])
            loss = loss + hinge.sum() / ((hinge > 0).sum() + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    curve.append({"step": steps, "seconds": time.perf_counter() - t0, "test": r1(model, xte, yte),
                  "train": r1(model, xtr, ytr)})
    return curve


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
    ap.add_argument("--learn-steps", type=int, default=0, help="also run the synthetic learnability curve")
    ap.add_argument("--learn-eval-every", type=int, default=250)
    ap.add_argument("--skip-pipeline", action="store_true", help="only the synthetic/sampler/learnability parts")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    add_overwrite_option(ap)
    args = ap.parse_args(argv)
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()

    from dynametric.data.base import HierarchicalImageDataset
    from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler
    from dynametric.data.synthetic import SyntheticHierarchy
    from dynametric.data.transforms import build_transform

    print(f"# data_throughput: {machine_line()}; main-process threads {args.threads}, load average at start "
          f"{load[0]:.1f}")
    results: dict[str, object] = {"machine": machine_line(), "load_average": load[0], "threads": args.threads}
    if not args.skip_pipeline:
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

            floor = median_seconds(lambda: decode_floor(paths), args.repeats)
            rows.append(("decode floor (PIL open + RGB)", floor))
            rows.append(("decode + transform, plain loop", median_seconds(loop_items, args.repeats)))
            for w in args.workers:
                def run_loader(w: int = w) -> None:
                    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=w)
                    for _ in loader:
                        pass

                rows.append((f"DataLoader num_workers={w}", median_seconds(run_loader, args.repeats)))
        print()
        print(f"{args.images} JPEGs {args.width}x{args.height} ({mb:.1f} MiB), preset {args.preset!r} (train), "
              f"batch {args.batch_size}, median of {args.repeats} passes")
        print()
        print("| pipeline | s per pass | images/s | vs decode floor |")
        print("|---|---:|---:|---:|")
        for name, t in rows:
            print(f"| {name} | {t:.2f} | {args.images / t:.0f} | {floor / t:.2f}x |")
        results["pipeline"] = {name: {"seconds": t, "images_per_s": args.images / t} for name, t in rows}

    t0 = time.perf_counter()
    syn_n = len(SyntheticHierarchy("train", seed=0)) + len(SyntheticHierarchy("test", seed=0))
    syn_s = time.perf_counter() - t0
    print()
    print(f"SyntheticHierarchy train + test (defaults, 32x32): {syn_n} images in {syn_s:.2f} s "
          f"({syn_n / syn_s:.0f} images/s)")
    results["synthetic"] = {"images": syn_n, "seconds": syn_s}

    rng = np.random.default_rng(0)
    n, c = args.sampler_images, args.sampler_classes
    fine = np.sort(rng.integers(0, c, n))
    big_labels = torch.from_numpy(np.stack([fine, fine // 10, fine // 1000], 1))
    samplers = {
        "MPerClassSampler(m=4, batch 128)": MPerClassSampler(big_labels, m=4, batch_size=128),
        "ThreeScaleSampler(k=4, 8 items)": ThreeScaleSampler(big_labels, k=4, items_per_batch=8),
        "HierarchicalSampler(batch 128, k=4, 4 parents)": HierarchicalSampler(big_labels, batch_size=128,
                                                                              samples_per_class=4,
                                                                              parents_per_batch=4),
    }
    print()
    print(f"Sampler epoch build ({n} images, {len(np.unique(fine))} fine / {len(np.unique(fine // 10))} middle "
          "classes):")
    print()
    print("| sampler | batches/epoch | s per epoch build |")
    print("|---|---:|---:|")
    results["samplers"] = {}
    for name, s in samplers.items():
        t = median_seconds(s.epoch_batches, 1)
        print(f"| {name} | {len(s)} | {t:.2f} |")
        results["samplers"][name] = {"batches": len(s), "seconds": t}

    if args.learn_steps:
        curve = learnability_curve(args.learn_steps, args.learn_eval_every)
        print()
        print(f"Synthetic learnability (tiny CNN, {args.learn_steps} steps, leave-one-out R@1 fine/middle/coarse):")
        print()
        print("| step | seconds | test R@1 | train R@1 |")
        print("|---:|---:|---|---|")
        for row in curve:
            fmt = " / ".join
            print(f"| {row['step']} | {row['seconds']:.0f} | {fmt(f'{v:.3f}' for v in row['test'])} | "
                  f"{fmt(f'{v:.3f}' for v in row['train'])} |")
        results["learnability"] = curve
    if args.json:
        write_json(args.json, results, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
