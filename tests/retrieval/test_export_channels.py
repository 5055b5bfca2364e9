"""The inference path sees an image as the run saw its images: a run of ``data.options.swap_rb`` (R and B exchanged
as its images were decoded) embeds, searches and exports with the swap; a one-channel model (``model.in_chans: 1``)
trains on greyscale images and embeds and exports the same way; the export sidecar records the swap, the decoding,
the output's width and norm and the ONNX opset, and leaves local paths out on request."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.cli import main
from dynametric.config import load_config, save_config
from dynametric.data.base import load_rgb
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import save_checkpoint_file
from dynametric.engine.inference import InferenceOptions
from dynametric.retrieval.model import embedding_config_hash, image_tensor, load_embedder
from tests.optional import onnx_case

TINY = ["data.format=folder", "data.image_size=32", "data.batch_size=8", "data.m=2", "trainer.max_epochs=1",
        "trainer.progress_bar=false", "run.report=false", "model.embedding_dim=8",
        "model.backbone_kwargs={width: 4, depth: 2}"]


def _images(root: Path) -> Path:
    """A folder dataset (``split/coarse/fine/i.png``, non-square textured colour images: R and B differ)."""
    rng = np.random.default_rng(0)
    for split, fines in (("train", range(6)), ("test", range(6, 9))):
        for fine in fines:
            for i in range(4):
                p = root / split / f"family{fine % 2}" / f"kind{fine}" / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                base = np.array([40 + 17 * fine, 200 - 13 * fine, 120 if fine % 2 else 30])
                arr = np.clip(base + rng.integers(-60, 60, (36 + 2 * i, 44 + 3 * i, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(p)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _images(tmp_path_factory.mktemp("chans") / "my_images")


def _run(folder: Path, overrides: list[str], seed: int = 0) -> Path:
    """config.yaml + best.ckpt (untrained weights) of a run with ``overrides``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, overrides)
    save_config(cfg, folder / "config.yaml")
    torch.manual_seed(seed)
    state = {f"embedder.{k}": v for k, v in build_model(cfg).state_dict().items()}
    save_checkpoint_file({"state_dict": state, "epoch": 0}, folder / "best.ckpt")
    return folder / "best.ckpt"


@pytest.fixture(scope="module")
def swap_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    return _run(tmp_path_factory.mktemp("swaprun"), [*TINY, f"data.root={data_root}", "data.options={swap_rb: true}"])


def _rows(folder: Path) -> tuple[list[str], np.ndarray]:
    with open(folder / "items.csv", encoding="utf-8", newline="") as fh:
        paths = [r["path"] for r in csv.DictReader(fh)]
    return paths, np.load(folder / "embeddings.npy")


def _as_trained(loaded: Any, path: str, swap: bool) -> np.ndarray:
    """The model on the image as the run's dataset gives it (``load_rgb(swap_rb=...)`` then the run's evaluation
    transform without any step of the inference path's own)."""
    from dynametric.retrieval.model import eval_transform

    cfg = load_config(loaded.config_path)
    with torch.no_grad():
        x = eval_transform(cfg)(load_rgb(path, swap_rb=swap))[None]
        return loaded.model(x).float().numpy()[0]


def test_embed_of_a_swap_rb_run_is_the_model_on_swapped_images(swap_run: Path, data_root: Path,
                                                                 tmp_path: Path) -> None:
    """Each ``embed`` row is the model on the R/B-swapped image (before the fix: on the unswapped one, 0.4 off)."""
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(swap_run), "--images", str(data_root / "test"), "--out", str(out),
                 "--no-progress", "--precision", "fp32"]) == 0
    paths, emb = _rows(out)
    loaded = load_embedder(swap_run)
    for i in (0, 5, len(paths) - 1):
        assert np.abs(emb[i] - _as_trained(loaded, paths[i], True)).max() <= 1e-6
        assert np.abs(emb[i] - _as_trained(loaded, paths[i], False)).max() > 1e-3  # the swap matters here
    assert loaded.swap_rb


def test_search_image_tensor_of_a_swap_rb_run_is_swapped(swap_run: Path, data_root: Path) -> None:
    """``search --image`` / ``explore`` uploads decode through the embedder's transform: swapped as well."""
    from dynametric.retrieval.model import eval_transform

    loaded = load_embedder(swap_run)
    path = next((data_root / "test").rglob("*.png"))
    cfg = load_config(loaded.config_path)
    want = eval_transform(cfg)(load_rgb(path, swap_rb=True))
    assert torch.equal(image_tensor(loaded, path), want)
    assert not torch.equal(want, eval_transform(cfg)(load_rgb(path)))


