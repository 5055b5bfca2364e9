"""JPEG decoding on the inference device (``--decode gpu``): loader workers only read file bytes.

With :class:`DeviceDecoder` as the loader transform of :class:`dynametric.retrieval.embed.ImageFiles`, a worker
returns a JPEG file's bytes as a 1-D ``uint8`` tensor (no decoding, no resizing); the main process decodes the
whole batch in one ``torchvision.io.decode_jpeg(list, device=...)`` call (nvjpeg on CUDA, libjpeg on the CPU) and
applies the evaluation transform's geometry (``Resize`` / ``CenterCrop``, same sizes and interpolation,
``antialias=True``) on the device, images of one size as one batch. Normalisation is the transform's device part
(:func:`dynametric.engine.inference.split_transform`).

Files that are not plain JPEGs (PNG, WebP, …, JPEGs that do not end with the end-of-image marker, e.g.
truncated ones, JPEGs whose header segments cannot be walked up to the start of scan, and JPEGs with an EXIF
orientation other than 1 wherever their EXIF segment lies, which nvjpeg would not apply) are decoded in the
worker by PIL with the usual loader (:func:`dynametric.data.base.load_rgb`) and transform (to ``uint8``), so mixed
folders work, phone photos come out upright as on the CPU path, and a bad file gives the same error as the CPU
path. A JPEG the device decoder rejects is decoded again alone, then by PIL; if PIL cannot decode it either the
error names the file, as on the CPU path.

A JPEG whose compressed data is damaged but which ends with its end-of-image marker decodes on both paths, grey
where data is missing. What is detected depends on the decoder: on the CPU device, libjpeg prints a warning to the
process's stderr (file descriptor 2) without a file name; it is caught here and logged as one warning naming the
file (:func:`dynametric.data.base.jpeg_damage` finds which). On CUDA, nvjpeg prints nothing and reports nothing, so
a damaged JPEG that nvjpeg accepts is embedded without any warning (one it rejects is decoded by PIL, which says
nothing either). ``dynametric data inspect`` decodes every JPEG with libjpeg on the CPU and lists such files before
embedding (kind ``damaged_image``).

Values differ slightly from the CPU path: PIL's and torchvision's antialiased resize are not bit-identical (and
nvjpeg's IDCT may differ from libjpeg's in the last bit).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from dynametric.errors import InputError

log = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
EXIF_HEADER = b"Exif\x00\x00"


def gpu_decode_available() -> bool:
    """Whether this torchvision can decode JPEGs on a CUDA device (nvjpeg)."""
    try:
        import torchvision  # noqa: F401

        return hasattr(torch.ops.image, "decode_jpegs_cuda")
    except (ImportError, AttributeError, RuntimeError):
        return False


def _exif_segment(data: bytes) -> bool | None:
    """Whether the JPEG's header segments (start-of-image up to start-of-scan) hold an EXIF ``APP1`` segment; None
    when they cannot be walked (a length that runs past the file, no start-of-scan, bytes where a marker belongs).

    Each segment is ``FF xx`` plus a 2-byte big-endian length (covering itself), so this reads a few bytes per
    segment, wherever the EXIF segment is: after ICC profile (``APP2``) segments of up to 64 KiB each it can lie
    far beyond the first 64 KiB."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the entropy-coded data follows, no header segment after it
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            if marker == 0xD9:
                return None
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > size:
            return None
        if marker == 0xE1 and data[pos + 4:pos + 10] == EXIF_HEADER:
            return True
        pos += 2 + length
    return None


def is_plain_jpeg(data: bytes) -> bool:
    """Starts with the JPEG start-of-image marker, (ignoring trailing padding) ends with end-of-image, has header
    segments that can be walked up to the start of scan, and shows its pixels as stored: no EXIF orientation other
    than 1 (the device decoder does not apply it), wherever its EXIF segment lies (:func:`_exif_segment`)."""
    if not (data.startswith(JPEG_START) and data.rstrip(b"\x00\r\n \t").endswith(JPEG_END)):
        return False
    exif = _exif_segment(data)
    if exif is None:  # odd header structure: PIL decodes it (and names the file if it cannot)
        return False
    if not exif:
        return True
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return img.getexif().get(0x0112, 1) == 1
    except Exception:  # PIL raises many types for bad data; it names the problem on the PIL path
        return False


