"""Findings of a QA pass on `dynametric search` and the explorer's HTTP server (`dynametric explore`): each test
fails on the code before its fix."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.explorer import Explorer, make_server
from dynametric.retrieval.index import RetrievalIndex

pytest.importorskip("faiss")


def _set(n: int = 12, d: int = 6, paths: list[str] | None = None, roots: list[str] | None = None) -> EmbeddingSet:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    fine = np.arange(n) % 4
    return EmbeddingSet(x, [f"i{j}" for j in range(n)], paths if paths is not None else [""] * n,
                        np.stack([fine, fine // 2], axis=1), ["fine", "coarse"], None, roots or [], {}, Path("mem"))


# ------------------------------------------------------------------------------------------- HIGH 1: -k capped
@pytest.mark.parametrize("mode", [{}, {"scale": "coarse"}, {"same": "fine"}])
def test_a_k_beyond_the_index_size_is_capped_at_it(mode: dict) -> None:
    """k = 10**6 for 12 items: arrays [Q, 12] (were [Q, 10**6]; 10**9 died of a MemoryError), the same results as
    k = 12, in every mode and with an excluded item."""
    s = _set()
    idx = RetrievalIndex.build(s, "flat", "cosine")
    q = s.embeddings[:3] + 0.01
    for k in (10**6, 10**12):
        res = idx.search(q, k, **mode)
        ref = idx.search(q, 12, **mode)
        assert res.ids.shape == res.distances.shape == (3, 12)
        np.testing.assert_array_equal(res.ids, ref.ids)
        assert res.short_queries == ref.short_queries == 0
    res = idx.search(q, 10**6, exclude=np.array([0, 1, 2]))
    assert res.ids.shape == (3, 12) and (res.ids[:, :11] >= 0).all() and (res.ids[:, 11] == -1).all()


def test_search_cli_with_a_huge_k_prints_every_item_once(tmp_path: Path, capsys) -> None:
    """-k 10**7 for 12 items and 2 queries: every item once, and no array of 10**7 columns (numpy's allocations,
    traced: were about 480 MB; -k 10**9 died of a MemoryError)."""
    import tracemalloc

    s = _set()
    RetrievalIndex.build(s, "flat", "cosine").save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", s.embeddings[:2])
    capsys.readouterr()
    tracemalloc.start()
    try:
        assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "q.npy"),
                     "-k", "10000000", "--json"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 10000000  # as asked; the results are every item, nearest first
    for q in out["queries"]:
        assert sorted(h["index"] for h in q["results"]) == list(range(12))
        assert [h["rank"] for h in q["results"]] == list(range(1, 13))


# ----------------------------------------------------------------------------------------------- the explorer
@contextlib.contextmanager
def serving(explorer: Explorer, host: str = "127.0.0.1", **kwargs: Any) -> Iterator[Any]:
    """A running explorer server (any free port) for the duration of the block."""
    server = make_server(explorer, host, 0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of one request (http.client sends ``Host: 127.0.0.1:<port>``)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_of(port: int, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    status, headers, body = request(port, method, path, **kwargs)
    assert headers["content-type"] == "application/json", body
    return status, json.loads(body)["error"]


@pytest.fixture(scope="module")
def gallery(run_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An index of 6 PNGs under ``root`` (random 16-d vectors, the model's width), with the model for uploads."""
    from dynametric.retrieval.model import load_embedder

    base = tmp_path_factory.mktemp("server_qa")
    root = base / "gallery"
    root.mkdir()
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    emb = EmbeddingSet(rng.normal(size=(6, 16)).astype(np.float32), [f"i{j}" for j in range(6)], paths,
                       np.stack([np.arange(6) % 3, np.arange(6) % 2], axis=1), ["fine", "coarse"], None, [str(root)],
                       {}, base)
    return {"index": RetrievalIndex.build(emb, "flat", "cosine"), "model": load_embedder(run_ckpt), "root": root,
            "base": base}


@pytest.fixture(scope="module")
def server(gallery: dict[str, Any]) -> Iterator[Any]:
    with serving(Explorer(gallery["index"], gallery["model"], k=3)) as srv:
        yield srv


