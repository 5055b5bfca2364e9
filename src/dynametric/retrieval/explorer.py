"""A small local retrieval explorer (``dynametric explore``): stdlib ``http.server``, one HTML page.

Pick a gallery image (or upload one) and see its nearest neighbours side by side: the nearest items, and for every
label scale the nearest *classes* at that scale (each shown by its nearest item), with distances and labels.

Safety: bound to ``127.0.0.1`` by default; images are only ever served by item number (``/image/<n>``), and only
when the item's file, after resolving symlinks, lies inside one of the index's image roots and has an image
extension; uploads are limited in size (``max_upload_bytes``, default 8 MiB), content type (JPEG, PNG, WebP,
BMP, GIF, checked again on the decoded format) and pixel count (``max_pixels``).
"""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from dynametric.data.base import IMAGE_EXTENSIONS
from dynametric.data.readers import locale_hint, nameable
from dynametric.errors import DynametricError, InputError
from dynametric.retrieval.index import RetrievalIndex

UPLOAD_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/bmp": "BMP", "image/gif": "GIF"}
UPLOAD_FORMATS = {"MPO": "JPEG"}
"""Pillow formats taken as another: a multi-picture JPEG (``MPO``: many phone photos, a JPEG whose first picture is
the photo) is a JPEG."""
DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


def ascii_number(text: str, max_digits: int = 18) -> int | None:
    """``text`` as a non-negative integer if it is 1..``max_digits`` ASCII digits, else None (``str.isdigit`` also
    accepts '²' or Arabic-Indic digits, and ``int()`` of thousands of digits raises)."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def exposure_warning(host: str) -> str | None:
    """A warning when ``host`` makes the page reachable from other machines (anything but a loopback address)."""
    import ipaddress

    host = host.strip()
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    where = "every network interface" if host in ("0.0.0.0", "::", "") else f"the address {host}"
    return (f"warning: serving on {where}: anyone who can reach this machine can browse the index and its images "
            "and upload queries (no authentication). Use the default --host 127.0.0.1 for this machine only. "
            "Other machines reach it by an IP address, or by a name given with --allow-host NAME.")


def locate_image(path: str | Path, roots: Sequence[str | Path]) -> tuple[Path | None, str]:
    """``(resolved path, "ok")`` if ``path`` (symlinks followed) is an existing image file inside one of ``roots``;
    else ``(None, why)``: ``"none"`` (no path recorded), ``"outside"`` (not inside the roots, whether it exists or
    not), ``"missing"`` (inside the roots, but no such file), ``"not-image"`` (not a file with an image extension),
    ``"unnameable"`` (a path the file system encoding cannot encode: :func:`nameable`)."""
    text = str(path)
    if not text:
        return None, "none"
    if "\x00" in text:
        return None, "outside"
    if not nameable(text):
        return None, "unnameable"
    try:
        real = Path(text).resolve()  # every existing link followed; the rest of the path as written
    except (OSError, RuntimeError):  # a symlink loop
        return None, "outside"
    bases = []
    for root in roots:
        with contextlib.suppress(OSError, RuntimeError, UnicodeEncodeError):  # a root this locale cannot name
            bases.append(Path(root).resolve(strict=True))
    if not any(real.is_relative_to(base) for base in bases):
        return None, "outside"
    if not real.exists():
        return None, "missing"
    if not real.is_file() or real.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, "not-image"
    return real, "ok"


def split_host(value: str) -> tuple[str, str | None] | None:
    """A ``Host`` header (or an ``Origin``'s ``host[:port]``) as ``(name, port)``: the name lower-cased, IPv6 without
    its brackets, a trailing dot dropped; None when it is malformed (an unbracketed IPv6 address, a port that is not
    1 to 5 ASCII digits)."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        name, sep, port_text = value.rpartition(":")
        if not sep:
            name, port = value, None
        else:
            port = port_text
        if ":" in name:
            return None
    if port is not None and ascii_number(port, 5) is None:
        return None
    name = name.lower().rstrip(".")
    return (name, port) if name else None


def _ip(text: str) -> Any:
    """``text`` as an :mod:`ipaddress` address, or None."""
    import ipaddress

    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) does not matter here
    except ValueError:
        return None


