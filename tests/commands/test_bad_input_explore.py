"""`dynametric explore` under bad input: a warning when the page is reachable from the network, and a clear 4xx
JSON answer for absurd image ids (non-ASCII digits, thousands of digits, numbers past the index)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.explorer import Explorer, exposure_warning, make_server
from dynametric.retrieval.index import RetrievalIndex

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    base = tmp_path_factory.mktemp("explore_bad")
    n = 6
    emb = EmbeddingSet(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), [f"i{j}" for j in range(n)],
                       [str(base / f"{j}.png") for j in range(n)], None, [], None, [str(base)], {}, base)
    RetrievalIndex.build(emb, "flat").save(base / "idx")
    srv = make_server(Explorer(RetrievalIndex.load(base / "idx")), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1], base
    finally:
        srv.shutdown()
        srv.server_close()


def raw_get(port: int, target: bytes) -> tuple[int, dict]:
    """A GET with the raw request-target bytes (http.client would refuse non-ASCII ones)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("target, status, message", [
    ("/image/²".encode("latin-1"), 404, "expected /image/<item number> (ASCII digits, at most 18)"),
    ("/image/\u0661".encode(), 404, "expected /image/<item number>"),
    (b"/image/" + b"9" * 5000, 404, "expected /image/<item number>"),
    (b"/image/99999999999", 404, "no item 99999999999: the index has 6 items"),
    (b"/api/neighbours?item=" + "\u0661".encode(), 400, "expected an integer of at most 18 ASCII digits for 'item'"),
    (b"/api/items?offset=" + b"1" * 5000, 400, "expected an integer of at most 18 ASCII digits for 'offset'"),
    (b"/api/neighbours?item=7", 400, "item 7 out of range [0, 6)"),
])
def test_absurd_image_ids_get_a_clear_4xx(server, target, status, message) -> None:
    got, body = raw_get(server[0], target)
    assert got == status and message in body["error"]


def test_upload_with_a_non_ascii_content_length(server) -> None:
    with socket.create_connection(("127.0.0.1", server[0]), timeout=30) as sock:
        sock.sendall("POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ²\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        head = sock.recv(65536)
    assert head.split()[1] == b"411"


@pytest.mark.parametrize("host, warns", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                         ("0.0.0.0", True), ("::", True), ("192.168.1.20", True),
                                         ("myhost.example", True)])
def test_exposure_warning(host, warns) -> None:
    assert (exposure_warning(host) is not None) == warns


def test_explore_on_all_interfaces_warns(server, monkeypatch, capsys) -> None:
    class Fake:
        server_address = ("0.0.0.0", 1234)

        def serve_forever(self) -> None:
            raise KeyboardInterrupt

        def server_close(self) -> None:
            pass

    monkeypatch.setattr("dynametric.retrieval.explorer.make_server", lambda *a, **k: Fake())
    assert main(["explore", "--index", str(server[1] / "idx"), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on every network interface" in err and "no authentication" in err
    assert main(["explore", "--index", str(server[1] / "idx")]) == 0
    assert "warning" not in capsys.readouterr().err