def test_embedding_hash_counts_the_swap_and_keeps_the_digest_of_runs_without_it() -> None:
    """``swap_rb: true`` changes the embedding digest; ``false`` (or unset) keeps the digest of before the key was
    counted (the value below is what the code before the fix gives: embed folders and indexes stay valid)."""
    plain = load_config(None, TINY)
    off = load_config(None, [*TINY, "data.options={swap_rb: false}"])
    on = load_config(None, [*TINY, "data.options={swap_rb: true}"])
    assert embedding_config_hash(plain) == embedding_config_hash(off) == "1bcc6f297f3602ef"
    assert embedding_config_hash(on) != embedding_config_hash(off)


def _preprocess(path: str, steps: list[dict[str, Any]], decode: dict[str, Any]) -> np.ndarray:
    """A consumer written from the sidecar alone (PIL + numpy): decode to RGB, then each step in order."""
    assert decode["mode"] == "RGB"
    img = Image.open(path).convert("RGB")
    arr = np.zeros(0)
    for s in steps:
        if s["op"] == "SwapRB":
            r, g, b = img.split()
            img = Image.merge("RGB", (b, g, r))
        elif s["op"] == "Grayscale":
            img = img.convert("L")
        elif s["op"] == "Resize":
            w, h = img.size
            size = s["size"]
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            img = img.resize((nw, nh), Image.BILINEAR)
        elif s["op"] == "CenterCrop":
            th, tw = s["size"]
            w, h = img.size
            top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
            img = img.crop((left, top, left + tw, top + th))
        elif s["op"] == "ToTensor":
            arr = np.asarray(img, dtype=np.float32) / 255.0
            arr = (arr[:, :, None] if arr.ndim == 2 else arr).transpose(2, 0, 1)
        elif s["op"] == "Normalize":
            mean = np.array(s["mean"], np.float32)[:, None, None]
            std = np.array(s["std"], np.float32)[:, None, None]
            arr = (arr - mean) / std
        else:
            raise AssertionError(f"unknown step {s}")
    return arr


def _consumer_matches_embed(model_file: Path, emb_dir: Path, channels: int) -> None:
    from dynametric.retrieval.export import run_exported

    info = json.loads(model_file.with_name(model_file.name + ".json").read_text())
    paths, emb = _rows(emb_dir)
    x = np.stack([_preprocess(p, info["preprocessing_steps"], info["decode"]) for p in paths]).astype(np.float32)
    assert x.shape[1] == channels == info["input"]["shape"][1]
    got = run_exported(model_file, torch.from_numpy(x))
    assert info["output"]["shape"] == ["batch", emb.shape[1]]
    assert np.abs(got - emb).max() <= 1e-4


@pytest.mark.parametrize("fmt", ["torchscript", onnx_case("onnx")])
def test_export_of_a_swap_rb_run_records_the_swap_and_a_consumer_reproduces_embed(
        swap_run: Path, data_root: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    assert main(["export", "--checkpoint", str(swap_run), "--out", str(out)]) == 0
    info = json.loads((tmp_path / f"{out.name}.json").read_text())
    assert info["preprocessing_steps"][0] == {"op": "SwapRB", "channel_order": "BGR"}
    assert "docs/data.md" in info["decode"]["rules"] and "white" in info["decode"]["alpha"]
    emb = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(swap_run), "--images", str(data_root / "test"), "--out", str(emb),
                 "--no-progress", "--precision", "fp32"]) == 0
    _consumer_matches_embed(out, emb, 3)


def test_device_decoder_applies_the_swap_and_the_greyscale_step(tmp_path: Path) -> None:
    """``--decode gpu``'s decoder (here on the CPU device) takes the SwapRB and Grayscale steps and applies them as
    the CPU path does (the greyscale in Pillow's own fixed point: the same values before the resize)."""
    from torchvision import transforms as T

    from dynametric.data.device_decode import DeviceDecoder
    from dynametric.data.transforms import SwapRB

    rng = np.random.default_rng(1)
    arr = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3)), 4, 0), 4, 1).astype(np.uint8)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(arr).save(jpg, quality=95)
    for steps, swap in (([SwapRB()], True), ([T.Grayscale(1)], False), ([SwapRB(), T.Grayscale(1)], True)):
        cpu = T.Compose([*steps, T.CenterCrop(24), T.PILToTensor()])
        decoder = DeviceDecoder.from_transform(cpu)
        assert decoder is not None
        got = decoder.decode(decoder.collate([decoder.read_file(jpg)]), "cpu")[0]
        want = cpu(load_rgb(jpg))
        assert got.shape == want.shape
        assert (got.int() - want.int()).abs().max() <= 2  # libjpeg's decoders: the last bit may differ
        if swap:
            plain = T.Compose([s for s in steps if not isinstance(s, SwapRB)] + [T.CenterCrop(24), T.PILToTensor()])
            assert (got.int() - plain(load_rgb(jpg)).int()).abs().max() > 20


