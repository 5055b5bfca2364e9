"""A folder that holds only the temporary file of another build's lock attempt (``.dynametric.lock.<8
characters>.tmp``: there between its creation and removal in ``acquire_lock``, or left by a kill at that moment) is
one a build may write: before, ``RetrievalIndex.save`` refused it as "not empty and holds no dynametric index"
(``embed`` accepted it). The temporary file is recognised, never removed: it may be another process's lock being
taken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import LOCK_NAME, RetrievalIndex

LOCK_TEMP = f".{LOCK_NAME}.abcd1234.tmp"
CONTENT = '{"format": "dynametric-lock"}'


def _index() -> RetrievalIndex:
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    return RetrievalIndex.build(EmbeddingSet(x, [f"id{i}" for i in range(40)], [""] * 40, None, [], None, [], {},
                                             Path("mem")))


def test_a_folder_holding_only_a_lock_temp_file_is_saved_into_and_the_temp_file_kept(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    (out / LOCK_TEMP).write_text(CONTENT)
    idx = _index()
    idx.save(out)
    assert (out / "index.json").is_file()
    assert (out / LOCK_TEMP).read_text() == CONTENT  # another process's, perhaps in flight: left as it was
    back = RetrievalIndex.load(out)
    assert back.ids == idx.ids


@pytest.mark.parametrize("other", ["notes.txt", f".{LOCK_NAME}.tmp", ".other.lock.abcd1234.tmp"])
def test_a_lock_temp_file_beside_a_foreign_file_stays_refused(tmp_path: Path, other: str) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    (out / LOCK_TEMP).write_text(CONTENT)
    (out / other).write_text("the user's\n")
    with pytest.raises(InputError, match="not empty and holds no dynametric index"):
        _index().save(out)
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_TEMP, other])
