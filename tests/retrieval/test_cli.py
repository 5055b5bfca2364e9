"""End to end through `dynametric.cli.main`: embed -> index build -> search (each item finds itself first), the
scale options, export, and the errors users hit (wrong dimension, missing index, unknown scale)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main


@pytest.fixture(scope="module")
def built(run_ckpt: Path, image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("e2e")
    assert main(["embed", "--checkpoint", str(run_ckpt), "--csv", str(image_root / "labels.csv"), "--out",
                 str(out / "emb"), "--batch-size", "4", "--shard-size", "5", "--no-progress"]) == 0
    assert main(["index", "build", "--embeddings", str(out / "emb"), "--kind", "flat", "--out",
                 str(out / "index")]) == 0
    return {"emb": out / "emb", "index": out / "index", "root": image_root, "ckpt": run_ckpt}


def _search(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    assert main(["search", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_round_trip_every_item_finds_itself_first(built: dict[str, Path], capsys) -> None:
    out = _search(capsys, "--index", str(built["index"]), "--embeddings", str(built["emb"]), "-k", "3")
    assert [q["results"][0]["id"] for q in out["queries"]] == [f"item{i:02d}" for i in range(12)]
    assert all(q["results"][0]["distance"] < 1e-5 for q in out["queries"])
    assert out["queries"][4]["results"][0]["labels"] == {"fine": 4, "coarse": "plant"}  # integers as numbers


def test_search_by_image_file_embeds_with_the_recorded_checkpoint(built: dict[str, Path], capsys) -> None:
    imgs = [built["root"] / "imgs/rock/img_05.png", built["root"] / "imgs/animal/img_09.png"]
    out = _search(capsys, "--index", str(built["index"]), "--image", *map(str, imgs), "-k", "2")
    assert [q["results"][0]["id"] for q in out["queries"]] == ["item05", "item09"]
    assert out["queries"][0]["results"][0]["distance"] < 1e-5


def test_an_index_with_a_weights_hash_reads_its_checkpoint_once(built: dict[str, Path], capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding: ``search --image`` / ``explore`` read the checkpoint file twice when the index records a weights
    hash (once to compare the weights before the config's imports could run, again to load the model). The state
    compared is now the one loaded (``load_trained(state=...)``): one read, the same model and results."""
    import torch

    from dynametric.retrieval.index import RetrievalIndex
    from dynametric.retrieval.model import embed_image_files, load_embedder, load_index_model

    ckpt = built["ckpt"].resolve()
    reads: list[Path] = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if isinstance(f, (str, Path)) and Path(f).resolve() == ckpt:
            reads.append(Path(f))
        return real_load(f, *args, **kwargs)

    index = RetrievalIndex.load(built["index"])
    assert index.model["weights_hash"]
    image = built["root"] / "imgs/rock/img_05.png"
    reference = load_embedder(ckpt, head=index.model.get("head"))  # the path-only load: one read of its own
    monkeypatch.setattr(torch, "load", counting_load)
    loaded = load_index_model(index, None, None)
    assert len(reads) == 1, reads
    assert loaded.weights_hash == index.model["weights_hash"] == reference.weights_hash
    assert loaded.identity() == reference.identity()
    assert np.array_equal(embed_image_files(loaded, [image]), embed_image_files(reference, [image]))
    reads.clear()
    out = _search(capsys, "--index", str(built["index"]), "--image", str(image), "-k", "2")
    assert len(reads) == 1, reads
    assert out["queries"][0]["results"][0]["id"] == "item05" and out["queries"][0]["results"][0]["distance"] < 1e-5