class HostCheck:
    """Which ``Host`` headers the explorer answers: the defence against DNS rebinding (a web page of another site,
    whose name its owner re-points at 127.0.0.1, would reach the explorer under that name and read it).

    Accepted: no ``Host`` at all (HTTP/1.0 clients; browsers always send one), ``localhost``, any loopback address
    (``127.0.0.1``, ``[::1]``), the address or name the server was bound to (``--host``), the names of
    ``allow_hosts`` (``--allow-host``; ``*`` accepts any Host), and when bound to every interface (``0.0.0.0``,
    ``::``) any IP address (a browser that reaches the server by an address sends that address, and an address
    cannot be re-pointed as a name can). Any port: an ``ssh -L`` tunnel or a container's port mapping reaches the
    explorer on another port than the one it listens on."""

    def __init__(self, bound: str, host: str = "", allow_hosts: Sequence[str] = ()) -> None:
        self.any_host = "*" in allow_hosts
        self.names = {"localhost", *(h.lower().rstrip(".") for h in allow_hosts if h != "*")}
        bound_ip = _ip(bound) if bound else None
        self.everywhere = bound_ip is None or bound_ip.is_unspecified
        self.addresses = {bound_ip} if bound_ip is not None and not bound_ip.is_unspecified else set()
        given = host.strip("[]").lower().rstrip(".")
        if given and _ip(given) is None:
            self.names.add(given)  # --host myhost.lan: reached by that name
        elif given and not _ip(given).is_unspecified:
            self.addresses.add(_ip(given))

    def allows(self, header: str | None) -> bool:
        if header is None or self.any_host:
            return True
        parts = split_host(header)
        if parts is None:
            return False
        name = parts[0]
        if name in self.names:
            return True
        ip = _ip(name)
        if ip is None:
            return False
        return bool(ip.is_loopback or self.everywhere or ip in self.addresses
                    or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped in self.addresses))


def check_allow_host(value: str) -> str:
    """One ``--allow-host`` value: ``*``, a host name (letters, digits, ``.``, ``-``, ``_``) or an IP address."""
    text = value.strip()
    if text == "*" or _ip(text.strip("[]")) is not None:
        return text.strip("[]")
    if not text or len(text) > 253 or not all(c.isascii() and (c.isalnum() or c in ".-_") for c in text):
        raise InputError(f"expected a host name (letters, digits, '.', '-', '_'), an IP address or '*', got "
                         f"{value[:60]!r}", key="--allow-host")
    return text.lower().rstrip(".")


def path_inside_roots(path: str | Path, roots: Sequence[str | Path]) -> Path | None:
    """``path`` resolved (symlinks followed) if it is an existing image file inside one of ``roots``, else None."""
    return locate_image(path, roots)[0]


REQUEST_TIMEOUT = 30.0  # seconds a connection may stay silent (an idle or half-sent request) before it is closed
MAX_K = 100  # neighbours per column (the page's k field allows 1..100)
MAX_ITEMS_PAGE = 500  # items per /api/items page


def _in_range(name: str, value: int, lo: int, hi: int | None) -> None:
    """A request parameter outside ``[lo, hi]`` is a 400 naming it (never clamped without a word)."""
    if value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise InputError(f"expected {name!r} {bound}, got {value}", key=name)


def query_params(query: str) -> dict[str, list[str]]:
    """The parameters of a URL's query string; one given twice (``?item=1&item=abc``) is refused, naming it
    (``parse_qs`` keeps both and the first was taken without a word)."""
    params = parse_qs(query, keep_blank_values=True)
    for name, values in params.items():
        if len(values) > 1:
            raise InputError(f"parameter {name[:40]!r} given {len(values)} times; give it once", key=name[:40])
    return params


UPLOADS_DISABLED = ("uploads are disabled: the index records no usable checkpoint (start the explorer with "
                    "--checkpoint)")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """The ``(width, height)`` an upload's header says (one of :data:`UPLOAD_TYPES`' formats), read by the format's
    Pillow plugin without the pixel limit ``Image.open`` applies (nothing is decoded); ``None`` if no plugin reads
    it. For naming the size of an image Pillow refused as a decompression bomb."""
    return _plugin_size(lambda: io.BytesIO(data), "upload", UPLOAD_TYPES.values())


