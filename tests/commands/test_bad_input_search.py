"""`dynametric index build` / `dynametric search` under bad input: damaged or swapped index folders are one-line
errors naming the file and key; an approximate index that returns fewer than -k results says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex

pytest.importorskip("faiss")


def _set(n: int, d: int = 8, seed: int = 0) -> EmbeddingSet:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    labels = np.stack([np.arange(n) % 5, np.arange(n) % 2], 1).astype(np.int64)
    return EmbeddingSet(x, [f"i{j}" for j in range(n)], [""] * n, labels, ["fine", "coarse"], None, [], {},
                        Path("mem"))


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    RetrievalIndex.build(_set(40), "flat").save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", _set(3, seed=1).embeddings)
    return tmp_path / "idx"


def _search_error(capsys, index: Path, *extra: str) -> str:
    assert main(["search", "--index", str(index), "--embeddings", str(index.parent / "q.npy"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


def _edit_meta(index: Path, **change: object) -> None:
    meta = json.loads((index / "index.json").read_text())
    for k, v in change.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    (index / "index.json").write_text(json.dumps(meta))


def test_index_json_without_count(index_dir, capsys) -> None:
    _edit_meta(index_dir, count=None)
    assert f"{index_dir / 'index.json'} key 'count': expected int, found None" in _search_error(capsys, index_dir)


def test_items_csv_missing_or_with_a_short_row(index_dir, capsys) -> None:
    keep = (index_dir / "items.csv").read_text()
    lines = keep.splitlines()
    lines[3] = "x"
    (index_dir / "items.csv").write_text("\n".join(lines) + "\n")
    assert f"{index_dir / 'items.csv'}:4: expected 3 fields (index,id,path), got 1" in _search_error(capsys, index_dir)
    (index_dir / "items.csv").unlink()
    assert f"{index_dir / 'items.csv'}: items.csv missing" in _search_error(capsys, index_dir)


def test_labels_npy_missing_or_an_object_array(index_dir, capsys) -> None:
    np.save(index_dir / "labels.npy", np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True)
    assert ("labels.npy: an array of Python objects (would need unpickling); expected an [N, S] integer array"
            in _search_error(capsys, index_dir))
    (index_dir / "labels.npy").write_text("1,2\n")
    assert ("labels.npy: not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this file holds "
            "text); expected an [N, S] integer array" in _search_error(capsys, index_dir))
    np.save(index_dir / "labels.npy", np.zeros(40, dtype=np.float32))
    assert "expected an [N, S] integer array, found float32 (40,)" in _search_error(capsys, index_dir)
    (index_dir / "labels.npy").unlink()
    assert "labels.npy missing, but index.json says the index has labels" in _search_error(capsys, index_dir)


def test_index_kind_that_does_not_match_the_file(index_dir, capsys) -> None:
    _edit_meta(index_dir, kind="hnsw", faiss_sha256=None)
    assert "index.faiss holds a flat index (ip), but index.json says hnsw (cosine)" in _search_error(capsys, index_dir)


def test_swapped_faiss_file_of_the_same_size_and_width_is_detected(index_dir, tmp_path, capsys) -> None:
    RetrievalIndex.build(_set(40, seed=7), "flat").save(tmp_path / "other")  # same N, D, kind, metric
    shutil.copy(tmp_path / "other" / "index.faiss", index_dir / "index.faiss")
    err = _search_error(capsys, index_dir)
    assert f"{index_dir / 'index.faiss'}: index.faiss is not the file this index was built with" in err


def test_ivf_returning_fewer_than_k_results_says_so(tmp_path, capsys) -> None:
    RetrievalIndex.build(_set(400), "ivf", nlist=10, nprobe=1).save(tmp_path / "ivf")
    np.save(tmp_path / "q.npy", _set(4, seed=1).embeddings)
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "ivf"), "--embeddings", str(tmp_path / "q.npy"), "-k", "300",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    got = [len(q["results"]) for q in json.loads(out)["queries"]]
    assert max(got) < 300
    assert "note: 4 of 4 queries got fewer than -k 300 results from this ivf index" in err
    assert "nprobe=1 cells it visits (of nlist=10)" in err
    assert main(["search", "--index", str(tmp_path / "ivf"), "--embeddings", str(tmp_path / "q.npy"), "-k", "3"]) == 0
    assert "note:" not in capsys.readouterr().err  # enough results: no notice


def test_index_build_refuses_a_folder_it_did_not_write(tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "items.csv").write_text("my own items\n")
    with pytest.raises(InputError, match="not empty and holds no dynametric index"):
        RetrievalIndex.build(_set(10), "flat").save(out)
    assert (out / "items.csv").read_text() == "my own items\n"
    RetrievalIndex.build(_set(10), "flat").save(tmp_path / "idx")
    RetrievalIndex.build(_set(12), "flat").save(tmp_path / "idx")  # its own earlier index is replaced
    assert RetrievalIndex.load(tmp_path / "idx").size == 12


def test_index_build_options_of_another_kind_are_refused(tmp_path, capsys) -> None:
    """`--kind flat --nlist 5` used to build a flat index and ignore --nlist without a word."""
    np.save(tmp_path / "x.npy", _set(60).embeddings)
    for kind, extra, flag in (("flat", ["--nlist", "5"], "--nlist"), ("flat", ["--m", "8"], "--m"),
                              ("hnsw", ["--nprobe", "4"], "--nprobe"), ("ivf", ["--ef-search", "9"], "--ef-search"),
                              ("hnsw", ["--seed", "3"], "--seed")):
        capsys.readouterr()
        assert main(["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--kind", kind, *extra, "--out",
                     str(tmp_path / f"idx_{kind}")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"key '{flag}': {flag} applies to --kind" in err and f"not to --kind {kind}" in err
        assert not (tmp_path / f"idx_{kind}").exists()
    assert main(["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--kind", "ivf", "--nlist", "4",
                 "--seed", "1", "--out", str(tmp_path / "ivf")]) == 0
    params = RetrievalIndex.load(tmp_path / "ivf").params
    assert params["nlist"] == 4 and params["nprobe"] == 4  # the default 8, clamped to nlist as before
    assert main(["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--kind", "hnsw", "--out",
                 str(tmp_path / "hnsw")]) == 0
    assert RetrievalIndex.load(tmp_path / "hnsw").params["ef_search"] == 64


def test_a_full_standard_output_is_said_without_the_atomic_write_note(index_dir, capsys, monkeypatch) -> None:
    """``search > /dev/full``: the write to stdout fails with ENOSPC and no file name; the line said "nothing was left
    half-written: outputs are written to a temporary file and renamed", which holds for files only."""
    import errno
    import io
    import os
    import sys

    class _Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sys, "stdout", _Full())
    assert main(["search", "--index", str(index_dir), "--embeddings", str(index_dir.parent / "q.npy")]) == 2
    assert capsys.readouterr().err.strip() == ("dynametric search: error: writing to standard output: "
                                               f"{os.strerror(errno.ENOSPC)}")


