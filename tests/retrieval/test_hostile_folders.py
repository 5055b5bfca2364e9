"""Embed and index folders whose entries are not what this tool wrote: a ``shards`` link planted in an embed
``--out`` is refused before anything is written or removed (nothing outside the folder touched); a folder's own
files that are not regular files (a FIFO, ``/dev/zero``, a folder) are refused in one line naming the file, never
read (they were read forever); a symbolic link to a regular file elsewhere is read as that file; a job or index
file nested thousands deep is one line, not a RecursionError traceback (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynametric.errors import InputError
from dynametric.retrieval.embed import embed_items, load_embedding_set, read_image_csv

FIFO = "not a regular file: a FIFO (named pipe); expected a file"


def _transform(img: Any) -> Any:  # PIL -> [3, 8, 8]
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def _flat(batch: Any) -> Any:
    return batch.flatten(1)[:, :6]


def _embed(image_root: Path, out: Path, **kwargs: Any) -> Any:
    return embed_items(read_image_csv(image_root / "labels.csv"), _flat, _transform, out, model_identity={"m": 1},
                       batch_size=4, shard_size=4, **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finishes(call: Callable[[], Any], fifos: list[Path], wait: float = 60.0) -> Any:
    """``call()``'s result or exception; a call still blocked on one of the ``fifos`` after ``wait`` seconds (the
    old code opened and read them) fails the test, its reader given an end of file so that the thread can end."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(wait)
    if thread.is_alive():
        for fifo in fifos:  # a reader blocked in open() or read(): a writer that closes at once ends it
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail(f"still reading after {wait} s: a FIFO was opened and read")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ------------------------------------------------------------------------------------------------ 1: shards link
def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    for s in range(3):
        np.save(victim / f"shard_{s:05d}.npy", np.full((2, 2), s, dtype=np.float32))
    (victim / ".shard_00000.npy.abcdefgh.tmp").write_bytes(b"the user's")
    return victim


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_shards_link_in_out_is_refused_and_nothing_outside_is_touched(image_root: Path, tmp_path: Path,
                                                                       overwrite: bool) -> None:
    """--overwrite deleted the user's files in the folder a planted shards/ link points to and wrote new shards
    there; a resume removed their temporary-looking files. Both are refused in one line before any write."""
    out = tmp_path / "emb"
    _embed(image_root, out)
    if not overwrite:  # an unfinished job of the same items: a resume
        meta = json.loads((out / "embed.json").read_text())
        (out / "embed.json").write_text(json.dumps({**meta, "status": "in_progress"}))
    victim = _victim(tmp_path)
    (out / "shards").symlink_to(victim)
    before, inside = _tree(victim), _tree(out)
    with pytest.raises(InputError, match="shards key '--out': is a symbolic link") as err:
        _embed(image_root, out, overwrite=overwrite)
    assert str(err.value).startswith(str(out / "shards")) and "\n" not in str(err.value)
    assert _tree(victim) == before
    assert _tree(out) == inside and (out / "shards").is_symlink()


