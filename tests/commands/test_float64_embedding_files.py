"""float64 embedding files on the command line: `evaluate`, `index build` and `search --embeddings` keep their
precision up to the library's float64 preparation (was: the reader cast every file to float32 first, so
`evaluate` on float64 data at 1e6 with a spread of 1e-3 gave recall@1 0.005 against a float64 brute force's 1.0,
and rows in float32's subnormal range lost their direction); values beyond float32's range are refused where the
use needs float32 (an evaluation, an embed folder) and taken by a cosine index; `derive_embedding_folder` refuses
them in one line before it writes anything (was: written as Inf into embeddings.npy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings


def _far_data(rng: np.random.Generator, n_gallery: int = 300, n_query: int = 100, d: int = 16):
    """Gallery rows at 1e6 with a spread of 1e-3 (float32's spacing there is 0.0625), three per class, and queries
    near the first ``n_query`` of them."""
    g = 1e6 + 1e-3 * rng.standard_normal((n_gallery, d))
    q = g[:n_query] + 0.3e-3 * rng.standard_normal((n_query, d))
    gl = np.arange(n_gallery) // 3
    return q, gl[:n_query].copy(), g, gl


def _brute_force_recall_at_1(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray) -> float:
    """Independent float64 brute force: the label of each query's nearest gallery row (squared Euclidean
    distances as sums of float64 squared differences)."""
    d = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    return float(np.mean(gl[d.argmin(1)] == ql))


def _run(capsys: pytest.CaptureFixture[str], argv: list[str], rc: int = 0) -> str:
    capsys.readouterr()
    assert main(argv) == rc
    out = capsys.readouterr()
    return out.out if rc == 0 else out.err.strip()


def test_cli_evaluate_of_float64_npy_files_far_from_the_origin_matches_a_float64_brute_force(
        tmp_path: Path, capsys) -> None:
    q, ql, g, gl = _far_data(np.random.default_rng(0))
    for name, arr in (("q", q), ("ql", ql), ("g", g), ("gl", gl)):
        np.save(tmp_path / f"{name}.npy", arr)
    want = _brute_force_recall_at_1(q, ql, g, gl)
    assert want > 0.95  # the spread is resolved in float64
    _run(capsys, ["evaluate", "--embeddings", str(tmp_path / "q.npy"), "--labels", str(tmp_path / "ql.npy"),
                  "--gallery-embeddings", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "gl.npy"),
                  "--metrics", "recall@k", "-k", "1", "--distance", "euclidean", "--json", str(tmp_path / "r.json")])
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["fine"]["recall@1"] == pytest.approx(want, abs=1e-12)
    # leave-one-out on the gallery: each row's nearest other row, by the same brute force
    d = ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    loo = float(np.mean(gl[d.argmin(1)] == gl))
    _run(capsys, ["evaluate", "--embeddings", str(tmp_path / "g.npy"), "--labels", str(tmp_path / "gl.npy"),
                  "--metrics", "recall@k", "-k", "1", "--distance", "euclidean", "--json", str(tmp_path / "l.json")])
    assert json.loads((tmp_path / "l.json").read_text())["fine"]["recall@1"] == pytest.approx(loo, abs=1e-12)


def test_cli_evaluate_reads_float64_pt_and_safetensors_files_in_float64(tmp_path: Path, capsys) -> None:
    from safetensors.torch import save_file

    q, ql, g, gl = _far_data(np.random.default_rng(1), 150, 60, 8)
    torch.save({"embeddings": torch.from_numpy(q)}, tmp_path / "q.pt")
    save_file({"embeddings": torch.from_numpy(g)}, str(tmp_path / "g.safetensors"))
    np.save(tmp_path / "ql.npy", ql)
    np.save(tmp_path / "gl.npy", gl)
    want = _brute_force_recall_at_1(q, ql, g, gl)
    assert want > 0.95
    _run(capsys, ["evaluate", "--embeddings", str(tmp_path / "q.pt"), "--labels", str(tmp_path / "ql.npy"),
                  "--gallery-embeddings", str(tmp_path / "g.safetensors"), "--gallery-labels",
                  str(tmp_path / "gl.npy"), "--metrics", "recall@k", "-k", "1", "--distance", "euclidean",
                  "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["fine"]["recall@1"] == pytest.approx(want, abs=1e-12)


def test_cli_cosine_on_float64_rows_in_float32s_subnormal_range_keeps_their_directions(
        tmp_path: Path, capsys) -> None:
    """Rows of size 1e-45 (float32's smallest subnormal is 1.4e-45): evaluate, index build and search under cosine
    rank them as the same directions at norm 1 (cast to float32 they became a few multiples of 1.4e-45 or zero
    rows, which cosine refuses)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    base = rng.standard_normal((30, 4))
    labels = np.arange(30) % 5
    np.save(tmp_path / "x.npy", base * 1e-45)
    np.save(tmp_path / "l.npy", labels)
    _run(capsys, ["evaluate", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "l.npy"),
                  "--distance", "cosine", "--json", str(tmp_path / "r.json")])
    got = json.loads((tmp_path / "r.json").read_text())
    ref = evaluate_embeddings(base, labels, distance="cosine")
    for metric in ("recall@1", "map@r", "map"):
        assert got["fine"][metric] == pytest.approx(ref["fine"][metric], abs=1e-12)
    _run(capsys, ["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--metric", "cosine", "--out",
                  str(tmp_path / "idx")])
    out = json.loads(_run(capsys, ["search", "--index", str(tmp_path / "idx"), "--embeddings",
                                   str(tmp_path / "x.npy"), "-k", "2", "--json"]))
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    want = [str(int(j)) for j in cos.argmax(1)]  # each row's nearest other row, by float64 cosine
    assert [r["results"][0]["id"] for r in out["queries"]] == [str(i) for i in range(30)]
    assert [r["results"][1]["id"] for r in out["queries"]] == want


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_cli_evaluate_refuses_values_beyond_float32_for_either_distance_naming_the_file(
        tmp_path: Path, capsys, distance: str) -> None:
    """As evaluate_embeddings refuses them (its scores are float32), with the file named."""
    x = np.random.default_rng(3).standard_normal((10, 3))
    x[4, 1] = 1e300
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "l.npy", np.arange(10) % 2)
    with pytest.raises(InputError, match="values beyond the float32 range"):
        evaluate_embeddings(x, np.arange(10) % 2, distance=distance)
    err = _run(capsys, ["evaluate", "--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "l.npy"),
                        "--distance", distance], rc=2)
    assert err == (f"dynametric evaluate: error: {tmp_path / 'x.npy'}: values beyond float32's range (up to "
                   "3.403e+38) in 1 row(s), first at row 4 (0-based; largest magnitude 1e+300): an evaluation scores "
                   "in float32 (either distance); scale them down")


