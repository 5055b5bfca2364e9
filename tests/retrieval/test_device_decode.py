"""``decode: gpu`` (workers read JPEG bytes, the main process decodes + resizes on the device), run here with the
device on the CPU, against the PIL pipeline: same geometry, close values, same order and ids, mixed PNG + JPEG,
bad files reported as on the CPU path."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.commands.options import add_inference_arguments, inference_options
from dynametric.data.base import load_rgb
from dynametric.data.device_decode import DeviceDecoder, EncodedImages, is_plain_jpeg
from dynametric.engine.inference import InferenceOptions, split_transform
from dynametric.errors import ConfigError, InputError
from dynametric.retrieval.embed import embed_items, list_image_folder
from dynametric.retrieval.model import embed_image_files, load_embedder

# a csv-format config gets the `standard` eval transform: Resize(55) -> CenterCrop(48) -> ToTensor -> Normalize
OVERRIDES = ["data.format=csv", "data.transform=standard"]


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like image: gradients and blobs (no pixel noise, so resize implementations agree closely), with
    asymmetric content so a wrong crop or a transposed resize shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [128 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
             for _ in range(3)]
    arr = np.stack(chans, -1)
    arr[: h // 3, : w // 4] = rng.integers(0, 256, 3)  # a flat block in one corner
    return np.clip(arr, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JPEGs of several sizes (landscape, portrait, grayscale, two of one size) and PNGs, interleaved."""
    root = tmp_path_factory.mktemp("mixed")
    shapes = [(60, 80), (90, 62), (60, 80), (75, 75), (64, 100), (81, 57), (70, 90)]
    for i, (h, w) in enumerate(shapes):
        img = Image.fromarray(_smooth(h, w, i))
        if i == 5:
            img.convert("L").save(root / f"im_{i:02d}.jpg", quality=95)
        elif i in (2, 6):
            img.save(root / f"im_{i:02d}.png")
        else:
            img.save(root / f"im_{i:02d}.jpg", quality=95)
    return root


def _loaded(ckpt: Path, decode: str, **kw):
    return load_embedder(ckpt, overrides=OVERRIDES, image_size=48,
                         options=InferenceOptions(device="cpu", batch_size=3, decode=decode, **kw))


def test_decoded_batch_matches_pil_geometry_and_values(run_ckpt: Path, mixed: Path) -> None:
    gpu = _loaded(run_ckpt, "gpu")
    assert gpu.decode == "gpu" and isinstance(gpu.loader_transform, DeviceDecoder)
    paths = sorted(mixed.iterdir())
    batch = DeviceDecoder.collate([gpu.loader_transform.read_file(p) for p in paths])
    kinds = [t.dim() for t in batch.data]
    assert kinds == [1, 1, 3, 1, 1, 1, 3]  # JPEG bytes travel undecoded, PNGs decoded in the worker
    assert batch.data[0].numel() == paths[0].stat().st_size and batch.blob.dim() == 1  # one buffer per batch
    got = gpu.loader_transform.decode(batch, "cpu")
    loader_part, _ = split_transform(gpu.transform)
    ref = torch.stack([loader_part(load_rgb(p)) for p in paths])
    assert got.dtype == torch.uint8 and got.shape == ref.shape == (7, 3, 48, 48)
    diff = (got.float() - ref.float()).abs()
    assert torch.equal(got[2], ref[2]) and torch.equal(got[6], ref[6])  # PNGs: the PIL path itself
    assert diff.mean() < 0.5 and diff.max() <= 4, (diff.mean(), diff.max())  # measured: 0.2, 1
    # a wrong geometry (no crop: squashed whole image) is far off, so the check above can fail
    squashed = torch.nn.functional.interpolate(
        torch.from_numpy(np.asarray(load_rgb(paths[4]))).permute(2, 0, 1)[None].float(), size=(48, 48),
        mode="bilinear", antialias=True)[0]
    assert (squashed - ref[4].float()).abs().mean() > 3 * diff[4].mean()


