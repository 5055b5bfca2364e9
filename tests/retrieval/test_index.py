"""dynametric.retrieval.index: exact search vs brute force, scale grouping / same-label filtering vs a reference
loop, approximate kinds vs exact, save/load round trip, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.errors import DynametricError, InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import (
    LOCK_NAME,
    RetrievalIndex,
    first_per_group,
    require_faiss,
    take_first_k,
)
from dynametric.retrieval.index_folder import BUILD_MARKER, INDEX_FILES


def make_set(n: int = 60, d: int = 8, seed: int = 0, labels: bool = True) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    fine = rng.integers(0, 12, size=n)
    lab = np.stack([fine, fine // 4], axis=1) if labels else None
    return EmbeddingSet(x, [f"id{i}" for i in range(n)], [f"/data/{i}.png" for i in range(n)], lab,
                        ["fine", "coarse"] if labels else [], None, ["/data"], {"weights_hash": "abc"}, Path("mem"))


def brute(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Reference distances [Q, N] (smaller = closer) with the index's reporting convention."""
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        return 1 - qn @ xn.T
    if metric == "l2":
        return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return -(q @ x.T)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_flat_search_equals_brute_force(metric: str) -> None:
    s = make_set()
    idx = RetrievalIndex.build(s, "flat", metric)
    q = np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32)
    res = idx.search(q, 5)
    ref = brute(s.embeddings, q, metric)
    order = np.argsort(ref, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(res.ids, order)
    np.testing.assert_allclose(res.distances, np.take_along_axis(ref, order, 1), atol=1e-4)


def reference_grouped(dist_row: np.ndarray, groups: np.ndarray, k: int, keep=None) -> list[int]:
    out, seen = [], set()
    for i in np.argsort(dist_row, kind="stable"):
        if keep is not None and not keep[i]:
            continue
        if groups is not None:
            if groups[i] in seen:
                continue
            seen.add(groups[i])
        out.append(int(i))
        if len(out) == k:
            break
    return out


def test_scale_grouping_and_same_filter_match_reference_loops() -> None:
    s = make_set()
    idx = RetrievalIndex.build(s, "flat", "cosine")
    q = np.random.default_rng(2).normal(size=(9, 8)).astype(np.float32)
    ref = brute(s.embeddings, q, "cosine")
    for scale, col in (("fine", 0), ("coarse", 1)):
        res = idx.search(q, 4, scale=scale)
        for r in range(len(q)):
            want = reference_grouped(ref[r], s.labels[:, col], 4)
            got = [i for i in res.ids[r] if i >= 0]
            assert got == want
        # coarse has only 3 classes: the 4th slot is empty
        if scale == "coarse":
            assert (res.ids[:, 3] == -1).all() and np.isnan(res.distances[:, 3]).all()
    # same coarse label as the predicted (nearest item's) label
    res = idx.search(q, 6, same="coarse")
    for r in range(len(q)):
        target = s.labels[np.argmin(ref[r]), 1]
        assert res.query_groups[r] == target
        assert [i for i in res.ids[r] if i >= 0] == reference_grouped(ref[r], None, 6, s.labels[:, 1] == target)
    # with the queries' own labels
    ql = np.array([[0, r % 3] for r in range(len(q))])
    res = idx.search(q, 6, same="coarse", query_labels=ql)
    for r in range(len(q)):
        assert [i for i in res.ids[r] if i >= 0] == reference_grouped(ref[r], None, 6, s.labels[:, 1] == r % 3)


def test_many_queries_and_k_beyond_the_classes_stop_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """More queries than one chunk; k larger than the classes at the scale / the class sizes: exact results, and
    the candidate list does not grow to the whole index just because k cannot be reached."""
    import dynametric.retrieval.index as mod

    rng = np.random.default_rng(5)
    n = 3000
    x = rng.normal(size=(n, 8)).astype(np.float32)
    fine = rng.integers(0, 300, n)
    s = EmbeddingSet(x, [str(i) for i in range(n)], [""] * n, np.stack([fine, fine % 3], 1), ["fine", "coarse"],
                     None, [], {}, Path("mem"))
    idx = RetrievalIndex.build(s, "flat", "cosine")
    asked: list[int] = []
    real = mod.faiss_search
    monkeypatch.setattr(mod, "faiss_search", lambda index, q, k: asked.append(k) or real(index, q, k))
    q = x[:150] + 0.01
    res = idx.search(q, 5, scale="coarse", exclude=np.arange(150))
    assert max(asked) < n and (res.ids[:, 3:] == -1).all()
    plain = brute(x, q, "cosine")
    ref = plain.copy()
    ref[np.arange(150), np.arange(150)] = np.inf  # excluded
    for r in range(150):
        assert [i for i in res.ids[r] if i >= 0] == reference_grouped(ref[r], s.labels[:, 1], 5)
    res = idx.search(q, 12, same="fine", query_labels=s.labels[:150])  # classes hold ~10 items: k unreachable
    for r in range(150):
        members = s.labels[:, 0] == s.labels[r, 0]
        assert [i for i in res.ids[r] if i >= 0] == reference_grouped(plain[r], None, 12, members)


def test_exclude_drops_the_query_itself() -> None:
    s = make_set()
    idx = RetrievalIndex.build(s, "flat", "cosine")
    res = idx.search(s.embeddings[:5], 3)
    assert res.ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    res = idx.search(s.embeddings[:5], 3, exclude=np.arange(5))
    assert not (res.ids == np.arange(5)[:, None]).any()
    ref = brute(s.embeddings, s.embeddings[:5], "cosine")
    np.testing.assert_array_equal(res.ids, np.argsort(ref, axis=1, kind="stable")[:, 1:4])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**16))