def test_query_labels_from_an_npy_array(tmp_path, capsys) -> None:
    """`--query-labels x.npy` was read as a CSV (`x.npy:1: not UTF-8 text: byte 0x93 ...`). An integer array
    [Q, S] (its columns the index's scales, class ids as in the index's labels.npy) gives what the same ids in a
    CSV give; a wrong shape, dtype or class id is one line naming the file."""
    s = _set(40)
    s.class_names = [[], ["animal", "plant"]]  # coarse: text classes, fine: integers
    RetrievalIndex.build(s, "flat").save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", _set(3, seed=1).embeddings)
    ids = np.array([[4, 1], [3, 0], [0, 1]], dtype=np.int32)
    (tmp_path / "ql.csv").write_text("fine,coarse\n" + "".join(f"{a},{b}\n" for a, b in ids))
    np.save(tmp_path / "ql.npy", ids)

    def search(labels: str, same: str = "coarse") -> str:
        assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "q.npy"), "-k", "3",
                     "--same", same, "--query-labels", str(tmp_path / labels), "--json"]) == 0
        return capsys.readouterr().out

    for same in ("coarse", "fine"):
        out = search("ql.npy", same)
        assert out == search("ql.csv", same)
        assert [q["query_label"] for q in json.loads(out)["queries"]] == (
            ["plant", "animal", "plant"] if same == "coarse" else [4, 3, 0])
    for arr, expected in [
        (ids[:, 0], "expected an integer array of shape [3, 2] (one column per scale of the index, ['fine', "
                    "'coarse'] in order), got 1 column(s)"),
        (ids[:2], "2 label rows for 3 queries"),
        (ids.astype(np.float32), "expected integer labels, got dtype float32"),
        (np.array([[4, 1], [3, 2], [0, 1]]), "column 1 ('coarse'), row 1 (0-based): expected a class id 0..1 of the "
                                             "index's 2 coarse classes (animal, plant), got 2"),
    ]:
        np.save(tmp_path / "bad.npy", arr)
        assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "q.npy"),
                     "--same", "coarse", "--query-labels", str(tmp_path / "bad.npy")]) == 2
        assert capsys.readouterr().err.strip() == f"dynametric search: error: {tmp_path / 'bad.npy'}: {expected}"


def _labelled_index(tmp_path: Path, coarse: list[str]) -> Path:
    """40 items, fine = i % 5 (integers), coarse = class ``i % len(coarse)`` of the text names ``coarse``; 3 query
    rows in q.npy."""
    s = _set(40)
    s.labels[:, 1] = np.arange(40) % len(coarse)
    s.class_names = [[], coarse]
    RetrievalIndex.build(s, "flat").save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", _set(3, seed=1).embeddings)
    return tmp_path / "idx"


