"""A rebuild of an index that fails to write (a full disk, a file size limit) leaves the earlier index as it was:
every file of the new index is written aside first, and renamed into place only once all are written."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex
from dynametric.retrieval.index_folder import INDEX_FILES
from tests.disk import fail_writes_of

pytest.importorskip("faiss")


def _set(n: int, seed: int, labels: bool = True) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    fine = rng.integers(0, 5, size=n)
    lab = np.stack([fine, fine // 2], axis=1) if labels else None
    return EmbeddingSet(x, [f"s{seed}_{i}" for i in range(n)], [f"/data/{seed}/{i}.png" for i in range(n)], lab,
                        ["fine", "coarse"] if labels else [], None, ["/data"], {"weights_hash": f"w{seed}"},
                        Path("mem"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize(("failing", "labels"), [*((name, True) for name in INDEX_FILES),
                                                  *((name, False) for name in INDEX_FILES if name != "labels.npy")])
def test_a_rebuild_that_cannot_write_a_file_leaves_the_earlier_index_usable(tmp_path: Path, monkeypatch,
                                                                            failing: str, labels: bool) -> None:
    """Was: the files were renamed one by one as written, so a full disk at items.csv left the new index.faiss beside
    the old items.csv, labels.npy, index.json and the build's marker: `search` said the index changed while it was
    read."""
    out = tmp_path / "idx"
    RetrievalIndex.build(_set(40, seed=0), "flat", "cosine").save(out)
    before = _files(out)
    q = _set(6, seed=9).embeddings
    old = RetrievalIndex.load(out).search(q, 5)
    new_set = _set(50, seed=1, labels=labels)
    with monkeypatch.context() as m:
        failed = fail_writes_of(m, failing)
        with pytest.raises(OSError) as err:
            RetrievalIndex.build(new_set, "flat", "l2").save(out)
    assert len(failed) == 1
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(out / failing)
    assert _files(out) == before  # no new file renamed, no marker, no temporary file, no lock left
    again = RetrievalIndex.load(out)
    assert again.size == 40
    got = again.search(q, 5)
    np.testing.assert_array_equal(got.ids, old.ids)
    np.testing.assert_array_equal(got.distances, old.distances)
    RetrievalIndex.build(new_set, "flat", "l2").save(out)  # with room again: the new index replaces the old
    assert sorted(p.name for p in out.iterdir()) == sorted(n for n in INDEX_FILES if labels or n != "labels.npy")
    rebuilt = RetrievalIndex.load(out)
    assert rebuilt.size == 50 and rebuilt.metric == "l2" and rebuilt.ids[0] == "s1_0"
    assert (rebuilt.labels is not None) == labels