def test_first_per_group_and_take_first_k_properties(rows: int, cols: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, size=(rows, cols))
    valid = rng.random((rows, cols)) > 0.2
    mask = first_per_group(groups, valid)
    pos = take_first_k(mask, k)
    for r in range(rows):
        seen, want = set(), []
        for c in range(cols):
            if valid[r, c] and groups[r, c] not in seen:
                seen.add(groups[r, c])
                want.append(c)
        assert np.nonzero(mask[r])[0].tolist() == want
        assert pos[r].tolist() == (want[:k] + [-1] * k)[:k]


@pytest.mark.parametrize(("kind", "kwargs"), [("ivf", {"nlist": 16, "nprobe": 8}), ("hnsw", {"m": 16})])
def test_approximate_kinds_recall_against_flat(kind: str, kwargs: dict) -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(20, 16)) * 4
    x = (centers[rng.integers(0, 20, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    s = EmbeddingSet(x, [str(i) for i in range(2000)], [""] * 2000, None, [], None, [], {}, Path("mem"))
    q = x[:50] + 0.1 * rng.normal(size=(50, 16)).astype(np.float32)
    exact = RetrievalIndex.build(s, "flat", "cosine").search(q, 10).ids
    approx = RetrievalIndex.build(s, kind, "cosine", **kwargs).search(q, 10).ids
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_save_load_round_trip_keeps_results_and_metadata(tmp_path: Path) -> None:
    s = make_set()
    s.class_names = [[], ["a", "b", "c"]]
    q = np.random.default_rng(4).normal(size=(4, 8)).astype(np.float32)
    for kind in ("flat", "ivf", "hnsw"):
        idx = RetrievalIndex.build(s, kind, "l2", **({"nlist": 1} if kind == "ivf" else {}))
        idx.save(tmp_path / kind)
        back = RetrievalIndex.load(tmp_path / kind)
        assert (back.kind, back.metric, back.dim, back.ids, back.scale_names) == (kind, "l2", 8, s.ids,
                                                                                 ["fine", "coarse"])
        assert back.model == {"weights_hash": "abc"} and back.image_roots == ["/data"]
        np.testing.assert_array_equal(back.labels, s.labels)
        a, b = idx.search(q, 5, scale="fine"), back.search(q, 5, scale="fine")
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(back.reconstruct(3), s.embeddings[3], atol=1e-6)
        hit = back.describe(back.search(q[:1], 1), ["q"])[0]["results"][0]
        assert hit["labels"]["coarse"] == "abc"[int(s.labels[hit["index"], 1])]


def test_clear_errors(tmp_path: Path) -> None:
    idx = RetrievalIndex.build(make_set(), "flat", "cosine")
    with pytest.raises(InputError, match="dimension 5 .* index has dimension 8"):
        idx.search(np.zeros((2, 5), np.float32), 3)
    with pytest.raises(InputError, match=r"unknown scale 'family'; this index has scales \['fine', 'coarse'\]"):
        idx.search(np.ones((1, 8), np.float32), 3, scale="family")
    with pytest.raises(InputError, match="NaN"):
        idx.search(np.full((1, 8), np.nan, np.float32), 3)
    with pytest.raises(InputError, match="index not found"):
        RetrievalIndex.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="no index.json"):
        RetrievalIndex.load(tmp_path / "half")
    unlabeled = RetrievalIndex.build(make_set(labels=False), "flat", "cosine")
    with pytest.raises(InputError, match="no labels"):
        unlabeled.search(np.ones((1, 8), np.float32), 3, same="fine")


def test_cosine_index_refuses_all_zero_query_rows() -> None:
    """A zero vector has no direction: a cosine index refuses it (as ``index build`` and ``evaluate`` do), counting
    the rows and naming the first; l2 and ip indexes search it (its distances are well defined there)."""
    q = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
    q[[1, 3]] = 0.0
    idx = RetrievalIndex.build(make_set(), "flat", "cosine")
    with pytest.raises(InputError) as info:
        idx.search(q, 3)
    assert str(info.value) == ("queries: 2 all-zero row(s), first at row 1 (0-based): a zero vector has no direction "
                               "for cosine; fix the embeddings or search an index built with --metric l2")
    with pytest.raises(InputError, match=r"^q\.npy: 1 all-zero row\(s\), first at row 0 \(0-based\): a zero vector"):
        idx.check_queries(np.zeros(8, np.float32), source="q.npy")
    with pytest.raises(InputError, match="all-zero"):
        idx.search(q[1], 1)  # one row given as [D]
    assert idx.search(q[[0, 2, 4]], 3).ids.shape == (3, 3)  # the other rows are fine
    for metric in ("l2", "ip"):
        res = RetrievalIndex.build(make_set(), "flat", metric).search(q, 3)
        assert (res.ids >= 0).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k": 2.5}, "key 'k': k must be an integer >= 1, got 2.5"),
    ({"k": True}, "key 'k': k must be an integer >= 1, got True"),
    ({"k": 0}, "key 'k': k must be an integer >= 1, got 0"),
    ({"k": "3"}, "key 'k': k must be an integer >= 1, got '3'"),
    ({"same": "fine", "query_labels": np.zeros((3, 2), np.int64)},
     "key 'query_labels': query_labels must be [Q] or [Q, S] with one row per query: got shape (3, 2) for 4 queries"),
    ({"same": "fine", "query_labels": np.zeros(8, np.int64)},
     "key 'query_labels': query_labels must be [Q] or [Q, S] with one row per query: got shape (8, 1) for 4 queries"),
    ({"same": "fine", "query_labels": np.zeros((4, 3), np.int64)},
     "key 'query_labels': query labels have 3 scales, the index 2"),
    ({"same": "fine", "query_labels": np.full((4, 2), 0.5)},
     "key 'query_labels': query_labels must be integer class ids (floats only with integral values)"),
    ({"same": "fine", "query_labels": np.full((4, 2), "a")},
     "key 'query_labels': query_labels must be integer class ids, got dtype <U1"),
    ({"query_labels": np.zeros((5, 2), np.int64)},  # checked whether or not same= reads them
     "key 'query_labels': query_labels must be [Q] or [Q, S] with one row per query: got shape (5, 2) for 4 queries"),
])
def test_search_arguments_are_one_line_errors_keyed_to_the_argument(kwargs, message) -> None:
    """The Python API checks what the command line checks (there: -k and --query-labels), instead of a TypeError
    from a comparison or range() or numpy's "cannot reshape"."""
    idx = RetrievalIndex.build(make_set(), "flat", "cosine")
    q = np.random.default_rng(3).normal(size=(4, 8)).astype(np.float32)
    kwargs = {"k": 3, **kwargs}
    with pytest.raises(InputError) as info:
        idx.search(q, **kwargs)
    assert str(info.value) == message


