"""``load_rgb`` / ``to_rgb``: every image mode loads as the 8-bit RGB picture it shows (EXIF orientation, 16-bit
and float scaling, transparency on white), and datasets, ``data inspect`` and the embedding paths all load that way."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dynametric.data import build_dataset
from dynametric.data.base import load_rgb, to_rgb
from dynametric.data.device_decode import DeviceDecoder, is_plain_jpeg
from dynametric.data.inspect import inspect_dataset
from dynametric.retrieval.embed import ImageFiles

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _pixels(path: Path) -> list[list[list[int]]]:
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img).tolist()


def _grey(values: list[int]) -> list[list[list[int]]]:
    return [[[v, v, v] for v in values]]


def test_16_bit_greyscale_is_scaled_by_257_not_clipped(tmp_path: Path) -> None:
    row = np.array([[0, 128, 129, 30000, 32768, 65535]], np.uint16)
    Image.fromarray(row).save(tmp_path / "g16.png")  # a 16-bit PNG: mode I;16
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert _pixels(tmp_path / "g16.png") == _grey([0, 0, 1, 117, 128, 255])  # was 0, 255, 255, 255, 255, 255
    Image.fromarray(np.full((2, 2), 32768, np.uint16)).save(tmp_path / "half.png")  # a 50 % grey
    assert _pixels(tmp_path / "half.png") == [[[128, 128, 128]] * 2] * 2  # was white
    Image.fromarray(row).save(tmp_path / "g16.tif")  # 16-bit TIFF: I;16 as well
    assert _pixels(tmp_path / "g16.tif") == _grey([0, 0, 1, 117, 128, 255])
    Image.fromarray(row).save(tmp_path / "g16.pgm")  # a 16-bit PGM opens as mode I (0..65535)
    assert Image.open(tmp_path / "g16.pgm").mode == "I"
    assert _pixels(tmp_path / "g16.pgm") == _grey([0, 0, 1, 117, 128, 255])


def test_32_bit_integer_tiff_is_scaled_from_its_full_range(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, -5, 16843009 * 3, 2**31 - 1]], np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    assert _pixels(tmp_path / "i32.tif") == _grey([0, 0, 3, 127])  # v / (2**32 - 1) * 255; negatives 0


def test_float_images_are_taken_as_0_to_1_and_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.5, 0.0, 1.0, 1.5, -1.0, np.nan, 0.1]], np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert _pixels(tmp_path / "f.tif") == _grey([128, 0, 255, 255, 0, 0, 26])  # 0.5 was black


def _red_left_blue_right(size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1]))
    return img


@pytest.mark.parametrize(("orientation", "expected"), [
    (1, [[RED, BLUE]]), (2, [[BLUE, RED]]), (3, [[BLUE, RED]]), (4, [[RED, BLUE]]),
    (5, [[RED], [BLUE]]), (6, [[RED], [BLUE]]), (7, [[BLUE], [RED]]), (8, [[BLUE], [RED]])])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expected: list) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    _red_left_blue_right((2, 1)).save(tmp_path / "o.png", exif=exif.tobytes())  # stored 2 wide, 1 high
    assert _pixels(tmp_path / "o.png") == [[list(c) for c in row] for row in expected]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_box_is_cut_in_stored_pixels_then_oriented(tmp_path: Path, orientation: int) -> None:
    """load_rgb(box=...): the stored pixels of the box, shown as the whole image is shown (OML's crop boxes)."""
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (7, 11, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif.tobytes())
    for box in [(0, 0, 11, 7), (2, 1, 9, 4), (10, 6, 11, 7), (0, 3, 4, 7)]:
        crop = tmp_path / "crop.png"
        Image.fromarray(stored[box[1]:box[3], box[0]:box[2]]).save(crop, exif=exif.tobytes())
        assert np.asarray(load_rgb(tmp_path / "o.png", box=box)).tolist() == _pixels(crop), box


def test_a_phone_jpeg_with_orientation_6_loads_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    _red_left_blue_right((40, 20)).save(tmp_path / "phone.jpg", quality=100, exif=exif.tobytes())
    img = load_rgb(tmp_path / "phone.jpg")
    assert img.size == (20, 40)  # stored 40x20
    top, bottom = np.asarray(img)[5, 10].tolist(), np.asarray(img)[35, 10].tolist()
    assert max(abs(a - b) for a, b in zip(top, RED)) <= 2 and max(abs(a - b) for a, b in zip(bottom, BLUE)) <= 2


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [200, 0, 0, 128], [0, 0, 0, 0]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    # round((c * a + 255 * (255 - a)) / 255): a fully transparent red is white, not red
    assert _pixels(tmp_path / "rgba.png") == [[[255, 255, 255], [255, 0, 0], [227, 127, 127], [255, 255, 255]]]
    Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    assert _pixels(tmp_path / "la.png") == _grey([255, 100])
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)  # palette entry 0 (green) is transparent
    assert _pixels(tmp_path / "p.png") == [[[255, 255, 255], [10, 20, 30]]]
    key = Image.new("RGB", (2, 1), (0, 255, 0))
    key.putpixel((1, 0), (1, 2, 3))
    key.save(tmp_path / "key.png", transparency=(0, 255, 0))  # an RGB colour key (tRNS)
    assert _pixels(tmp_path / "key.png") == [[[255, 255, 255], [1, 2, 3]]]
    grey16 = Image.fromarray(np.array([[0, 30000, 65535, 1000]], np.uint16))
    grey16.save(tmp_path / "g16.png", transparency=30000)  # a 16-bit greyscale colour key (was not composited)
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert _pixels(tmp_path / "g16.png") == _grey([0, 255, 255, 4])  # 30000 is white (not 117); 1000/257 -> 4
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.webp", lossless=True)
    assert _pixels(tmp_path / "rgba.webp") == [[[255, 255, 255], [255, 0, 0], [227, 127, 127], [255, 255, 255]]]


