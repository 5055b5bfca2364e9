"""The explorer over HTTP: items, neighbours per scale, image serving confined to the index's image roots (path
traversal, symlinks, items outside the roots), upload limits; headless Chromium end to end (required in CI:
``.ci/run`` installs Chromium, and a skip of the browser test fails it)."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet, embed_items, list_image_folder
from dynametric.retrieval.explorer import Explorer, make_server, path_inside_roots
from dynametric.retrieval.index import RetrievalIndex
from dynametric.retrieval.model import load_embedder
from tests.browser import INSTALL_HINT, find_chromium, run_headless

CHROMIUM = find_chromium()
SECRET = b"TOP-SECRET-CONTENT"


@pytest.fixture(scope="module")
def setup(run_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    base = tmp_path_factory.mktemp("explore")
    root = base / "gallery"
    outside = base / "outside"
    outside.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("note", SECRET.decode())  # stored verbatim: a leaked file would show it
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(outside / "secret.png", pnginfo=meta)
    (outside / "real.png").write_bytes((root / "c0" / "0.png").read_bytes())
    os.symlink(outside / "secret.png", root / "c0" / "link.png")  # inside the root, pointing outside
    loaded = load_embedder(run_ckpt)
    items = list_image_folder(root)
    items.labels = np.array([[i, i % 3] for i in range(len(items.ids))])
    items.scale_names = ["fine", "coarse"]
    embed_items(items, loaded.embed, loaded.transform, base / "emb", model_identity=loaded.identity())
    from dynametric.retrieval.embed import load_embedding_set

    emb = load_embedding_set(base / "emb")
    # one extra item whose file lies outside the roots (as a CSV with ../ paths could produce)
    extra = EmbeddingSet(np.concatenate([emb.embeddings, emb.embeddings[:1]]), [*emb.ids, "outside"],
                         [*emb.paths, str(outside / "real.png")], np.concatenate([emb.labels, emb.labels[:1]]),
                         emb.scale_names, None, emb.image_roots, emb.model, emb.source)
    index = RetrievalIndex.build(extra, "flat", "cosine")
    explorer = Explorer(index, loaded, k=4, max_upload_bytes=20_000)
    server = make_server(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"port": server.server_address[1], "index": index, "items": items, "root": root, "outside": outside}
    finally:
        server.shutdown()
        server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)  # the raw path, no client-side normalisation
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type", "")
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict:
    status, body, ctype = request(port, "GET", path)
    assert status == 200 and ctype == "application/json", body
    return json.loads(body)


def test_page_info_and_items(setup) -> None:
    status, body, ctype = request(setup["port"], "GET", "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="gallery"' in body
    info = get_json(setup["port"], "/api/info")
    n = len(setup["items"].ids)  # 9 images + the symlink
    assert info["count"] == n + 1 and info["scales"] == ["fine", "coarse"] and info["upload"] is True
    items = get_json(setup["port"], f"/api/items?offset={n - 1}&limit=5")
    assert [it["id"] for it in items["items"]] == ["c2/8.png", "outside"]
    assert items["items"][0]["labels"] == {"fine": n - 1, "coarse": (n - 1) % 3}


def test_neighbours_per_scale_match_the_index(setup) -> None:
    idx: RetrievalIndex = setup["index"]
    data = get_json(setup["port"], "/api/neighbours?item=4&k=3")
    assert data["query"]["id"] == idx.ids[4]
    assert [c["scale"] for c in data["columns"]] == [None, "fine", "coarse"]
    q = idx.reconstruct(4)[None]
    for col in data["columns"]:
        ref = idx.search(q, 3, scale=col["scale"], exclude=np.array([4]))
        assert [h["index"] for h in col["results"]] == [int(i) for i in ref.ids[0] if i >= 0]
        assert all(h["index"] != 4 for h in col["results"])
        np.testing.assert_allclose([h["distance"] for h in col["results"]], ref.distances[0][: len(col["results"])],
                                   atol=1e-6)
    coarse = data["columns"][2]["results"]
    assert len({h["labels"]["coarse"] for h in coarse}) == len(coarse) == 3
    status, body, _ = request(setup["port"], "GET", "/api/neighbours?item=99")
    assert status == 400 and b"out of range" in body
    # out-of-range parameters are a 400 naming them, never clamped without a word
    for path, needle in (("/api/neighbours?item=4&k=0", "expected 'k' from 1 to 100, got 0"),
                         ("/api/neighbours?item=4&k=-5", "expected 'k' from 1 to 100, got -5"),
                         ("/api/neighbours?item=4&k=101", "expected 'k' from 1 to 100, got 101"),
                         ("/api/items?offset=-5", "expected 'offset' of at least 0, got -5"),
                         ("/api/items?limit=0", "expected 'limit' from 1 to 500, got 0"),
                         ("/api/items?limit=501", "expected 'limit' from 1 to 500, got 501")):
        status, body, _ = request(setup["port"], "GET", path)
        assert status == 400 and needle in json.loads(body)["error"], (path, body)
    assert len(get_json(setup["port"], "/api/neighbours?item=4&k=100")["columns"]) == 3
    with pytest.raises(InputError, match="neighbours per column must be from 1 to 100, got 101"):
        Explorer(setup["index"], None, k=101)


def test_images_are_served_only_inside_the_roots(setup) -> None:
    port, root = setup["port"], setup["root"]
    status, body, ctype = request(port, "GET", "/image/0")
    assert status == 200 and ctype == "image/png"
    assert body == (root / setup["items"].ids[0]).read_bytes()
    link = setup["items"].ids.index("c0/link.png")
    n = len(setup["items"].ids)
    for path in (f"/image/{link}", f"/image/{n}"):  # symlink out of the root; item whose file is outside
        status, body, _ = request(port, "GET", path)
        assert status == 403 and SECRET not in body and b"\x89PNG" not in body
    for path in ("/image/../../outside/secret.png", "/image/..%2F..%2Foutside%2Fsecret.png",
                 "/../outside/secret.png", "/image/-1", "/image/%2e%2e/secret.png", f"/image/{setup['outside']}/"
                 "secret.png", f"/image/{n + 1}", "//etc/passwd", "/image/0/../../secret.png"):
        status, body, _ = request(port, "GET", path)
        assert status in (403, 404), path
        assert SECRET not in body and b"root:" not in body


def test_path_inside_roots_unit(setup, tmp_path: Path) -> None:
    root, outside = setup["root"], setup["outside"]
    assert path_inside_roots(root / "c0" / "0.png", [root]) == (root / "c0" / "0.png").resolve()
    assert path_inside_roots(root / "c0" / ".." / ".." / "outside" / "real.png", [root]) is None
    assert path_inside_roots(root / "c0" / "link.png", [root]) is None
    assert path_inside_roots(outside / "real.png", [root, outside]) is not None
    (root / "notes.txt").write_text("x")
    assert path_inside_roots(root / "notes.txt", [root]) is None  # not an image extension
    assert path_inside_roots("a\x00b.png", [root]) is None
    sibling = root.parent / (root.name + "2")  # '/gallery2' must not pass as inside '/gallery'
    sibling.mkdir(exist_ok=True)
    shutil.copy(root / "c0" / "0.png", sibling / "x.png")
    assert path_inside_roots(sibling / "x.png", [root]) is None


def _png(path: Path) -> bytes:
    return path.read_bytes()


def test_upload_finds_the_same_image_and_enforces_limits(setup) -> None:
    port, root, items = setup["port"], setup["root"], setup["items"]
    target = items.ids.index("c1/4.png")
    data = _png(root / "c1" / "4.png")
    status, body, _ = request(port, "POST", "/api/upload?k=2", data, {"Content-Type": "image/png"})
    assert status == 200, body
    res = json.loads(body)
    first = res["columns"][0]["results"][0]
    assert first["index"] == target and first["distance"] < 1e-5
    assert request(port, "POST", "/api/upload", data, {"Content-Type": "text/plain"})[0] == 415
    assert request(port, "POST", "/api/upload", b"x" * 20_001, {"Content-Type": "image/png"})[0] == 413
    status, body, _ = request(port, "POST", "/api/upload", b"not an image", {"Content-Type": "image/png"})
    assert status == 400 and b"cannot decode" in body
    status, body, _ = request(port, "POST", "/api/upload", data, {"Content-Type": "image/jpeg"})
    assert status == 400 and b"but the data is PNG" in body
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    status, _, _ = request(port, "POST", "/api/other", buf.getvalue(), {"Content-Type": "image/png"})
    assert status == 404


@pytest.mark.ci_required
@pytest.mark.skipif(CHROMIUM is None, reason=f"headless browser test needs Chromium ({INSTALL_HINT}); the HTTP API "
                    "it drives is tested above")
def test_browser_click_shows_neighbours(setup, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{setup['port']}/?autoclick=1"
    out = run_headless(["--virtual-time-budget=15000", "--dump-dom", url], binary=CHROMIUM, profile_dir=tmp_path)
    dom = out.stdout
    assert 'data-state="results"' in dom, out.stderr[-2000:]
    assert dom.count('class="hit"') >= 3 * 4 - 1  # three columns of neighbours
    assert 'data-scale="coarse"' in dom and "showing neighbours of" in dom
