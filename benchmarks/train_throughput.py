"""Training-step throughput: the full dynametric pipeline vs the model-only floor.

* floor: forward + backward + optimizer step of the embedder on one ready tensor batch (loss = mean of the
  embeddings), no data loading, no Lightning;
* pipeline: ``Trainer.fit`` of :class:`MetricLearningModule` through :class:`MetricDataModule` -- the
  synthetic hierarchy (uint8 images in memory -> float tensors), our M-per-class batch sampler with its
  resumable wrapper and per-sample seeded RNG, the loss and the miner, the callbacks (no checkpoint writing,
  no validation), Lightning's loop.

Both are timed over the same number of steps after warm-up, alternating (floor, pipeline) ``--repeats`` times in
the same process; the table reports the median images/s and the ratio. Example::

    python benchmarks/train_throughput.py --backbones resnet18 resnet50 --image-size 64 --batch-size 32

``--json PATH`` also writes the rows, the overhead breakdown, the command and the machine (atomically; an existing
file is replaced only when this script wrote it, unless ``--overwrite``: benchmarks/result_files.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch

from dynametric.data.samplers import MPerClassSampler
from dynametric.data.synthetic import SyntheticHierarchy
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import MetricLearningModule, OptimSettings
from dynametric.engine.objective import Objective
from dynametric.engine.trainer import TrainerSettings, build_trainer
from dynametric.losses import build_loss
from dynametric.miners import build_miner
from dynametric.models import build_embedder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, command_line, write_json  # noqa: E402

SCRIPT = "train_throughput.py"


def floor_rate(embedder: torch.nn.Module, images: torch.Tensor, steps: int, warmup: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process)."""
    opt = torch.optim.Adam(embedder.parameters(), lr=1e-4)
    embedder.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out = embedder(images)
        out.mean().backward()
        opt.step()
    n = steps * images.shape[0]
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


class _Timer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.c0, self.c1, self.n = warmup, 0.0, 0.0, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # timing from the end of the last warm-up step to the end of the last step: each timed interval holds
        # one data fetch, one training step and Lightning's bookkeeping
        if trainer.global_step == self.warmup and self.t0 == 0.0:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        elif self.t0:
            self.n += len(batch[1])
            self.t1, self.c1 = time.perf_counter(), time.process_time()


def pipeline_rate(embedder: torch.nn.Module, data: SyntheticHierarchy,
                  args: argparse.Namespace) -> tuple[float, float]:
    objectives = [Objective(build_loss(args.loss), build_miner(args.miner) if args.miner else None)]
    module = MetricLearningModule(embedder, objectives, OptimSettings(optimizer="adam", lr=1e-4, weight_decay=0.0))
    dm = MetricDataModule(data, batch_sampler_factory=lambda labels, r, w: MPerClassSampler(
        labels, args.m, args.batch_size, seed=0, rank=r, world_size=w, iterations_per_epoch=10_000),
        num_workers=args.workers)
    timer = _Timer(args.warmup)
    settings = TrainerSettings(max_steps=args.warmup + args.steps, accelerator="cpu", progress_bar=False)
    trainer = build_trainer(settings, dm, None, callbacks=[timer], enable_validation=False)
    trainer.fit(module, datamodule=dm)
    return timer.n / (timer.t1 - timer.t0), timer.n / (timer.c1 - timer.c0)


def overhead_breakdown(data: SyntheticHierarchy, args: argparse.Namespace, reps: int = 30) -> dict[str, float]:
    """CPU milliseconds per batch of the pipeline's parts outside the model: fetching a batch through
    MetricDataModule (sampler, seeded per-sample RNG, to-tensor, collate) and the miner + loss forward/backward."""
    dm = MetricDataModule(data, batch_sampler_factory=lambda labels, r, w: MPerClassSampler(
        labels, args.m, args.batch_size, seed=0, iterations_per_epoch=10_000), num_workers=0)
    it = iter(dm.train_dataloader())
    batch = next(it)
    c0 = time.process_time()
    for _ in range(reps):
        batch = next(it)
    fetch = (time.process_time() - c0) / reps * 1000
    loss = build_loss(args.loss)
    miner = build_miner(args.miner) if args.miner else None
    leaf = torch.randn(args.batch_size, args.embedding_dim, requires_grad=True)
    c0 = time.process_time()
    for _ in range(reps):
        emb = torch.nn.functional.normalize(leaf, dim=1)
        idx = miner(emb, batch[1]) if miner is not None else None
        (loss(emb, batch[1], idx) if idx is not None else loss(emb, batch[1])).backward()
    return {"fetch_ms": fetch, "loss_miner_ms": (time.process_time() - c0) / reps * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--embedding-dim", type=int, default=128)
    ap.add_argument("--loss", default="TripletMarginLoss")
    ap.add_argument("--miner", default="MultiSimilarityMiner")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here (atomically)")
    add_overwrite_option(ap)
    args = ap.parse_args(argv)
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data = SyntheticHierarchy("train", image_size=args.image_size, images_per_class=8)
    machine = machine_line()
    print(f"{machine}; image {args.image_size}px, batch {args.batch_size}, "
          f"loss {args.loss}, miner {args.miner}, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats}")
    parts = overhead_breakdown(data, args)
    print(f"outside the model, CPU ms per batch: data fetch {parts['fetch_ms']:.1f}, miner + loss fwd/bwd "
          f"{parts['loss_miner_ms']:.1f}")
    rows = []
    for name in args.backbones:
        torch.manual_seed(0)
        embedder = build_embedder(name, embedding_dim=args.embedding_dim)
        images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
        floors, pipes = [], []
        for _ in range(args.repeats):
            floors.append(floor_rate(embedder, images, args.steps, args.warmup))
            pipes.append(pipeline_rate(embedder, data, args))
        f, p = statistics.median(x[0] for x in floors), statistics.median(x[0] for x in pipes)
        fc, pc = statistics.median(x[1] for x in floors), statistics.median(x[1] for x in pipes)
        rows.append((name, f, p, fc, pc))
        step_ms = args.batch_size / fc * 1000
        print(f"{name}: model-only step {step_ms:.0f} CPU ms; data + miner + loss add "
              f"{(parts['fetch_ms'] + parts['loss_miner_ms']) / step_ms:.1%}", flush=True)
        print(f"{name}: wall floor {[round(x[0], 1) for x in floors]} pipeline {[round(x[0], 1) for x in pipes]}; "
              f"cpu floor {[round(x[1], 1) for x in floors]} pipeline {[round(x[1], 1) for x in pipes]}", flush=True)
    print("\n| backbone | floor img/s (wall) | pipeline img/s (wall) | ratio (wall) | floor img/CPU-s | "
          "pipeline img/CPU-s | ratio (CPU time) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, f, p, fc, pc in rows:
        print(f"| {name} | {f:.1f} | {p:.1f} | {p / f:.1%} | {fc:.1f} | {pc:.1f} | {pc / fc:.1%} |")
    if args.json is not None:
        command = command_line(SCRIPT, argv)
        write_json(args.json, {
            "command": command, "machine": machine, "args": {k: v for k, v in vars(args).items() if k != "json"},
            "overhead_cpu_ms_per_batch": parts,
            "rows": [{"backbone": name, "floor_img_s": f, "pipeline_img_s": p, "ratio_wall": p / f,
                      "floor_img_cpu_s": fc, "pipeline_img_cpu_s": pc, "ratio_cpu": pc / fc}
                     for name, f, p, fc, pc in rows]}, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
