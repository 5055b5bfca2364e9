"""The explorer's upload limit and listening queue: an image whose header says 30000 x 30000 pixels is the
documented ``image has WxH pixels, more than N`` (Pillow refused it at open as a decompression bomb:
``cannot decode the uploaded image (DecompressionBombError)``); the server queues 64 connections, not
http.server's 5 (about 1 % of 32 concurrent uploads were reset)."""

from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.explorer import Explorer, make_server

pytest.importorskip("faiss")


def _index():
    from dynametric.retrieval.index import RetrievalIndex

    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    return RetrievalIndex.build(EmbeddingSet(x, [f"i{i}" for i in range(5)], [""] * 5, None, [], None, [], {},
                                             Path("mem")), "flat", "cosine")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (8-bit RGB) and that holds one compressed row: never decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * (3 * 16 + 1)))
            + _chunk(b"IEND", b""))


class _NoModel:
    """Uploads enabled; never reached (the size is refused before an embedding)."""

    def embed(self, batch):  # pragma: no cover - must not be called
        raise AssertionError("embedded an image beyond the pixel limit")


@pytest.mark.parametrize("side", [30000, 12000])
def test_an_upload_beyond_the_pixel_limit_names_its_size(side: int) -> None:
    """30000 x 30000 is beyond twice Pillow's own limit (Image.open raises); 12000 x 12000 only beyond the
    explorer's: the same line for both."""
    explorer = Explorer(_index(), _NoModel(), k=2)
    data = _png_header(side, side)
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS or side == 12000
    with pytest.raises(InputError) as err:
        explorer.neighbours_of_upload(data, "image/png", 2)
    assert str(err.value) == f"key 'upload': image has {side}x{side} pixels, more than {explorer.max_pixels}"


def test_an_undecodable_upload_is_still_said_so() -> None:
    explorer = Explorer(_index(), _NoModel(), k=2)
    with pytest.raises(InputError, match=r"cannot decode the uploaded image"):
        explorer.neighbours_of_upload(b"\x89PNG\r\n\x1a\nnot really", "image/png", 2)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(InputError, match="content type image/jpeg but the data is PNG"):
        explorer.neighbours_of_upload(buf.getvalue(), "image/jpeg", 2)


def test_the_server_queues_64_connections() -> None:
    server = make_server(Explorer(_index(), None, k=2), "127.0.0.1", 0)
    try:
        assert server.request_queue_size == 64
        # the backlog handed to listen(): 64 connections complete their handshake with nobody accepting them
        clients = [socket.create_connection(server.server_address[:2], timeout=5) for _ in range(40)]
        for c in clients:
            c.close()
    finally:
        server.server_close()
