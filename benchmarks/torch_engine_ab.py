"""Side-by-side timing of two versions of the torch ranking engine (``dynametric.metrics.torch_engine``).

The "old" engine is another version of ``src/dynametric/metrics/torch_engine.py`` — a file, or a git revision whose
copy of that file is read with ``git show`` — loaded beside this source tree's (``src/`` is put on ``sys.path``
by the script itself, so it runs where dynametric is not installed); both run through the same
``evaluate_embeddings(..., ranking_engine="torch", device=...)`` (everything else is today's code), alternately,
``--repeats`` times each on the same data, leave-one-out, every retrieval metric. The data are those of
``gpu_suite.py``'s part (a), built by its own generator (``gpu_suite.eval_data``: eval_speed's clustered
three-scale embeddings, 128-d, seed 0, fine classes in the suite's proportion, 11,316 at ``--n 60502``, then 100
and 12), so at ``--n 60502`` on the same card the seconds compare with the suite's. Prints the best time of each,
their ratio, and whether every value is identical.

    python benchmarks/torch_engine_ab.py --old 3aa7eef --n 12000                 # the CPU as a proxy
    python benchmarks/torch_engine_ab.py --old old_torch_engine.py --device cuda --n 60502

``--device`` is resolved as the library does (``auto``, ``cpu``, ``cuda``, ``cuda:N``); a device that is not
there (``cuda`` without a GPU) is one line and exit status 2. On a CUDA device the timed calls are synchronised;
the device memory peak of each is printed too, in GiB (2**30 bytes, as the suite's).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
if str(ROOT / "src") not in sys.path:  # the source tree's dynametric, on a machine where it is not installed
    sys.path.insert(1, str(ROOT / "src"))
from gpu_suite import eval_data, peak_gib, reset_peak, scaled_classes, sync  # noqa: E402
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, write_json  # noqa: E402

SCRIPT = "torch_engine_ab.py"

ENGINE_PATH = "src/dynametric/metrics/torch_engine.py"
METRICS = ["recall@K", "r_precision", "map@r", "map", "asi"]


def load_old(old: str) -> ModuleType:
    """The old engine module, from a file or from ``git show <old>:src/dynametric/metrics/torch_engine.py``."""
    path = Path(old)
    if not path.is_file():
        proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{old}:{ENGINE_PATH}"], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"--old {old!r} is neither a file nor a git revision with {ENGINE_PATH}: "
                             f"{proc.stderr.strip()}")
        tmp = tempfile.NamedTemporaryFile("w", suffix="_torch_engine.py", delete=False)
        tmp.write(proc.stdout)
        tmp.close()
        path = Path(tmp.name)
    spec = importlib.util.spec_from_file_location("dynametric_old_torch_engine", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(n: int, old: str, device: str | torch.device, repeats: int) -> dict[str, Any]:
    import dynametric.metrics.torch_engine as current
    from dynametric.metrics import evaluate_embeddings
    from dynametric.utils.device import resolve_device

    dev = resolve_device(device, key="--device")
    classes = scaled_classes(n)
    x, labels = eval_data(n, 128, classes)
    engines = {"old": load_old(old).run_ranking_torch, "new": current.run_ranking_torch}
    own = current.run_ranking_torch
    times: dict[str, list[float]] = {k: [] for k in engines}
    peaks: dict[str, float | None] = {}
    values: dict[str, Any] = {}

    try:
        for _ in range(repeats + 1):  # the first round is an untimed warm-up
            for name, fn in engines.items():
                current.run_ranking_torch = fn  # evaluate_embeddings looks it up at call time
                reset_peak(dev)
                sync(dev)
                t = time.perf_counter()
                values[name] = evaluate_embeddings(x, labels, metrics=METRICS, ranking_engine="torch", device=dev)
                sync(dev)
                times[name].append(time.perf_counter() - t)
                peaks[name] = peak_gib(dev)  # GiB, the suite's own measure
    finally:
        current.run_ranking_torch = own
    best = {k: min(v[1:]) for k, v in times.items()}
    return {"n": n, "classes": list(classes), "device": str(dev), "old": old, "best_s": best, "all_s": times,
            "peak_gib": peaks,
            "old_over_new": best["old"] / best["new"], "identical": values["old"] == values["new"],
            "machine": machine_line()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the old torch_engine.py: a file, or a git revision")
    p.add_argument("--n", type=int, default=12000)
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    add_overwrite_option(p)
    args = p.parse_args(argv)
    from dynametric.errors import ConfigError
    from dynametric.utils.device import resolve_device

    try:
        device = resolve_device(args.device, key="--device")
    except ConfigError as exc:
        print(f"{SCRIPT}: {exc}", file=sys.stderr)
        return 2
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    res = run(args.n, args.old, device, max(1, args.repeats))
    b = res["best_s"]
    print(f"n={res['n']} device={res['device']}: old {b['old']:.3f} s, new {b['new']:.3f} s, "
          f"old/new {res['old_over_new']:.2f}x, identical values: {res['identical']}")
    if res["peak_gib"]["new"] is not None:
        print(f"device peak: old {res['peak_gib']['old']:.2f} GiB, new {res['peak_gib']['new']:.2f} GiB")
    print(res["machine"])
    if args.json is not None:
        write_json(args.json, res, SCRIPT, "full")
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
