"""One writer per output folder: ``embed``, ``merge-embeddings`` and ``index build`` hold a lock file there
(``dynametric.lock``); another command writing the folder is refused with one line naming its process, a lock
left by a killed process is taken over. An output folder that cannot be made is one line keyed ``--out``."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet, embed_items, list_image_folder, load_embedding_set, shard_path
from dynametric.retrieval.index import LOCK_NAME, RetrievalIndex

PROJ = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))


def _to_tensor(img) -> torch.Tensor:  # noqa: ANN001
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255


def _embed(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) @ PROJ


def _lock(folder: Path, pid: int, command: str = "embed", host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"format": "dynametric-lock", "command": command, "pid": pid,
                                "host": host or socket.gethostname(), "token": "t"}))
    return lock


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_embed_into_a_folder_another_running_embed_writes_is_refused(image_root: Path, tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    lock = _lock(out, os.getppid())  # a process still running on this host, started before the lock
    before = lock.read_bytes()
    with pytest.raises(InputError) as err:
        embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert str(err.value) == (f"{out} key '--out': the folder is being written by another embed (process "
                              f"{os.getppid()}); wait for it to finish or use another --out")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME] and lock.read_bytes() == before


def test_a_second_embed_started_while_the_first_writes_is_refused_and_the_first_finishes_clean(
        image_root: Path, tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    refused: list[str] = []

    def embed_and_start_another(x: torch.Tensor) -> torch.Tensor:
        if not refused:  # the same job started again into the folder while this one computes its first shard
            with pytest.raises(InputError) as err:
                embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
            refused.append(str(err.value))
        return _embed(x)

    res = embed_items(items, embed_and_start_another, _to_tensor, out, model_identity={"m": 1}, batch_size=4,
                      shard_size=4)
    assert refused == [f"{out} key '--out': the folder is being written by another embed (process {os.getpid()}); "
                       "wait for it to finish or use another --out"]
    assert res.computed_shards == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["embed.json", "embeddings.npy", "file_stats.npy", "items.csv"]
    assert load_embedding_set(out).embeddings.shape == (12, 6)


def test_a_lock_left_by_a_killed_process_is_taken_over_and_removed_at_the_end(image_root: Path,
                                                                               tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    _lock(out, _ended_pid())
    res = embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert res.computed_shards == [0, 1, 2] and not (out / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_refused_naming_it_and_a_foreign_file_is_kept(image_root: Path,
                                                                                 tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    lock = _lock(out, 1234, host="elsewhere.example")
    with pytest.raises(InputError, match=r"another embed \(process 1234 on host elsewhere.example\); wait for it to "
                                         r"finish or use another --out \(if that process is gone, remove "):
        embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    lock.write_text("my own notes\n")
    os.utime(lock, (1_000_000_000, 1_000_000_000))  # not a lock being written this moment
    with pytest.raises(InputError) as err:
        embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert err.value.file == str(lock) and "is not a lock file of dynametric" in str(err.value)
    assert lock.read_text() == "my own notes\n"


def test_a_finished_embed_leaves_no_stray_shard(image_root: Path, tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    calls = [0]

    def stop_at_third(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return _embed(x)

    with pytest.raises(KeyboardInterrupt):
        embed_items(items, stop_at_third, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert not (out / LOCK_NAME).exists()  # released on the way out
    np.save(shard_path(out, 9), np.zeros((4, 6), np.float32))  # what a second writer left beyond the job's shards
    embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert not (out / "shards").exists()


def _index_set() -> EmbeddingSet:
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    return EmbeddingSet(x, [str(i) for i in range(20)], [""] * 20, None, [], None, [], {}, Path("mem"))


def test_index_build_into_a_folder_another_build_writes_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    out = tmp_path / "idx"
    idx = RetrievalIndex.build(_index_set(), "flat", "l2")
    _lock(out, os.getppid(), command="index build")
    with pytest.raises(InputError) as err:
        idx.save(out)
    assert str(err.value) == (f"{out} key '--out': the folder is being written by another index build (process "
                              f"{os.getppid()}); wait for it to finish or use another --out")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    (out / LOCK_NAME).unlink()
    idx.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "index.json", "items.csv"]
    assert RetrievalIndex.load(out).size == 20


def test_an_output_folder_that_cannot_be_made_is_one_line_keyed_out(image_root: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    pytest.importorskip("faiss")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.mkdir

    def refuse(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if Path(path).parent == ro:  # as in a folder of another user's, or a read-only mount
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    items = list_image_folder(image_root / "imgs")
    with pytest.raises(InputError) as err:
        embed_items(items, _embed, _to_tensor, ro / "emb" / "deep", model_identity={"m": 1})
    assert str(err.value) == f"{ro / 'emb'} key '--out': cannot create the folder (Permission denied)"
    with pytest.raises(InputError) as err:
        RetrievalIndex.build(_index_set(), "flat", "l2").save(ro / "idx")
    assert str(err.value) == f"{ro / 'idx'} key '--out': cannot create the folder (Permission denied)"


def test_a_reader_of_a_folder_embed_is_writing_says_so(image_root: Path, tmp_path: Path) -> None:
    """index build / merge-embeddings / load_embedding_set of a folder a running embed writes said "embedding job is
    not finished; run the same `dynametric embed` command again to resume", which the lock then refused."""
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"

    def stop(x: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # an unfinished job: embed.json says in_progress
        embed_items(items, stop, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    with pytest.raises(InputError, match="embedding job is not finished; run the same `dynametric embed` command "
                                         "again to resume"):
        load_embedding_set(out)  # stopped: no writer
    _lock(out, os.getppid())  # a process still running on this host writes it
    with pytest.raises(InputError) as err:
        load_embedding_set(out)
    assert str(err.value) == f"{out}: is being written by embed (process {os.getppid()}) right now; wait for it to " \
                             "finish"
    _lock(out, _ended_pid())  # its process gone: a stopped job again
    with pytest.raises(InputError, match="embedding job is not finished"):
        load_embedding_set(out)


def test_a_folder_copied_with_the_lock_of_a_running_embed_is_not_blocked(image_root: Path, tmp_path: Path) -> None:
    """dynametric.lock did not record its folder: a folder copied (cp -r) while embed ran was refused until the
    original process ended."""
    items = list_image_folder(image_root / "imgs")
    original, copy = tmp_path / "emb", tmp_path / "copy"
    lock = _lock(copy, os.getppid())  # a running process's lock, taken for the original folder, copied here
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "folder": str(original.resolve())}))
    res = embed_items(items, _embed, _to_tensor, copy, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert res.computed_shards == [0, 1, 2] and not lock.exists()
    # in the original folder that lock is live; a lock records the folder it was taken for
    original.mkdir()
    lock = _lock(original, os.getppid())
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "folder": str(original.resolve())}))
    with pytest.raises(InputError, match=r"being written by another embed \(process"):
        embed_items(items, _embed, _to_tensor, original, model_identity={"m": 1}, batch_size=4, shard_size=4)
    seen: list[dict] = []

    def look(x: torch.Tensor) -> torch.Tensor:
        seen.append(json.loads((copy / LOCK_NAME).read_text()))
        return _embed(x)

    embed_items(items, look, _to_tensor, copy, model_identity={"m": 1}, batch_size=4, shard_size=4, overwrite=True)
    assert seen[0]["folder"] == str(copy.resolve()) and seen[0]["pid"] == os.getpid()


