"""Findings of a QA pass on the post-training tools (embed, merge-embeddings, index build, search, evaluate, explore):
each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError


def _embed(ckpt: Path, csv_path: Path, out: Path, *extra: str) -> None:
    assert main(["embed", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--out", str(out), "--device", "cpu",
                 "--batch-size", "4", "--no-progress", *extra]) == 0


def _coarse_csv(image_root: Path, path: Path, rows: list[int], rename: dict[str, str] | None = None) -> Path:
    """A list of some of the 12 images with only their text ``coarse`` column (``rename`` maps classes)."""
    lines = (image_root / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
    out = ["path,coarse"]
    for i in rows:
        rel, _, _, coarse = lines[i].split(",")
        out.append(f"{image_root / rel},{(rename or {}).get(coarse, coarse)}")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gallery(run_ckpt: Path, image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An index of the 12 images labelled coarse = animal / plant / rock (text classes ids 0, 1, 2)."""
    root = tmp_path_factory.mktemp("qa")
    _embed(run_ckpt, _coarse_csv(image_root, root / "gal.csv", list(range(12))), root / "gemb")
    assert main(["index", "build", "--embeddings", str(root / "gemb"), "--out", str(root / "gidx")]) == 0
    return {"root": root, "emb": root / "gemb", "index": root / "gidx"}


def _search_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["search", *argv, "--json"]) == 0
    cap = capsys.readouterr()
    return json.loads(cap.out), cap.err


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------------------------- H1, L1, L3
def test_same_matches_the_query_folders_text_classes_by_name(gallery: dict[str, Path], run_ckpt: Path,
                                                             image_root: Path, tmp_path: Path, capsys) -> None:
    """A query job holding only plant and rock numbers them 0 and 1; the index numbers animal, plant, rock 0..2: the
    classes are matched by name (was: query plant searched as the index's class 0, animal)."""
    rows = [i for i in range(12) if i % 3]  # plant (i % 3 == 1) and rock (i % 3 == 2) only
    _embed(run_ckpt, _coarse_csv(image_root, tmp_path / "q.csv", rows), tmp_path / "qemb")
    out, err = _search_json(capsys, "--index", str(gallery["index"]), "--embeddings", str(tmp_path / "qemb"),
                            "--same", "coarse", "-k", "10")
    assert "note:" not in err
    for i, q in zip(rows, out["queries"]):
        own = ["animal", "plant", "rock"][i % 3]
        assert q["query_label"] == own
        assert len(q["results"]) == 4 and {h["labels"]["coarse"] for h in q["results"]} == {own}
    # a class the index does not hold: no results and a note, never another class
    _embed(run_ckpt, _coarse_csv(image_root, tmp_path / "q2.csv", rows, {"rock": "fox"}), tmp_path / "qemb2")
    out, err = _search_json(capsys, "--index", str(gallery["index"]), "--embeddings", str(tmp_path / "qemb2"),
                            "--same", "coarse", "-k", "10")
    for i, q in zip(rows, out["queries"]):
        if i % 3 == 2:
            assert q["query_label"] == "fox" and q["results"] == []
        else:
            assert q["query_label"] == "plant" and {h["labels"]["coarse"] for h in q["results"]} == {"plant"}
    assert ("note: --same coarse: 4 of 8 queries have a coarse label the index does not hold (fox): they get no "
            "results") in err