def test_one_channel_model_trains_embeds_and_exports_alike(data_root: Path, tmp_path: Path) -> None:
    """``model.in_chans=1``: ``train`` completes (before the fix: a traceback, 3-channel images into a 1-channel
    convolution), the transforms convert to greyscale and normalise with one value, and a consumer of the export
    sidecar reproduces ``embed``."""
    run = tmp_path / "run"
    assert main(["train", *TINY, f"data.root={data_root}", "model.in_chans=1", "--out", str(run),
                 "--no-progress"]) == 0
    loaded = load_embedder(run / "best.ckpt", options=InferenceOptions(precision="fp32"))
    steps = loaded.transform.transforms
    assert isinstance(steps[0], __import__("torchvision").transforms.Grayscale)
    assert list(steps[-1].mean) == [0.449] and list(steps[-1].std) == [0.226]
    emb = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(run / "best.ckpt"), "--images", str(data_root / "test"), "--out",
                 str(emb), "--no-progress", "--precision", "fp32"]) == 0
    out = tmp_path / "grey.pt"
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--out", str(out)]) == 0
    info = json.loads((tmp_path / "grey.pt.json").read_text())
    assert info["preprocessing_steps"][0]["op"] == "Grayscale"
    _consumer_matches_embed(out, emb, 1)


@pytest.mark.parametrize("chans", [2, 4])
def test_other_channel_counts_are_refused_in_one_line_and_nothing_is_written(data_root: Path, tmp_path: Path,
                                                                             capsys, chans: int) -> None:
    run = tmp_path / "run"
    for dry in (["--dry-run"], []):
        assert main(["train", *TINY, f"data.root={data_root}", f"model.in_chans={chans}", "--out", str(run),
                     "--no-progress", *dry]) == 2
        err = capsys.readouterr().err.strip()
        assert "model.in_chans" in err and "expected 1 or 3" in err and "\n" not in err, err
        assert not run.exists()


