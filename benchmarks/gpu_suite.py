"""dynametric on a GPU, side by side with its peer and with the floors, in one command.

    python benchmarks/gpu_suite.py --json gpu_suite.json --docs docs/benchmarks.md   # one CUDA GPU, < 6 minutes
    python benchmarks/gpu_suite.py --small         # CPU, < 1 minute, tiny sizes (what the test runs); prints only

Parts (``--parts a,b,c,d,e``):

(a) evaluation of 60,502 x 128 embeddings with three nested label scales and every retrieval metric:
    ``evaluate_embeddings(..., device=..., ranking_engine="torch")`` vs pytorch-metric-learning's
    ``AccuracyCalculator`` on the same device (torch kNN through ``CustomKNN``, ``k="max_bin_count"``, once per
    scale, its three metrics) vs a plain torch full-sort ranking (stable sort: ties by gallery index) computing the
    same metrics, and at each ``--eval-budgets-gb`` budget (values compared with the default's); dynametric once more
    with the torch engine's other full-ranking method (``DYNAMETRIC_TORCH_FULL_RANKING=count``: sort each row's
    candidates only and count the items before them; same values), so one run shows which method the device
    prefers; plus 1,000,000 x 128 at one scale (recall@K, map@r) on a GPU, reported without a target. The torch
    engine is named on every device (on CUDA it is the default choice anyway), so on the CPU too both methods run
    and are compared (the CPU engine is part (e)'s).
(b) the tuple and proxy losses, forward + backward at batch 1024, dim 512, vs PML on the same device
    (the cases of ``benchmarks/loss_speed.py``).
(c) embedding JPEG files (photo-like, about 500 x 375) through the inference path (``load_embedder`` +
    ``embed_items``: loader workers, pinned memory, bf16 autocast, channels_last, ``decode="auto"``: on CUDA the
    workers only read the files and the JPEGs are decoded and resized on the GPU; ``--small`` uses ``decode="gpu"``
    on the CPU so the test runs that path) vs the model-only forward floor
    (the same model, precision and memory format on batches already on the device).
(d) training through the engine (``build_components`` + ``MetricDataModule`` + the Lightning trainer, ``csv``
    data of JPEG files) vs the model-only training floor (same model, loss, optimizer, precision and memory
    format on a batch already on the device): resnet50, 224 px, bf16, batch 128 (m = 4).

(e) the CPU ranking engine on the same host (no target): part (a)'s evaluation at half size (30,251 x 128, three
    scales, every retrieval metric) with torch at 2, 4, 8 and 16 threads (those the host has), at 2 threads once
    more with the score products through torch's BLAS instead of oneDNN, and numpy's int32 sort rate. #13
    reported that 16 cores did not make the CPU engine faster than 2; this measures it.

``--small`` on the CPU (the test) runs every part and every path of the suite at tiny sizes: (a) with the torch
engine's sort and count methods compared, a chunked run at a tiny memory budget compared with the default, and the
one-scale report (3,000 items); (c) with ``decode="gpu"`` (JPEG bytes read by one loader worker process, decoded by
torchvision's libjpeg and resized in the main process, the transform's normalisation applied there, bf16 autocast
inference); (d) with one loader worker. Only a CUDA GPU exercises: nvjpeg decoding and the decoder's CUDA side
stream (overlap with the forward pass), pinned memory and non-blocking copies, channels_last (model and batches,
inference and training), bf16-mixed autocast training (fp32 on the CPU), PML's kNN on the device, the device memory
peaks and budgets against device memory, cudnn.benchmark, and the full sizes (1,000,000 x 128 in (a)).

The #13 targets are checked on a CUDA device and printed as pass / fail: (a) >= 5x faster than PML, within 1.2x of
the full-sort floor, device memory peak <= 4 GB (4e9 bytes; the suite reports peaks in GiB, 2**30 bytes, as
torch_engine_ab.py does); (c) >= 90 % of the forward floor; (d) >= 90 % of the training floor. With ``--small``
(or on a CPU) the checks are printed for information only. ``--device`` is resolved as the library resolves it; a
device that is not there is one line and exit status 2.

Results: JSON (``--json``, rewritten after every part) and a markdown section in ``--docs`` between the markers
``<!-- gpu_suite:begin -->`` and ``<!-- gpu_suite:end -->`` (only that section is replaced; appended if absent). Both
are opt-in: without them the section is printed and nothing is written. A run replaces an existing ``--json`` file or
``--docs`` section only when this script wrote it, and a ``--small`` or partial (``--parts`` other than all) run never
replaces a full run's, unless ``--overwrite`` is given (benchmarks/result_files.py); it checks before running.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(1, str(ROOT / "src"))

from eval_speed import part_metrics  # noqa: E402
from result_files import (  # noqa: E402
    add_overwrite_option,
    check_replace,
    find_md_marker,
    md_marker,
    parse_json,
    run_kind,
    write_json,
)

BEGIN, END = "<!-- gpu_suite:begin -->", "<!-- gpu_suite:end -->"

FULL = {"eval_n": 60502, "eval_dim": 128, "eval_classes": (11316, 100, 12), "big_n": 1_000_000,
        "loss_batch": 1024, "loss_dim": 512, "loss_rounds": 5,
        "images": 8192, "image_wh": (500, 375), "backbone": "resnet50", "size": 224, "precision": "bf16",
        "embed_batch": 256, "train_batch": 128, "m": 4, "train_steps": 60, "train_warmup": 15, "floor_steps": 30,
        "decode": "auto", "workers": "auto", "eval_budgets_gib": (),
        "cpu_n": 30251, "cpu_classes": (5658, 100, 12), "cpu_threads": (2, 4, 8, 16)}
SMALL = {"eval_n": 1200, "eval_dim": 32, "eval_classes": (200, 20, 4), "big_n": 3000,
         "eval_budgets_gib": (0.01,),  # 64 query rows per chunk here: the chunked path, same values
         "loss_batch": 64, "loss_dim": 32, "loss_rounds": 2,
         "images": 32, "image_wh": (96, 72), "backbone": "simple_cnn", "size": 32, "precision": "bf16",
         "embed_batch": 16, "train_batch": 16, "m": 4, "train_steps": 6, "train_warmup": 2, "floor_steps": 4,
         "decode": "gpu",  # the device-decode path, run on the CPU, so the test exercises it
         "workers": 1,  # loader worker processes (auto is 0 on the CPU): the workers' side of (c) and (d) runs too
         "cpu_n": 1200, "cpu_classes": (200, 20, 4), "cpu_threads": (1, 2)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """The device memory peak since :func:`reset_peak`, in GiB (2**30 bytes); None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def machine(device: torch.device) -> dict[str, Any]:
    from machine_info import cpu_model, usable_cpus

    info = {"cpu": cpu_model(), "cpus": usable_cpus(),
            "torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["shm_gib"] = shm_gib()
    return info


def shm_gib() -> float | None:
    """Size of /dev/shm in GiB (where DataLoader workers hand batches over), or None where there is none."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_frsize * st.f_blocks / 2**30


DEFAULT_PARTS = "a,b,c,d,e"
STAGES = ("a", "a_big", "b", "c", "d", "e")  # what a run records, each as results or {"error": ...}


# ---------------------------------------------------------------------------------------------- (a) evaluation
ALL_RETRIEVAL = part_metrics("b")  # every retrieval metric, as in eval_speed's part (b)


def eval_data(n: int, dim: int, classes: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Part (a)'s data: eval_speed's clustered, L2-normalised embeddings ``[n, dim]`` with three nested label scales
    (``classes``: fine, middle, coarse), seed 0 (benchmarks/torch_engine_ab.py times its engines on the same)."""
    from eval_speed import make_data

    fine, middle, coarse = classes
    x_np, lab_np = make_data(n, dim, fine, middle, coarse, seed=0)
    return torch.from_numpy(x_np), torch.from_numpy(lab_np)


def scaled_classes(n: int) -> tuple[int, int, int]:
    """Part (a)'s label scales for ``n`` items: fine classes in the full run's proportion (Stanford Online
    Products' 11,316 classes for 60,502 images; half of each at part (e)'s 30,251), then 100 and 12 (fewer where
    there are fewer fine classes)."""
    full_n, (fine, middle, coarse) = FULL["eval_n"], FULL["eval_classes"]
    fine = max(2, round(n * fine / full_n))
    return fine, min(middle, fine), min(coarse, middle, fine)


def max_diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> float:
    """The largest |difference| between two evaluate_embeddings results' numeric values (same scales and metrics)."""
    return max(abs(float(a[sc][m]) - float(b[sc][m])) for sc in a for m in a[sc]
               if isinstance(a[sc][m], (int, float)))


def part_a(cfg: dict, device: torch.device, notes: list[str], budgets_gib: tuple[float, ...] = ()) -> dict[str, Any]:
    from eval_speed import full_sort_floor
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from dynametric.metrics import evaluate_embeddings

    x, labels = eval_data(cfg["eval_n"], cfg["eval_dim"], cfg["eval_classes"])
    # the torch ranking engine on every device: on a CUDA device it is what evaluate_embeddings picks anyway; on the
    # CPU (--small, the test) it is named, so its two full-ranking methods run and are compared there too (the
    # default would pick the CPU engine there, and the count row would compare that engine with itself)
    kw: dict[str, Any] = {"device": device, "ranking_engine": "torch"}
    out: dict[str, Any] = {"n": len(x), "dim": x.shape[1], "scales": 3, "engine": "torch",
                           "engine_device": str(device), "metrics": ALL_RETRIEVAL}
    # every contender: one untimed warm-up call at full size (CUDA context, kernels for these shapes, allocator
    # growth), then the timed call; peaks are those of the timed call
    evaluate_embeddings(x, labels, metrics=ALL_RETRIEVAL, **kw)
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    ours = evaluate_embeddings(x, labels, metrics=ALL_RETRIEVAL, **kw)
    sync(device)
    out["dynametric_s"] = time.perf_counter() - t
    out["dynametric_peak_gib"] = peak_gib(device)
    # optional: the same evaluation at other device memory budgets (how the chunk size trades speed for memory),
    # run before the peers so that nothing of theirs is still allocated when the peak is measured
    out["budget_sweep"] = []
    for gb in budgets_gib:
        reset_peak(device)
        sync(device)
        t = time.perf_counter()
        at_budget = evaluate_embeddings(x, labels, metrics=ALL_RETRIEVAL, memory_budget_bytes=int(gb * 2**30), **kw)
        sync(device)
        out["budget_sweep"].append({"budget_gib": gb, "s": time.perf_counter() - t, "peak_gib": peak_gib(device),
                                    "max_diff": max_diff(ours, at_budget)})
    # the torch engine's other full-ranking method (count the items before each candidate instead of sorting each
    # row; docs/metrics.md): same values, timed the same way, so one run shows which method this device prefers
    from dynametric.metrics.torch_engine import FULL_RANKING_ENV

    def with_count() -> dict:
        before = os.environ.get(FULL_RANKING_ENV)
        os.environ[FULL_RANKING_ENV] = "count"
        try:
            return evaluate_embeddings(x, labels, metrics=ALL_RETRIEVAL, **kw)
        finally:
            if before is None:
                del os.environ[FULL_RANKING_ENV]
            else:
                os.environ[FULL_RANKING_ENV] = before

    with_count()
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    counted = with_count()
    sync(device)
    out["count_s"] = time.perf_counter() - t
    out["count_peak_gib"] = peak_gib(device)
    out["count_max_diff"] = max_diff(ours, counted)
    # PML, torch kNN on the same device, once per scale
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count", device=device,
                              knn_func=CustomKNN(CosineSimilarity(),
                                                 batch_size=8192 if device.type == "cuda" else 1024))
    xd = x.to(device)
    calc.get_accuracy(xd, labels[:, 0].to(device))
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    pml = {str(j): calc.get_accuracy(xd, labels[:, j].to(device)) for j in range(3)}
    sync(device)
    out["pml_s"] = time.perf_counter() - t
    out["pml_peak_gib"] = peak_gib(device)
    # plain full-sort floor on the device
    ld = labels.to(device)
    chunk = 4096 if device.type == "cuda" else 512
    full_sort_floor(xd, ld, device, chunk, ks=(1, 2, 4, 8), normalize=True)
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    floor = full_sort_floor(xd, ld, device, chunk, ks=(1, 2, 4, 8), normalize=True)
    sync(device)
    out["floor_s"] = time.perf_counter() - t
    out["floor_peak_gib"] = peak_gib(device)
    names = list(ours.keys())[:3]
    diffs = [abs(float(ours[names[j]][m]) - floor[j][m]) for j in range(3)
             for m in ("recall@1", "r_precision", "map@r", "map", "asi") if m in ours[names[j]]]
    out["max_diff_vs_floor"] = max(diffs) if diffs else None
    out["max_diff_vs_pml"] = max(abs(float(ours[names[j]][a]) - float(pml[str(j)][b])) for j in range(3)
                                 for a, b in (("recall@1", "precision_at_1"), ("r_precision", "r_precision"),
                                              ("map@r", "mean_average_precision_at_r")))
    out["speedup_vs_pml"] = out["pml_s"] / out["dynametric_s"]
    out["ratio_to_floor"] = out["dynametric_s"] / out["floor_s"]
    out["count_speedup_vs_pml"] = out["pml_s"] / out["count_s"]
    return out