def test_search_query_labels_of_one_scale_and_integral_floats_are_read_as_class_ids() -> None:
    s = make_set()
    idx = RetrievalIndex.build(s, "flat", "cosine")
    q = s.embeddings[:4]
    want = idx.search(q, 5, same="fine", query_labels=s.labels[:4])
    got = idx.search(q, 5, same="fine", query_labels=s.labels[:4].astype(np.float64))
    np.testing.assert_array_equal(got.ids, want.ids)
    assert all((s.labels[row[row >= 0], 0] == s.labels[i, 0]).all() for i, row in enumerate(want.ids))
    one = RetrievalIndex.build(EmbeddingSet(s.embeddings, s.ids, s.paths, s.labels[:, :1], ["fine"], None,
                                            ["/data"], {}, Path("mem")), "flat", "cosine")
    np.testing.assert_array_equal(one.search(q, 5, same="fine", query_labels=s.labels[:4, 0]).ids, want.ids)
    assert int(np.int64(3)) == idx.search(q, np.int64(3)).ids.shape[1]  # a numpy integer is an integer


def test_missing_faiss_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(DynametricError, match=r"pip install 'dynametric\[faiss\]'"):
        require_faiss()


_KILLED_BUILD = """
import os, signal, sys
import numpy as np
import dynametric.retrieval.index as index_module
from dynametric.cli import main

def killed(index, writer):  # SIGKILL while the first file (index.faiss) is written: its temporary file stays
    os.kill(os.getpid(), signal.SIGKILL)

faiss = index_module.require_faiss()
faiss.write_index = killed
index_module.require_faiss = lambda: faiss
sys.exit(main(["index", "build", "--embeddings", sys.argv[1], "--out", sys.argv[2]]))
"""


