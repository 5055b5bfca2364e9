"""Load time and memory of the DyML reader at release size (no image files needed: ``check_files=False``).

Writes a DyML-style ``train/label.csv`` (glued header, comma + space, coarsest first, non-contiguous ids) of
``--rows`` records into a temporary folder (not timed), then measures side by side in one process:

* ``floor``    – the bare minimum: read the text, split lines and fields, convert three ints per row;
* ``read``     – ``DyMLFormat.read`` (header handling, validation, duplicate tracking, load report);
* ``build``    – ``HierarchicalImageDataset.from_records`` (contiguous id maps, hierarchy check, PathTable);

and the memory of the image paths held by the dataset (PathTable) against a Python list of ``str``. Then the
``csv`` format on the same records (``path,split,fine,middle,coarse``) through ``build_dataset`` (which pauses the
cyclic garbage collector while reading) against the same read + build with the collector on, alternated.

Usage::

    python benchmarks/data_readers.py --rows 747000          # DyML-Product train size
    python benchmarks/data_readers.py --rows 343000          # DyML-Vehicle train size
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402


def write_label_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, rows // 10 + 1, size=rows) * 7 + 3  # non-contiguous raw ids
    middle = fine % 997 * 11  # each fine id → one middle id → one coarse id
    coarse = middle % 37 * 5
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [f"{i}.jpg, {c}, {m}, {f}" for i, (c, m, f) in enumerate(zip(coarse.tolist(), middle.tolist(),
                                                                           fine.tolist()))]
    path.write_text("fname, coarse_id, middle_id, fine_id" + "\n".join(recs) + "\n")


def floor(path: Path) -> int:
    n = 0
    lines = path.read_text().split("\n")
    lines[0] = lines[0][len("fname, coarse_id, middle_id, fine_id"):]
    for line in lines:
        if line:
            f = line.split(",")
            int(f[1]), int(f[2]), int(f[3])
            n += 1
    return n


def _csv_with_and_without_collector(root: Path, rows: int, repeats: int) -> dict[str, float]:
    """``build_dataset("csv")`` (collector paused) against ``CSVFormat.read`` + ``from_records`` with the
    collector on, alternated, best of ``repeats`` each."""
    import gc

    from dynametric.data import build_dataset
    from dynametric.data.base import HierarchicalImageDataset
    from dynametric.data.generic import CSVFormat

    rng = np.random.default_rng(0)
    fine = rng.integers(0, max(1, rows // 20), rows)
    root.mkdir(parents=True)
    lines = ["path,split,fine,middle,coarse"]
    lines += [f"imgs/{i:07d}.jpg,train,{f},{f // 20},{f // 400}" for i, f in enumerate(fine.tolist())]
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    paused, on = [], []
    for _ in range(repeats):
        assert gc.isenabled()
        t0 = time.perf_counter()
        ds = build_dataset("csv", root, "train", check_files=False)
        t1 = time.perf_counter()
        ds2 = HierarchicalImageDataset.from_records(CSVFormat().read(root, "train", check_files=False), name="csv")
        t2 = time.perf_counter()
        assert len(ds) == len(ds2) == rows and gc.isenabled()
        paused.append(t1 - t0)
        on.append(t2 - t1)
        del ds, ds2
    return {"csv_build_dataset_s": round(min(paused), 3), "csv_collector_on_s": round(min(on), 3),
            "csv_collector_on_over_paused": round(min(on) / min(paused), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=747_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from dynametric.data.base import HierarchicalImageDataset, PathTable
    from dynametric.data.dyml import DyMLFormat

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dyml_product"
        write_label_csv(root / "train" / "label.csv", args.rows)
        fmt = DyMLFormat("product")
        times: dict[str, list[float]] = {"floor": [], "read": [], "build": []}
        ds = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n_floor = floor(root / "train" / "label.csv")
            t1 = time.perf_counter()
            rec = fmt.read(root, "train", check_files=False)
            t2 = time.perf_counter()
            ds = HierarchicalImageDataset.from_records(rec, name="dyml-product")
            t3 = time.perf_counter()
            times["floor"].append(t1 - t0)
            times["read"].append(t2 - t1)
            times["build"].append(t3 - t2)
            del rec
        assert ds is not None and len(ds) == n_floor == args.rows
        best = {k: min(v) for k, v in times.items()}
        paths = [str(p) for p in ds.paths]
        table = PathTable(paths)
        list_bytes = sys.getsizeof(paths) + sum(sys.getsizeof(p) for p in paths)
        table_bytes = table._data.nbytes + table._offsets.nbytes
        out = {
            "rows": args.rows,
            "classes": ds.class_counts(),
            "best_of": args.repeats,
            "floor_s": round(best["floor"], 3),
            "read_s": round(best["read"], 3),
            "build_s": round(best["build"], 3),
            "read_plus_build_over_floor": round((best["read"] + best["build"]) / best["floor"], 2),
            "rows_per_s": int(args.rows / (best["read"] + best["build"])),
            "paths_pathtable_MB": round(table_bytes / 2**20, 1),
            "paths_list_of_str_MB": round(list_bytes / 2**20, 1),
            "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        out.update(_csv_with_and_without_collector(Path(tmp) / "csv", args.rows, args.repeats))
    out["machine"] = machine_line()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