def part_a_big(cfg: dict, device: torch.device) -> dict[str, Any]:
    """1,000,000 x 128 at one scale (recall@K, map@r) on the device, through the torch engine: time and device memory
    peak (no target). ``--small`` runs it at a tiny size on the CPU."""
    from dynametric.metrics import evaluate_embeddings

    rng = torch.Generator().manual_seed(1)
    big = torch.nn.functional.normalize(torch.randn(cfg["big_n"], cfg["eval_dim"], generator=rng), dim=1)
    big_labels = torch.randint(0, cfg["big_n"] // 8, (cfg["big_n"], 1), generator=rng)
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    evaluate_embeddings(big, big_labels, metrics=["recall@K", "map@r"], device=device, ranking_engine="torch")
    sync(device)
    return {"n": cfg["big_n"], "s": time.perf_counter() - t, "peak_gib": peak_gib(device)}


# ---------------------------------------------------------------------------------------------- (b) losses
def part_b(cfg: dict, device: torch.device) -> list[dict[str, Any]]:
    from distance_precision import VARIANTS as DISTANCE_VARIANTS
    from loss_speed import CASES, PROXY_CASES, _proxy_pair

    rows = []
    batch, dim = cfg["loss_batch"], cfg["loss_dim"]
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, dim, generator=g).to(device)
    labels = (torch.arange(batch) // 4).to(device)

    def once(loss: torch.nn.Module) -> float:
        e = emb.clone().requires_grad_(True)
        sync(device)
        t = time.perf_counter()
        loss(e, labels).backward()
        sync(device)
        return time.perf_counter() - t

    for name, (ours_cls, pml_cls, feasible) in CASES.items():
        if name in PROXY_CASES:
            ours, theirs = _proxy_pair(name, int(labels.max()) + 1, dim)
        else:
            ours, theirs = ours_cls(), pml_cls()
        ours, theirs = ours.to(device), theirs.to(device)
        run_pml = feasible(batch)
        once(ours)
        if run_pml:
            once(theirs)
        t_o, t_p = [], []
        for _ in range(cfg["loss_rounds"]):
            t_o.append(once(ours))
            if run_pml:
                t_p.append(once(theirs))
        o, p = statistics.median(t_o) * 1e3, (statistics.median(t_p) * 1e3 if t_p else float("nan"))
        row = {"loss": name, "ours_ms": o, "pml_ms": p, "speedup": p / o if t_p else float("nan")}
        if name in ("ContrastiveLoss", "TripletMarginLoss"):
            # the same loss on torch.cdist's two Euclidean paths (docs/losses.md, *Euclidean distances: precision*)
            for variant in ("mm", "exact"):
                other = ours_cls(distance=DISTANCE_VARIANTS[variant]()).to(device)
                once(other)
                row[f"cdist_{variant}_ms"] = statistics.median(once(other) for _ in range(cfg["loss_rounds"])) * 1e3
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- data
def _photo(args: tuple[int, int, int, str]) -> None:
    """A photo-like JPEG: smooth colour gradients, a few soft blobs and edges, sensor noise."""
    from PIL import Image, ImageDraw, ImageFilter

    i, w, h, path = args
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, 3)
    grad = rng.uniform(-0.25, 0.25, (2, 3))
    arr = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(min(w, h) // 12, min(w, h) // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 3.0))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(root: Path, n: int, wh: tuple[int, int], classes: int) -> Path:
    """``n`` JPEGs under ``root/imgs`` and ``root/labels.csv`` (path,split,fine,coarse; every image in train)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    todo = [(i, wh[0], wh[1], str(root / "imgs" / f"{i:06d}.jpg")) for i in range(n)
            if not (root / "imgs" / f"{i:06d}.jpg").is_file()]
    if todo:
        workers = max(1, min(16, (os.cpu_count() or 2)))
        if workers > 1 and len(todo) > 64:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_photo, todo, chunksize=32))
        else:
            for t in todo:
                _photo(t)
    lines = ["path,split,fine,coarse"] + [f"imgs/{i:06d}.jpg,train,{i % classes},{(i % classes) % 4}"
                                          for i in range(n)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def model_overrides(cfg: dict, root: Path) -> list[str]:
    out = ["data.format=csv", f"data.root={root}", f"data.image_size={cfg['size']}", "data.transform=standard",
           f"model.backbone={cfg['backbone']}", "model.embedding_dim=128", "data.val_split=null",
           "data.val_fraction=0"]
    if cfg["backbone"] == "simple_cnn":
        out.append("model.backbone_kwargs={width: 8, depth: 2}")
    return out


# ---------------------------------------------------------------------------------------------- (c) embedding
def part_c(cfg: dict, device: torch.device, root: Path, work: Path) -> dict[str, Any]:
    from dynametric.config import load_config, save_config
    from dynametric.data.device_decode import DecodedBatch, EncodedImages
    from dynametric.engine.builders import build_model
    from dynametric.engine.checkpoint import save_checkpoint_file
    from dynametric.engine.inference import InferenceOptions
    from dynametric.retrieval.embed import embed_items, read_image_csv
    from dynametric.retrieval.model import load_embedder

    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    mcfg = load_config(None, model_overrides(cfg, root))
    save_config(mcfg, run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(mcfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}}, run / "m.ckpt")

    def loaded_with(ahead: bool):  # auto: JPEGs decoded + resized on a CUDA GPU
        return load_embedder(run / "m.ckpt", options=InferenceOptions(
            device=device, precision=cfg["precision"], batch_size=cfg["embed_batch"], workers=cfg["workers"],
            decode=cfg["decode"], decode_ahead=ahead))

    items = read_image_csv(root / "labels.csv")

    def decode_only(loaded) -> Any:
        """A batch function without the model: the batch decoded and on the device, one number per image (so the
        rate is that of reading, decoding and resizing alone: the most the model could be fed)."""
        def embed(batch: Any) -> torch.Tensor:
            if isinstance(batch, DecodedBatch):
                x = batch.take()
            elif isinstance(batch, EncodedImages):
                x = loaded.loader_transform.decode(batch, device)
            else:
                x = batch.to(device, non_blocking=True)
            return x.reshape(len(x), -1)[:, :1].float()

        return embed

    def timed(loaded, model: bool = True) -> tuple[float, float]:
        """(seconds end to end, steady images/s) of one embedding job over every image, after a warm-up
        (``model=False``: the same job with :func:`decode_only` for the model)."""
        run_batch = loaded.embed_on_device if model else decode_only(loaded)
        # warm-up (cudnn autotune) on a few batches, then the timed run over every image
        warm = read_image_csv(root / "labels.csv")
        k = min(len(warm.ids), 4 * cfg["embed_batch"])
        warm.ids, warm.paths = warm.ids[:k], warm.paths[:k]
        warm.labels = None if warm.labels is None else warm.labels[:k]
        embed_items(warm, run_batch, loaded.loader_transform, work / "emb_warm",
                    model_identity=loaded.identity(), batch_size=cfg["embed_batch"], shard_size=k,
                    num_workers=loaded.run.workers, pin_memory=loaded.run.pin_memory, overwrite=True,
                    prepare=loaded.prepare)
        first: list[float] = []

        def timed_embed(batch: Any) -> torch.Tensor:
            if not first:  # the first batch has arrived: worker start-up is over
                first.append(time.perf_counter())
            return run_batch(batch)

        sync(device)
        t = time.perf_counter()
        embed_items(items, timed_embed, loaded.loader_transform, work / "emb", model_identity=loaded.identity(),
                    batch_size=cfg["embed_batch"], shard_size=max(cfg["embed_batch"], len(items.ids)),
                    num_workers=loaded.run.workers, pin_memory=loaded.run.pin_memory, overwrite=True,
                    prepare=loaded.prepare)
        sync(device)
        end = time.perf_counter()
        # from the first batch's arrival (worker start-up and that batch's decoding behind) to the end: every
        # image's forward pass lies in the interval (it counted one batch fewer before, about 3 % low at 8,192)
        return end - t, len(items.ids) / max(end - first[0], 1e-9)

    # decoding the next batches in a background thread (the default on CUDA; forced here on the CPU so that
    # --small runs that path), then without it for comparison
    loaded = loaded_with(True)
    wall, steady = timed(loaded)
    plain = loaded_with(False)
    ahead_used = loaded.prepare is not None
    plain_steady = timed(plain)[1] if ahead_used else None
    decode_steady = timed(loaded, model=False)[1]  # the decoding side alone: what it can feed the model at most
    # floor: the same model, precision and memory format on a batch already on the device
    x = torch.randn(cfg["embed_batch"], 3, cfg["size"], cfg["size"], device=device)
    steps = max(3, math.ceil(len(items.ids) / cfg["embed_batch"]))
    for _ in range(2):
        loaded.embed_on_device(x)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loaded.embed_on_device(x)
    sync(device)
    floor = steps * cfg["embed_batch"] / (time.perf_counter() - t)
    rate = steady
    return {"images": len(items.ids), "image_wh": list(cfg["image_wh"]), "backbone": cfg["backbone"],
            "size": cfg["size"], "precision": cfg["precision"], "batch": cfg["embed_batch"],
            "workers": loaded.run.workers, "pinned": loaded.run.pin_memory, "decode": loaded.decode,
            "decode_ahead": ahead_used, "without_decode_ahead_img_s": plain_steady,
            "decode_only_img_s": decode_steady,
            "channels_last": device.type == "cuda", "ours_img_s": rate, "end_to_end_img_s": len(items.ids) / wall,
            "end_to_end_s": wall, "floor_img_s": floor, "fraction": rate / floor}


# ---------------------------------------------------------------------------------------------- (d) training
def part_d(cfg: dict, device: torch.device, root: Path) -> dict[str, Any]:
    import lightning as L

    from dynametric.config import load_config
    from dynametric.engine.builders import build_datasets, loader_settings, sampler_factory
    from dynametric.engine.data import MetricDataModule
    from dynametric.engine.trainer import build_trainer
    from dynametric.pipeline import build_components
    from dynametric.pipeline.run import quiet_lightning

    quiet_lightning()
    cuda = device.type == "cuda"
    precision = ("bf16-mixed" if cfg["precision"] == "bf16" else "32") if cuda else "32"
    steps = cfg["train_steps"]
    over = model_overrides(cfg, root) + [
        f"data.batch_size={cfg['train_batch']}", f"data.m={cfg['m']}", "loss.name=TripletMarginLoss",
        "loss.multiscale=false", f"trainer.precision={precision}", f"trainer.max_steps={steps}",
        "trainer.max_epochs=1000", "trainer.progress_bar=false", "trainer.log_every_n_steps=10",
        f"trainer.accelerator={'gpu' if cuda else 'cpu'}", "run.report=false", f"data.workers={cfg['workers']}"]
    if cuda and device.index is not None:
        over.append(f"trainer.devices=[{device.index}]")
    shm = shm_gib()
    if shm is not None and shm < 8:  # workers x prefetch x a float batch must fit in /dev/shm
        over.append("data.prefetch_factor=2")
    tcfg = load_config(None, over)
    datasets = build_datasets(tcfg, with_test=False)
    comps = build_components(tcfg, datasets=datasets, progress_bar=False)
    loader = loader_settings(tcfg)
    dm = MetricDataModule(datasets.train, None, None, batch_sampler_factory=sampler_factory(tcfg),
                          eval_batch_size=tcfg.data.eval_batch_size, seed=0, **loader)
    stamps: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            if len(stamps) in (cfg["train_warmup"], steps - 1):
                sync(device)
            stamps.append(time.perf_counter())

    trainer = build_trainer(comps.trainer, dm, None, callbacks=[Clock()], enable_validation=False)
    trainer.fit(comps.module, datamodule=dm)
    w = cfg["train_warmup"]
    ours = (len(stamps) - 1 - w) * cfg["train_batch"] / (stamps[-1] - stamps[w])
    # floor: the same embedder, loss, optimizer, precision and memory format; one batch already on the device
    from dynametric.engine.builders import build_model, use_channels_last
    from dynametric.losses import TripletMarginLoss

    torch.manual_seed(0)
    model = build_model(tcfg).to(device)
    cl = use_channels_last(tcfg, model)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = TripletMarginLoss().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(cfg["train_batch"], 3, cfg["size"], cfg["size"], device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.arange(cfg["train_batch"], device=device) // cfg["m"])
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                emb = model(x)
        else:
            emb = model(x)
        loss_fn(emb.float(), y).backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(cfg["floor_steps"]):
        step()
    sync(device)
    floor = cfg["floor_steps"] * cfg["train_batch"] / (time.perf_counter() - t)
    return {"backbone": cfg["backbone"], "size": cfg["size"], "precision": "fp32" if precision == "32" else precision,
            "batch": cfg["train_batch"],
            "m": cfg["m"], "steps_timed": len(stamps) - 1 - w, "workers": loader["num_workers"],
            "pinned": loader["pin_memory"], "channels_last": cl, "ours_img_s": ours, "floor_img_s": floor,
            "fraction": ours / floor}


# ------------------------------------------------------------------------------------- (e) CPU engine threads
def part_e(cfg: dict) -> dict[str, Any]:
    """The CPU ranking engine's wall time at several torch thread counts, and at the first thread count once more
    with its score products through torch's BLAS instead of oneDNN (no target)."""
    from eval_speed import make_data, sort_rates
    from machine_info import usable_cpus

    from dynametric.metrics import evaluate_embeddings, products

    fine, middle, coarse = cfg["cpu_classes"]
    x_np, lab_np = make_data(cfg["cpu_n"], 128 if cfg["cpu_n"] > 10_000 else 32, fine, middle, coarse, seed=0)
    x, labels = torch.from_numpy(x_np), torch.from_numpy(lab_np)
    before = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    want = None

    def run(threads: int) -> dict[str, Any]:
        torch.set_num_threads(threads)
        t = time.perf_counter()
        got = evaluate_embeddings(x, labels, metrics=ALL_RETRIEVAL, device="cpu")
        return {"threads": threads, "library": products.cpu_matmul_library(), "s": time.perf_counter() - t,
                "values": got}

    try:
        for threads in [t for t in cfg["cpu_threads"] if t <= usable_cpus()]:
            row = run(threads)
            got = row.pop("values")
            want = want or got
            if got != want:
                raise AssertionError(f"the CPU engine's results changed with {threads} threads")
            rows.append(row)
        if rows and rows[0]["library"] != "blas":  # the same run with torch's BLAS (the library before oneDNN)
            previous = os.environ.get(products.CPU_MATMUL_ENV)
            os.environ[products.CPU_MATMUL_ENV] = "blas"
            products.cpu_matmul_library.cache_clear()
            try:
                row = run(rows[0]["threads"])
            finally:
                if previous is None:
                    os.environ.pop(products.CPU_MATMUL_ENV, None)
                else:
                    os.environ[products.CPU_MATMUL_ENV] = previous
                products.cpu_matmul_library.cache_clear()
            got = row.pop("values")  # the libraries may round 256+-dimensional products differently; 128 here
            row["max_diff"] = max(abs(v - want[s][m]) for s in got for m, v in got[s].items()
                                  if isinstance(v, float))
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    return {"n": len(x), "dim": x.shape[1], "rows": rows, "sort_rates": sort_rates()}


# ---------------------------------------------------------------------------------------------- report
def measured(res: dict[str, Any], part: str) -> Any:
    """A part's results, or None where it was not run or failed (``{"error": ...}``)."""
    r = res.get(part)
    return None if not r or (isinstance(r, dict) and "error" in r) else r


def checks(res: dict[str, Any], device: torch.device) -> list[tuple[str, bool]]:
    out = []
    a = measured(res, "a")
    if a:
        out.append(("(a) >= 5x faster than PML on the same device", a["speedup_vs_pml"] >= 5))
        out.append(("(a) within 1.2x of the full-sort floor", a["ratio_to_floor"] <= 1.2))
        if a.get("dynametric_peak_gib") is not None:  # #13's 4 GB = 4e9 bytes (3.73 GiB)
            out.append(("(a) device memory peak <= 4 GB (3.73 GiB)", a["dynametric_peak_gib"] * 2**30 <= 4e9))
        if a.get("max_diff_vs_floor") is not None:
            out.append(("(a) same values as the full-sort floor (max diff <= 1e-5)", a["max_diff_vs_floor"] <= 1e-5))
    if measured(res, "c"):
        out.append(("(c) embedding >= 90 % of the forward floor", res["c"]["fraction"] >= 0.9))
    if measured(res, "d"):
        out.append(("(d) training >= 90 % of the model-only floor", res["d"]["fraction"] >= 0.9))
    out += [(f"({part}) ran without an error", False) for part in STAGES
            if isinstance(res.get(part), dict) and "error" in res[part]]
    return out


def _f(v: Any, fmt: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def markdown(res: dict[str, Any], command: str) -> str:
    m = res["machine"]
    lines = [BEGIN, "## GPU suite (`benchmarks/gpu_suite.py`)", "",
             f"`{command}` — {m.get('gpu', 'no GPU')}; CPU {m['cpu']} ({m['cpus']} CPUs); torch {m['torch']}; "
             f"device `{m['device']}`; total {res['total_s']:.0f} s" + (" (**--small**: tiny sizes, for the test; "
                                                                      "not the #13 figures)" if res["small"] else ""),
             ""]
    if measured(res, "a"):
        a = res["a"]
        lines += [f"**(a) evaluation**, {a['n']:,} x {a['dim']}, 3 scales, metrics {', '.join(a['metrics'])} "
                  f"(dynametric's {a.get('engine', '')} ranking engine on `{a['engine_device']}`):", "",
                  "| contender | seconds | device peak GiB | vs dynametric |", "|---|---:|---:|---:|",
                  f"| dynametric `evaluate_embeddings` | {a['dynametric_s']:.2f} | "
                  f"{_f(a['dynametric_peak_gib'])} | 1.00x |",
                  f"| PML AccuracyCalculator (torch kNN, k=max_bin_count, 3 metrics, once per scale) | "
                  f"{a['pml_s']:.2f} | {_f(a['pml_peak_gib'])} | {a['speedup_vs_pml']:.2f}x slower |",
                  f"| plain torch full-sort floor | {a['floor_s']:.2f} | {_f(a['floor_peak_gib'])} | "
                  f"{a['ratio_to_floor']:.2f}x (ours / floor) |"]
        if a.get("count_s") is not None:
            lines.append(f"| dynametric, torch engine's count method (`DYNAMETRIC_TORCH_FULL_RANKING=count`) | "
                         f"{a['count_s']:.2f} | {_f(a['count_peak_gib'])} | {a['count_s'] / a['dynametric_s']:.2f}x "
                         f"(count / default); {a['count_speedup_vs_pml']:.2f}x faster than PML |")
        lines += ["",
                  f"Max |difference| vs the floor {_f(a['max_diff_vs_floor'], '.1e')}, vs PML "
                  f"{_f(a['max_diff_vs_pml'], '.1e')}"
                  + (f", between the two methods {_f(a['count_max_diff'], '.1e')}." if "count_max_diff" in a
                     else ".")]
        for row in a.get("budget_sweep", []):
            lines.append(f"dynametric at a {row['budget_gib']:g} GiB device budget: {row['s']:.2f} s, peak "
                         f"{_f(row['peak_gib'])} GiB ({a['pml_s'] / row['s']:.2f}x PML, {row['s'] / a['floor_s']:.2f}x "
                         f"the floor)" + (f", max |difference| from the default budget's values "
                                          f"{row['max_diff']:.1e}." if "max_diff" in row else "."))
        if measured(res, "a_big"):
            b = res["a_big"]
            lines += [f"{b['n']:,} x {a['dim']}, one scale (recall@K, map@r): {b['s']:.2f} s, device peak "
                      f"{_f(b['peak_gib'])} GiB."]
        lines.append("")
    if measured(res, "b"):
        lines += [f"**(b) losses**, forward + backward, batch {res['b_batch']}, dim {res['b_dim']}, median ms:", "",
                  "| loss | dynametric ms | PML ms | PML / dynametric |", "|---|---:|---:|---:|"]
        lines += [f"| {r['loss']} | {r['ours_ms']:.2f} | {_f(r['pml_ms'])} | {_f(r['speedup'])}x |" for r in res["b"]]
        lines.append("")
        cdist_lines = [f"`{r['loss']}` on the distance matrix of `torch.cdist`'s product path (what `LpDistance` "
                       f"computed before 2026-12-08): {r['cdist_mm_ms']:.2f} ms; of its exact kernel (one difference "
                       f"per pair): {r['cdist_exact_ms']:.2f} ms; `LpDistance` now: {r['ours_ms']:.2f} ms."
                       for r in res["b"] if "cdist_mm_ms" in r and "cdist_exact_ms" in r]
        lines += [*cdist_lines, ""] if cdist_lines else []
    for part, title in (("c", "embedding JPEG files"), ("d", "training on JPEG files")):
        r = measured(res, part)
        if r:
            extra = f", {r['images']} images of {r['image_wh'][0]}x{r['image_wh'][1]} (steady rate from the first " \
                f"batch on; end to end with worker start-up and writing: {r['end_to_end_img_s']:.0f} img/s), " \
                f"decode {r.get('decode', 'cpu')}" + (", decoded ahead in a thread" if r.get("decode_ahead") else "") \
                if part == "c" else f", m {r['m']}, {r['steps_timed']} timed steps"
            plain = r.get("without_decode_ahead_img_s") if part == "c" else None
            versus = "" if plain is None else \
                f" (without decoding ahead: {plain:.0f} img/s = {100 * plain / r['floor_img_s']:.0f} %)"
            if part == "c" and r.get("decode_only_img_s"):
                versus += f"; reading and decoding alone, no model: {r['decode_only_img_s']:.0f} img/s"
            lines += [f"**({part}) {title}**: {r['backbone']} {r['size']} px, {r['precision']}, batch {r['batch']}"
                      f"{extra}, {r['workers']} workers, pinned {r['pinned']}, channels_last {r['channels_last']}: "
                      f"dynametric {r['ours_img_s']:.0f} img/s vs model-only floor {r['floor_img_s']:.0f} img/s = "
                      f"**{100 * r['fraction']:.0f} %**{versus}.", ""]
    e = measured(res, "e")
    if e:
        base = e["rows"][0]["s"] if e["rows"] else float("nan")
        lines += [f"**(e) CPU ranking engine, threads** (no target): {e['n']:,} x {e['dim']}, 3 scales, every "
                  f"retrieval metric, `device=\"cpu\"`; the machine's sort rate, whatever the size above: "
                  f"{e['sort_rates']}:", "",
                  "| torch threads | score products | seconds | vs the first row | largest metric difference |",
                  "|---:|---|---:|---:|---:|"]
        lines += [f"| {r['threads']} | {r.get('library', '—')} | {r['s']:.2f} | {base / r['s']:.2f}x | "
                  f"{format(r['max_diff'], '.1e') if 'max_diff' in r else '0 (checked)'} |" for r in e["rows"]]
        lines.append("")
    lines += [f"**({part}) failed**: `{res[part]['error']}`" for part in STAGES
              if isinstance(res.get(part), dict) and "error" in res[part]]
    lines += ["", "Targets (#13, on one CUDA GPU):", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'} {name}" for name, ok in res["checks"]]
    if res["notes"]:
        lines += ["", *[f"Note: {n}" for n in res["notes"]]]
    lines.append(END)
    return "\n".join(lines) + "\n"


SCRIPT = "gpu_suite.py"


def section_kind(text: str) -> str | None:
    """The run kind (``full`` / ``small`` / ``partial``) of the suite's section in ``text``, None when it has none.
    A section written before the markers of benchmarks/result_files.py is judged by the command it shows."""
    if not (BEGIN in text and END in text and text.index(BEGIN) < text.index(END)):
        return None
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    found = find_md_marker(section)
    if found is not None:
        return found[1]
    command = section.split("`python benchmarks/gpu_suite.py", 1)[1].split("`", 1)[0] \
        if "`python benchmarks/gpu_suite.py" in section else ""
    return "small" if "--small" in command else "partial" if "--parts" in command else "full"


def docs_refusal(path: Path, kind: str) -> str | None:
    """Why a ``kind`` run may not replace the suite's section of ``path`` (None: it may, or there is none: a section
    is appended to a file without one)."""
    if not path.is_file():
        return None
    found = section_kind(path.read_text(encoding="utf-8"))
    if found == "full" and kind != "full":
        return (f"{path}: its gpu_suite section holds a full run; a {kind} run does not replace it (--overwrite does, "
                f"or write elsewhere)")
    return None


def json_legacy(path: Path, text: str) -> str | None:
    """The kind of a suite JSON written before the markers (keys ``small``, ``machine``, ``config``)."""
    data = parse_json(text)
    if not isinstance(data, dict) or not {"small", "machine", "config"} <= set(data):
        return None
    return "small" if data["small"] else "full" if {"a", "b", "c", "d"} <= set(data) else "partial"


def write_docs(path: Path, section: str, kind: str = "full") -> None:
    """Replace (or append) the suite's section of ``path``; the section carries the run's marker before its end."""
    from dynametric.utils.io import atomic_write_text

    section = section.replace(END, f"{md_marker(SCRIPT, kind)}\n{END}", 1)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: cpu with --small, else auto); "
                                                   "one that is not there: one line, exit status 2")
    p.add_argument("--parts", default=DEFAULT_PARTS)
    p.add_argument("--json", type=Path, default=None, help="write the JSON results here (after every part)")
    p.add_argument("--docs", type=Path, default=None,
                   help="replace (or append) the suite's section of this markdown file, e.g. docs/benchmarks.md "
                        "(default: print the section only)")
    add_overwrite_option(p)
    p.add_argument("--data", type=Path, default=None, help="folder for the generated JPEGs (default: a temp folder)")
    p.add_argument("--eval-budgets-gb", type=lambda t: tuple(float(v) for v in t.split(",") if v), default=(),
                   help="(a): also time dynametric at these device memory budgets, comma-separated GiB")
    p.add_argument("--big-after-s", type=float, default=240.0,
                   help="skip the 1,000,000 x 128 report when the other parts took longer than this (keeps the "
                        "suite under 6 minutes)")
    args = p.parse_args(argv)

    from dynametric.errors import ConfigError
    from dynametric.utils.device import resolve_device

    try:  # a device that is not there (cuda without a GPU, cuda:3 of 1, a typo) is one line, before anything runs
        device = resolve_device(args.device or ("cpu" if args.small else "auto"), key="--device")
    except ConfigError as exc:
        print(f"{SCRIPT}: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # (matmuls stay float32: TF32 would change the rankings of (a))
    cfg = SMALL if args.small else FULL
    parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    kind = run_kind(args.small, partial=parts != set(DEFAULT_PARTS.split(",")))
    json_path, docs_path = args.json, args.docs
    if not args.overwrite:
        check_replace([json_path], SCRIPT, kind, False, json_legacy)
        reason = docs_refusal(docs_path, kind) if docs_path is not None else None
        if reason is not None:
            raise SystemExit(reason)
    notes: list[str] = []
    if device.type != "cuda":
        notes.append("no CUDA device: the figures are CPU figures and the #13 GPU targets are not assessed by them")
    if args.small:
        notes.append("--small sizes are tiny (they keep the suite from rotting); on a shared CPU their timings are "
                     "noise, only the value checks mean something")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
    res: dict[str, Any] = {"small": args.small, "machine": machine(device), "config": config}
    t0 = time.perf_counter()
    failed: list[str] = []

    def stage(name: str, fn: Callable[[], Any]) -> None:
        """Run one part; a part that fails is recorded (and the run exits non-zero) but the others still run, and
        the JSON so far is written after every part, so one long run on a lent GPU loses nothing it measured."""
        t = time.perf_counter()
        print(f"[gpu_suite] ({name}) ...", flush=True)
        try:
            res[name] = fn()
        except Exception as exc:  # noqa: BLE001 - recorded, reported and turned into the exit status
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
            traceback.print_exc()
        print(f"[gpu_suite] ({name}) done in {time.perf_counter() - t:.1f} s", flush=True)
        if json_path is not None:
            write_json(json_path, res, SCRIPT, kind, default=str)

    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        data_root = args.data or work / "data"
        if "a" in parts:
            stage("a", lambda: part_a(cfg, device, notes, args.eval_budgets_gb or cfg["eval_budgets_gib"]))
        if "b" in parts:
            res["b_batch"], res["b_dim"] = cfg["loss_batch"], cfg["loss_dim"]
            stage("b", lambda: part_b(cfg, device))
        if parts & {"c", "d"}:
            t = time.perf_counter()
            make_jpegs(data_root, cfg["images"], cfg["image_wh"], classes=max(8, cfg["images"] // 16))
            res["data_s"] = time.perf_counter() - t
        if "c" in parts:
            stage("c", lambda: part_c(cfg, device, data_root, work))
        if "d" in parts:
            stage("d", lambda: part_d(cfg, device, data_root))
        if "a" in parts and cfg["big_n"] and (device.type == "cuda" or args.small):
            if time.perf_counter() - t0 > args.big_after_s:
                notes.append(f"1,000,000 x 128 skipped: the suite had run {time.perf_counter() - t0:.0f} s "
                             f"(> --big-after-s {args.big_after_s:g})")
            else:
                stage("a_big", lambda: part_a_big(cfg, device))
        if "e" in parts:  # last: the GPU parts (and the 1,000,000-item report's time check) come first
            stage("e", lambda: part_e(cfg))
    res["total_s"] = time.perf_counter() - t0
    res["checks"] = checks(res, device)
    res["notes"] = notes
    command = shlex.join(["python", "benchmarks/gpu_suite.py", *(["--small"] if args.small else []),
                          *(["--device", args.device] if args.device else []),
                          *(["--parts", args.parts] if args.parts != DEFAULT_PARTS else [])])
    section = markdown(res, command)
    if json_path is not None:
        write_json(json_path, res, SCRIPT, kind, default=str)
    if docs_path is not None:
        write_docs(docs_path, section, kind)
    else:
        print(section)
    for name, ok in res["checks"]:
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + ("" if device.type == "cuda" else "  (CPU: for information)"))
    for n in notes:
        print(f"note: {n}")
    wrote = " and ".join(str(x) for x in (json_path, docs_path) if x is not None) or "no file (--json, --docs)"
    print(f"[gpu_suite] total {res['total_s']:.1f} s; wrote {wrote}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
