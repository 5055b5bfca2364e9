"""A long-running service can tell that its loaded index is stale: ``RetrievalIndex.digest`` names the build
``load`` checked, ``changed_on_disk()`` re-reads ``index.json`` only; a load that meets a build under way raises
``IndexChangedError`` (an InputError), which a retry loop catches."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dynametric.errors import DynametricError, InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import IndexChangedError, RetrievalIndex
from dynametric.retrieval.index_folder import BUILD_MARKER

pytest.importorskip("faiss")


def _set(seed: int, n: int = 30) -> EmbeddingSet:
    x = np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)
    return EmbeddingSet(x, [f"id{i}" for i in range(n)], [""] * n, None, [], None, [], {}, Path("mem"))


def test_changed_on_disk_after_a_rebuild_and_not_before(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    RetrievalIndex.build(_set(0), "flat", "l2").save(out)
    idx = RetrievalIndex.load(out)
    assert idx.digest == hashlib.sha256((out / "index.json").read_bytes()).hexdigest()
    assert idx.loaded_from == out and not idx.changed_on_disk()
    RetrievalIndex.build(_set(0), "flat", "l2").save(out)  # the same index again: the same build
    assert not idx.changed_on_disk()
    RetrievalIndex.build(_set(1), "flat", "l2").save(out)
    assert idx.changed_on_disk()
    assert idx.changed_on_disk()  # polling does not change the answer
    new = RetrievalIndex.load(out)
    assert new.digest != idx.digest and not new.changed_on_disk()
    (out / "index.json").unlink()
    assert new.changed_on_disk()


def test_a_build_under_way_is_no_change_until_its_index_json(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    RetrievalIndex.build(_set(0), "flat", "l2").save(out)
    idx = RetrievalIndex.load(out)
    (out / BUILD_MARKER).write_text(json.dumps({"format": "dynametric-index-build", "version": 1,
                                                "files": ["index.faiss", "items.csv", "labels.npy", "index.json"]}))
    (out / "index.faiss").write_bytes(b"half written")
    assert not idx.changed_on_disk()


def test_an_index_not_loaded_cannot_say(tmp_path: Path) -> None:
    idx = RetrievalIndex.build(_set(0), "flat", "l2")
    assert idx.digest == "" and idx.loaded_from is None
    with pytest.raises(DynametricError, match="not loaded from a folder"):
        idx.changed_on_disk()


def test_a_saved_index_is_its_folder_s_until_another_build(tmp_path: Path) -> None:
    """After save() the object is the folder's index as after load(): the same digest, and a later build into the
    folder is a change."""
    idx = RetrievalIndex.build(_set(0), "flat", "l2")
    idx.save(tmp_path / "idx")
    assert idx.loaded_from == tmp_path / "idx" and not idx.changed_on_disk()
    assert idx.digest == RetrievalIndex.load(tmp_path / "idx").digest != ""
    RetrievalIndex.build(_set(1), "flat", "l2").save(tmp_path / "idx")
    assert idx.changed_on_disk()


def load_retrying(path: Path, tries: int = 5, pause: Callable[[], None] = lambda: time.sleep(1.0)) -> RetrievalIndex:
    """docs/retrieval.md's retry loop (``pause``: what the service does between tries)."""
    for attempt in range(tries):
        try:
            return RetrievalIndex.load(path)
        except IndexChangedError:
            if attempt == tries - 1:
                raise
            pause()
    raise AssertionError("unreachable")


MARKER = {"format": "dynametric-index-build", "version": 1,
          "files": ["index.faiss", "items.csv", "labels.npy", "index.json"]}


def test_a_load_meeting_a_build_under_way_raises_index_changed_and_a_retry_loads(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    import dynametric.retrieval.index as index_module

    out = tmp_path / "idx"
    RetrievalIndex.build(_set(0), "flat", "l2").save(out)
    other = tmp_path / "other"
    RetrievalIndex.build(_set(1, n=31), "flat", "l2").save(other)
    real = index_module._check_kind
    calls: list[int] = []

    def build_starts(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        if len(calls) == 1:  # a build starts writing the folder while index.faiss is read
            (out / BUILD_MARKER).write_text(json.dumps(MARKER))
            (out / "items.csv").write_bytes((other / "items.csv").read_bytes())
        return real(*args)

    monkeypatch.setattr(index_module, "_check_kind", build_starts)
    pauses: list[int] = []

    def build_finishes() -> None:
        pauses.append(1)
        RetrievalIndex.build(_set(1, n=31), "flat", "l2").save(out)

    idx = load_retrying(out, pause=build_finishes)
    assert len(pauses) == 1 and idx.size == 31 and not idx.changed_on_disk()
    assert not (out / BUILD_MARKER).exists()

    def build_under_way(*args):  # noqa: ANN002, ANN202
        (out / BUILD_MARKER).write_text(json.dumps(MARKER))
        (out / "items.csv").write_text("index,id,path\n0,half,\n")
        return real(*args)

    monkeypatch.setattr(index_module, "_check_kind", build_under_way)
    with pytest.raises(IndexChangedError) as err:  # a build that never finishes: the last try's error
        load_retrying(out, tries=3, pause=lambda: None)
    assert isinstance(err.value, InputError) and "the index changed while it was read" in str(err.value)
    assert err.value.file == str(out) and "\n" not in str(err.value)