def test_gpu_mode_embeddings_close_same_order_and_ids(run_ckpt: Path, mixed: Path, tmp_path: Path) -> None:
    cpu, gpu = _loaded(run_ckpt, "cpu"), _loaded(run_ckpt, "gpu")
    items = list_image_folder(mixed)
    outs = {}
    for name, loaded in (("cpu", cpu), ("gpu", gpu)):
        embed_items(items, loaded.embed, loaded.loader_transform, tmp_path / name, model_identity=loaded.identity(),
                    batch_size=3, shard_size=4)
        outs[name] = np.load(tmp_path / name / "embeddings.npy")
        assert (tmp_path / name / "items.csv").read_text() == (tmp_path / "cpu" / "items.csv").read_text()
    a, b = outs["cpu"], outs["gpu"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (7, 16) and cos.min() > 0.99, cos
    # same order: each gpu row is nearest to its own cpu row
    sims = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert (sims.argmax(0) == np.arange(7)).all()
    # search --image path (ResolvedInference.loader with the decoder's collate), one worker process
    w1 = _loaded(run_ckpt, "gpu", workers=1)
    np.testing.assert_allclose(embed_image_files(w1, items.paths), b, atol=1e-5)
    assert gpu.identity()["decode"] == "gpu" and "decode" not in cpu.identity()


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xda\x00\x02" + b"garbage" * 50 + b"\xff\xd9",  # the device's
                                     b"\xff\xd8\xff\xe0" + b"garbage" * 50 + b"\xff\xd9",  # header unwalkable: PIL's
                                     "truncated"])
def test_bad_jpeg_gives_the_cpu_paths_error(run_ckpt: Path, mixed: Path, tmp_path: Path, content) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(mixed.iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    data = (mixed / "im_00.jpg").read_bytes()
    bad = folder / "im_01b.jpg"
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    assert is_plain_jpeg(bad.read_bytes()) == (content != "truncated" and content[3] == 0xDA)
    items = list_image_folder(folder)
    errors = []
    for decode in ("cpu", "gpu"):
        loaded = _loaded(run_ckpt, decode)
        with pytest.raises(InputError) as err:
            embed_items(items, loaded.embed, loaded.loader_transform, tmp_path / decode,
                        model_identity=loaded.identity(), batch_size=4, shard_size=4)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "\n" not in errors[0]
    assert str(bad) in errors[0] and "cannot decode image" in errors[0]


def test_jpeg_the_decoder_rejects_but_pil_reads_falls_back(run_ckpt: Path, mixed: Path, monkeypatch) -> None:
    import torchvision.io

    gpu = _loaded(run_ckpt, "gpu")
    dec = gpu.loader_transform
    paths = [mixed / "im_00.jpg", mixed / "im_01.jpg"]
    batch = DeviceDecoder.collate([dec.read_file(p) for p in paths])
    real = torchvision.io.decode_jpeg
    second = batch.data[1].clone()

    def picky(data, **kw):  # rejects any call that includes the second file
        items = data if isinstance(data, list) else [data]
        if any(torch.equal(t, second) for t in items):
            raise RuntimeError("unsupported JPEG")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    got = dec.decode(batch, "cpu")
    loader_part, _ = split_transform(gpu.transform)
    assert torch.equal(got[1], loader_part(load_rgb(paths[1])))  # PIL's result for the rejected file
    assert (got[0].float() - loader_part(load_rgb(paths[0])).float()).abs().mean() < 2.0
    assert isinstance(batch, EncodedImages) and len(batch) == 2


def test_decode_option_resolution_and_cli(run_ckpt: Path) -> None:
    assert InferenceOptions(device="cpu").resolve().decode == "cpu"
    assert InferenceOptions(device="cpu", decode="auto").resolve().decode == "cpu"  # auto: gpu only on CUDA
    assert InferenceOptions(device="cpu", decode="GPU").resolve().decode == "gpu"
    with pytest.raises(ConfigError, match="decode must be one of"):
        InferenceOptions(device="cpu", decode="nvjpeg").resolve()
    p = argparse.ArgumentParser()
    add_inference_arguments(p, batch_size=64)
    assert inference_options(p.parse_args([])).decode == "cpu"
    assert inference_options(p.parse_args(["--decode", "gpu"])).decode == "gpu"
    with pytest.raises(SystemExit):
        p.parse_args(["--decode", "fast"])
    # the default (synthetic) config's transform has no Normalize but is still Resize + ToTensor: supported
    assert load_embedder(run_ckpt, options=InferenceOptions(device="cpu", decode="gpu")).decode == "gpu"


def test_embed_cli_decode_gpu_on_cpu_and_no_mixed_resume(run_ckpt: Path, mixed: Path, tmp_path: Path,
                                                          capsys) -> None:
    from dynametric.cli import main

    base = ["embed", "--checkpoint", str(run_ckpt), "--images", str(mixed), "--device", "cpu",
            *[a for o in OVERRIDES for a in ("--set", o)], "--image-size", "48", "--batch-size", "4", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "c")]) == 0
    assert main([*base, "--out", str(tmp_path / "g"), "--decode", "gpu"]) == 0
    a, b = np.load(tmp_path / "c" / "embeddings.npy"), np.load(tmp_path / "g" / "embeddings.npy")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (7, 16) and cos.min() > 0.99 and not np.array_equal(a, b)
    # the cpu job's folder is not resumed with the other decoder (its embeddings differ slightly)
    assert main([*base, "--out", str(tmp_path / "c"), "--decode", "gpu"]) != 0
    assert "different embedding job" in capsys.readouterr().err