def test_the_embed_command_refuses_a_shards_link_before_loading_the_model(image_root: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dynametric.cli import main

    out = tmp_path / "emb"
    _embed(image_root, out)
    victim = _victim(tmp_path)
    (out / "shards").symlink_to(victim)
    before = _tree(victim)
    capsys.readouterr()
    rc = main(["embed", "--checkpoint", str(tmp_path / "no_such.ckpt"), "--csv", str(image_root / "labels.csv"),
               "--image-root", str(image_root), "--out", str(out), "--device", "cpu", "--no-progress",
               "--overwrite", "--shard-size", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and f"{out / 'shards'} key '--out': is a symbolic link" in err, err
    assert _tree(victim) == before


def test_a_file_named_shards_is_refused_as_what_it_is(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    _embed(image_root, out)
    (out / "shards").write_text("mine")
    with pytest.raises(InputError, match="shards key '--out': is a regular file, not a folder"):
        _embed(image_root, out, overwrite=True)
    assert (out / "shards").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ 2: not regular
def _assert_fifo_refused(target: Path, load) -> None:
    """``target`` replaced by a FIFO: ``load()`` finishes (never blocks on it) with one line naming it."""
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(InputError) as err:
        _finishes(load, [target])
    assert str(err.value) == f"{target}: {FIFO}"


@pytest.fixture
def emb_folder(image_root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "emb"
    _embed(image_root, out)
    return out


@pytest.mark.parametrize("name", ["items.csv", "labels.npy", "embed.json", "embeddings.npy"])
def test_an_embed_folder_file_that_is_a_fifo_is_refused_by_name(emb_folder: Path, name: str) -> None:
    """items.csv / labels.npy as a FIFO were read forever; embed.json as one was "no embed.json"."""
    _assert_fifo_refused(emb_folder / name, lambda: load_embedding_set(emb_folder))


def test_a_resume_or_overwrite_over_a_fifo_embed_json_is_refused(image_root: Path, emb_folder: Path) -> None:
    meta = emb_folder / "embed.json"
    meta.unlink()
    os.mkfifo(meta)
    for overwrite in (False, True):
        with pytest.raises(InputError) as err:
            _finishes(lambda o=overwrite: _embed(image_root, emb_folder, overwrite=o), [meta])
        assert str(err.value) == f"{meta}: {FIFO}"
    assert meta.exists() and not meta.is_file()


def test_a_shard_that_is_a_fifo_is_computed_again_not_read(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    first = _embed(image_root, out, keep_shards=True)
    whole = np.load(out / "embeddings.npy")
    meta = json.loads((out / "embed.json").read_text())
    (out / "embed.json").write_text(json.dumps({**meta, "status": "in_progress"}))
    shard = out / "shards" / "shard_00001.npy"
    shard.unlink()
    os.mkfifo(shard)
    again = _finishes(lambda: _embed(image_root, out, keep_shards=True), [shard])
    assert first.computed_shards == [0, 1, 2] and again.computed_shards == [1] and again.skipped_shards == [0, 2]
    assert shard.is_file() and np.array_equal(np.load(out / "embeddings.npy"), whole)


def test_a_link_to_a_regular_file_elsewhere_is_read(emb_folder: Path, tmp_path: Path) -> None:
    """Users copy folders with links: a symbolic link to a regular file is that file."""
    before = load_embedding_set(emb_folder, mmap=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("items.csv", "labels.npy", "embed.json", "embeddings.npy"):
        (emb_folder / name).rename(elsewhere / name)
        (emb_folder / name).symlink_to(elsewhere / name)
    after = load_embedding_set(emb_folder, mmap=False)
    assert after.ids == before.ids and np.array_equal(after.embeddings, before.embeddings)
    assert after.labels is not None and before.labels is not None and np.array_equal(after.labels, before.labels)


@pytest.fixture
def index_folder(emb_folder: Path, tmp_path: Path) -> Path:
    pytest.importorskip("faiss")
    from dynametric.retrieval.index import RetrievalIndex

    out = tmp_path / "idx"
    RetrievalIndex.build(load_embedding_set(emb_folder), "flat", "cosine").save(out)
    assert (out / "labels.npy").is_file()
    return out


@pytest.mark.parametrize("name", ["index.json", "items.csv", "labels.npy", "index.faiss"])
def test_an_index_file_that_is_a_fifo_is_refused_by_name(index_folder: Path, name: str) -> None:
    """items.csv as a FIFO was read forever; labels.npy as one was reported as "missing"."""
    from dynametric.retrieval.index import RetrievalIndex

    _assert_fifo_refused(index_folder / name, lambda: RetrievalIndex.load(index_folder))


def test_an_index_with_links_to_its_files_elsewhere_loads(index_folder: Path, tmp_path: Path) -> None:
    from dynametric.retrieval.index import RetrievalIndex

    before = RetrievalIndex.load(index_folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("index.json", "items.csv", "labels.npy", "index.faiss"):
        (index_folder / name).rename(elsewhere / name)
        (index_folder / name).symlink_to(elsewhere / name)
    after = RetrievalIndex.load(index_folder)
    assert after.ids == before.ids and after.size == before.size == 12
    assert not after.changed_on_disk()


def test_a_folder_as_labels_npy_is_said_to_be_a_folder(index_folder: Path) -> None:
    from dynametric.retrieval.index import RetrievalIndex

    (index_folder / "labels.npy").unlink()
    (index_folder / "labels.npy").mkdir()
    with pytest.raises(InputError, match=r"labels\.npy: is a folder; expected a file"):
        RetrievalIndex.load(index_folder)


_DEV_ZERO = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import load_embedding_set
    from dynametric.retrieval.index import RetrievalIndex
    emb, idx = Path(sys.argv[1]), Path(sys.argv[2])
    for folder, name, load in ((emb, "items.csv", load_embedding_set), (emb, "embed.json", load_embedding_set),
                               (idx, "items.csv", RetrievalIndex.load), (idx, "index.json", RetrievalIndex.load)):
        target = folder / name
        kept = target.with_name(name + ".kept")
        target.rename(kept)
        target.symlink_to("/dev/zero")
        try:
            load(folder)
        except InputError as exc:
            print(exc)
        target.unlink()
        kept.rename(target)
""")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_link_to_dev_zero_is_refused_not_read_forever(emb_folder: Path, index_folder: Path) -> None:
    """A link to /dev/zero was read until memory ran out (search: 21 GB; index build: MemoryError). In a process of
    limited memory, so that a reader of the device stops there."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (9 << 29, 9 << 29))  # 4.5 GiB: torch and faiss load in that

    proc = subprocess.run([sys.executable, "-c", _DEV_ZERO, str(emb_folder), str(index_folder)], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})
    device = "not a regular file: a symbolic link to a character device; expected a file"
    assert proc.stdout.splitlines() == [f"{emb_folder / 'items.csv'}: {device}",
                                        f"{emb_folder / 'embed.json'}: {device}",
                                        f"{index_folder / 'items.csv'}: {device}",
                                        f"{index_folder / 'index.json'}: {device}"], proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ 3: nesting
NESTED = "[" * 200000 + "]" * 200000


def test_an_index_json_nested_deeply_is_one_line(index_folder: Path) -> None:
    from dynametric.retrieval.index import RetrievalIndex

    (index_folder / "index.json").write_text(NESTED)
    with pytest.raises(InputError) as err:
        RetrievalIndex.load(index_folder)
    assert str(err.value) == (f"{index_folder / 'index.json'}: unreadable index metadata (RecursionError: nested "
                              "too deeply)")


def test_an_embed_json_nested_deeply_is_one_line(image_root: Path, emb_folder: Path) -> None:
    meta = emb_folder / "embed.json"
    meta.write_text(NESTED)
    with pytest.raises(InputError) as err:
        load_embedding_set(emb_folder)
    assert str(err.value) == f"{meta}: unreadable job file (RecursionError: nested too deeply)"
    with pytest.raises(InputError, match=r"unreadable job file \(RecursionError: nested too deeply\); it sits "
                                         "beside this tool's items.csv"):
        _embed(image_root, emb_folder)  # a resume
    _embed(image_root, emb_folder, overwrite=True)  # beside the job's own files: replaced
    assert load_embedding_set(emb_folder).embeddings.shape == (12, 6)