class EncodedImages:
    """A loader batch for :meth:`DeviceDecoder.decode`: per image its path and either the JPEG bytes (1-D
    ``uint8``) or the image already decoded and transformed in the worker (``uint8`` ``[C, H, W]``).

    All of them live in one flat ``uint8`` buffer (one shared-memory handle per batch from a worker, not one per
    image); :attr:`data` gives the per-image views."""

    def __init__(self, paths: Sequence[str], data: Sequence[torch.Tensor]) -> None:
        self.paths = list(paths)
        self.shapes = [tuple(t.shape) for t in data]
        sizes = [t.numel() for t in data]
        self.offsets = [0]
        for n in sizes:
            self.offsets.append(self.offsets[-1] + n)
        self.blob = torch.cat([t.reshape(-1) for t in data]) if data else torch.empty(0, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def data(self) -> list[torch.Tensor]:
        return [self.blob[a:b].view(shape) for a, b, shape in zip(self.offsets, self.offsets[1:], self.shapes)]

    def pin_memory(self) -> EncodedImages:  # DataLoader(pin_memory=True): decode_jpeg reads host memory anyway
        return self


@dataclass
class DecodedBatch:
    """A batch :meth:`DeviceDecoder.decode_ahead` decoded: ``images`` ``uint8 [B, 3, H, W]`` on the device, and on
    CUDA the event of the side stream that ends its decoding."""

    images: torch.Tensor
    done: Any  # torch.cuda.Event | None

    def __len__(self) -> int:
        return len(self.images)

    def take(self) -> torch.Tensor:
        """The images, for the calling thread's current stream: on CUDA that stream waits for the decoding (queued,
        the host does not wait), and the caching allocator keeps their memory until that stream is done with it."""
        if self.done is not None:
            current = torch.cuda.current_stream(self.images.device)
            current.wait_event(self.done)
            self.images.record_stream(current)
            self.done = None
        return self.images


@dataclass(frozen=True)
class _Resize:
    size: Any
    interpolation: Any
    max_size: int | None
    max_aspect: int | None = None  # BoundedResize: a long side beyond max_aspect x the short one is cut first


@dataclass(frozen=True)
class _Crop:
    size: Any


@dataclass(frozen=True)
class _Channels:
    op: str  # "swap_rb": R and B exchanged (SwapRB); "grey": one channel, Pillow's convert("L") (Grayscale)


def _grey_uint8(x: torch.Tensor) -> torch.Tensor:
    """``uint8 [..., 3, H, W]`` -> ``uint8 [..., 1, H, W]`` as Pillow's ``convert("L")`` computes it (ITU-R 601-2
    luma in fixed point: ``(R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16``), so both decoders give the same
    values."""
    w = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=x.device).view(3, 1, 1)
    return ((x.to(torch.int32) * w).sum(dim=-3, keepdim=True) + 0x8000).bitwise_right_shift(16).to(torch.uint8)


def _decode_error(path: Any, exc: Exception) -> InputError:
    # the CPU path's message (retrieval.embed.ImageFiles), so both modes report a bad file the same way
    from dynametric.data.base import image_read_error

    return image_read_error(path, exc)


def _pil_uint8(source: Any, cpu_transform: Callable[[Any], torch.Tensor], path: Any = None) -> torch.Tensor:
    """``source`` (a path, or an open file of ``path``) decoded by PIL and passed through ``cpu_transform``."""
    from dynametric.data.base import load_rgb

    try:
        img = load_rgb(source)
    except Exception as exc:  # PIL raises many types for bad files
        raise _decode_error(source if path is None else path, exc) from None
    return cpu_transform(img)