def test_a_lock_of_another_host_naming_its_own_path_of_the_folder_is_held(image_root: Path, tmp_path: Path) -> None:
    """Shared storage reached through another mount point on each node: a live lock of another host records the
    folder as that host names it (a path that does not exist here). It is held, as any lock of another host, never
    taken for a copy (9e5dd5d took it over: two commands wrote the folder at once)."""
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    lock = _lock(out, 4242, host="node-a-of-this-test")
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "folder": "/mnt/elsewhere/proj/emb"}))
    before = lock.read_bytes()
    with pytest.raises(InputError, match=r"being written by another embed \(process 4242 on host "
                                         r"node-a-of-this-test\)"):
        embed_items(items, _embed, _to_tensor, out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert lock.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_same_folder_compares_paths_links_and_the_folder_itself(tmp_path: Path) -> None:
    from dynametric.utils.locks import same_folder

    here, other = tmp_path / "a", tmp_path / "b"
    here.mkdir()
    other.mkdir()
    (tmp_path / "link").symlink_to(here)
    resolved = here.resolve()
    assert same_folder(str(resolved), resolved) and same_folder(str(tmp_path / "link"), resolved)
    assert same_folder(str(tmp_path / "a" / ".." / "a"), resolved)
    assert not same_folder(str(other), resolved) and not same_folder(str(tmp_path / "missing"), resolved)
    assert not same_folder(None, resolved) and not same_folder(7, resolved) and not same_folder("a\0b", resolved)