def test_query_labels_csv_takes_class_names(gallery: dict[str, Path], tmp_path: Path, capsys) -> None:
    q = tmp_path / "q.npy"
    np.save(q, np.load(gallery["emb"] / "embeddings.npy")[:2])
    labels = tmp_path / "ql.csv"
    labels.write_text("coarse\nrock\n1\n", encoding="utf-8")  # a class name, or a class id of the index
    out, _ = _search_json(capsys, "--index", str(gallery["index"]), "--embeddings", str(q), "--same", "coarse",
                          "--query-labels", str(labels), "-k", "10")
    assert [e["query_label"] for e in out["queries"]] == ["rock", "plant"]
    assert [{h["labels"]["coarse"] for h in e["results"]} for e in out["queries"]] == [{"rock"}, {"plant"}]
    labels.write_text("coarse\nrock\nwolf\n", encoding="utf-8")
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(q), "--same", "coarse",
                          "--query-labels", str(labels)])
    assert err.endswith(f"{labels}:3: column 'coarse': expected one of the index's 3 coarse classes (animal, plant, "
                        "rock) or a class id 0..2, got 'wolf'")
    # rows are positional: a blank line between them is an error at its line; trailing blank lines are ignored
    labels.write_text("coarse\nrock\n\n1\n", encoding="utf-8")
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(q), "--same", "coarse",
                          "--query-labels", str(labels)])
    assert err.endswith(f"{labels}:3: blank line between rows: the file has one row per query, in the queries' "
                        "order (trailing blank lines are ignored)")
    labels.write_text("coarse\nrock\n1\n\n\n", encoding="utf-8")
    out, _ = _search_json(capsys, "--index", str(gallery["index"]), "--embeddings", str(q), "--same", "coarse",
                          "--query-labels", str(labels), "-k", "10")
    assert [e["query_label"] for e in out["queries"]] == ["rock", "plant"]


def test_search_json_has_every_key_and_typed_labels(run_ckpt: Path, image_root: Path, tmp_path: Path,
                                                    capsys) -> None:
    _embed(run_ckpt, image_root / "labels.csv", tmp_path / "emb")
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    out, _ = _search_json(capsys, "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "emb"), "-k", "1")
    entry = out["queries"][4]
    assert entry["mode"] == "items" and entry["scale"] is None and entry["query_label"] is None
    assert entry["results"][0]["labels"] == {"fine": 4, "coarse": "plant"}  # integer labels as JSON integers
    out, _ = _search_json(capsys, "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "emb"), "-k", "1",
                          "--same", "fine")
    assert [e["query_label"] for e in out["queries"]] == [i % 6 for i in range(12)]


# ---------------------------------------------------------------------------------------------------- H2
def test_queries_embedded_at_another_size_or_config_are_refused(gallery: dict[str, Path], run_ckpt: Path,
                                                                image_root: Path, tmp_path: Path, capsys) -> None:
    from dynametric.config import load_config, save_config

    size = json.loads((gallery["index"] / "index.json").read_text())["model"]["input_size"]
    csv_path = _coarse_csv(image_root, tmp_path / "q.csv", list(range(12)))
    _embed(run_ckpt, csv_path, tmp_path / "big", "--image-size", str(size + 16))
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(tmp_path / "big")])
    assert err.endswith(f"{tmp_path / 'big'}: the query embeddings come from another model than the index: input "
                        f"size {size + 16} px against the index's {size} px; embed the queries with --image-size "
                        f"{size}")
    index_config = run_ckpt.parent / "config.yaml"
    cfg = load_config(index_config, ["model.pooling=max" if load_config(index_config).model.pooling != "max"
                                     else "model.pooling=avg"])
    save_config(cfg, tmp_path / "pool.yaml")
    _embed(run_ckpt, csv_path, tmp_path / "pool", "--config", str(tmp_path / "pool.yaml"))
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(tmp_path / "pool")])
    assert f"config {(tmp_path / 'pool.yaml').resolve()} (embedding settings" in err
    assert err.endswith(f"; embed the queries with --config {index_config.resolve()}")
    # --image with that config: refused before any query is embedded
    img = str(image_root / "imgs/rock/img_05.png")
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--image", img,
                          "--checkpoint", str(run_ckpt), "--config", str(tmp_path / "pool.yaml")])
    assert "key '--config': the checkpoint and config embed otherwise than the model the index was built with" in err
    # evaluate with two embed folders: the same rule
    err = _error(capsys, ["evaluate", "--embeddings", str(tmp_path / "big"), "--gallery-embeddings",
                          str(gallery["emb"])])
    assert (f"key '--embeddings': the query embeddings come from another model than the gallery embeddings "
            f"({gallery['emb']}): input size {size + 16} px against the gallery's {size} px") in err
    # a config that differs only in training options embeds alike: accepted
    cfg = load_config(index_config, ["data.eval_batch_size=7", "loss.kwargs={margin: 0.3}"])
    save_config(cfg, tmp_path / "train.yaml")
    _embed(run_ckpt, csv_path, tmp_path / "train", "--config", str(tmp_path / "train.yaml"))
    out, _ = _search_json(capsys, "--index", str(gallery["index"]), "--embeddings", str(tmp_path / "train"), "-k", "1")
    assert [e["results"][0]["id"] for e in out["queries"]] == [e["query"] for e in out["queries"]]


