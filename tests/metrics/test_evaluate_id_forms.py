"""evaluate_embeddings' query/gallery ids: texts on one side and numbers on the other are refused in one line (they
never match, so nothing was excluded: a query found itself in the gallery); [N, 1] arrays and tensors are read as
[N]; other shapes and ids that cannot be one value are refused naming the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings

# four queries, each with its own copy in the gallery and one other item of its class farther away: with the
# copies excluded (same id) recall@1 counts the nearest other item; without, every query finds its copy (1.0)
Q = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
QL = np.array([0, 1, 2, 3])
G = np.concatenate([Q, np.array([[0.9, 0.2], [0.6, 0.5], [-0.9, -0.2], [-0.7, 0.7]], dtype=np.float32)])
GL = np.array([0, 1, 2, 3, 0, 1, 2, 0])  # the fourth "far" item is class 0: query 3 (class 3) has no other match
QID = np.arange(4)
GID = np.array([0, 1, 2, 3, 10, 11, 12, 13])


def _recall(**ids: object) -> float:
    return float(evaluate_embeddings(Q, QL, G, GL, metrics=["recall@1"], **ids)["fine"]["recall@1"])


def _hand() -> float:
    """recall@1 with each query's own copy left out, from the cosine similarities by hand."""
    others = G[4:] / np.linalg.norm(G[4:], axis=1, keepdims=True)
    hits = []
    for q, lab in zip(Q, QL):
        if not (GL[4:] == lab).any():  # no relevant item left: excluded from the mean (empty_queries=exclude)
            continue
        hits.append(GL[4:][int(np.argmax(others @ q))] == lab)
    return float(np.mean(hits))


def test_ids_exclude_the_copies() -> None:
    want = _hand()
    assert want == pytest.approx(2 / 3)  # queries 0 and 2 find their class, 1 finds class 0, 3 is excluded
    assert _recall() == 1.0
    assert _recall(query_ids=QID, gallery_ids=GID) == pytest.approx(want)
    assert _recall(query_ids=QID.astype(str), gallery_ids=GID.astype(str)) == pytest.approx(want)


def test_text_and_number_ids_are_refused() -> None:
    with pytest.raises(InputError, match=r"key 'query_ids'.*query ids are texts \(e.g. '0'\) and the gallery ids "
                                         r"numbers \(e.g. 0\)"):
        _recall(query_ids=QID.astype(str), gallery_ids=GID)
    with pytest.raises(InputError, match="key 'query_ids'.*query ids are numbers.*gallery ids texts"):
        _recall(query_ids=list(range(4)), gallery_ids=[str(i) for i in GID])
    with pytest.raises(InputError, match="numbers.*texts"):
        _recall(query_ids=torch.arange(4), gallery_ids=[str(i) for i in GID])


def test_bytes_and_text_ids_are_refused() -> None:
    # bytes ids (a numpy "S" array, as h5py returns text) never equal str ids: nothing was excluded (recall@1 1.0)
    with pytest.raises(InputError, match=r"query ids are bytes \(e.g. b'0'\) and the gallery ids texts.*decode"):
        _recall(query_ids=QID.astype("S"), gallery_ids=[str(i) for i in GID])
    with pytest.raises(InputError, match="query ids are texts.*gallery ids bytes"):
        _recall(query_ids=[str(i) for i in QID], gallery_ids=GID.astype("S"))
    with pytest.raises(InputError, match="bytes never equal a number"):
        _recall(query_ids=QID.astype("S"), gallery_ids=GID)
    assert _recall(query_ids=QID.astype("S"), gallery_ids=GID.astype("S")) == pytest.approx(_hand())


def test_a_side_with_two_kinds_is_read_as_given() -> None:
    # one kind in common: the ids that can match do (query 0's text "0" excludes the gallery's "0" only)
    gid = ["0", 1, 2, 3, 10, 11, 12, 13]
    got = evaluate_embeddings(Q, QL, G, GL, metrics=["recall@1"], per_query=True, query_ids=["0", "1", "2", "3"],
                              gallery_ids=gid)
    # query 1 ("1") keeps its copy (gallery id 1, a number): it finds it; with the copy excluded it finds class 0
    assert got[1]["fine"]["recall@1"][1] == 1.0
    assert _recall(query_ids=QID, gallery_ids=GID) < 1.0


def test_n1_ids_are_read_as_n() -> None:
    want = _hand()
    assert _recall(query_ids=QID[:, None], gallery_ids=GID[:, None]) == pytest.approx(want)
    assert _recall(query_ids=torch.from_numpy(QID)[:, None], gallery_ids=GID) == pytest.approx(want)
    assert _recall(query_ids=list(QID[:, None]), gallery_ids=GID) == pytest.approx(want)  # rows of one value
    assert _recall(query_ids=[[int(i)] for i in QID], gallery_ids=GID) == pytest.approx(want)  # lists


def test_other_id_shapes_are_refused() -> None:
    with pytest.raises(InputError, match=r"key 'query_ids'.*\[N\] or \[N, 1\].*\[4, 2\]"):
        _recall(query_ids=np.stack([QID, QID], 1), gallery_ids=GID)
    with pytest.raises(InputError, match=r"key 'gallery_ids'.*row 0 is \[0, 0\]"):
        _recall(query_ids=QID, gallery_ids=[[int(i), 0] for i in GID])
    with pytest.raises(InputError, match=r"key 'query_ids'.*row 0 holds \(2,\) values"):
        _recall(query_ids=list(np.stack([QID, QID], 1)), gallery_ids=GID)
