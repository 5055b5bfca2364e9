"""A part that a command rewrote while ``merge-embeddings`` read it is read again (up to ``LOAD_TRIES`` times, as
the index loader does), refused only when it keeps changing; a folder that changed while it was read, whose writer
still holds its lock, is said to be written by that command (its process) right now, by the merge,
``load_embedding_set`` and ``RetrievalIndex.load`` alike."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

import dynametric.retrieval.embed as E
from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import load_embedding_set, merge_embedding_parts
from dynametric.retrieval.index_files import LOAD_TRIES, FolderChangedError
from dynametric.utils.output_locks import LOCK_NAME


@pytest.fixture(scope="module")
def parts(run_ckpt: Path, image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("reread")
    argv = ["embed", "--checkpoint", str(run_ckpt), "--csv", str(image_root / "labels.csv"), "--device", "cpu",
            "--batch-size", "4", "--shard-size", "3", "--no-progress"]
    assert main([*argv, "--out", str(root / "whole")]) == 0
    for k in range(2):
        assert main([*argv, "--out", str(root / f"p{k}"), "--part", f"{k}/2"]) == 0
    return {"whole": root / "whole", "parts": [root / "p0", root / "p1"]}


def _copy(parts: dict, tmp_path: Path) -> list[Path]:
    return [Path(shutil.copytree(p, tmp_path / p.name)) for p in parts["parts"]]


def _rewrite(folder: Path) -> None:
    """``folder``'s embed.json written again (the same job, a new file: what an ``embed --overwrite`` that ends with
    the same result leaves)."""
    tmp = folder / ".embed.json.again.tmp"
    shutil.copyfile(folder / "embed.json", tmp)
    os.replace(tmp, folder / "embed.json")


def _rewrite_while_read(monkeypatch: pytest.MonkeyPatch, folder: Path, times: int) -> list[int]:
    """Each of the first ``times`` reads of ``folder``'s embeddings is followed by a rewrite of its embed.json."""
    real = E.load_job_embeddings
    done: list[int] = []

    def reading(path: Path, meta: dict, **kw):  # noqa: ANN003, ANN202
        rows = real(path, meta, **kw)
        if Path(path) == folder and len(done) < times:
            done.append(1)
            _rewrite(folder)
        return rows

    monkeypatch.setattr(E, "load_job_embeddings", reading)
    return done


def _lock(folder: Path, pid: int, command: str) -> None:
    (folder / LOCK_NAME).write_text(json.dumps({"format": "dynametric-lock", "command": command, "pid": pid,
                                                "host": socket.gethostname(), "folder": str(folder.resolve()),
                                                "token": "t"}))


@pytest.mark.parametrize("times", [1, LOAD_TRIES - 1])
def test_a_part_rewritten_while_the_merge_reads_it_is_read_again(parts: dict, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    p0, p1 = _copy(parts, tmp_path)
    done = _rewrite_while_read(monkeypatch, p1, times)
    res = merge_embedding_parts([p0, p1], tmp_path / "m")  # was: refused at the first change
    assert len(done) == times and res.count == 12
    whole = parts["whole"]
    np.testing.assert_allclose(np.load(tmp_path / "m" / "embeddings.npy"), np.load(whole / "embeddings.npy"),
                               rtol=0, atol=1e-6)
    assert (tmp_path / "m" / "items.csv").read_bytes() == (whole / "items.csv").read_bytes()


def test_a_part_that_keeps_changing_is_refused(parts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p0, p1 = _copy(parts, tmp_path)
    done = _rewrite_while_read(monkeypatch, p0, 99)
    with pytest.raises(FolderChangedError) as err:
        merge_embedding_parts([p0, p1], tmp_path / "m")
    assert len(done) == LOAD_TRIES  # read LOAD_TRIES times, then refused
    assert str(err.value) == (f"{p0}: the embed folder changed while it was read: a `dynametric embed` or "
                              "`merge-embeddings` wrote it meanwhile; try again (run the merge again)")
    assert not (tmp_path / "m").exists()


def test_a_part_that_keeps_changing_names_its_writer(parts: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    p0, p1 = _copy(parts, tmp_path)
    _lock(p1, os.getppid(), "embed")  # a process still running on this host holds the part's lock
    _rewrite_while_read(monkeypatch, p1, 99)
    with pytest.raises(FolderChangedError) as err:
        merge_embedding_parts([p0, p1], tmp_path / "m")
    assert str(err.value) == (f"{p1}: is being written by embed (process {os.getppid()}) right now; wait for it to "
                              "finish")


def test_load_embedding_set_of_a_folder_that_keeps_changing_names_its_writer(parts: dict, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(shutil.copytree(parts["whole"], tmp_path / "emb"))
    done = _rewrite_while_read(monkeypatch, folder, 99)
    with pytest.raises(FolderChangedError) as err:
        load_embedding_set(folder)
    assert len(done) == LOAD_TRIES and "the embed folder changed while it was read" in str(err.value)
    _lock(folder, os.getppid(), "merge-embeddings")
    with pytest.raises(FolderChangedError) as err:
        load_embedding_set(folder)
    assert str(err.value) == (f"{folder}: is being written by merge-embeddings (process {os.getppid()}) right now; "
                              "wait for it to finish")


def test_index_load_during_a_build_names_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    import dynametric.retrieval.index as index_module
    from dynametric.retrieval.embed import EmbeddingSet
    from dynametric.retrieval.index import IndexChangedError, RetrievalIndex
    from dynametric.retrieval.index_folder import BUILD_MARKER

    out = tmp_path / "idx"
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    RetrievalIndex.build(EmbeddingSet(x, [f"id{i}" for i in range(20)], [""] * 20, None, [], None, [], {},
                                      Path("mem")), "flat", "l2").save(out)
    real = index_module._check_kind

    def build_under_way(*args):  # noqa: ANN002, ANN202
        (out / BUILD_MARKER).write_text(json.dumps({"format": "dynametric-index-build", "version": 1,
                                                    "files": ["index.faiss", "items.csv", "labels.npy",
                                                              "index.json"]}))
        (out / "items.csv").write_text("index,id,path\n0,half,\n")
        return real(*args)

    monkeypatch.setattr(index_module, "_check_kind", build_under_way)
    with pytest.raises(IndexChangedError, match="the index changed while it was read"):
        RetrievalIndex.load(out)  # a marker, no live lock: running or stopped, it cannot say
    _lock(out, os.getppid(), "index build")
    with pytest.raises(IndexChangedError) as err:
        RetrievalIndex.load(out)
    assert isinstance(err.value, InputError)
    assert str(err.value) == (f"{out}: is being written by index build (process {os.getppid()}) right now; wait for "
                              "it to finish")