def test_model_mismatch_falls_back_to_the_config_hash_for_older_records() -> None:
    from dynametric.retrieval.model import model_mismatch

    base = {"weights_hash": "w", "head": None, "input_size": 32, "config_hash": "c1", "config": "/r/config.yaml"}
    assert model_mismatch(base, {**base, "config": "/elsewhere/config.yaml"}) is None  # a moved copy
    found = model_mismatch(base, {**base, "config_hash": "c2", "config": "/x.yaml"})
    assert found == ("config /x.yaml (hash c2) against the index's /r/config.yaml (hash c1)",
                     "embed the queries with --config /r/config.yaml")
    both = {**base, "embedding_hash": "e"}
    assert model_mismatch(both, {**both, "config_hash": "c2"}) is None  # training options only
    assert model_mismatch(both, {**both, "precision": "bf16", "decode": "gpu"}) is None  # notes, not errors


# --------------------------------------------------------------------------------------------- M1, M6, L2
@pytest.fixture()
def parts(run_ckpt: Path, image_root: Path, tmp_path: Path) -> list[Path]:
    out = []
    for k in range(3):
        _embed(run_ckpt, image_root / "labels.csv", tmp_path / f"p{k}", "--part", f"{k}/3", "--shard-size", "3")
        out.append(tmp_path / f"p{k}")
    return out


def test_merge_checks_every_parts_labels(parts: list[Path], tmp_path: Path, capsys) -> None:
    good = np.load(parts[1] / "labels.npy")
    other = np.load(parts[2] / "labels.npy")
    target = parts[1] / "labels.npy"
    for bad, expected in ((good[:3], "has shape [3, 2] and dtype int64, expected [4, 2] integers"),
                          (good[:, :1], "has shape [4, 1] and dtype int64, expected [4, 2] integers"),
                          (good.astype(np.float64), "has shape [4, 2] and dtype float64, expected [4, 2] integers"),
                          (other, "its rows differ from the label columns of items.csv (first at row 0)"),
                          (np.array([{"a": 1}] * 4, dtype=object),
                           "an array of Python objects (would need unpickling); expected an [4, 2] integer array"),
                          ("1,2\n", "not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, "
                                    "this file holds text); expected an [4, 2] integer array")):
        if isinstance(bad, str):
            target.write_text(bad)
        else:
            np.save(target, bad, allow_pickle=True)
        err = _error(capsys, ["merge-embeddings", *map(str, parts), "--out", str(tmp_path / "m")])
        assert f"{target}: {expected}" in err
        assert not (tmp_path / "m").exists()  # nothing half-written
    np.save(target, good)
    assert main(["merge-embeddings", *map(str, parts), "--out", str(tmp_path / "m")]) == 0
    meta = json.loads((tmp_path / "m" / "embed.json").read_text())
    assert meta["part_shards"] == [{"part": f"{k}/3", "count": 4, "shard_size": 3, "num_shards": 2}
                                   for k in range(3)]
    assert meta["shard_size"] == 3 and meta["num_shards"] == 4  # the one run over the 12 images it equals


def test_merge_errors_name_the_field_both_values_and_the_changed_file(parts: list[Path], run_ckpt: Path,
                                                                      image_root: Path, tmp_path: Path,
                                                                      capsys) -> None:
    _embed(run_ckpt, image_root / "labels.csv", tmp_path / "bf", "--part", "1/3", "--precision", "bf16")
    err = _error(capsys, ["merge-embeddings", str(parts[0]), str(tmp_path / "bf"), str(parts[2]), "--out",
                          str(tmp_path / "m")])
    assert (f"{tmp_path / 'bf' / 'embed.json'} key 'model': differs from {parts[0]} in 'model': model.precision bf16 "
            "here, fp32 there") in err
    # an image of part 0 changes after part 0 was embedded; part 1 is embedded again after the change
    first = image_root / "imgs/animal/img_00.png"
    st = first.stat()
    try:
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        _embed(run_ckpt, image_root / "labels.csv", tmp_path / "p1new", "--part", "1/3")
        err = _error(capsys, ["merge-embeddings", str(parts[0]), str(tmp_path / "p1new"), str(parts[2]), "--out",
                              str(tmp_path / "m")])
    finally:
        os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "the image files changed between the parts' embeddings" in err
    assert f"{first.resolve()} (since {parts[0]} was embedded)" in err
    assert f"embed again the part(s) embedded before the change: {parts[0]}, {parts[2]}" in err