def _killed_first_build(tmp_path: Path) -> tuple[Path, Path]:
    """``dynametric index build --embeddings EMB --out IDX`` killed (SIGKILL) before it wrote index.json."""
    import os
    import subprocess

    emb, out = tmp_path / "x.npy", tmp_path / "idx"
    np.save(emb, make_set(40).embeddings)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(emb), str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert (out / LOCK_NAME).is_file()  # the killed build's lock, taken over by the next build (its process ended)
    # every file is written aside before any is renamed: the marker's and index.faiss's temporary files are left
    marker, temp = sorted((p for p in out.iterdir() if p.name != LOCK_NAME), key=lambda p: p.name)
    assert marker.name.startswith(f".{BUILD_MARKER}.") and marker.name.endswith(".tmp")  # written before index.faiss
    assert temp.name.startswith(".index.faiss.") and temp.name.endswith(".tmp") and len(temp.name) == 25
    return emb, out


def test_a_first_index_build_killed_before_index_json_builds_again(tmp_path: Path, capsys) -> None:
    from dynametric.cli import main

    emb, out = _killed_first_build(tmp_path)
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "index.json", "items.csv"]  # the temp file gone
    assert RetrievalIndex.load(out).size == 40


@pytest.mark.parametrize("other", ["notes.txt", ".index.faiss.MINE.tmp", ".other.bin.abcdefgh.tmp",
                                   ".index.json.abcdefgh.tmp/", "link:.items.csv.abcdefgh.tmp"])
def test_a_killed_first_build_beside_any_other_file_stays_refused(tmp_path: Path, capsys, other: str) -> None:
    from dynametric.cli import main

    emb, out = _killed_first_build(tmp_path)
    if other.endswith("/"):
        (out / other[:-1]).mkdir()  # a folder named like a temporary file is not one
    elif other.startswith("link:"):
        (tmp_path / "mine.csv").write_text("my own items\n")
        (out / other[5:]).symlink_to(tmp_path / "mine.csv")  # nor a link named like one
    else:
        (out / other).write_text("the user's\n")
    before = {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir()}
    capsys.readouterr()
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(out)]) == 2
    assert "output folder is not empty and holds no dynametric index (index.json)" in capsys.readouterr().err
    # untouched, the killed build's own lock included: the command refuses the folder before it takes the lock
    assert {p.name: p.read_bytes() if p.is_file() else None for p in out.iterdir()} == before