@pytest.mark.parametrize("fmt", ["torchscript", onnx_case("onnx")])
def test_sidecar_of_a_two_head_run_records_width_norm_opset_and_leaves_local_paths_out(
        data_root: Path, tmp_path: Path, fmt: str) -> None:
    """Concatenated heads of L2-normalised 8- and 4-wide heads: ``["batch", 12]``, rows of norm sqrt(2), not
    normalised; the ONNX file's opset; ``--no-local-paths`` records file names; a head of ``normalize: false`` is
    not normalised and has no fixed norm."""
    ckpt = _run(tmp_path / "r", [*TINY, f"data.root={data_root}", "model.num_heads=2", "model.head_dims=[8, 4]"])
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    assert main(["export", "--checkpoint", str(ckpt), "--head", "concat", "--out", str(out),
                 "--no-local-paths"]) == 0
    info = json.loads((tmp_path / f"{out.name}.json").read_text())
    output = info["output"]
    assert output["shape"] == ["batch", 12] and output["normalized"] is False
    assert output["norm"] == pytest.approx(math.sqrt(2))
    assert output["heads"] == {"class": {"dim": 8, "normalized": True}, "shared": {"dim": 4, "normalized": True}}
    from dynametric.retrieval.export import run_exported

    got = run_exported(out, torch.rand(3, 3, 32, 32))
    assert np.allclose(np.linalg.norm(got, axis=1), math.sqrt(2), atol=1e-5)
    assert info["model"]["checkpoint"] == "best.ckpt" and info["model"]["config"] == "config.yaml"
    assert info["local_paths"] is False
    if fmt == "onnx":
        import onnx

        declared = [o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")]
        assert info["opset"] == declared[0] >= 18
    else:
        assert "opset" not in info
    raw = _run(tmp_path / "raw", [*TINY, f"data.root={data_root}", "model.normalize=false"])
    out2 = tmp_path / ("raw.onnx" if fmt == "onnx" else "raw.pt")
    assert main(["export", "--checkpoint", str(raw), "--out", str(out2)]) == 0
    info2 = json.loads((tmp_path / f"{out2.name}.json").read_text())
    assert info2["output"]["shape"] == ["batch", 8] and info2["output"]["normalized"] is False
    assert info2["output"]["norm"] is None and str(tmp_path) in info2["model"]["checkpoint"]


def _unfinished(out: Path, model_entry: dict[str, Any]) -> None:
    """Make the complete job in ``out`` an unfinished one whose ``model`` entry is ``model_entry`` (as an earlier
    version, or another digest, wrote it): its last shard and the assembled file gone."""
    meta = json.loads((out / "embed.json").read_text())
    meta.update(status="in_progress", model=model_entry)
    for key in ("dim", "embeddings_size", "embeddings_sha256"):
        meta.pop(key, None)
    (out / "embed.json").write_text(json.dumps(meta))
    (out / "embeddings.npy").unlink(missing_ok=True)
    (out / "shards" / "shard_00002.npy").unlink(missing_ok=True)


def test_an_unfinished_job_of_a_swap_rb_run_made_unswapped_is_not_resumed(swap_run: Path, data_root: Path,
                                                                          tmp_path: Path, capsys) -> None:
    """A job an earlier version started for a swap_rb run embedded unswapped images (its entry: no ``swap_rb``,
    the digest of the config without it); resumed now, its rows would mix unswapped and swapped embeddings under the
    new digest, silently (the resume compared the model entries without ``embedding_hash``). Refused, naming what
    differs; an entry that recorded no digest at all (older still) resumes as before."""
    cmd = ["embed", "--checkpoint", str(swap_run), "--images", str(data_root / "test"), "--no-progress",
           "--precision", "fp32", "--shard-size", "4", "--keep-shards"]
    out = tmp_path / "emb"
    assert main([*cmd, "--out", str(out)]) == 0
    entry = json.loads((out / "embed.json").read_text())["model"]
    no_swap = embedding_config_hash(load_config(Path(entry["config"]), ["data.options={swap_rb: false}"]))
    assert entry["swap_rb"] is True and entry["embedding_hash"] != no_swap

    older = {k: v for k, v in entry.items() if k != "swap_rb"}
    for case, model_entry, names in (("earlier version", {**older, "embedding_hash": no_swap}, "model.embedding_hash"),
                                     ("other digest", {**entry, "embedding_hash": no_swap}, "model.embedding_hash")):
        _unfinished(out, model_entry)
        capsys.readouterr()
        assert main([*cmd, "--out", str(out)]) == 2, case
        err = capsys.readouterr().err
        assert "different embedding job" in err and names in err, (case, err)

    _unfinished(out, {k: v for k, v in entry.items() if k not in ("embedding_hash", "swap_rb")})
    assert main([*cmd, "--out", str(out)]) == 2  # no digest, but no swap_rb either: an unswapped job, refused
    assert "model.swap_rb" in capsys.readouterr().err


def test_an_index_embedded_before_swap_rb_was_applied_says_to_rebuild_it(swap_run: Path, data_root: Path,
                                                                          tmp_path: Path, capsys) -> None:
    """``search --image`` against an index whose embeddings an earlier version made from this very run without the
    swap: refused (they are not comparable), saying to embed the images again and rebuild, not to pass the
    ``--config`` already in use."""
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    assert main(["embed", "--checkpoint", str(swap_run), "--images", str(data_root / "test"), "--out", str(emb),
                 "--no-progress", "--precision", "fp32"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(idx)]) == 0
    meta = json.loads((idx / "index.json").read_text())
    no_swap = embedding_config_hash(load_config(Path(meta["model"]["config"]), ["data.options={swap_rb: false}"]))
    meta["model"] = {**{k: v for k, v in meta["model"].items() if k != "swap_rb"}, "embedding_hash": no_swap}
    (idx / "index.json").write_text(json.dumps(meta))
    capsys.readouterr()
    image = next((data_root / "test").rglob("*.png"))
    assert main(["search", "--index", str(idx), "--image", str(image), "-k", "2"]) == 2
    err = capsys.readouterr().err
    assert "without the run's data.options.swap_rb" in err and "rebuild the index" in err, err
    assert "--config" not in err, err