def test_ordinary_modes_are_unchanged_and_rgb_is_not_copied(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 128).save(tmp_path / "l.png")
    assert _pixels(tmp_path / "l.png") == [[[128, 128, 128]]]
    Image.new("1", (1, 1), 1).save(tmp_path / "bw.png")
    assert _pixels(tmp_path / "bw.png") == [[[255, 255, 255]]]
    Image.new("RGB", (2, 1), (10, 20, 30)).save(tmp_path / "rgb.png")
    assert _pixels(tmp_path / "rgb.png") == [[[10, 20, 30], [10, 20, 30]]]
    assert np.asarray(load_rgb(tmp_path / "rgb.png", swap_rb=True)).tolist() == [[[30, 20, 10], [30, 20, 10]]]
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "rgb.jpg")
    with Image.open(tmp_path / "rgb.jpg") as img:
        assert to_rgb(img) is img  # the common case: the decoded image itself, no copy
    assert load_rgb(tmp_path / "rgb.jpg").size == (8, 8)  # usable after its file is closed


def _write_modes_folder(root: Path) -> tuple[Path, Path]:
    exif = Image.Exif()
    exif[0x0112] = 6
    phone = root / "train" / "b" / "phone.jpg"
    phone.parent.mkdir(parents=True)
    _red_left_blue_right((40, 20)).save(phone, quality=100, exif=exif.tobytes())
    g16 = root / "train" / "a" / "g16.png"
    g16.parent.mkdir(parents=True)
    Image.fromarray(np.array([[0, 30000], [65535, 32768]], np.uint16)).save(g16)
    return phone, g16


def test_datasets_inspect_and_embedding_load_images_alike(tmp_path: Path) -> None:
    phone, g16 = _write_modes_folder(tmp_path / "tree")
    ds = build_dataset("folder", tmp_path / "tree", "train")
    by_name = {Path(p).name: i for i, p in enumerate(ds.paths)}
    assert ds[by_name["phone.jpg"]][0].size == (20, 40)
    assert np.asarray(ds[by_name["g16.png"]][0])[:, :, 0].tolist() == [[0, 117], [255, 128]]
    files = ImageFiles([phone, g16], T.PILToTensor())  # `embed` / `search --image` on the CPU
    assert files[0].shape == (3, 40, 20)
    assert files[1][0].tolist() == [[0, 117], [255, 128]]
    decoder = DeviceDecoder([], T.PILToTensor())  # `--decode gpu`: nvjpeg would not apply the orientation
    data = phone.read_bytes()
    assert not is_plain_jpeg(data)
    path, tensor = decoder.read_file(phone)
    assert path == str(phone) and tensor.shape == (3, 40, 20)
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="JPEG")
    assert is_plain_jpeg(plain.getvalue())
    upright = Image.Exif()
    upright[0x0112] = 1
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="JPEG", exif=upright.tobytes())
    assert is_plain_jpeg(plain.getvalue())  # EXIF, but orientation 1: still decoded on the device
    assert torch.equal(decoder.read_file(g16)[1], files[1])
    result = inspect_dataset("folder", tmp_path / "tree")  # decodes every image the way training does
    assert result["problems"] == [] and result["splits"]["train"]["images"] == 2


