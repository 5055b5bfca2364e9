"""``dynametric evaluate`` on `dynametric embed` output folders and ``.npy`` labels: the folder's labels.npy and
scale names are used without --labels, text class ids of two jobs are matched by name, and every bad input is one
line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.metrics import evaluate_embeddings

N = 24


def _embed_folder(path: Path, emb: np.ndarray, labels: np.ndarray | None, scale_names: list[str],
                  class_names: list[list[str]] | None = None, status: str = "complete") -> Path:
    """The four files of a finished `dynametric embed` job (see retrieval/embed.py), written directly."""
    path.mkdir(parents=True)
    np.save(path / "embeddings.npy", emb.astype(np.float32))
    rows = [",".join(["index", "id", "path", *(scale_names if labels is not None else [])])]
    for i in range(len(emb)):
        vals = [] if labels is None else [str(v) for v in labels[i]]
        rows.append(",".join([str(i), f"{i:03d}.jpg", f"/images/{i:03d}.jpg", *vals]))
    (path / "items.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    if labels is not None:
        np.save(path / "labels.npy", labels.astype(np.int64))
    meta = {"format": "dynametric-embeddings", "version": 1, "count": len(emb), "status": status,
            "scale_names": scale_names if labels is not None else [], "class_names": class_names,
            "model": {}, "image_roots": ["/images"]}
    (path / "embed.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


@pytest.fixture()
def job(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    fine = rng.integers(0, 6, N)
    labels = np.stack([fine, fine % 2], axis=1)
    emb = rng.normal(size=(N, 8)) + np.eye(8)[fine] * 1.5
    return _embed_folder(tmp_path / "emb", emb, labels, ["product", "family"]), emb.astype(np.float32), labels


def _json(capsys: pytest.CaptureFixture[str], tmp: Path, *argv: str) -> tuple[dict, list[str]]:
    out = tmp / f"r{len(list(tmp.glob('r*.json')))}.json"
    capsys.readouterr()
    assert main(["evaluate", *argv, "--json", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out.splitlines()


def test_embed_folder_reads_its_labels_and_scale_names(job, tmp_path, capsys) -> None:
    folder, emb, labels = job
    ref = evaluate_embeddings(emb, labels, scale_names=["product", "family"])
    for argv in (["--embeddings", str(folder)], ["--embeddings", str(folder / "embeddings.npy")],
                 ["--embeddings", str(folder / "embeddings.npy"), "--labels", str(folder / "labels.npy")]):
        got, printed = _json(capsys, tmp_path, *argv)
        assert list(got) == ["product", "family", "mean"], argv  # embed.json's scale names, not fine/coarse
        assert [line.split()[0] for line in printed[2:5]] == ["product", "family", "mean"]
        for scale in ("product", "family", "mean"):
            for metric, value in ref[scale].items():
                assert got[scale][metric] == pytest.approx(value), (argv, scale, metric)
    assert 0 < ref["product"]["map@r"] < 1  # a result a wrong label column would change


def test_npy_labels_1d_and_2d_name_default_scales(job, tmp_path, capsys) -> None:
    folder, emb, labels = job
    np.save(tmp_path / "fine.npy", labels[:, 0].astype(np.int32))  # [N], another integer dtype
    np.save(tmp_path / "both.npy", labels.astype(np.uint8))
    np.save(tmp_path / "e.npy", emb)
    got, _ = _json(capsys, tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "fine.npy"))
    assert list(got) == ["fine", "mean"]
    assert got["fine"]["map"] == pytest.approx(evaluate_embeddings(emb, labels[:, :1])["fine"]["map"])
    got, _ = _json(capsys, tmp_path, "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "both.npy"))
    assert list(got) == ["fine", "coarse", "mean"]
    assert got["coarse"]["map"] == pytest.approx(evaluate_embeddings(emb, labels)["coarse"]["map"])
    # --labels beats the folder's own labels (here: the coarse column only)
    np.save(tmp_path / "coarse.npy", labels[:, 1])
    got, _ = _json(capsys, tmp_path, "--embeddings", str(folder), "--labels", str(tmp_path / "coarse.npy"))
    assert list(got) == ["fine", "mean"]
    assert got["fine"]["map"] == pytest.approx(evaluate_embeddings(emb, labels[:, 1:])["fine"]["map"])


def test_query_gallery_folders_match_text_classes_by_name(tmp_path, capsys) -> None:
    rng = np.random.default_rng(5)
    # gallery: classes cat/dog/fox (ids 0/1/2 by sorted name); queries only dog/fox (ids 0/1 in their own job)
    g_names = np.array(["cat", "dog", "fox"])[rng.integers(0, 3, 30)]
    q_names = np.array(["dog", "fox"])[rng.integers(0, 2, 10)]
    centre = {"cat": np.eye(4)[0], "dog": np.eye(4)[1], "fox": np.eye(4)[2]}
    g = np.stack([centre[c] for c in g_names]) + rng.normal(0, 0.4, (30, 4))
    q = np.stack([centre[c] for c in q_names]) + rng.normal(0, 0.4, (10, 4))
    g_ids = np.searchsorted(["cat", "dog", "fox"], g_names)[:, None]
    q_ids = np.searchsorted(["dog", "fox"], q_names)[:, None]
    _embed_folder(tmp_path / "g", g, g_ids, ["animal"], [["cat", "dog", "fox"]])
    _embed_folder(tmp_path / "q", q, q_ids, ["animal"], [["dog", "fox"]])
    got, printed = _json(capsys, tmp_path, "--embeddings", str(tmp_path / "q"), "--gallery-embeddings",
                         str(tmp_path / "g"))
    assert "query -> gallery" in printed[0]
    right = evaluate_embeddings(q.astype(np.float32), q_ids + 1, g.astype(np.float32), g_ids, scale_names=["animal"])
    wrong = evaluate_embeddings(q.astype(np.float32), q_ids, g.astype(np.float32), g_ids, scale_names=["animal"])
    assert got["animal"]["map"] == pytest.approx(right["animal"]["map"])
    assert right["animal"]["map"] > wrong["animal"]["map"] + 0.3  # ids compared as numbers would be wrong
    # text classes in one job, plain integers in the other: refused, not compared as numbers
    np.save(tmp_path / "gl.npy", g_ids)
    err = _error(capsys, "--embeddings", str(tmp_path / "q"), "--gallery-embeddings", str(tmp_path / "g"),
                 "--gallery-labels", str(tmp_path / "gl.npy"))
    assert err.endswith("gl.npy: scale 'animal': the labels of " + str(tmp_path / "q" / "labels.npy")
                        + " are ids of text class names (from its embed job), those of "
                        + str(tmp_path / "gl.npy") + " are not; they cannot be matched")


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_folder_and_npy_label_errors_are_one_line(job, tmp_path, capsys) -> None:
    folder, emb, labels = job
    e = str(tmp_path / "e.npy")
    np.save(e, emb)

    def err(name: str, array: object = None, raw: bytes | None = None) -> str:
        path = tmp_path / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            np.save(path, array, allow_pickle=True)
        return _error(capsys, "--embeddings", e, "--labels", str(path))

    assert err("f.npy", labels.astype(np.float32)).endswith("f.npy: expected integer labels, got dtype float32")
    assert err("b.npy", labels > 0).endswith("b.npy: expected integer labels, got dtype bool")
    assert err("3d.npy", labels[:, :, None]).endswith("3d.npy: expected labels of shape [N] or [N, S], got shape "
                                                      "(24, 2, 1)")
    assert err("rows.npy", labels[:20]).endswith(f"rows.npy: 20 label rows but 24 embeddings in {e}")
    assert err("none.npy", np.zeros((24, 0), np.int64)).endswith("none.npy: no labels (shape (24, 0))")
    assert "obj.npy: an array of Python objects" in err("obj.npy", np.array([{"a": 1}] * 24, dtype=object))
    assert ("big.npy: label 18446744073709551615 does not fit in int64 (labels are signed 64-bit integers, at most "
            "9223372036854775807)") in err("big.npy", np.full(24, 2**64 - 1, np.uint64))
    assert err("text.npy", raw=b"fine\n1\n").endswith(
        "text.npy: not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this file holds text); "
        "expected an integer array [N] or [N, S]")
    np.savez(tmp_path / "z.npz", labels=labels)
    assert "z.npy: an .npz archive" in err("z.npy", raw=(tmp_path / "z.npz").read_bytes())
    # an .npy under another name is read as one (by its header), not as a CSV that is "not UTF-8"
    np.save(tmp_path / "lab.npy", labels)
    (tmp_path / "labels.bin").write_bytes((tmp_path / "lab.npy").read_bytes())
    assert main(["evaluate", "--embeddings", e, "--labels", str(tmp_path / "labels.bin")]) == 0
    # the folder's items.csv is not a labels CSV: say what to give instead
    assert _error(capsys, "--embeddings", e, "--labels", str(folder / "items.csv")).endswith(
        "items.csv:1: this is the items.csv of a `dynametric embed` folder (index,id,path,<scales>), not a labels "
        "CSV; give the folder itself (evaluate --embeddings EMB reads its labels.npy) or EMB/labels.npy")


def test_folder_errors(job, tmp_path, capsys) -> None:
    folder, emb, labels = job
    bare = _embed_folder(tmp_path / "nolabels", emb, None, [])
    assert _error(capsys, "--embeddings", str(bare)).endswith(
        f"{bare}: this embed folder has no labels.npy (its images came without label columns); give --labels (a "
        "labels CSV or an .npy integer array)")
    np.save(tmp_path / "l.npy", labels)
    assert main(["evaluate", "--embeddings", str(bare), "--labels", str(tmp_path / "l.npy")]) == 0
    np.save(tmp_path / "e.npy", emb)  # an embeddings file (a missing one is `file not found` first)
    assert _error(capsys, "--embeddings", str(tmp_path / "e.npy")).endswith(
        f"key '--labels': --labels is required with embeddings from a file ({tmp_path / 'e.npy'}); a `dynametric "
        "embed` folder brings its own labels.npy")
    assert _error(capsys, "--embeddings", str(tmp_path)).endswith(
        f"{tmp_path}: not an embeddings folder (no embed.json); give a `dynametric embed` --out folder or an .npy "
        "file")
    unfinished = _embed_folder(tmp_path / "busy", emb, labels, ["a", "b"], status="in_progress")
    assert "embed.json key 'status': embedding job is not finished" in _error(capsys, "--embeddings", str(unfinished))
    meta = json.loads((folder / "embed.json").read_text())
    (folder / "embed.json").write_text(json.dumps({**meta, "scale_names": ["product"]}))
    assert _error(capsys, "--embeddings", str(folder)).endswith(  # the folder's files are checked against it first
        "items.csv:1: expected the header index,id,path and 1 scale column(s) (embed.json's scale_names), found "
        "'index,id,path,product,family'")
    (folder / "embed.json").write_text(json.dumps(meta))
    # a gallery whose scale names differ; gallery labels without gallery embeddings
    other = _embed_folder(tmp_path / "other", emb, labels, ["fine", "coarse"])
    assert _error(capsys, "--embeddings", str(folder), "--gallery-embeddings", str(other)).endswith(
        f"{other / 'embed.json'} key 'scale_names': scale names ['fine', 'coarse'] differ from the query labels' "
        f"['product', 'family'] ({folder / 'embed.json'})")
    assert _error(capsys, "--embeddings", str(folder), "--gallery-labels", str(tmp_path / "l.npy")).endswith(
        "key '--gallery-labels': --gallery-labels needs --gallery-embeddings")
    np.save(tmp_path / "one.npy", labels[:, 0])
    assert _error(capsys, "--embeddings", str(folder), "--gallery-embeddings", str(other), "--gallery-labels",
                  str(tmp_path / "one.npy")).endswith(
        f"one.npy: 1 label scale(s), but the query labels ({folder / 'labels.npy'}) have 2")