# ---------------------------------------------------------------------------------------------------- M2
def test_an_embed_folders_labels_of_the_wrong_shape_are_named(gallery: dict[str, Path], tmp_path: Path,
                                                              capsys) -> None:
    import shutil

    from dynametric.retrieval.embed import load_embedding_set

    folder = tmp_path / "emb"
    shutil.copytree(gallery["emb"], folder)
    np.save(folder / "labels.npy", np.zeros((11, 1), np.int64))
    expected = f"{folder / 'labels.npy'}: has shape [11, 1] and dtype int64, expected [12, 1] integers"
    with pytest.raises(InputError, match="has shape"):
        load_embedding_set(folder)
    assert expected in _error(capsys, ["index", "build", "--embeddings", str(folder), "--out", str(tmp_path / "i")])
    assert expected in _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(folder)])


# ---------------------------------------------------------------------------------------------- M3, L4
def test_an_output_under_a_regular_file_is_refused_before_any_work(gallery: dict[str, Path], run_ckpt: Path,
                                                                    image_root: Path, tmp_path: Path,
                                                                    capsys) -> None:
    user = tmp_path / "userfile"
    user.write_text("mine\n")
    held = f"{user} key '--out': is a file, not a folder; expected a folder to hold {user / 'x'}"
    # the embeddings do not exist: the old code read them first (or ran the model) and named them instead
    assert held in _error(capsys, ["embed", "--checkpoint", str(tmp_path / "none.ckpt"), "--csv",
                                   str(image_root / "labels.csv"), "--out", str(user / "x")])
    assert held in _error(capsys, ["index", "build", "--embeddings", str(tmp_path / "none"), "--out",
                                   str(user / "x")])
    assert held in _error(capsys, ["merge-embeddings", str(tmp_path / "none"), "--out", str(user / "x")])
    for opt, name in (("--json", "x.json"), ("--per-query", "x.csv")):
        err = _error(capsys, ["evaluate", "--embeddings", str(tmp_path / "none.npy"), "--labels",
                              str(tmp_path / "none.csv"), opt, str(user / name)])
        assert f"{user} key '{opt}': is a file, not a folder; expected a folder to hold {user / name}" in err
    assert user.read_text() == "mine\n"


def test_a_text_file_named_npy_is_said_to_be_no_npy(gallery: dict[str, Path], tmp_path: Path, capsys) -> None:
    fake = tmp_path / "q.npy"
    fake.write_text("junk\n")
    err = _error(capsys, ["search", "--index", str(gallery["index"]), "--embeddings", str(fake)])
    assert err.endswith(f"{fake}: not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this "
                        "file holds text)")
    assert "pickled" not in _error(capsys, ["index", "build", "--embeddings", str(fake), "--out", str(tmp_path / "i")])


# ---------------------------------------------------------------------------------------------------- M4
def test_explore_port_and_host_errors(gallery: dict[str, Path], capsys) -> None:
    assert main(["explore", "--index", str(gallery["index"]), "--port", "99999"]) == 2
    assert "argument --port: expected a port number from 0 to 65535, got 99999" in capsys.readouterr().err
    from dynametric.retrieval.explorer import Explorer, make_server
    from dynametric.retrieval.index import RetrievalIndex

    explorer = Explorer(RetrievalIndex.load(gallery["index"]))
    with pytest.raises(InputError) as err:
        make_server(explorer, "no-such-host.invalid", 0)
    assert err.value.key == "--host" and "unknown host" in str(err.value)
    with pytest.raises(InputError, match="key '--port': expected a port number from 0 to 65535, got 70000"):
        make_server(explorer, "127.0.0.1", 70000)