def test_search_by_an_empty_image_or_a_broken_link_says_what_it_is(built: dict[str, Path], tmp_path: Path,
                                                                   capsys) -> None:
    """A zero-byte file said PIL's 'cannot identify image file'; a link to a missing file named only the link."""
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    for name, message in [("zero.jpg", "cannot decode image (empty file (0 bytes))"),
                          ("link.jpg", f"image file not found: it is a symbolic link to {tmp_path / 'gone.jpg'}, "
                                       "which does not exist")]:
        capsys.readouterr()
        assert main(["search", "--index", str(built["index"]), "--image", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.strip() == f"dynametric search: error: {tmp_path / name}: {message}"


def test_scale_and_same_options(built: dict[str, Path], capsys) -> None:
    out = _search(capsys, "--index", str(built["index"]), "--embeddings", str(built["emb"]), "-k", "3",
                  "--scale", "coarse")
    for q in out["queries"]:
        assert sorted(h["labels"]["coarse"] for h in q["results"]) == ["animal", "plant", "rock"]
        assert q["results"][0]["id"] == q["query"]  # its own class comes first, shown by the item itself
    out = _search(capsys, "--index", str(built["index"]), "--embeddings", str(built["emb"]), "-k", "10",
                  "--same", "coarse", "--exclude-self")
    for i, q in enumerate(out["queries"]):
        own = ["animal", "plant", "rock"][i % 3]
        assert q["query_label"] == own  # the queries' own labels (embed folder with the same scales)
        assert len(q["results"]) == 3 and all(h["labels"]["coarse"] == own for h in q["results"])
        assert q["query"] not in [h["id"] for h in q["results"]]


def test_table_output(built: dict[str, Path], capsys) -> None:
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--image", str(built["root"] / "imgs/plant/img_01.png"),
                 "-k", "2", "--scale", "fine"]) == 0
    text = capsys.readouterr().out
    assert "nearest fine classes" in text and "rank  distance  id" in text
    assert text.splitlines()[2].split()[:3] == ["1", "0.0000", "item01"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--embeddings", "{wrong}"], "have dimension 5 (shape (3, 5)), but the index has dimension 16"),
    (["--embeddings", "{emb}", "--scale", "family"], "unknown scale 'family'; this index has scales"),
    (["--embeddings", "{emb}", "--same", "family"], "unknown scale 'family'"),
    (["--index", "{missing}", "--embeddings", "{emb}"], "index not found"),
    (["--image", "{missing}"], "image file not found"),
    (["--embeddings", "{zero}"], "{zero}: 2 all-zero row(s), first at row 1 (0-based): a zero vector has no "
                                 "direction for cosine; fix the embeddings or search an index built with --metric l2"),
])
def test_bad_input_exits_2_with_a_clear_message(built: dict[str, Path], tmp_path: Path, capsys, argv, needle) -> None:
    wrong = tmp_path / "q.npy"
    np.save(wrong, np.ones((3, 5), np.float32))
    zero = tmp_path / "qzero.npy"
    np.save(zero, np.array([[1.0] * 16, [0.0] * 16, [0.5] * 16, [0.0] * 16], np.float32))
    subs = {"{wrong}": str(wrong), "{emb}": str(built["emb"]), "{missing}": str(tmp_path / "missing"),
            "{zero}": str(zero)}
    argv = [subs.get(a, a) for a in argv]
    needle = needle.replace("{zero}", str(zero))
    if "--index" not in argv:
        argv = ["--index", str(built["index"]), *argv]
    capsys.readouterr()
    assert main(["search", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynametric search: error:") and needle in err


def test_image_search_refuses_a_different_checkpoint(built: dict[str, Path], tmp_path: Path, capsys) -> None:
    from tests.retrieval.conftest import make_run

    other = make_run(tmp_path / "other", seed=1)
    assert main(["search", "--index", str(built["index"]), "--image", str(built["root"] / "imgs/plant/img_01.png"),
                 "--checkpoint", str(other)]) == 2
    assert "differ from the model the index was built with" in capsys.readouterr().err


def test_index_metadata_records_the_model(built: dict[str, Path]) -> None:
    meta = json.loads((built["index"] / "index.json").read_text())
    assert meta["kind"] == "flat" and meta["metric"] == "cosine" and meta["dim"] == 16 and meta["count"] == 12
    assert meta["scale_names"] == ["fine", "coarse"] and meta["class_names"][1] == ["animal", "plant", "rock"]
    assert len(meta["model"]["config_hash"]) == 16 and len(meta["model"]["weights_hash"]) == 16
    assert meta["image_roots"] == [str(built["root"].resolve())]


def test_explore_command_serves_the_index(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`dynametric explore`: prints its URL, serves the index with uploads enabled (the checkpoint recorded in the
    index is found and matches), stops cleanly on Ctrl-C. In process: serve_forever is wrapped to make one request
    from this thread while the real loop runs in another, then raise KeyboardInterrupt."""
    import threading
    import urllib.request

    import dynametric.retrieval.explorer as explorer_mod

    real_make = explorer_mod.make_server
    seen: dict = {}

    def make(explorer, host, port, **kwargs):
        server = real_make(explorer, host, port, **kwargs)
        real_serve = server.serve_forever

        def serve() -> None:
            thread = threading.Thread(target=real_serve, daemon=True)
            thread.start()
            url = f"http://{host}:{server.server_address[1]}/api/info"
            with urllib.request.urlopen(url, timeout=30) as resp:
                seen["info"] = json.loads(resp.read())
            server.shutdown()
            thread.join()
            raise KeyboardInterrupt

        server.serve_forever = serve
        return server

    monkeypatch.setattr(explorer_mod, "make_server", make)
    assert main(["explore", "--index", str(built["index"]), "--port", "0"]) == 0
    assert capsys.readouterr().out.startswith("dynametric explorer: http://127.0.0.1:")
    assert seen["info"]["count"] == 12 and seen["info"]["upload"] is True
    assert seen["info"]["scales"] == ["fine", "coarse"]


def test_explore_image_root_serves_only_the_folders_given(built: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, capsys) -> None:
    """The explorer confined images to the roots the index records in its own index.json (a downloaded index can
    name /): --image-root DIR serves images inside the folders the user names instead."""
    import dynametric.retrieval.explorer as explorer_mod

    seen: dict = {}
    real_make = explorer_mod.make_server

    def make(explorer, host, port, **kwargs):
        server = real_make(explorer, host, port, **kwargs)
        seen["explorer"] = explorer

        def serve() -> None:
            raise KeyboardInterrupt

        server.serve_forever = serve
        return server

    monkeypatch.setattr(explorer_mod, "make_server", make)
    plant = built["root"] / "imgs" / "plant"
    assert main(["explore", "--index", str(built["index"]), "--port", "0", "--image-root", str(plant)]) == 0
    explorer = seen["explorer"]
    assert explorer.roots == [str(plant.resolve())]
    statuses = {Path(p).parent.name: explorer.image(i)[0] for i, p in enumerate(explorer.index.paths)}
    assert statuses == {"plant": 200, "animal": 403, "rock": 403}
    rock = next(i for i, p in enumerate(explorer.index.paths) if "/rock/" in p)
    assert explorer.image(rock) == (403, "refused: the item's file is not inside the image roots this explorer "
                                         "serves (--image-root)")
    capsys.readouterr()
    assert main(["explore", "--index", str(built["index"]), "--image-root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"key '--image-root': {tmp_path / 'none'} is not a folder (expected one of the folders whose "
                        "images to serve)") and len(err.splitlines()) == 1


def test_evaluate_reads_an_embed_folder_directly(built: dict[str, Path], capsys) -> None:
    """docs/retrieval.md: `dynametric evaluate --embeddings EMB/embeddings.npy` reads an embed folder, labels and
    scale names included (the folder itself works too)."""
    from dynametric.metrics import evaluate_embeddings

    emb = np.load(built["emb"] / "embeddings.npy")
    labels = np.load(built["emb"] / "labels.npy")
    ref = evaluate_embeddings(emb, labels, scale_names=["fine", "coarse"])
    for target in (built["emb"] / "embeddings.npy", built["emb"]):
        capsys.readouterr()
        assert main(["evaluate", "--embeddings", str(target), "--metrics", "map", "r_precision"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"{target}: leave-one-out, distance cosine, 12 queries")
        assert lines[1].split()[:3] == ["scale", "r_precision", "map"]
        rows = {line.split()[0]: line.split()[1:3] for line in lines[2:5]}
        assert rows == {s: [f"{ref[s][m]:.4f}" for m in ("r_precision", "map")] for s in ("fine", "coarse", "mean")}
    assert ref["coarse"]["map"] > 0


def test_table_prints_no_negative_zero(built: dict[str, Path], capsys) -> None:
    from dynametric.commands.search import format_distance, format_results

    assert [format_distance(d) for d in (-1.1920929e-07, -4e-5, 0.0, 0.25, -0.0002, -1.5)] == \
        ["0.0000", "0.0000", "0.0000", "0.2500", "-0.0002", "-1.5000"]  # negative ip distances keep their sign
    text = format_results([{"query": "q", "mode": "items", "results": [
        {"rank": 1, "distance": -1.1920929e-07, "id": "a"}]}], [])
    assert text.splitlines()[2].split() == ["1", "0.0000", "a"]
    # end to end: each item's own hit (1 - cos, a few roundings around 0) reads 0.0000; JSON keeps the raw values
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(built["emb"]), "-k", "1"]) == 0
    table = capsys.readouterr().out
    assert "-0.0000" not in table and table.count(" 0.0000 ") == 12
    raw = [q["results"][0]["distance"] for q in _search(capsys, "--index", str(built["index"]), "--embeddings",
                                                         str(built["emb"]), "-k", "1")["queries"]]
    assert all(0.0 <= d < 1e-5 for d in raw)  # cosine distances are clamped at 0, not -1e-7


def test_cosine_and_l2_distances_are_clamped_at_zero_and_keep_their_order() -> None:
    from dynametric.retrieval.faiss_ops import to_distance

    scores = np.array([[1.0000001, 1.0, 0.5, -0.2]], dtype=np.float32)
    cos = to_distance(scores, "cosine")
    assert cos.min() == 0.0 and (np.diff(cos[0]) >= 0).all()
    assert cos[0, 2] == np.float32(0.5) and cos[0, 3] == np.float32(1.2)
    assert (to_distance(np.array([[-1e-7, 0.25]], dtype=np.float32), "l2") == np.array([[0.0, 0.5]])).all()
    assert to_distance(np.array([[0.5]]), "ip")[0, 0] == -0.5  # -ip keeps its sign


def test_exclude_self_with_image_files_matches_the_indexed_file(built: dict[str, Path], tmp_path: Path,
                                                                capsys) -> None:
    import shutil

    own = built["root"] / "imgs/rock/img_05.png"
    roundabout = built["root"] / "imgs/animal/../rock/img_05.png"  # the same file by another name
    copy = tmp_path / "copy.png"  # the same pixels, but not an indexed file
    shutil.copy(own, copy)
    out = _search(capsys, "--index", str(built["index"]), "--image", str(roundabout), str(copy), "-k", "3")
    assert [q["results"][0]["id"] for q in out["queries"]] == ["item05", "item05"]
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--image", str(roundabout), str(copy), "-k", "3",
                 "--exclude-self", "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)["queries"]
    assert "item05" not in [h["id"] for h in res[0]["results"]] and len(res[0]["results"]) == 3
    assert res[1]["results"][0]["id"] == "item05"  # not an item of the index: nothing excluded, and it says so
    assert captured.err.strip() == ("note: --exclude-self: 1 of 2 queries are not items of this index (no indexed "
                                    "item has their file); nothing is excluded for them")


def test_exclude_self_without_file_paths_is_an_error(built: dict[str, Path], tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "q.npy", np.load(built["emb"] / "embeddings.npy")[:2])
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(tmp_path / "q.npy"),
                 "--exclude-self"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric search: error: key '--exclude-self': queries are matched to indexed items by file path, but the "
        f"query embeddings {tmp_path / 'q.npy'} name no files (a bare .npy); use --image files or a `dynametric "
        "embed` folder")
    # a bare .npy (an embed folder's embeddings.npy is read as its folder: index build --embeddings EMB/embeddings.npy)
    assert main(["index", "build", "--embeddings", str(tmp_path / "q.npy"), "--out", str(tmp_path / "bare")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "bare"), "--image", str(built["root"] / "imgs/rock/img_05.png"),
                 "--checkpoint", str(built["ckpt"]), "--exclude-self"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "key '--exclude-self': queries are matched to indexed items by file path, but this index records no paths "
        "(built from a bare .npy)")


@pytest.fixture(scope="module")
def built_bf16(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bf16")
    assert main(["embed", "--checkpoint", str(built["ckpt"]), "--csv", str(built["root"] / "labels.csv"), "--out",
                 str(out / "emb"), "--batch-size", "4", "--no-progress", "--device", "cpu",
                 "--precision", "bf16"]) == 0
    assert main(["index", "build", "--embeddings", str(out / "emb"), "--out", str(out / "index")]) == 0
    return {"emb": out / "emb", "index": out / "index"}


def test_image_search_follows_the_precision_of_the_index(built: dict[str, Path], built_bf16: dict[str, Path],
                                                         capsys) -> None:
    assert json.loads((built_bf16["index"] / "index.json").read_text())["model"]["precision"] == "bf16"
    imgs = [str(built["root"] / f"imgs/{c}/img_{i:02d}.png") for i, c in ((0, "animal"), (4, "plant"))]

    def search(*extra: str) -> tuple[list[list[float]], str]:
        capsys.readouterr()
        assert main(["search", "--index", str(built_bf16["index"]), "--image", *imgs, "-k", "4", "--device", "cpu",
                     "--json", *extra]) == 0
        captured = capsys.readouterr()
        return [[h["distance"] for h in q["results"]] for q in json.loads(captured.out)["queries"]], captured.err

    default, err_default = search()
    bf16, err_bf16 = search("--precision", "bf16")
    fp32, err_fp32 = search("--precision", "fp32")
    assert default == bf16 and err_default == err_bf16 == ""  # the index's precision, silently: they agree
    assert fp32 != bf16  # fp32 queries are other vectors, so an fp32 default would have shown here
    assert err_fp32.strip() == ("note: the index's embeddings were computed in bf16, the query images are embedded in "
                                "fp32 as asked: distances differ slightly from the index's own (a query's own item "
                                "may not come first)")
    # query embeddings from an embed folder of another precision: the same note
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(built_bf16["emb"]), "-k", "1"]) == 0
    assert capsys.readouterr().err.strip() == (
        f"note: the index's embeddings were computed in fp32, the query embeddings ({built_bf16['emb']}) were "
        "computed in bf16: distances differ slightly from the index's own (a query's own item may not come first)")


def test_query_precision_rules() -> None:
    import torch

    from dynametric.retrieval.model import query_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert query_precision({}, None, cpu) == ("fp32", None)  # an index from before precisions were recorded
    assert query_precision({"precision": "bf16"}, None, cpu) == ("bf16", None)
    assert query_precision({"precision": "fp16"}, None, cuda) == ("fp16", None)
    precision, note = query_precision({"precision": "fp16"}, None, cpu)
    assert precision == "fp32" and note is not None and "in fp32 (fp16 needs CUDA, this runs on cpu)" in note
    precision, note = query_precision({"precision": "bf16"}, "float32", cpu)
    assert precision == "fp32" and note is not None and "computed in bf16" in note
    assert query_precision({}, "fp32", cpu) == ("fp32", None)
    from dynametric.errors import InputError

    with pytest.raises(InputError, match=r"key 'model.precision': index.json records an unknown precision 'int8'"):
        query_precision({"precision": "int8"}, None, cpu)


def test_explore_uploads_follow_the_precision_of_the_index(built_bf16: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import dynametric.retrieval.explorer as explorer_mod

    seen: list[str] = []

    class Server:
        server_address = ("127.0.0.1", 1)

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    def make(explorer, host, port, **kwargs):
        seen.append(explorer.embedder.run.precision)
        return Server()

    monkeypatch.setattr(explorer_mod, "make_server", make)
    for extra, note in (([], ""), (["--precision", "fp32"], "note: uploads: the index's embeddings were computed in "
                                                            "bf16, the query images are embedded in fp32 as asked")):
        capsys.readouterr()
        assert main(["explore", "--index", str(built_bf16["index"]), "--device", "cpu", *extra]) == 0
        err = capsys.readouterr().err
        assert err.startswith(note) if note else err == ""
    assert seen == ["bf16", "fp32"]


def test_query_embeddings_of_another_model_are_refused(built: dict[str, Path], tmp_path: Path, capsys) -> None:
    """An embed folder made by other weights than the index's: its distances to the items mean nothing."""
    from .conftest import make_run

    other = make_run(tmp_path / "other", seed=3)
    assert main(["embed", "--checkpoint", str(other), "--csv", str(built["root"] / "labels.csv"), "--out",
                 str(tmp_path / "emb"), "--batch-size", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(tmp_path / "emb"), "-k", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "come from another model than the index: weights hash " in err and str(tmp_path / "emb") in err
    assert len(err.splitlines()) == 1
    np.save(tmp_path / "bare.npy", np.load(tmp_path / "emb" / "embeddings.npy"))  # no identity: cannot be checked
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(tmp_path / "bare.npy"), "-k", "2"]) == 0


def test_queries_decoded_otherwise_than_the_index_get_a_note(built: dict[str, Path], tmp_path: Path, capsys) -> None:
    img = built["root"] / "imgs/rock/img_05.png"
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--image", str(img), "-k", "1"]) == 0
    assert "note:" not in capsys.readouterr().err  # same decoder: no note
    assert main(["search", "--index", str(built["index"]), "--image", str(img), "-k", "1", "--decode", "gpu"]) == 0
    err = capsys.readouterr().err
    assert "note: the index's images were decoded with --decode cpu, the query images with --decode gpu" in err
    assert main(["embed", "--checkpoint", str(built["ckpt"]), "--csv", str(built["root"] / "labels.csv"), "--out",
                 str(tmp_path / "emb"), "--batch-size", "4", "--no-progress", "--decode", "gpu"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(tmp_path / "emb"), "-k", "1"]) == 0
    assert f"the query embeddings' ({tmp_path / 'emb'}) with --decode gpu" in capsys.readouterr().err


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """`dynametric search --json | head`: no `error: Broken pipe` line, the status a shell gives SIGPIPE."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((3000, 8)).astype(np.float32))
    assert main(["index", "build", "--embeddings", str(tmp_path / "x.npy"), "--kind", "flat", "--out",
                 str(tmp_path / "index")]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "dynametric", "search", "--index", str(tmp_path / "index"),
                             "--embeddings", str(tmp_path / "x.npy"), "-k", "5", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(100).startswith(b"{")  # output is ~1 MB: far more than the pipe holds
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err


def test_another_head_than_the_index_is_named_in_balanced_words(tmp_path: Path) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.model import check_same_model

    with pytest.raises(InputError) as info:
        check_same_model({"weights_hash": "abc", "head": "concat"}, {"weights_hash": "abc", "head": "class"},
                         tmp_path / "emb")
    msg = str(info.value)
    assert "from another model than the index: head class against the index's concat; embed the queries" in msg
    assert msg.count("(") == msg.count(")") and "\n" not in msg
    with pytest.raises(InputError, match=r"weights hash def against the index's abc;"):
        check_same_model({"weights_hash": "abc"}, {"weights_hash": "def"}, tmp_path / "emb")


@pytest.mark.parametrize("extra", [["--precision", "bf16"], ["--batch-size", "4"], ["--workers", "2"],
                                   ["--decode", "gpu"], ["--device", "cpu"], ["--max-pixels", "100"]])
def test_search_embeddings_refuses_the_image_options(built: dict[str, Path], tmp_path: Path, capsys, extra) -> None:
    # these say how query images are embedded; with --embeddings they used to be ignored in silence
    emb = tmp_path / "q.npy"
    np.save(emb, np.zeros((1, 8), np.float32) + 1)
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--embeddings", str(emb), "-k", "1", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"key '{extra[0]}'" in err and f"{extra[0]} goes with --image" in err


def test_search_image_max_pixels_refuses_a_larger_query_image(built: dict[str, Path], capsys) -> None:
    img = built["root"] / "imgs/plant/img_01.png"  # 32 x 32
    capsys.readouterr()
    assert main(["search", "--index", str(built["index"]), "--image", str(img), "--max-pixels", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dynametric search: error: {img}: image has 32x32 pixels, more than max_pixels 1000", err
    assert main(["search", "--index", str(built["index"]), "--image", str(img), "--max-pixels", "1024",
                 "--json", "-k", "1"]) == 0


def test_same_with_exclude_self_takes_the_class_of_the_query_file(built: dict[str, Path], capsys) -> None:
    """Finding: ``--same`` with ``--exclude-self`` and queries without labels (--image files) took the class of
    the nearest *other* item, so an indexed file got results from another class. Its class is now that of its own
    indexed item (the one excluded); the results are the nearest items of that class, itself left out."""
    emb = np.load(built["emb"] / "embeddings.npy").astype(np.float64)
    coarse = ["animal", "plant", "rock"]
    files = [str(built["root"] / f"imgs/{coarse[i % 3]}/img_{i:02d}.png") for i in range(12)]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = 1 - unit @ unit.T
    np.fill_diagonal(dist, np.inf)
    # the case of the finding occurs here: some file's nearest other item is of another class
    assert any(np.argmin(dist[i]) % 3 != i % 3 for i in range(12))
    out = _search(capsys, "--index", str(built["index"]), "--image", *files, "-k", "2", "--same", "coarse",
                  "--exclude-self")
    for i, q in enumerate(out["queries"]):
        assert q["query_label"] == coarse[i % 3]
        mates = [j for j in np.argsort(dist[i], kind="stable") if j % 3 == i % 3 and j != i][:2]
        assert [h["id"] for h in q["results"]] == [f"item{j:02d}" for j in mates]