def _with_segments_before_exif(jpeg: bytes, padding: int) -> bytes:
    """``jpeg`` with ``padding`` ICC-profile-like APP2 segments of 65,000 bytes each put before its APP1 (EXIF)."""
    at = jpeg.index(b"\xff\xe1")
    length = int.from_bytes(jpeg[at + 2:at + 4], "big")
    app1 = jpeg[at:at + 2 + length]
    pads = b"".join(b"\xff\xe2" + (65000).to_bytes(2, "big") + b"ICC_PROFILE\x00" + bytes([k + 1, padding])
                    + bytes(65000 - 16) for k in range(padding))
    return b"\xff\xd8" + pads + app1 + jpeg[2:at] + jpeg[at + 2 + length:]


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_device_decoding_finds_an_exif_orientation_wherever_its_segment_lies(tmp_path: Path, padding: int) -> None:
    """`is_plain_jpeg` looked for 'Exif' in the first 64 KiB only: behind two ICC segments an orientation-6 JPEG was
    sent to the device decoder and came out unrotated. It walks the header segments now."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _red_left_blue_right((40, 20)).save(tmp_path / "o6.jpg", quality=95, exif=exif.tobytes())
    exif[0x0112] = 1
    _red_left_blue_right((40, 20)).save(tmp_path / "o1.jpg", quality=95, exif=exif.tobytes())
    six = _with_segments_before_exif((tmp_path / "o6.jpg").read_bytes(), padding)
    one = _with_segments_before_exif((tmp_path / "o1.jpg").read_bytes(), padding)
    assert (six.find(b"Exif\x00\x00") > 65536) == (padding > 1)
    with Image.open(io.BytesIO(six)) as img:
        assert img.getexif().get(0x0112) == 6  # PIL (the CPU path) turns it
    assert not is_plain_jpeg(six) and is_plain_jpeg(one)
    (tmp_path / "late.jpg").write_bytes(six)
    decoder = DeviceDecoder.from_transform(T.Compose([T.PILToTensor()]))
    assert decoder is not None
    _, out = decoder.read_file(tmp_path / "late.jpg")
    assert out.shape == (3, 40, 20)  # decoded upright by PIL in the worker, not sent as bytes
    # a header that cannot be walked (a segment length past the end) goes to PIL too; no EXIF: the device
    broken = six[:2] + b"\xff\xe2\xff\xff" + six[2:]
    assert not is_plain_jpeg(broken)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "plain.jpg")
    assert is_plain_jpeg((tmp_path / "plain.jpg").read_bytes())


def test_a_zero_byte_image_is_named_an_empty_file_everywhere(tmp_path: Path) -> None:
    from dynametric.data.base import HierarchicalImageDataset
    from dynametric.data.inspect import _decode
    from dynametric.errors import InputError

    (tmp_path / "zero.jpg").write_bytes(b"")  # PIL says only "cannot identify image file"
    ds = HierarchicalImageDataset([str(tmp_path / "zero.jpg")], torch.zeros(1, 1, dtype=torch.long), ["fine"], "t")
    with pytest.raises(InputError, match=r"zero.jpg: cannot read image \(empty file \(0 bytes\)\)$"):
        ds[0]
    assert _decode(str(tmp_path / "zero.jpg")) == ("empty file (0 bytes)", None, None)  # data inspect
    with pytest.raises(InputError, match=r"zero.jpg: cannot decode image \(empty file \(0 bytes\)\)$"):
        ImageFiles([tmp_path / "zero.jpg"], T.ToTensor())[0]
    decoder = DeviceDecoder.from_transform(T.Compose([T.PILToTensor()]))
    assert decoder is not None
    with pytest.raises(InputError, match=r"zero.jpg: cannot decode image \(empty file \(0 bytes\)\)$"):
        decoder.read_file(tmp_path / "zero.jpg")