def _jpeg_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    first = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    extra = {"save_all": True, "append_images": [Image.new("RGB", (24, 24), "blue")]} if fmt == "MPO" else {}
    first.save(buf, format=fmt, **extra)
    return buf.getvalue()


def test_a_multi_picture_jpeg_is_accepted_as_a_jpeg(server: Any) -> None:
    """A phone's multi-picture JPEG (Pillow: MPO) is a JPEG upload: its first picture is searched (was: 400
    'content type image/jpeg but the data is MPO')."""
    port = server.server_address[1]
    mpo, jpeg = _jpeg_bytes("MPO"), _jpeg_bytes("JPEG")
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    status, _, body = request(port, "POST", "/api/upload?k=2", mpo, {"Content-Type": "image/jpeg"})
    assert status == 200, body
    got = json.loads(body)["columns"][0]["results"]
    status, _, body = request(port, "POST", "/api/upload?k=2", jpeg, {"Content-Type": "image/jpeg"})
    assert [h["index"] for h in got] == [h["index"] for h in json.loads(body)["columns"][0]["results"]]
    status, message = error_of(port, "POST", "/api/upload", body=mpo, headers={"Content-Type": "image/png"})
    assert status == 400 and message.endswith("content type image/png but the data is MPO")


@pytest.mark.parametrize("path, needle", [
    ("/api/neighbours", "missing parameter 'item'"),  # was: item -1 out of range (a value never sent)
    ("/api/neighbours?k=2", "missing parameter 'item'"),
    ("/api/neighbours?item=1&item=abc", "parameter 'item' given 2 times; give it once"),  # was: item 1 taken
    ("/api/neighbours?item=1&k=2&k=3", "parameter 'k' given 2 times"),
    ("/api/items?limit=2&limit=2", "parameter 'limit' given 2 times"),
    ("/api/neighbours?item=", "expected an integer of at most 18 ASCII digits for 'item', got ''"),
])
def test_a_missing_or_repeated_parameter_is_named(server: Any, path: str, needle: str) -> None:
    status, message = error_of(server.server_address[1], "GET", path)
    assert status == 400 and needle in message, message