def _same_json(capsys, index: Path, labels: Path, same: str) -> list[dict]:
    capsys.readouterr()
    assert main(["search", "--index", str(index), "--embeddings", str(index.parent / "q.npy"), "-k", "40",
                 "--same", same, "--query-labels", str(labels), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["queries"]


def test_query_labels_csv_may_name_fewer_scales_than_the_index(tmp_path, capsys) -> None:
    """Finding: a --query-labels CSV had to name every scale of the index, in order (`columns ['coarse'] differ
    from the index's scales`), though --same reads one. Its header names any of the index's scales, each once, in
    any order, and must name the --same one; an .npy has no names and keeps one column per scale."""
    index = _labelled_index(tmp_path, ["animal", "plant"])
    (tmp_path / "c.csv").write_text("coarse\nplant\nanimal\n1\n")
    queries = _same_json(capsys, index, tmp_path / "c.csv", "coarse")
    assert [q["query_label"] for q in queries] == ["plant", "animal", "plant"]
    assert [{h["labels"]["coarse"] for h in q["results"]} for q in queries] == [{"plant"}, {"animal"}, {"plant"}]
    assert [len(q["results"]) for q in queries] == [20, 20, 20]
    (tmp_path / "full.csv").write_text("fine,coarse\n4,1\n3,0\n0,1\n")
    (tmp_path / "swapped.csv").write_text("coarse,fine\n1,4\n0,3\n1,0\n")
    for same in ("fine", "coarse"):
        assert _same_json(capsys, index, tmp_path / "swapped.csv", same) == \
            _same_json(capsys, index, tmp_path / "full.csv", same)
    for text, expected in [
        ("fine\n1\n2\n3\n", "1: no column 'coarse': --same coarse needs the queries' coarse labels (the file has "
                            "['fine']; the index's scales are ['fine', 'coarse'])"),
        ("coarse,kind\nplant,x\nplant,x\nplant,x\n", "1: column 'kind' is not a scale of the index: the header names "
                                                     "scales of the index ['fine', 'coarse'] (any of them, each once)"),
        ("coarse,coarse\nplant,plant\nplant,plant\nplant,plant\n", "1: column 'coarse' appears 2 times; name each "
                                                                   "scale once"),
        ("coarse\nplant\nanimal,1\nplant\n", "3: expected 1 fields, got 2"),
    ]:
        (tmp_path / "bad.csv").write_text(text)
        assert main(["search", "--index", str(index), "--embeddings", str(tmp_path / "q.npy"), "--same", "coarse",
                     "--query-labels", str(tmp_path / "bad.csv")]) == 2
        assert capsys.readouterr().err.strip() == f"dynametric search: error: {tmp_path / 'bad.csv'}:{expected}"


def test_query_labels_on_a_scale_of_numeric_class_names_read_numbers_as_names(tmp_path, capsys) -> None:
    """Finding: on a scale whose class names look like numbers (`7`, `42`, `99`, a label column mixing numbers
    and text), a --query-labels cell `1` was read as class id 1, the class `42`, without a word. There a number is
    a class name only, matched by value (`007` is `7`, as the data readers read it); one that names no class is
    refused; on a scale of text names alone a number is still a class id."""
    index = _labelled_index(tmp_path, ["42", "7", "cat"])  # ids 0, 1, 2
    (tmp_path / "ql.csv").write_text("coarse\n7\n007\ncat\n")
    queries = _same_json(capsys, index, tmp_path / "ql.csv", "coarse")
    assert [q["query_label"] for q in queries] == ["7", "7", "cat"]
    assert [{h["labels"]["coarse"] for h in q["results"]} for q in queries] == [{"7"}, {"7"}, {"cat"}]
    for cell in ("1", "2", "0"):  # class ids of the index, but no class's name
        (tmp_path / "ql.csv").write_text(f"coarse\n7\n{cell}\ncat\n")
        assert main(["search", "--index", str(index), "--embeddings", str(tmp_path / "q.npy"), "--same", "coarse",
                     "--query-labels", str(tmp_path / "ql.csv")]) == 2
        assert capsys.readouterr().err.strip() == (
            f"dynametric search: error: {tmp_path / 'ql.csv'}:3: column 'coarse': '{cell}' is none of the index's 3 "
            "coarse classes (42, 7, cat); some of them are numbers, so a number here is a class name, never a class "
            "id: write the class name (or give class ids in an .npy)")
    (tmp_path / "ql.csv").write_text("coarse\n7\ndog\ncat\n")
    assert main(["search", "--index", str(index), "--embeddings", str(tmp_path / "q.npy"), "--same", "coarse",
                 "--query-labels", str(tmp_path / "ql.csv")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "ql.csv:3: column 'coarse': expected one of the index's 3 coarse classes (42, 7, cat), got 'dog'")
    np.save(tmp_path / "ql.npy", np.array([[0, 1], [0, 0], [0, 2]]))  # an .npy holds class ids
    assert [q["query_label"] for q in _same_json(capsys, index, tmp_path / "ql.npy", "coarse")] == ["7", "42", "cat"]
    other = _labelled_index(tmp_path / "text", ["animal", "plant", "rock"])  # text names alone: ids as before
    (tmp_path / "ids.csv").write_text("coarse\n1\nrock\n0\n")
    assert [q["query_label"] for q in _same_json(capsys, other, tmp_path / "ids.csv", "coarse")] == \
        ["plant", "rock", "animal"]