# ---------------------------------------------------------------------------------------------------- M5
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e-42])
def test_cosine_works_for_any_finite_scale(scale: float, tmp_path: Path) -> None:
    from dynametric.retrieval.embed import load_embedding_set
    from dynametric.retrieval.index import RetrievalIndex

    rng = np.random.default_rng(1)
    base = rng.standard_normal((40, 8))
    x = (base * scale).astype(np.float32)
    assert np.isfinite(x).all() and x.any(axis=1).all()
    np.save(tmp_path / "x.npy", x)
    index = RetrievalIndex.build(load_embedding_set(tmp_path / "x.npy"), "flat", "cosine")
    q = (base[:5] * scale).astype(np.float32)
    res = index.search(q, 3)
    # float64 reference on the float32 values as stored
    x64 = x.astype(np.float64)
    u = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    cos = (q.astype(np.float64) / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)) @ u.T
    ref = np.argsort(-cos, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(res.ids, ref)
    np.testing.assert_allclose(res.distances, np.maximum(1 - np.take_along_axis(cos, ref, axis=1), 0), atol=1e-6)
    assert res.ids[:, 0].tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------- query folders of fewer scales
def _relabelled_csv(image_root: Path, path: Path, column: str, label) -> Path:
    """All 12 images with one label column, ``column``, whose value for image ``i`` is ``label(i)``."""
    lines = (image_root / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
    out = [f"path,{column}"] + [f"{image_root / line.split(',')[0]},{label(i)}" for i, line in enumerate(lines)]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def test_same_uses_the_same_scale_of_a_query_folder_labelled_at_fewer_scales(run_ckpt: Path, image_root: Path,
                                                                             tmp_path: Path, capsys) -> None:
    """Finding: a query embed folder labelled at fewer scales than the index (``fine`` alone against ``fine,
    coarse``) had its labels silently ignored by ``--same fine`` (each query got its nearest item's class, no
    note): they were used only when the folder's scale names equalled the index's. The --same scale's column is
    now used, by name; a folder without that scale gets a note saying the nearest item's class is used."""
    _embed(run_ckpt, image_root / "labels.csv", tmp_path / "emb")  # fine (integers 0..5), coarse (text)
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    fine = [(i + 1) % 6 for i in range(12)]  # not the images' own fine class: not what the nearest item says
    _embed(run_ckpt, _relabelled_csv(image_root, tmp_path / "qf.csv", "fine", lambda i: fine[i]), tmp_path / "qf")
    out, err = _search_json(capsys, "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "qf"),
                            "--same", "fine", "-k", "5")
    assert "note:" not in err
    assert [q["query_label"] for q in out["queries"]] == fine
    for i, q in enumerate(out["queries"]):  # fine class c holds items c and c + 6
        assert sorted(h["id"] for h in q["results"]) == [f"item{fine[i]:02d}", f"item{fine[i] + 6:02d}"]
    # a text scale: matched to the index's classes by name (the query job numbers plant, rock 0, 1)
    coarse = ["animal", "plant", "rock"]
    own = [coarse[(i + 1) % 3] if i % 2 else "fox" for i in range(12)]
    _embed(run_ckpt, _relabelled_csv(image_root, tmp_path / "qc.csv", "coarse", lambda i: own[i]), tmp_path / "qc")
    out, err = _search_json(capsys, "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "qc"),
                            "--same", "coarse", "-k", "10")
    assert [q["query_label"] for q in out["queries"]] == own
    for i, q in enumerate(out["queries"]):
        assert [h["labels"]["coarse"] for h in q["results"]] == ([own[i]] * 4 if own[i] != "fox" else [])
    assert ("note: --same coarse: 6 of 12 queries have a coarse label the index does not hold (fox): they get no "
            "results") in err
    # the folder holds no --same scale: the nearest item's class, and a note says why
    out, err = _search_json(capsys, "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "qc"),
                            "--same", "fine", "-k", "2")
    assert [q["query_label"] for q in out["queries"]] == [i % 6 for i in range(12)]  # each image is an item
    assert err.strip() == (f"note: --same fine: the query labels ({tmp_path / 'qc' / 'labels.npy'}) are at scales "
                           "['coarse'], not the index's ['fine', 'coarse'], and hold no 'fine': each query's fine "
                           "class is that of its nearest item (the predicted class)")