def test_an_upload_with_a_repeated_k_is_refused(server: Any) -> None:
    status, message = error_of(server.server_address[1], "POST", "/api/upload?k=2&k=3", body=_jpeg_bytes("JPEG"),
                               headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "parameter 'k' given 2 times" in message


def test_a_missing_image_file_is_a_404_and_one_outside_the_roots_a_403(gallery: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """A deleted file inside the roots: 404 file not found (was 403 'not an image inside the index's image roots');
    a file outside them stays 403, whether it exists or not."""
    root = gallery["root"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "real.png").write_bytes((root / "0.png").read_bytes())
    paths = [str(root / "0.png"), str(root / "gone.png"), str(outside / "real.png"), str(outside / "gone.png")]
    emb = EmbeddingSet(np.eye(4, 16, dtype=np.float32), ["a", "b", "c", "d"], paths, None, [], None, [str(root)], {},
                       tmp_path)
    with serving(Explorer(RetrievalIndex.build(emb, "flat", "cosine"))) as srv:
        port = srv.server_address[1]
        assert request(port, "GET", "/image/0")[0] == 200
        status, message = error_of(port, "GET", "/image/1")
        assert status == 404 and message == "file not found: item 1's image file (gone.png) does not exist"
        for i in (2, 3):
            status, message = error_of(port, "GET", f"/image/{i}")
            assert status == 403 and "not inside the index's image roots" in message


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An explorer over an index built from a bare .npy: no file paths, no model."""
    emb = _set(n=8, d=4)
    seen: list[str] = []  # every request's path
    with serving(Explorer(RetrievalIndex.build(emb, "flat", "cosine"), k=3)) as srv:
        class Recording(srv.RequestHandlerClass):  # type: ignore[name-defined,misc]
            def parse_request(self) -> bool:
                ok = super().parse_request()
                seen.append(self.path)
                return ok

        srv.RequestHandlerClass = Recording
        yield srv, seen


def test_an_index_without_file_paths_says_it_has_no_images(bare: Any) -> None:
    """No paths: the API says so (was: every /image/N a 403 'not an image inside the roots') and gives no image
    URLs, so the page requests none (was: a broken image per item)."""
    srv, _ = bare
    port = srv.server_address[1]
    status, _, body = request(port, "GET", "/api/info")
    assert status == 200 and json.loads(body)["images"] is False
    items = json.loads(request(port, "GET", "/api/items")[2])["items"]
    assert len(items) == 8 and all(it["image"] is None for it in items)
    data = json.loads(request(port, "GET", "/api/neighbours?item=0&k=2")[2])
    assert data["query"]["image"] is None
    assert all(h["image"] is None for col in data["columns"] for h in col["results"])
    status, message = error_of(port, "GET", "/image/0")
    assert status == 404 and message.startswith("this index has no images: it was built from embeddings without "
                                                "file paths")


CHROMIUM = None
with contextlib.suppress(FileNotFoundError):
    from tests.browser import find_chromium

    CHROMIUM = find_chromium()


@pytest.mark.ci_required
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium; the API it relies on is tested above")
def test_the_page_requests_no_image_of_an_index_without_images(bare: Any, tmp_path: Path) -> None:
    from tests.browser import run_headless

    srv, seen = bare
    seen.clear()
    url = f"http://127.0.0.1:{srv.server_address[1]}/?autoclick=1"
    out = run_headless(["--virtual-time-budget=15000", "--dump-dom", url], binary=CHROMIUM, profile_dir=tmp_path)
    assert 'data-state="results"' in out.stdout, out.stderr[-2000:]
    assert "/api/info" in seen and any(p.startswith("/api/neighbours") for p in seen)
    assert not [p for p in seen if p.startswith("/image/")]
    assert out.stdout.count('class="tile') == 8 and "no images" in out.stdout


def raw_exchange(port: int, head: bytes, timeout: float = 10) -> bytes:
    """Send ``head`` (a request without its body) and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_an_upload_to_an_explorer_without_uploads_is_refused_before_its_body(bare: Any) -> None:
    """Uploads disabled: 403 at once, without waiting for (reading) the body, and the connection closed (was: the
    whole body read, then a 400). The answer arriving at all is the check: the body is never sent."""
    srv, _ = bare
    data = raw_exchange(srv.server_address[1], b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"403" and b"Connection: close" in head
    assert json.loads(body)["error"].startswith("uploads are disabled")


def test_upload_parameters_are_checked_before_the_image_is_decoded(server: Any, gallery: dict[str, Any]) -> None:
    """k=0 with an undecodable body: the k error (was 'cannot decode the uploaded image': the image was decoded
    and embedded before k was looked at), over HTTP and in Python."""
    status, message = error_of(server.server_address[1], "POST", "/api/upload?k=0", body=b"not an image",
                               headers={"Content-Type": "image/png"})
    assert status == 400 and "expected 'k' from 1 to 100, got 0" in message
    explorer = Explorer(gallery["index"], gallery["model"])
    with pytest.raises(InputError, match="expected 'k' from 1 to 100, got 0"):
        explorer.neighbours_of_upload(b"not an image", "image/png", 0)


def test_an_unexpected_error_is_a_json_500_and_one_line(gallery: dict[str, Any], capfd) -> None:
    """A non-DynametricError in a handler: JSON 500 and one line on the terminal (was: a traceback and an empty
    reply)."""
    class Broken(Explorer):
        def info(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    capfd.readouterr()
    with serving(Broken(gallery["index"])) as srv:
        status, message = error_of(srv.server_address[1], "GET", "/api/info")
        assert status == 500 and message.startswith("internal error (RuntimeError)")
        assert request(srv.server_address[1], "GET", "/api/items?limit=1")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert err.splitlines() == ["dynametric explore: internal error answering GET /api/info: RuntimeError: boom"]


def test_a_client_that_disconnects_is_no_error_on_the_terminal(tmp_path: Path, capfd) -> None:
    """A browser aborting an image fetch mid-answer (connection reset while the server writes), and a client gone
    in the middle of its request: nothing on the terminal (was: a ConnectionResetError / BrokenPipeError
    traceback each)."""
    import struct

    (tmp_path / "big.png").write_bytes(np.random.default_rng(0).bytes(32 << 20))  # more than the socket buffers
    emb = EmbeddingSet(np.eye(1, 4, dtype=np.float32), ["big"], [str(tmp_path / "big.png")], None, [], None,
                       [str(tmp_path)], {}, tmp_path)
    capfd.readouterr()
    with serving(Explorer(RetrievalIndex.build(emb, "flat", "cosine"))) as srv:
        srv.daemon_threads = False  # server_close() then waits for the handlers: their output is in by the end
        port = srv.server_address[1]
        for first, wait in ((b"GET /image/0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", True),
                            (b"GET /api/info HTTP/1.1\r\nHo", False)):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(first)
            if wait:
                assert sock.recv(1024).startswith(b"HTTP/1.0 200")  # the server is writing the 32 MB
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            sock.close()
        assert request(port, "GET", "/api/info")[0] == 200
    err = capfd.readouterr().err
    assert err == "", err


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "PATCH", "BREW"])
def test_another_method_is_a_json_405_naming_the_allowed_ones(server: Any, method: str) -> None:
    status, headers, body = request(server.server_address[1], method, "/api/info")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"  # was: 501 and http.server's HTML page
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == f"method {method!r} not allowed; use GET, HEAD or POST"


def test_a_silent_connection_is_closed_after_the_timeout(gallery: dict[str, Any]) -> None:
    """A half-sent request (or an idle connection) is closed once the client is silent for ``timeout`` seconds
    (was: never; 300 of them held 304 threads). The default is 30 s."""
    explorer = Explorer(gallery["index"])
    srv = make_server(explorer, "127.0.0.1", 0)
    try:
        assert srv.RequestHandlerClass.timeout == 30
    finally:
        srv.server_close()
    with serving(explorer, timeout=0.2) as srv:
        for first in (b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n", b""):  # headers not ended; nothing at all
            with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30) as sock:
                sock.sendall(first)
                assert sock.recv(1024) == b""  # closed by the server, not by this client's 30 s
    with pytest.raises(InputError, match="expected a timeout in seconds above 0, got 0"):
        make_server(explorer, "127.0.0.1", 0, timeout=0)


# ------------------------------------------------------------------------------- MEDIUM 4: the Host header
@pytest.mark.parametrize("host, status", [
    ("attacker.example:{port}", 403),  # DNS rebinding: another site's name re-pointed at 127.0.0.1 (was: 200)
    ("attacker.example", 403), ("localhost.attacker.example:{port}", 403), ("10.1.2.3:{port}", 403),
    ("a:b:c", 403), ("[::1", 403), ("127.0.0.1:x", 403),
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST.:{port}", 200), ("[::1]:{port}", 200),
    ("127.0.0.1", 200), ("localhost:9999", 200),  # another port: an ssh -L tunnel or a container's mapping
])
def test_a_host_header_that_is_not_the_explorers_is_refused(server: Any, host: str, status: int) -> None:
    port = server.server_address[1]
    got, headers, body = request(port, "GET", "/api/items?limit=2", headers={"Host": host.format(port=port)})
    assert got == status, body
    if status == 403:
        assert headers["content-type"] == "application/json" and b'"c0' not in body
        assert json.loads(body)["error"].startswith(f"refused: Host {host.format(port=port)!r} is not an address "
                                                    "of this explorer")


def test_a_request_without_a_host_header_is_answered(server: Any) -> None:
    data = raw_exchange(server.server_address[1], b"GET /api/info HTTP/1.0\r\n\r\n")  # HTTP/1.0: no Host
    assert data.split()[1] == b"200"


def test_allowed_hosts_and_the_address_bound(gallery: dict[str, Any]) -> None:
    from dynametric.retrieval.explorer import HostCheck

    with serving(Explorer(gallery["index"]), allow_hosts=["MyBox.lan."]) as srv:
        port = srv.server_address[1]
        assert request(port, "GET", "/api/info", headers={"Host": f"mybox.lan:{port}"})[0] == 200
        assert request(port, "GET", "/api/info", headers={"Host": f"otherbox.lan:{port}"})[0] == 403
    with serving(Explorer(gallery["index"]), allow_hosts=["*"]) as srv:
        assert request(srv.server_address[1], "GET", "/api/info", headers={"Host": "anything.example"})[0] == 200
    with pytest.raises(InputError, match="key '--allow-host': expected a host name"):
        make_server(Explorer(gallery["index"]), "127.0.0.1", 0, allow_hosts=["evil.example/x"])
    # bound to every interface: reached by any of the machine's addresses, names only when allowed
    every = HostCheck("0.0.0.0", "0.0.0.0")
    assert every.allows("192.168.1.20:8765") and every.allows("[fe80::1]:8765") and every.allows("localhost:1")
    assert not every.allows("mybox:8765") and not every.allows("attacker.example:8765")
    assert HostCheck("::", "::", ["mybox"]).allows("mybox:8765")
    lan = HostCheck("192.168.1.20", "192.168.1.20")  # one address: that one (and loopback)
    assert lan.allows("192.168.1.20:8765") and lan.allows("127.0.0.1:8765")
    assert not lan.allows("192.168.1.21:8765") and not lan.allows("attacker.example:8765")
    named = HostCheck("192.168.1.20", "mybox.lan")  # --host NAME: reached by that name
    assert named.allows("mybox.lan:8765") and named.allows("192.168.1.20") and not named.allows("other.lan")


def test_a_cross_origin_upload_is_refused(server: Any) -> None:
    port = server.server_address[1]
    jpeg = _jpeg_bytes("JPEG")
    status, message = error_of(port, "POST", "/api/upload?k=2", body=jpeg,
                               headers={"Content-Type": "image/jpeg", "Origin": "http://attacker.example"})
    assert status == 403 and message.startswith("refused: a cross-origin upload (Origin 'http://attacker.example')")
    for origin in ("null", f"http://localhost:{port}"):  # a sandboxed page; another origin than the Host sent
        assert request(port, "POST", "/api/upload?k=2", jpeg, {"Content-Type": "image/jpeg", "Origin": origin})[0] \
            == 403
    status, _, _ = request(port, "POST", "/api/upload?k=2", jpeg,  # the page's own upload
                           {"Content-Type": "image/jpeg", "Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


def test_explore_passes_allow_host_on(gallery: dict[str, Any], tmp_path: Path, monkeypatch, capsys) -> None:
    gallery["index"].save(tmp_path / "idx")
    seen: dict[str, Any] = {}

    class Fake:
        server_address = ("127.0.0.1", 1234)

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    def fake_make(explorer: Any, host: str, port: int, **kwargs: Any) -> Fake:
        seen.update(kwargs)
        return Fake()

    monkeypatch.setattr("dynametric.retrieval.explorer.make_server", fake_make)
    assert main(["explore", "--index", str(tmp_path / "idx"), "--allow-host", "mybox", "--allow-host", "*"]) == 0
    assert seen["allow_hosts"] == ["mybox", "*"]


# ------------------------------------------------------------------------------------------------ LOW 10: IPv6
def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="this system has no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "[::1]", "::"])
def test_the_explorer_serves_on_ipv6(gallery: dict[str, Any], host: str) -> None:
    """--host ::1 / :: bind IPv6 (was: 'unknown host', the server being IPv4 only); :: takes IPv4 too."""
    with serving(Explorer(gallery["index"]), host) as srv:
        assert srv.address_family == socket.AF_INET6
        port = srv.server_address[1]
        status, _, body = request(port, "GET", "/api/info", host="::1")  # Host: [::1]:port
        assert status == 200 and json.loads(body)["count"] == 6
        if host == "::":
            assert request(port, "GET", "/api/info")[0] == 200  # dual stack: 127.0.0.1 as well


def test_the_address_family_follows_the_host() -> None:
    from dynametric.retrieval.explorer import address_family

    assert address_family("127.0.0.1", 0) == address_family("0.0.0.0", 0) == socket.AF_INET
    assert address_family("localhost", 0) == address_family("", 0) == socket.AF_INET  # as before
    assert address_family("::1", 0) == address_family("::", 0) == socket.AF_INET6
    with pytest.raises(InputError, match="key '--host': cannot listen on no-such-host.invalid:0: unknown host"):
        address_family("no-such-host.invalid", 0)


def test_explore_prints_an_ipv6_url_in_brackets(gallery: dict[str, Any], tmp_path: Path, monkeypatch,
                                                capsys) -> None:
    gallery["index"].save(tmp_path / "idx")

    class Fake:
        server_address = ("::1", 1234, 0, 0)

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    monkeypatch.setattr("dynametric.retrieval.explorer.make_server", lambda *a, **k: Fake())
    capsys.readouterr()
    assert main(["explore", "--index", str(tmp_path / "idx"), "--host", "::1"]) == 0
    assert capsys.readouterr().out.startswith("dynametric explorer: http://[::1]:1234/  (6 items")


# ------------------------------------------------------------------------------------- LOW 12: float32's range
def test_float64_queries_beyond_float32s_range_are_named_as_such(tmp_path: Path, capsys) -> None:
    """A float64 .npy with finite values above float32's range (1e300): for an l2 index, one line naming the file
    (was: numpy's 'RuntimeWarning: overflow encountered in cast' and then 'NaN or Inf', which the file does not
    hold); a cosine index normalises in float64 and searches them, on the command line as in Python (was: the
    reader refused them for every metric)."""
    import warnings

    s = _set()
    RetrievalIndex.build(s, "flat", "cosine").save(tmp_path / "idx")
    RetrievalIndex.build(s, "flat", "l2").save(tmp_path / "idx_l2")
    q = s.embeddings[:3].astype(np.float64)
    q[1, 2] = 1e300
    q[2, 0] = -3.5e38
    np.save(tmp_path / "q.npy", q)
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here
        assert main(["search", "--index", str(tmp_path / "idx_l2"), "--embeddings", str(tmp_path / "q.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"dynametric search: error: {tmp_path / 'q.npy'}: query embeddings {tmp_path / 'q.npy'} hold "
                       "values beyond float32's range (up to 3.403e+38) in 2 row(s), first at row 1 (0-based); an "
                       "l2 index searches in float32")
        assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "q.npy"), "-k", "1",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the huge coordinate gives rows 1 and 2 its axis as direction: their nearest items by cosine are those whose
    # unit rows reach furthest along +axis 2 and along -axis 0
    unit = s.embeddings / np.linalg.norm(s.embeddings, axis=1, keepdims=True)
    want = [s.ids[0], s.ids[int(np.argmax(unit[:, 2]))], s.ids[int(np.argmin(unit[:, 0]))]]
    assert [r["results"][0]["id"] for r in out["queries"]] == want
    # in Python: an l2 / ip index searches in float32 (cosine normalises in float64 first: it searches)
    l2 = RetrievalIndex.build(s, "flat", "l2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"queries hold values beyond float32's range \(up to 3.403e\+38\) in 2 "
                                             r"row\(s\), first at row 1"):
            l2.search(q, 3)
        with pytest.raises(InputError, match="embeddings hold values beyond float32's range"):
            RetrievalIndex.build(EmbeddingSet(q, s.ids[:3], s.paths[:3], None, [], None, [], {}, Path("mem")),
                                 "flat", "ip")
        assert RetrievalIndex.build(s, "flat", "cosine").search(q, 3).ids[1, 0] >= 0


def test_ctrl_c_right_after_the_url_line_stops_the_explorer_normally(gallery: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    """SIGINT between the 'dynametric explorer: http://...' line and serve_forever: status 0 and the server closed,
    as Ctrl-C while it serves (was: 130, 'interrupted')."""
    import builtins

    import dynametric.commands.explore as explore_cmd

    gallery["index"].save(tmp_path / "idx")
    closed: list[bool] = []

    class Fake:
        server_address = ("127.0.0.1", 1234)

        def serve_forever(self) -> None:
            raise AssertionError("not reached")

        def server_close(self) -> None:
            closed.append(True)

    def interrupted_print(*args: Any, **kwargs: Any) -> None:
        builtins.print(*args, **kwargs)
        if args and str(args[0]).startswith("dynametric explorer: http://"):
            raise KeyboardInterrupt  # Ctrl-C as the URL line is printed

    monkeypatch.setattr("dynametric.retrieval.explorer.make_server", lambda *a, **k: Fake())
    monkeypatch.setattr(explore_cmd, "print", interrupted_print, raising=False)
    capsys.readouterr()
    assert main(["explore", "--index", str(tmp_path / "idx")]) == 0
    assert closed == [True]
    assert "interrupted" not in capsys.readouterr().err