class _Killed(BaseException):
    """A kill of the build (not an Exception: nothing of the build's own error handling runs)."""


_STAGED = (BUILD_MARKER, *INDEX_FILES)  # written aside in this order, then renamed in this order
_KILL_POINTS = (*(f"write {name}" for name in _STAGED), *(f"rename {name}" for name in _STAGED), "after index.json")


def _kill_build_at(monkeypatch: pytest.MonkeyPatch, point: str) -> list[str]:
    """Make the next ``RetrievalIndex.save`` die (as a SIGKILL: none of its own clean-up runs) while it writes the
    temporary file of ``write <file>`` (that file stays), right before it renames ``rename <file>`` into place, or
    right after it renamed ``index.json`` (``"after index.json"``). Returns the files it writes, in order."""
    import os
    import tempfile

    import dynametric.utils.io as io_mod  # StagedFiles, which the build stages and renames its files with

    written: list[str] = []

    def stage(real):  # noqa: ANN001, ANN202
        def write(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            path = Path(path)
            written.append(path.name)
            if point == f"write {path.name}":  # killed in the middle of this write: mkstemp's file, as _replacing
                fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # makes it
                os.write(fd, b"half a file")
                os.close(fd)
                raise _Killed
            return real(path, *args, **kwargs)
        return write

    real_commit = io_mod.commit_staged

    def commit(tmp, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if point == f"rename {Path(path).name}":
            raise _Killed
        real_commit(tmp, path, **kwargs)
        if point == "after index.json" and Path(path).name == "index.json":
            raise _Killed

    # every staged file is written through stage_open (stage_bytes too): each write is seen once
    monkeypatch.setattr(io_mod, "stage_open", stage(io_mod.stage_open))
    monkeypatch.setattr(io_mod, "commit_staged", commit)
    monkeypatch.setattr(io_mod, "discard_staged", lambda tmps: None)  # a kill: nothing is cleaned up
    return written


@pytest.mark.parametrize("point", _KILL_POINTS)
def test_an_index_build_killed_at_any_write_is_built_again(tmp_path: Path, monkeypatch, point: str) -> None:
    emb = make_set(40)
    fresh = tmp_path / "fresh"
    RetrievalIndex.build(emb, "flat", "cosine").save(fresh)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(INDEX_FILES)  # no marker once complete
    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        written = _kill_build_at(m, point)
        with pytest.raises(_Killed):
            RetrievalIndex.build(emb, "flat", "cosine").save(out)
    assert written[0] == BUILD_MARKER
    assert written == list(_STAGED[:_STAGED.index(point[6:]) + 1] if point.startswith("write ") else _STAGED)
    left = {p.name for p in out.iterdir()}
    # a kill while writing aside leaves only temporary files; one while renaming, the files renamed before it
    renamed = set(_STAGED) if point == "after index.json" else set(
        _STAGED[:_STAGED.index(point[7:])] if point.startswith("rename ") else ())
    assert {name for name in left if not name.startswith(".")} == renamed
    if renamed:
        assert BUILD_MARKER in left  # whatever else the kill left, the marker says whose files they are
    if point in ("rename index.json", "after index.json"):
        assert {"index.faiss", "items.csv", "labels.npy"} <= left  # the case that needed a manual clear
    if point == "after index.json":
        assert RetrievalIndex.load(out).size == 40  # complete: only the marker is left over
    RetrievalIndex.build(emb, "flat", "cosine").save(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(INDEX_FILES)  # marker and temporary files gone
    for name in ("items.csv", "labels.npy", "index.json"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    back = RetrievalIndex.load(out)
    q = make_set(5, seed=3).embeddings
    np.testing.assert_array_equal(back.search(q, 4).ids, RetrievalIndex.load(fresh).search(q, 4).ids)


def test_a_killed_build_with_labels_rebuilt_without_them_removes_its_labels_npy(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "idx"
    with monkeypatch.context() as m:
        _kill_build_at(m, "rename index.json")
        with pytest.raises(_Killed):
            RetrievalIndex.build(make_set(40), "flat", "cosine").save(out)
    assert (out / "labels.npy").is_file()
    RetrievalIndex.build(make_set(40, labels=False), "flat", "cosine").save(out)
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "index.json", "items.csv"]
    assert RetrievalIndex.load(out).labels is None


@pytest.mark.parametrize("marker", [None, "not json", {"format": "someone-else", "files": list(INDEX_FILES)},
                                    {"format": "dynametric-index-build", "files": ["index.json"]}])
def test_a_folder_with_an_index_faiss_a_build_did_not_mark_as_its_own_is_refused(tmp_path: Path, marker) -> None:
    """A foreign index.faiss (no marker, a marker that is not a build's, or one that does not list it) is never
    replaced, even beside what looks like a killed build's temporary file."""
    import json

    out = tmp_path / "idx"
    out.mkdir()
    (out / "index.faiss").write_bytes(b"the user's own faiss index")
    (out / ".items.csv.abcdefgh.tmp").write_text("x")
    if marker is not None:
        (out / BUILD_MARKER).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match="output folder is not empty and holds no dynametric index"):
        RetrievalIndex.build(make_set(40), "flat", "cosine").save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_file_named_like_the_build_marker_beside_an_earlier_index_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    RetrievalIndex.build(make_set(40), "flat", "cosine").save(out)
    (out / BUILD_MARKER).write_text("the user's notes\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError, match=r"index\.build\.json key '--out': is not the marker of a dynametric index"):
        RetrievalIndex.build(make_set(30), "flat", "cosine").save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("mode", [{}, {"scale": "fine"}, {"same": "coarse"}])
def test_exclude_positions_are_checked(mode: dict) -> None:
    # an out-of-range position was silently ignored in plain mode (and a raw IndexError with scale= / same=)
    s = make_set(n=20)
    idx = RetrievalIndex.build(s, "flat", "cosine")
    q = s.embeddings[:2]
    for bad, what in (([7, 20], r"exclude\[1\] is 20: expected an item position 0..19 or -1"),
                      ([-2, 0], r"exclude\[0\] is -2"), ([1], "exclude has 1 entries for 2 queries"),
                      ([0.5, 1.0], "integer item positions")):
        with pytest.raises(InputError, match=what):
            idx.search(q, 3, exclude=np.array(bad), **mode)
    # unsigned positions are checked before the cast to int64 (2**64 - 1 wrapped to -1, "none", and was accepted)
    for big in (2**64 - 1, 2**63):
        with pytest.raises(InputError, match=rf"exclude\[1\] is {big}: expected an item position 0..19"):
            idx.search(q, 3, exclude=np.array([0, big], dtype=np.uint64), **mode)
    assert 0 not in idx.search(q, 3, exclude=np.array([0, 1], dtype=np.uint64), **mode).ids[0].tolist()
    got = idx.search(q, 3, exclude=np.array([0, -1]), **mode).ids
    assert 0 not in got[0].tolist()  # the excluded item is dropped for the first query only


@pytest.mark.parametrize("name", ["labels.npy", "index.faiss", "index.json", "items.csv"])
def test_a_read_only_file_of_an_earlier_index_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                    name: str) -> None:
    """A rebuild over an index folder one of whose files the user made read-only (chmod 444) was refused only when
    that file's turn came: index.faiss (and the build marker) were already replaced, so the earlier index no longer
    loaded. It is refused before the first write, keyed --out, and the earlier index stays as it was."""
    import os

    out = tmp_path / "idx"
    RetrievalIndex.build(make_set(40), "flat", "cosine").save(out)
    os.chmod(out / name, 0o444)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    q = make_set(5, seed=3).embeddings
    expected = RetrievalIndex.load(out).search(q, 4).ids
    with pytest.raises(InputError, match=rf"{name} key '--out': is read-only \(mode 0444\); not replaced") as info:
        RetrievalIndex.build(make_set(30, seed=1), "hnsw", "cosine").save(out)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no marker, index.faiss not replaced
    np.testing.assert_array_equal(RetrievalIndex.load(out).search(q, 4).ids, expected)


def test_index_build_refuses_a_read_only_labels_npy_in_out_before_reading_the_embeddings(tmp_path: Path,
                                                                                       capsys) -> None:
    """The command asks before the embeddings are read (a missing --embeddings file would be the error otherwise):
    one line naming the read-only file and --out; the earlier index still loads (it did not: `index changed while it
    was read`)."""
    import os

    from dynametric.cli import main

    out = tmp_path / "idx"
    RetrievalIndex.build(make_set(40), "flat", "cosine").save(out)
    os.chmod(out / "labels.npy", 0o444)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    emb = tmp_path / "x.npy"
    np.save(emb, make_set(40, seed=2).embeddings)
    assert main(["index", "build", "--embeddings", str(emb), "--kind", "hnsw", "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out / 'labels.npy'} key '--out': is read-only (mode 0444)" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert RetrievalIndex.load(out).size == 40


@pytest.mark.parametrize("form", ["numpy", "tensor"])
def test_a_built_index_holds_its_own_labels_and_class_names(form: str) -> None:
    """The caller's labels array (or tensor) and class-name lists changed after the build change nothing in the index
    (it shared them: a scale= search returned -1 for every class after `labels[:] = 0`, and save() wrote the changed
    labels beside the unchanged vectors)."""
    import dataclasses

    import torch

    emb = make_set()
    given = emb.labels.copy() if form == "numpy" else torch.from_numpy(emb.labels.copy())
    names = [[f"f{i}" for i in range(12)], [f"c{i}" for i in range(3)]]
    emb = dataclasses.replace(emb, labels=given, class_names=names)
    index = RetrievalIndex.build(emb, kind="flat", metric="cosine")
    before = index.search(emb.embeddings[:5], k=3, scale="fine")
    given[:] = 0
    names[0][0] = "changed"
    after = index.search(emb.embeddings[:5], k=3, scale="fine")
    assert np.array_equal(before.ids, after.ids) and (after.ids >= 0).all()
    assert not np.shares_memory(index.labels, given if form == "numpy" else given.numpy())
    assert np.array_equal(index.labels, make_set().labels) and index.class_names[0][0] == "f0"


def _same_exclude_case() -> tuple[np.ndarray, np.ndarray]:
    """Item 0's nearest other item is item 1, of another coarse class (1) than item 0 (0, as items 2 and 3)."""
    emb = np.array([[1, 0], [0.99, 0.14], [0.8, 0.6], [0.6, 0.8]], np.float32)
    return emb, np.array([[0, 0], [1, 1], [2, 0], [3, 0]])


def test_same_with_an_excluded_item_takes_the_class_of_that_item() -> None:
    """Finding: ``same=`` without query labels took the class of the nearest item *other than* the excluded one:
    a query that is item 0 (excluded as itself) got the class of item 1 and results from that other class. The
    query's class is now the excluded item's own; the nearest item's only where nothing is excluded."""
    import faiss

    emb, labels = _same_exclude_case()
    s = EmbeddingSet(emb, list("abcd"), list("abcd"), labels, ["fine", "coarse"], None, [], {}, "mem")
    fi = faiss.IndexFlatIP(2)
    fi.add(emb / np.linalg.norm(emb, axis=1, keepdims=True))
    older = RetrievalIndex(fi, "flat", "cosine", 2, list("abcd"), list("abcd"), labels, ["fine", "coarse"])
    for idx in (RetrievalIndex.build(s), older):  # the exact search and that of an index of an older build
        res = idx.search(emb[:1], 2, same="coarse", exclude=[0])
        assert res.query_groups.tolist() == [0] and res.ids.tolist() == [[2, 3]]
        res = idx.search(emb[:1], 1, same="fine", exclude=[0])  # item 0 is the only one of fine class 0
        assert res.query_groups.tolist() == [0] and res.ids.tolist() == [[-1]] and res.short_queries == 0
        # several queries: excluded ones by their own item, the others (-1) by their nearest item
        q = np.vstack([emb[:1], emb[:1], emb[1:2] * 0.5])
        res = idx.search(q, 3, same="coarse", exclude=np.array([0, -1, 1]))
        assert res.query_groups.tolist() == [0, 0, 1]
        assert res.ids.tolist() == [[2, 3, -1], [0, 2, 3], [-1, -1, -1]]
