"""An index folder is read consistently or refused: ``RetrievalIndex.load`` racing with a build that rewrites the
folder never pairs one build's ``items.csv`` / ``labels.npy`` with another's ``index.faiss`` (wrong ids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex
from dynametric.retrieval.index_folder import BUILD_MARKER

pytest.importorskip("faiss")

N = 40


def _set(order: np.ndarray) -> EmbeddingSet:
    """The same 40 items (``id{i}`` with vector ``x[i]`` and labels ``i % 5``, ``i % 2``) in the order ``order``."""
    x = np.random.default_rng(0).normal(size=(N, 6)).astype(np.float32)
    labels = np.stack([np.arange(N) % 5, np.arange(N) % 2], axis=1)
    return EmbeddingSet(x[order], [f"id{i}" for i in order], [f"/d/{i}.png" for i in order], labels[order],
                        ["fine", "coarse"], None, ["/d"], {}, Path("mem"))


def _check_pairs(idx: RetrievalIndex) -> None:
    """Every item's own vector finds the item under its own id and labels."""
    x = _set(np.arange(N)).embeddings
    res = idx.search(x, k=1)
    assert [idx.ids[i] for i in res.ids[:, 0]] == [f"id{i}" for i in range(N)]
    np.testing.assert_allclose(res.distances[:, 0], 0, atol=1e-5)
    assert idx.labels is not None
    np.testing.assert_array_equal(idx.labels[res.ids[:, 0]], np.stack([np.arange(N) % 5, np.arange(N) % 2], 1))


def _shuffled() -> np.ndarray:
    return np.random.default_rng(1).permutation(N)


def test_a_build_finishing_while_the_index_is_read_gives_its_index_not_a_mix(tmp_path: Path, monkeypatch) -> None:
    import dynametric.retrieval.index as index_module

    out = tmp_path / "idx"
    RetrievalIndex.build(_set(np.arange(N)), "flat", "l2").save(out)
    rebuilt = RetrievalIndex.build(_set(_shuffled()), "flat", "l2")
    real = index_module._check_kind
    calls = []

    def rebuild_meanwhile(*args):  # noqa: ANN002, ANN202
        calls.append(1)
        if len(calls) == 1:  # index.faiss was read; the rebuild replaces every file before items.csv is read
            rebuilt.save(out)
        return real(*args)

    monkeypatch.setattr(index_module, "_check_kind", rebuild_meanwhile)
    idx = RetrievalIndex.load(out)
    assert len(calls) == 2  # read again after the first reading met the new items.csv
    assert idx.ids == [f"id{i}" for i in _shuffled()]  # the new index, whole
    _check_pairs(idx)


def test_a_build_under_way_while_the_index_is_read_is_refused_with_try_again(tmp_path: Path, monkeypatch) -> None:
    import dynametric.retrieval.index as index_module

    out = tmp_path / "idx"
    RetrievalIndex.build(_set(np.arange(N)), "flat", "l2").save(out)
    other = tmp_path / "other"
    RetrievalIndex.build(_set(_shuffled()), "flat", "l2").save(other)
    real = index_module._check_kind

    def build_under_way(*args):  # noqa: ANN002, ANN202
        # a build into the folder: its marker written, then index.faiss ... items.csv; index.json not yet
        (out / BUILD_MARKER).write_text(json.dumps({"format": "dynametric-index-build", "version": 1,
                                                    "files": ["index.faiss", "items.csv", "labels.npy",
                                                              "index.json"]}))
        (out / "items.csv").write_bytes((other / "items.csv").read_bytes())
        return real(*args)

    monkeypatch.setattr(index_module, "_check_kind", build_under_way)
    with pytest.raises(InputError) as err:
        RetrievalIndex.load(out)
    assert err.value.file == str(out)
    assert "the index changed while it was read" in str(err.value) and "try again" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["items.csv", "labels.npy"])
def test_a_file_of_another_build_is_refused_by_name(tmp_path: Path, name: str) -> None:
    out, other = tmp_path / "idx", tmp_path / "other"
    RetrievalIndex.build(_set(np.arange(N)), "flat", "l2").save(out)
    RetrievalIndex.build(_set(_shuffled()), "flat", "l2").save(other)
    (out / name).write_bytes((other / name).read_bytes())  # same row count, other order
    with pytest.raises(InputError) as err:
        RetrievalIndex.load(out)
    assert err.value.file == str(out / name)
    key = "items_sha256" if name == "items.csv" else "labels_sha256"
    assert f"is not the file this index was built with (its SHA-256 differs from index.json's {key})" in str(
        err.value)


def test_index_json_records_the_digest_of_every_file_and_an_older_one_still_loads(tmp_path: Path) -> None:
    import hashlib

    out = tmp_path / "idx"
    RetrievalIndex.build(_set(np.arange(N)), "flat", "l2").save(out)
    meta = json.loads((out / "index.json").read_text())
    assert meta["faiss_sha256"] == hashlib.sha256((out / "index.faiss").read_bytes()).hexdigest()
    assert meta["items_sha256"] == hashlib.sha256((out / "items.csv").read_bytes()).hexdigest()
    labels = np.load(out / "labels.npy")
    assert meta["labels_sha256"] == hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest()
    # an index.json written before these digests: loaded, unchecked
    del meta["items_sha256"], meta["labels_sha256"]
    (out / "index.json").write_text(json.dumps(meta))
    _check_pairs(RetrievalIndex.load(out))