def header_size(path: str | Path) -> tuple[int, int] | None:
    """:func:`_header_size` of an image file (any format Pillow knows): its ``(width, height)`` as its header says,
    read without Pillow's pixel limit and without decoding; ``None`` if no plugin reads it or it cannot be read."""
    from PIL import Image

    Image.init()
    fh: Any = None
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after every plugin tried it
        return _plugin_size(lambda: (fh.seek(0), fh)[1], str(path), list(Image.OPEN))
    except OSError:
        return None
    finally:
        if fh is not None:
            fh.close()


def _plugin_size(source: Callable[[], Any], name: str, formats: Any) -> tuple[int, int] | None:
    """The size the first Pillow plugin of ``formats`` that accepts the data of ``source()`` (a fresh file object
    at its start) reads from its header."""
    from PIL import Image

    Image.init()
    for fmt in formats:
        factory, accept = Image.OPEN.get(fmt, (None, None))
        if factory is None:
            continue
        fp = source()
        if accept is not None and not accept(fp.read(16)):
            continue
        fp.seek(0)
        try:
            img = factory(fp, name)
            width, height = img.size
            return int(width), int(height)
        except Exception:  # noqa: BLE001 - not this format (Pillow raises many types)
            continue
    return None


class Explorer:
    """The explorer's state: an index, an optional model (uploads), limits. Methods return JSON-ready dicts."""

    def __init__(self, index: RetrievalIndex, embedder: Any | None = None, *, k: int = 8,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD, max_pixels: int = DEFAULT_MAX_PIXELS,
                 roots: Sequence[str | Path] | None = None) -> None:
        self.index = index
        self.embedder = embedder
        if not 1 <= k <= MAX_K:
            raise InputError(f"neighbours per column must be from 1 to {MAX_K}, got {k}", key="--k")
        self.k = k
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.roots = [str(r) for r in (roots if roots is not None else index.image_roots)]
        self.roots_given = roots is not None  # the caller's roots (explore --image-root), not index.json's
        self.lock = threading.Lock()
        # roots this locale cannot name (is_dir() would say False): no image under them is served, and why is said
        self.unnameable_roots = [r for r in self.roots if not nameable(r)]
        # roots that are no folder now (the project moved): no image under them is served, and that is said
        self.missing_roots = [r for r in self.roots if nameable(r) and not Path(r).is_dir()]
        self.notes: list[str] = []  # for the user at startup (`dynametric explore` prints them)
        if self.unnameable_roots and self.has_images:
            self.notes.append(f"the image root(s) {', '.join(self.unnameable_roots)} {locale_hint()}: no image under "
                              "them is shown")
        if self.missing_roots and self.has_images:
            self.notes.append(f"the index's image root(s) {', '.join(self.missing_roots)} (recorded in its "
                              "index.json) no longer exist (moved?): no image under them is shown; build the index "
                              "again from embeddings of the images where they are now")

    @property
    def has_images(self) -> bool:
        """Whether the index records image files (one built from a bare ``.npy`` records none)."""
        return any(self.index.paths)

    def image_url(self, i: int) -> str | None:
        """``/image/<i>``, or None for an item without an image file (the page then requests nothing)."""
        return f"/image/{i}" if self.index.paths[i] else None

    def info(self) -> dict[str, Any]:
        return {"count": self.index.size, "scales": self.index.scale_names, "k": self.k, "metric": self.index.metric,
                "kind": self.index.kind, "upload": self.embedder is not None, "images": self.has_images,
                "max_upload_bytes": self.max_upload_bytes, "upload_types": sorted(UPLOAD_TYPES)}

    def item(self, i: int) -> dict[str, Any]:
        idx = self.index
        out: dict[str, Any] = {"index": i, "id": idx.ids[i], "image": self.image_url(i)}
        if idx.labels is not None:
            out["labels"] = {s: idx.label_value(j, int(idx.labels[i, j])) for j, s in enumerate(idx.scale_names)}
        return out

    def items(self, offset: int, limit: int) -> dict[str, Any]:
        _in_range("offset", offset, 0, None)
        _in_range("limit", limit, 1, MAX_ITEMS_PAGE)
        stop = min(self.index.size, offset + limit)
        return {"total": self.index.size, "offset": offset, "items": [self.item(i) for i in range(offset, stop)]}

    def neighbours(self, q: np.ndarray, k: int, exclude: int | None = None) -> dict[str, Any]:
        """Columns: nearest items, then for every scale the nearest classes at that scale (coarsest last)."""
        _in_range("k", k, 1, MAX_K)
        ex = None if exclude is None else np.array([exclude])
        columns = []
        modes: list[tuple[str, str | None]] = [("nearest items", None)]
        modes += [(f"nearest {s} classes", s) for s in self.index.scale_names] if self.index.labels is not None else []
        with self.lock:
            for title, scale in modes:
                res = self.index.search(q, k, scale=scale, exclude=ex)
                hits = self.index.describe(res, ["query"])[0]["results"]
                for h in hits:
                    h["image"] = self.image_url(h["index"])
                    h.pop("path", None)
                columns.append({"title": title, "scale": scale, "results": hits})
        return {"columns": columns}

    def neighbours_of_item(self, i: int, k: int) -> dict[str, Any]:
        if not 0 <= i < self.index.size:
            raise InputError(f"item {i} out of range [0, {self.index.size})", key="item")
        q = self.index.reconstruct(i)[None, :]  # thread-safe itself (RetrievalIndex.reconstruct)
        return {"query": self.item(i), **self.neighbours(q, k, exclude=i)}

    def neighbours_of_upload(self, data: bytes, content_type: str, k: int) -> dict[str, Any]:
        if self.embedder is None:
            raise InputError(UPLOADS_DISABLED, key="upload")
        _in_range("k", k, 1, MAX_K)  # before the image is decoded and embedded
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in UPLOAD_TYPES:
            raise InputError(f"unsupported upload type {ctype!r}; expected one of {sorted(UPLOAD_TYPES)}",
                             key="content-type")
        from PIL import Image

        from dynametric.data.base import to_rgb

        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                if img.width * img.height > self.max_pixels:
                    raise InputError(f"image has {img.width}x{img.height} pixels, more than {self.max_pixels}",
                                     key="upload")
                rgb = to_rgb(img)  # the one conversion of every image read (EXIF orientation, 16-bit, alpha)
        except InputError:
            raise
        except Image.DecompressionBombError:  # Pillow refuses beyond twice its own limit before the check above
            size = _header_size(data)
            if size is None:
                raise InputError(f"image has more pixels than {self.max_pixels}", key="upload") from None
            raise InputError(f"image has {size[0]}x{size[1]} pixels, more than {self.max_pixels}",
                             key="upload") from None
        except Exception as exc:  # PIL raises many types for bad data
            raise InputError(f"cannot decode the uploaded image ({type(exc).__name__})", key="upload") from None
        if UPLOAD_FORMATS.get(str(fmt), fmt) != UPLOAD_TYPES[ctype]:
            raise InputError(f"content type {ctype} but the data is {fmt}", key="content-type")
        import torch

        with self.lock:
            q = self.embedder.embed(torch.stack([self.embedder.transform(rgb)])).numpy()
        return {"query": {"id": "upload", "image": None}, **self.neighbours(q, k)}

    def image(self, i: int) -> tuple[int, Path | str]:
        """``(200, file)`` for item ``i``'s image, else ``(status, message)``: 404 no such item, no image recorded,
        file not found; 403 a file outside the image roots or not an image."""
        idx = self.index
        if not 0 <= i < idx.size:
            return 404, f"no item {i}: the index has {idx.size} items"
        path, why = locate_image(idx.paths[i], self.roots)
        if path is not None:
            return 200, path
        if why == "none":
            return 404, ("this index has no images: it was built from embeddings without file paths (a bare .npy)"
                         if not self.has_images else f"item {i} records no image file")
        if why == "missing":
            return 404, f"file not found: item {i}'s image file ({Path(idx.paths[i]).name}) does not exist"
        if why == "not-image":
            return 403, "refused: the item's file is not an image file (a file with an image extension)"
        if why == "unnameable" or self.unnameable_roots:
            return 404, (f"item {i}'s image file" if why == "unnameable" else
                         f"the image root(s) {', '.join(self.unnameable_roots)}") + f" {locale_hint()}"
        if self.missing_roots:
            return 403, (f"refused: the item's file is not inside the index's image roots, and the root(s) "
                         f"{', '.join(self.missing_roots)} no longer exist (moved?)")
        if self.roots_given:
            return 403, "refused: the item's file is not inside the image roots this explorer serves (--image-root)"
        return 403, "refused: the item's file is not inside the index's image roots"


