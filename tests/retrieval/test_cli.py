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
    assert out["queries"][4]["results"][0]["labels"] == {"fine": "4", "coarse": "plant"}


def test_search_by_image_file_embeds_with_the_recorded_checkpoint(built: dict[str, Path], capsys) -> None:
    imgs = [built["root"] / "imgs/rock/img_05.png", built["root"] / "imgs/animal/img_09.png"]
    out = _search(capsys, "--index", str(built["index"]), "--image", *map(str, imgs), "-k", "2")
    assert [q["results"][0]["id"] for q in out["queries"]] == ["item05", "item09"]
    assert out["queries"][0]["results"][0]["distance"] < 1e-5


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
])
def test_bad_input_exits_2_with_a_clear_message(built: dict[str, Path], tmp_path: Path, capsys, argv, needle) -> None:
    wrong = tmp_path / "q.npy"
    np.save(wrong, np.ones((3, 5), np.float32))
    subs = {"{wrong}": str(wrong), "{emb}": str(built["emb"]), "{missing}": str(tmp_path / "missing")}
    argv = [subs.get(a, a) for a in argv]
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

    def make(explorer, host, port):
        server = real_make(explorer, host, port)
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