def test_cosine_index_build_takes_float64_values_beyond_float32(tmp_path: Path, capsys) -> None:
    """A cosine index normalises in float64 (RetrievalIndex.build takes them): so does `index build` now; an l2
    index refuses them in one line naming the file."""
    pytest.importorskip("faiss")
    x = np.random.default_rng(4).standard_normal((20, 4))
    x[7] *= 1e300
    np.save(tmp_path / "x.npy", x)
    _run(capsys, ["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--metric", "cosine", "--out",
                  str(tmp_path / "idx")])
    out = json.loads(_run(capsys, ["search", "--index", str(tmp_path / "idx"), "--embeddings",
                                   str(tmp_path / "x.npy"), "-k", "1", "--json"]))
    assert [r["results"][0]["id"] for r in out["queries"]] == [str(i) for i in range(20)]
    err = _run(capsys, ["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--metric", "l2", "--out",
                        str(tmp_path / "idx_l2")], rc=2)
    assert err.startswith(f"dynametric index build: error: {tmp_path / 'x.npy'}: embeddings hold values beyond "
                          "float32's range (up to 3.403e+38) in 1 row(s), first at row 7 (0-based")
    assert len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def embed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.retrieval.conftest import make_images, make_run

    root = tmp_path_factory.mktemp("derive")
    ckpt, images = make_run(root / "run"), make_images(root / "data")
    out = root / "emb"
    assert main(["embed", "--checkpoint", str(ckpt), "--csv", str(images / "labels.csv"), "--out", str(out),
                 "--device", "cpu", "--batch-size", "4", "--no-progress"]) == 0
    return out


def test_derive_refuses_values_beyond_float32_before_writing(embed_folder: Path, tmp_path: Path) -> None:
    from dynametric.retrieval.embed import derive_embedding_folder, load_embedding_set

    n = len(load_embedding_set(embed_folder).ids)
    x = np.random.default_rng(5).standard_normal((n, 3))
    x[5, 2] = -4e38
    x[9, 0] = 1e39
    with pytest.raises(InputError) as err:
        derive_embedding_folder(embed_folder, tmp_path / "d", x, "projection")
    assert str(err.value) == (f"key 'embeddings': values beyond float32's range (up to 3.403e+38) in 2 row(s), first "
                              f"at row 5 (0-based; largest magnitude 1e+39): the derived folder's "
                              f"{tmp_path / 'd' / 'embeddings.npy'} stores float32; scale them down")
    assert not (tmp_path / "d").exists()
    x[5, 2], x[9, 0] = 3e38, -1.0  # within float32: written (rounded to float32), read back as written
    derive_embedding_folder(embed_folder, tmp_path / "d", x, "projection")
    back = load_embedding_set(tmp_path / "d").embeddings
    assert back.dtype == np.float32 and np.array_equal(back, x.astype(np.float32)) and np.isfinite(back).all()


def test_write_rows_refuses_a_block_beyond_float32_naming_the_row(tmp_path: Path) -> None:
    """The embed folder writer itself (any future caller): the row counted across blocks, nothing left behind."""
    from dynametric.retrieval.embed import _write_rows

    good, bad = np.zeros((4, 2)), np.zeros((3, 2))
    bad[2, 1] = 1e40
    with pytest.raises(InputError) as err:
        _write_rows(tmp_path / "embeddings.npy", [good, bad], 7, 2)
    assert str(err.value).startswith(f"{tmp_path / 'embeddings.npy'}: values beyond float32's range (up to "
                                     "3.403e+38) in 1 row(s), first at row 6 (0-based; largest magnitude 1e+40)")
    assert list(tmp_path.iterdir()) == []