def test_decoder_pickles_without_its_streams_and_embed_on_device_equals_embed(run_ckpt: Path, mixed: Path) -> None:
    import pickle

    gpu = _loaded(run_ckpt, "gpu")
    dec = gpu.loader_transform
    dec._streams[torch.device("cuda", 0)] = object()  # what a CUDA run leaves there: not for the loader workers
    copy = pickle.loads(pickle.dumps(dec))
    assert copy._streams == {} and len(dec._streams) == 1 and copy.geometry == dec.geometry
    batch = DeviceDecoder.collate([copy.read_file(p) for p in sorted(mixed.iterdir())])
    on_device = gpu.embed_on_device(batch)
    assert on_device.dtype == torch.float32 and on_device.shape[0] == 7
    assert torch.equal(on_device, gpu.embed(batch))


def test_damaged_jpeg_data_is_named_not_printed_raw(run_ckpt: Path, mixed: Path, tmp_path: Path, capfd, caplog) -> None:
    """libjpeg printed 'Corrupt JPEG data: premature end of data segment' to stderr with no file name; the device
    path decodes such a JPEG as the CPU path does (grey where data is missing) and warns naming the file."""
    import logging

    from tests.data.test_inspect import write_damaged_jpeg

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(mixed.iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    write_damaged_jpeg(folder / "im_01c.jpg")
    assert is_plain_jpeg((folder / "im_01c.jpg").read_bytes())  # a whole-looking JPEG: decoded on the device
    items = list_image_folder(folder)
    loaded = _loaded(run_ckpt, "gpu")
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="dynametric.data.device_decode"):
        embed_items(items, loaded.embed, loaded.loader_transform, tmp_path / "e", model_identity=loaded.identity(),
                    batch_size=4, shard_size=4)
    err = capfd.readouterr().err
    assert not any(line.startswith("Corrupt JPEG data") for line in err.splitlines())
    warned = [r.getMessage() for r in caplog.records if "damaged JPEG data" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{folder / 'im_01c.jpg'}: damaged JPEG data (libjpeg: Corrupt "
                                                     "JPEG data: premature end of data segment)")