class _ExplorerHandler(BaseHTTPRequestHandler):
    """The explorer's request handler; :func:`_handler` makes a subclass bound to one :class:`Explorer` and
    timeout. GET routes: the page, ``/api/info``, ``/api/items``, ``/api/neighbours``, ``/image/<n>``; POST:
    ``/api/upload``. Every answer is JSON except the page and the images."""

    explorer: Explorer  # set by _handler
    server_version = "dynametric-explore"
    timeout = REQUEST_TIMEOUT  # _handler sets the server's
    _sent = False

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def _send(self, status: int, body: bytes, ctype: str, *, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` with ``body``; ``close``: say ``Connection: close`` and close after it (a request
        refused before its body was read)."""
        self._sent = True  # from here on, an error cannot be answered any more
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, **kwargs: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json", **kwargs)

    def _error(self, status: int, message: str, **kwargs: Any) -> None:
        self._json({"error": message}, status, **kwargs)

    def _int(self, params: dict[str, list[str]], name: str, default: int | None) -> int:
        """Query parameter ``name`` as an integer; ``default`` when it is absent (``None``: it is required)."""
        if name not in params:
            if default is None:
                raise InputError(f"missing parameter {name!r}", key=name)
            return default
        text = params[name][0]
        value = ascii_number(text.removeprefix("-"))
        if value is None:
            raise InputError(f"expected an integer of at most 18 ASCII digits for {name!r}, got {text[:40]!r}",
                             key=name)
        return -value if text.startswith("-") else value

    def _answer(self, route: Callable[[], None]) -> None:
        """Run ``route``: bad input is a JSON 400; a client that went away (a browser aborting an image fetch)
        or stalled past the timeout ends the connection without a word; any other exception is a JSON 500 and
        one line on the terminal (was: a traceback, and an empty reply)."""
        self._sent = False
        try:
            if self._refused_host():
                return
            route()
        except DynametricError as exc:
            if self._sent:  # mid-answer: nothing more can be said on this connection
                self.close_connection = True
            else:
                self._error(400, str(exc))
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            self.close_connection = True
            target = self.path if len(self.path) <= 200 else self.path[:200] + "..."
            print(f"dynametric explore: internal error answering {self.command} {target}: {type(exc).__name__}: "
                  f"{exc}", file=sys.stderr, flush=True)
            if not self._sent:
                with contextlib.suppress(OSError):
                    self._error(500, f"internal error ({type(exc).__name__}); the explorer's terminal says more",
                                close=True)

    def _refused_host(self) -> bool:
        """Answer 403 (and True) to a request whose ``Host`` is not one of this explorer's (DNS rebinding), or
        a POST whose ``Origin`` is another site's (a cross-origin upload)."""
        check: HostCheck | None = getattr(self.server, "host_check", None)
        if check is None:
            return False
        host = self.headers.get("Host")
        if not check.allows(host):
            shown = (host or "")[:100]
            name = (split_host(host or "") or (shown,))[0]
            self._error(403, f"refused: Host {shown!r} is not an address of this explorer (a page of another "
                             f"site reached it by a re-pointed name?); to browse it by this name, start it with "
                             f"--allow-host {name[:100]}", close=True)
            return True
        return self._refused_origin(check, host)

    def _refused_origin(self, check: HostCheck, host: str | None) -> bool:
        """Answer 403 (and True) to a POST whose ``Origin`` is not this explorer's own page (the request's
        ``Host``, or without one an origin ``check`` allows)."""
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None:
            url = urlsplit(origin)
            same = url.scheme in ("http", "https") and (url.netloc.lower() == host.lower() if host is not None
                                                          else check.allows(url.netloc))
            if not same:
                self._error(403, f"refused: a cross-origin upload (Origin {origin[:100]!r}); upload from the "
                                 "explorer's own page", close=True)
                return True
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, headers too long, an unknown method) in JSON
        like every other answer; a method other than GET, HEAD and POST is a 405 naming them (was: http.server's
        HTML 501 page)."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            method = str(self.command)[:20]
            self._error(405, f"method {method!r} not allowed; use GET, HEAD or POST", close=True,
                        headers={"Allow": "GET, HEAD, POST"})
            return
        self._error(code, message or HTTPStatus(code).phrase, close=True)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(self._get)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self._post)

    def _get(self) -> None:
        """Route a GET (or HEAD) by path; a parameter given twice is a 400 on every path."""
        url = urlsplit(self.path)
        params = query_params(url.query)
        if url.path in ("/", "/index.html"):
            self._page()
        elif url.path == "/api/info":
            self._info()
        elif url.path == "/api/items":
            self._items(params)
        elif url.path == "/api/neighbours":
            self._neighbours(params)
        elif url.path.startswith("/image/"):
            self._image(url.path[len("/image/"):])
        else:
            self._error(404, "not found")

    def _page(self) -> None:
        """``/`` and ``/index.html``: the page."""
        self._send(200, PAGE.encode("utf-8"), "text/html; charset=utf-8")

    def _info(self) -> None:
        """``/api/info``: the index's size, scales, options (:meth:`Explorer.info`)."""
        self._json(self.explorer.info())

    def _items(self, params: dict[str, list[str]]) -> None:
        """``/api/items?offset=&limit=``: a page of the gallery's items."""
        self._json(self.explorer.items(self._int(params, "offset", 0), self._int(params, "limit", 60)))

    def _neighbours(self, params: dict[str, list[str]]) -> None:
        """``/api/neighbours?item=<n>&k=``: the neighbours of item ``n`` (``item`` required)."""
        self._json(self.explorer.neighbours_of_item(self._int(params, "item", None),
                                                    self._int(params, "k", self.explorer.k)))

    def _image(self, tail: str) -> None:
        """``/image/<n>``: item ``n``'s image file, by number only (:meth:`Explorer.image`)."""
        number = ascii_number(tail)  # only item numbers: never a path from the request
        if number is None:
            self._error(404, "no such image: expected /image/<item number> (ASCII digits, at most 18)")
            return
        status, path = self.explorer.image(number)
        if not isinstance(path, Path):
            self._error(status, path)
            return
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype)

    def _post(self) -> None:
        """Route a POST: only ``/api/upload``."""
        url = urlsplit(self.path)
        # every refusal before the body is read closes the connection (its unread body is not a next request)
        if url.path != "/api/upload":
            self._error(404, "not found", close=True)
            return
        self._upload(url.query)

    def _upload(self, query: str) -> None:
        """``/api/upload?k=``: the neighbours of the uploaded image, once :meth:`_upload_request` accepts it."""
        accepted = self._upload_request(query)
        if accepted is None:
            return
        length, k, ctype = accepted
        data = self.rfile.read(length)
        self._json(self.explorer.neighbours_of_upload(data, ctype, k))  # bad data: a 400 (_answer)

    def _upload_request(self, query: str) -> tuple[int, int, str] | None:
        """An upload's ``(length, k, content type)`` checked before its body is read; else None, the refusal
        answered (411, 403, 400, 413, 415, in that order) with the connection closed."""
        length = ascii_number(self.headers.get("Content-Length") or "")
        if length is None:
            self._error(411, "Content-Length required (ASCII digits)", close=True)
            return None
        if self.explorer.embedder is None:
            self._error(403, UPLOADS_DISABLED, close=True)
            return None
        try:  # the parameters before the body: a bad k is refused before anything is read, decoded, embedded
            k = self._int(query_params(query), "k", self.explorer.k)
            _in_range("k", k, 1, MAX_K)
        except DynametricError as exc:
            self._error(400, str(exc), close=True)
            return None
        if length > self.explorer.max_upload_bytes:
            self._error(413, f"upload larger than {self.explorer.max_upload_bytes} bytes", close=True)
            return None
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() not in UPLOAD_TYPES:
            self._error(415, f"unsupported upload type {ctype!r}; expected one of {sorted(UPLOAD_TYPES)}",
                        close=True)
            return None
        return length, k, ctype


def _handler(explorer: Explorer, timeout_s: float = REQUEST_TIMEOUT) -> type[BaseHTTPRequestHandler]:
    """A request handler class for ``explorer``: connections silent for ``timeout_s`` seconds are closed."""

    class Handler(_ExplorerHandler):
        pass

    Handler.explorer = explorer
    # seconds a connection may stay silent (socketserver sets it on the socket): an idle or half-sent request
    # is dropped, not a thread held forever
    Handler.timeout = timeout_s
    return Handler


class ExplorerServer(ThreadingHTTPServer):
    """The explorer's threaded HTTP server: a client that disconnects or stalls is no error on the terminal; any
    other error on a connection (outside a request's handler) is one line, not a traceback."""

    daemon_threads = True
    request_queue_size = 64  # connections waiting to be accepted (http.server's 5 reset some of 32 clients' uploads)
    host_check: HostCheck | None = None  # set by make_server

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        who = client_address[0] if isinstance(client_address, tuple) and client_address else client_address
        print(f"dynametric explore: error on a connection from {who}: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)


class ExplorerServer6(ExplorerServer):
    """:class:`ExplorerServer` on IPv6 (``--host ::1``, ``--host ::``); bound to ``::``, it also takes IPv4
    connections where the system allows (dual stack)."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if _ip(str(self.server_address[0])) == _ip("::"):
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def address_family(host: str, port: int) -> socket.AddressFamily:
    """The socket family to bind ``host`` with: IPv6 for an IPv6 address (``::1``, ``::``, ``[::1]``) or a name
    with only IPv6 addresses, else IPv4 (a name with both, as ``localhost``, binds IPv4 as it always did).
    An unknown name is an error keyed ``--host``."""
    if not host:
        return socket.AF_INET
    ip = _ip(host)
    if ip is not None:
        return socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) and exc.strerror else str(exc)
        raise InputError(f"cannot listen on {host}:{port}: unknown host ({reason})", key="--host") from None
    families = {info[0] for info in infos}
    return socket.AF_INET6 if socket.AF_INET not in families and socket.AF_INET6 in families else socket.AF_INET


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765, *,
                timeout: float = REQUEST_TIMEOUT, allow_hosts: Sequence[str] = ()) -> ThreadingHTTPServer:
    """An HTTP server for ``explorer`` (``port=0``: any free port; see ``server.server_address``). ``timeout``:
    seconds a connection may wait for the client's next bytes before it is closed. Requests whose ``Host`` is not
    an address of the server are refused (:class:`HostCheck`); ``allow_hosts`` names more host names to accept
    (``*``: any)."""
    allowed = [check_allow_host(h) for h in allow_hosts]
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):  # --host [::1], as URLs write it
        host = host[1:-1]
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InputError(f"expected a port number from 0 to 65535, got {port!r}", key="--port")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InputError(f"expected a timeout in seconds above 0, got {timeout!r}", key="timeout")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cls = ExplorerServer6 if address_family(host, port) == socket.AF_INET6 else ExplorerServer
    try:
        server = cls((host, port), _handler(explorer, timeout))
    except socket.gaierror as exc:  # the address, not the port: an unknown host name
        raise InputError(f"cannot listen on {where}: unknown host ({exc.strerror or exc})", key="--host") from None
    except OSError as exc:
        import errno

        # an address this machine does not have, or IPv6 on a system without it, is the host's fault
        key = "--host" if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) else "--port"
        raise InputError(f"cannot listen on {where} ({exc.strerror or exc})", key=key) from None
    server.host_check = HostCheck(str(server.server_address[0]), host, allowed)
    return server


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dynametric explorer</title>
<style>
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa}
#gallery{display:flex;flex-wrap:wrap;gap:4px;max-height:30vh;overflow:auto;border:1px solid #ccc;padding:4px}
#gallery .tile{width:64px;height:64px;object-fit:cover;cursor:pointer;border:2px solid transparent}
#gallery span.tile{font-size:.7em;overflow:hidden;background:#eee;word-break:break-all}
#gallery .tile.sel{border-color:#d33}
#columns{display:flex;gap:1em;margin-top:1em;align-items:flex-start}
.col{flex:1;background:#fff;border:1px solid #ddd;padding:.5em;min-width:12em}
.hit{display:flex;gap:.5em;align-items:center;margin:.25em 0;font-size:.85em}
.hit img{width:56px;height:56px;object-fit:cover}
#query img{width:96px;height:96px;object-fit:cover}
.err{color:#b00}
</style></head>
<body>
<h1>dynametric explorer</h1>
<div id="status">loading…</div>
<div><label>upload a query image:
<input type="file" id="upload" accept="image/jpeg,image/png,image/webp,image/bmp,image/gif"></label>
<label> k <input type="number" id="k" min="1" max="100" value="8" style="width:4em"></label></div>
<h2>Gallery (click a query)</h2>
<div id="gallery"></div>
<h2>Query</h2><div id="query"></div>
<div id="columns"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function distText(d) { const t = d.toFixed(4); return t === "-0.0000" ? "0.0000" : t; }  // as `search` prints it
function labelsText(labels) { return labels ? Object.entries(labels).map(([s, v]) => s + ": " + v).join(", ") : ""; }
function show(data) {
  const q = $("query"); q.replaceChildren();
  if (data.error) { q.appendChild(el("div", data.error, "err")); $("columns").replaceChildren(); return; }
  if (data.query.image) { const img = el("img"); img.src = data.query.image; q.appendChild(img); }
  q.appendChild(el("div", data.query.id + "  " + labelsText(data.query.labels)));
  const cols = $("columns"); cols.replaceChildren();
  for (const c of data.columns) {
    const col = el("div", undefined, "col"); col.dataset.scale = c.scale || "items";
    col.appendChild(el("h3", c.title));
    for (const h of c.results) {
      const row = el("div", undefined, "hit"); row.dataset.rank = h.rank; row.dataset.index = h.index;
      if (h.image) { const img = el("img"); img.src = h.image; img.alt = h.id; row.appendChild(img); }
      row.appendChild(el("span", "#" + h.rank + " " + h.id + " d=" + distText(h.distance) + " " +
        labelsText(h.labels)));
      col.appendChild(row);
    }
    cols.appendChild(col);
  }
  $("status").textContent = "showing neighbours of " + data.query.id;
  document.body.dataset.state = "results";
}
async function query(i) {
  for (const e of document.querySelectorAll("#gallery .tile.sel")) e.classList.remove("sel");
  const t = document.querySelector('#gallery .tile[data-index="' + i + '"]'); if (t) t.classList.add("sel");
  const r = await fetch("/api/neighbours?item=" + i + "&k=" + $("k").value); show(await r.json());
}
async function init() {
  const info = await (await fetch("/api/info")).json();
  $("k").value = info.k;
  $("upload").disabled = !info.upload;
  const data = await (await fetch("/api/items?offset=0&limit=200")).json();
  for (const it of data.items) {  // an item without an image file (image null) is a tile with its id: no request
    const tile = it.image ? el("img", undefined, "tile") : el("span", it.id, "tile");
    if (it.image) { tile.src = it.image; tile.alt = it.id; }
    tile.title = it.id + " " + labelsText(it.labels);
    tile.dataset.index = it.index; tile.addEventListener("click", () => query(it.index));
    $("gallery").appendChild(tile);
  }
  $("status").textContent = info.count + " items, scales: " + (info.scales.join(", ") || "none") +
    (info.upload ? "" : " (uploads disabled: no checkpoint)") +
    (info.images ? "" : " (no images: the index records no image files)") + (data.total > data.items.length ?
    "; showing the first " + data.items.length : "");
  document.body.dataset.state = "ready";
  if (new URLSearchParams(location.search).get("autoclick") !== null) {
    const first = document.querySelector("#gallery .tile"); if (first) first.click();
  }
}
$("upload").addEventListener("change", async (ev) => {
  const f = ev.target.files[0]; if (!f) return;
  const r = await fetch("/api/upload?k=" + $("k").value, {method: "POST", body: f,
    headers: {"Content-Type": f.type || "application/octet-stream"}});
  show(await r.json());
});
init();
</script></body></html>
"""
