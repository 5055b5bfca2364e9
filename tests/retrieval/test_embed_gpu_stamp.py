"""``embed --decode gpu``: the file whose bytes go to the device decoder is the file whose size and modification
time are checked against the job's record (``os.fstat`` of the open file, as the CPU path does), not the path
stat'ed again after reading. The reading and the check run on the CPU; the device decode itself is not needed."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import dynametric.data.device_decode as device_decode
from dynametric.data.device_decode import DeviceDecoder
from dynametric.errors import InputError
from dynametric.retrieval.embed import ImageFiles


def _image(colour: tuple[int, int, int], size: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format=fmt)
    return buf.getvalue()


def _put(path: Path, data: bytes, mtime_ns: int) -> None:
    """``data`` written to a new file moved over ``path`` (as an atomic writer does), its time set."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_gpu_reader_checks_the_file_it_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    recorded = _image((200, 30, 30), 16, fmt)
    _put(path, recorded, 10**18)
    st = os.stat(path)
    stats = np.array([[st.st_size, st.st_mtime_ns]], dtype=np.int64)  # the job's record
    _put(path, _image((30, 200, 30), 24, fmt), 2 * 10**18)  # changed after the job started: another size, time
    real = device_decode.is_plain_jpeg
    restored: list[bool] = []

    def restore_then_check(data: bytes) -> bool:  # the recorded file back (cp -p) right after the changed one was read
        if not restored:
            restored.append(True)
            _put(path, recorded, 10**18)
        return real(data)

    monkeypatch.setattr(device_decode, "is_plain_jpeg", restore_then_check)
    files = ImageFiles([path], DeviceDecoder([], T.PILToTensor()), stats=stats)
    with pytest.raises(InputError) as err:
        files[0]  # the changed file's bytes were read: refused though the path shows the recorded stamp again
    assert restored
    assert str(err.value) == (f"{path}: changed while it was embedded (another size or modification time than when "
                              "the job started); run the same command again")


def test_gpu_reader_returns_the_bytes_checked(tmp_path: Path) -> None:
    jpeg, png = tmp_path / "a.jpg", tmp_path / "b.png"
    _put(jpeg, _image((200, 30, 30), 16, "JPEG"), 10**18)
    _put(png, _image((30, 30, 200), 12, "PNG"), 10**18)
    stats = np.array([[os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in (jpeg, png)], dtype=np.int64)
    files = ImageFiles([jpeg, png], DeviceDecoder([], T.PILToTensor()), stats=stats)
    path, data = files[0]
    assert path == str(jpeg) and bytes(data.numpy()) == jpeg.read_bytes()  # the JPEG's bytes, for the device
    path, pixels = files[1]
    assert path == str(png) and pixels.shape == (3, 12, 12)
    assert pixels[:, 0, 0].tolist() == [30, 30, 200]  # PIL's decoding of the open file


def test_read_file_reads_the_open_file_not_the_path(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _put(path, _image((200, 30, 30), 8, "PNG"), 10**18)
    decoder = DeviceDecoder([], T.PILToTensor())
    with open(path, "rb") as fh:
        _put(path, _image((30, 200, 30), 8, "PNG"), 10**18)  # the path names another file now
        _, pixels = decoder.read_file(path, fh)
    assert pixels[:, 0, 0].tolist() == [200, 30, 30]
    assert torch.equal(decoder.read_file(path)[1][:, 0, 0], torch.tensor([30, 200, 30], dtype=torch.uint8))