class DeviceDecoder:
    """The loader transform for device decoding (see the module docstring). Build with :meth:`from_transform`."""

    def __init__(self, geometry: Sequence[_Resize | _Crop | _Channels],
                 cpu_transform: Callable[[Any], torch.Tensor]) -> None:
        self.geometry = list(geometry)
        self.cpu_transform = cpu_transform  # PIL -> uint8 [C, H, W] (the loader part of split_transform)
        self._streams: dict[torch.device, Any] = {}  # CUDA side stream per device (main process only)

    def __getstate__(self) -> dict[str, Any]:  # loader workers get the decoder without its CUDA streams
        state = dict(self.__dict__)
        state["_streams"] = {}
        return state

    @classmethod
    def from_transform(cls, cpu_transform: Any) -> DeviceDecoder | None:
        """For a ``Compose`` of ``Resize`` / ``CenterCrop`` steps ending with ``PILToTensor`` (the loader part of
        :func:`~dynametric.engine.inference.split_transform`), optionally with ``SwapRB`` (a run of
        ``data.options.swap_rb``) and ``Grayscale(1)`` (a one-channel model) steps, applied on the device in their
        order; None for any other transform."""
        from torchvision import transforms as T

        from dynametric.data.transforms import SwapRB

        steps = list(getattr(cpu_transform, "transforms", []))
        if not steps or not isinstance(steps[-1], T.PILToTensor):
            return None
        geometry: list[_Resize | _Crop | _Channels] = []
        for step in steps[:-1]:
            if isinstance(step, SwapRB):
                geometry.append(_Channels("swap_rb"))
            elif isinstance(step, T.Grayscale) and step.num_output_channels == 1:
                geometry.append(_Channels("grey"))
            elif isinstance(step, T.Resize):
                geometry.append(_Resize(step.size, step.interpolation, step.max_size,
                                        getattr(step, "max_aspect", None)))
            elif isinstance(step, T.CenterCrop):
                geometry.append(_Crop(step.size))
            else:
                return None
        return cls(geometry, cpu_transform)

    # ------------------------------------------------------------------------------------- in the workers
    def read_file(self, path: str | Path, fh: IO[bytes] | None = None) -> tuple[str, torch.Tensor]:
        """``(path, bytes as 1-D uint8)`` for a plain JPEG; ``(path, uint8 [C, H, W])`` decoded by PIL otherwise.
        ``fh``: ``path`` already open (at its start), read instead of opening ``path`` again, for both kinds, so that
        the caller can check the very file read (``os.fstat``) as the CPU path does."""
        try:
            if fh is None:
                with open(path, "rb") as own:
                    data = own.read()
            else:
                data = fh.read()
        except OSError as exc:
            raise _decode_error(path, exc) from None
        if is_plain_jpeg(data):
            return str(path), torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if fh is not None:
            fh.seek(0)
        return str(path), _pil_uint8(path if fh is None else fh, self.cpu_transform, path)

    @staticmethod
    def collate(items: list[tuple[str, torch.Tensor]]) -> EncodedImages:
        return EncodedImages([p for p, _ in items], [t for _, t in items])

    # ------------------------------------------------------------------------------------- main process
    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import functional as F

        for op in self.geometry:
            if isinstance(op, _Resize):
                if op.max_aspect is not None:
                    from dynametric.data.transforms import crop_to_aspect

                    x = crop_to_aspect(x, op.max_aspect)
                x = F.resize(x, op.size, op.interpolation, op.max_size, antialias=True)
            elif isinstance(op, _Channels):
                x = x.flip(-3) if op.op == "swap_rb" else _grey_uint8(x)
            else:
                x = F.center_crop(x, op.size)
        return x

    def decode(self, batch: EncodedImages, device: torch.device | str) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` on ``device``: the batch's JPEGs decoded there (one call) and transformed there,
        in batch order with the worker-decoded images.

        On CUDA the work is queued on a side stream of this decoder, so it does not wait for kernels already queued
        on the current stream (the previous batch's forward pass) and the two overlap; the current stream waits
        for the side stream before it uses the result."""
        return self.decode_ahead(batch, device).take()

    def decode_ahead(self, batch: EncodedImages, device: torch.device | str) -> DecodedBatch:
        """:meth:`decode` without handing the result to the current stream: for another thread than the one that
        uses it (:class:`dynametric.utils.ahead.RunAhead`). The user's thread calls :meth:`DecodedBatch.take`, which
        makes its current stream wait for this decoding only then; waiting on a stream that another thread is
        filling would make whatever that thread queues next (the middle of a forward pass) wait for this batch."""
        device = torch.device(device)
        if device.type != "cuda":
            return DecodedBatch(self._decode(batch, device), None)
        side = self._streams.get(device)
        if side is None:
            side = self._streams[device] = torch.cuda.Stream(device)
        # torchvision allocates the decoded images on the current stream (`side`) but nvjpeg writes them from a
        # stream of its own that does not wait for `side`: memory freed by the previous batch (its decoded images)
        # may still be read by that batch's resize queued on `side`, and could be handed to nvjpeg again. The host
        # waits until `side` is idle first (in the decode-ahead thread this costs the model nothing)
        side.synchronize()
        with torch.cuda.stream(side):
            out = self._decode(batch, device)
            done = torch.cuda.Event()
            done.record(side)
        return DecodedBatch(out, done)

    def _decode(self, batch: EncodedImages, device: torch.device) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | None] = [None] * len(batch)
        raw: dict[int, torch.Tensor] = {}
        data = batch.data
        jpegs = [i for i, t in enumerate(data) if t.dim() == 1]
        for i, t in enumerate(data):
            if t.dim() != 1:
                out[i] = t.to(device)
        if jpegs:
            from dynametric.data.base import libjpeg_messages

            # libjpeg's warnings would print without a file name; nvjpeg (CUDA) prints nothing, and capturing file
            # descriptor 2 there would hold back what the other threads print meanwhile (the progress bar)
            capture: contextlib.AbstractContextManager[list[str]] = (
                libjpeg_messages() if device.type != "cuda" else contextlib.nullcontext([]))
            with capture as damage:
                try:
                    decoded = decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
                    raw.update(zip(jpegs, decoded))
                except RuntimeError:  # find the file(s) the decoder rejects: alone, then PIL (which names a bad file)
                    for i in jpegs:
                        try:
                            raw[i] = decode_jpeg(data[i], mode=ImageReadMode.RGB, device=device)
                        except RuntimeError:
                            out[i] = _pil_uint8(batch.paths[i], self.cpu_transform).to(device)
            if damage:  # which file(s): each JPEG alone on the CPU (rare)
                from dynametric.data.base import jpeg_damage

                for i in jpegs:
                    found = jpeg_damage(data[i])
                    if found:
                        log.warning("%s: damaged JPEG data (libjpeg: %s); decoded with grey where the data is "
                                    "damaged, as the CPU path decodes it (dynametric data inspect lists such files)",
                                    batch.paths[i], found)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in raw.items():
            by_shape.setdefault(tuple(img.shape), []).append(i)
        if len(by_shape) == 1 and len(raw) == len(batch):  # JPEGs of one size (in batch order): one stack, no copy
            return self._geometry(torch.stack(list(raw.values())))
        for idx in by_shape.values():
            done = self._geometry(torch.stack([raw[i] for i in idx]))
            for k, i in enumerate(idx):
                out[i] = done[k]
        return torch.stack([t for t in out if t is not None])
