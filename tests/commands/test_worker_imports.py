"""The modules of a config's ``imports`` / ``--import`` are imported in every data-loading worker: under ``spawn``
(macOS's default) or ``forkserver`` (Python 3.14's on Linux) a worker starts in a fresh interpreter, so what such a
module registers process-wide (a Pillow image plugin, as ``pillow_heif.register_heif_opener()``) was missing there
and ``train`` / ``embed`` / ``evaluate`` said the images could not be read, where a forked worker (Linux before
3.14) read them."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import dynametric.utils.registry as registry
from dynametric.engine.data import worker_init

PLUGIN = '''
"""Teaches PIL a tiny raw format, ".tiny": b"TINY", width, height (one byte each), then RGB bytes."""
from PIL import Image, ImageFile


class TinyImageFile(ImageFile.ImageFile):
    format = "TINY"
    format_description = "test raw RGB"

    def _open(self):
        head = self.fp.read(6)
        if head[:4] != b"TINY":
            raise SyntaxError("not a TINY file")
        self._size = (head[4], head[5])
        self._mode = "RGB"
        box = (0, 0, head[4], head[5])
        tile = getattr(ImageFile, "_Tile", None)
        self.tile = [tile("raw", box, 6, ("RGB", 0, 1)) if tile else ("raw", box, 6, ("RGB", 0, 1))]


Image.register_open("TINY", TinyImageFile, lambda prefix: prefix[:4] == b"TINY")
Image.register_extension("TINY", ".tiny")
'''


def test_a_worker_imports_the_listed_modules_and_nothing_changes_without_them(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(registry, "_FOR_WORKERS", [])
    assert worker_init() is None and worker_init(0) is None  # a loader without listed modules is as it was
    (tmp_path / "listed_mod_x.py").write_text("import os\nos.environ['LISTED_MOD_X'] = str(os.getpid())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.import_modules(["listed_mod_x"], "imports")
    assert registry.modules_for_workers() == ("listed_mod_x",)
    init = worker_init()
    assert init is not None
    # what a spawned worker does with it: unpickle and call it in a fresh interpreter
    code = ("import pickle, sys, os; init = pickle.loads(sys.stdin.buffer.read()); "
            "assert 'listed_mod_x' not in sys.modules; init(0); print(os.environ['LISTED_MOD_X'] == str(os.getpid()))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path("src").absolute())])}
    done = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(init), capture_output=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == b"True", done.stderr.decode()


def test_a_lightning_loaders_worker_is_seeded_as_lightning_would_seed_it(monkeypatch) -> None:
    """Lightning adds its worker seeding only to a loader without a worker_init_fn: dynametric's calls it."""
    import lightning.fabric.utilities.seed as seed

    calls = []
    monkeypatch.setattr(registry, "_FOR_WORKERS", ["json"])
    monkeypatch.setattr(seed, "pl_worker_init_function", lambda worker_id, rank: calls.append((worker_id, rank)))
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    worker_init(3)(1)
    worker_init()(1)  # an inference loader: Lightning would not seed it either
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    worker_init(3)(2)
    assert calls == [(1, 3)]


@pytest.mark.slow
def test_embed_under_spawn_reads_images_a_listed_plugin_teaches_pil(tiny_ckpt, tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tinyplug.py").write_text(PLUGIN)
    rows = ["path,label"]
    for i in range(6):
        (tmp_path / f"{i}.tiny").write_bytes(b"TINY" + bytes([8, 8]) + bytes((i * 40 + k) % 256 for k in range(192)))
        rows.append(f"{i}.tiny,c{i % 2}")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    start = ("import multiprocessing, sys; multiprocessing.set_start_method('spawn'); "
             "from dynametric.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "pkg"), str(Path("src").absolute())])}
    out = tmp_path / "emb"
    done = subprocess.run([sys.executable, "-c", start, "--import", "tinyplug", "embed", "--checkpoint",
                           str(tiny_ckpt), "--csv", str(tmp_path / "items.csv"), "--image-root", str(tmp_path),
                           "--out", str(out), "--workers", "2", "--batch-size", "2", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=400)
    assert done.returncode == 0, done.stderr  # was 2: "... 0.tiny: cannot decode image (...)"
    assert json.loads((out / "embed.json").read_text())["count"] == 6
    assert Image.registered_extensions().get(".tiny") is None  # this process never imported the plugin
