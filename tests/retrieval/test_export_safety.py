"""What an export leaves when it fails or is killed, and what its sidecar says: a failed check leaves no new file
(nor one mislabelled by an older sidecar), a kill between the sidecar and the rename leaves a sidecar the next export
accepts, the sidecar records the file's SHA-256 and the preprocessing as data; an image size the backbone cannot take
is one line before anything is written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.cli import main
from dynametric.config import load_config, save_config
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import save_checkpoint_file
from dynametric.errors import ConfigError, DynametricError
from dynametric.retrieval.export import export_embedder, preprocessing_steps
from dynametric.retrieval.model import load_embedder

FORMATS = [("m.pt", "torchscript"), ("m.onnx", "onnx")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.parametrize(("name", "fmt"), FORMATS)
def test_a_failed_check_leaves_no_new_file_and_no_mislabelled_one(run_ckpt: Path, tmp_path: Path, name, fmt) -> None:
    loaded = load_embedder(run_ckpt)
    out = tmp_path / name
    with pytest.raises(DynametricError, match="differs from the eager model"):
        export_embedder(loaded, out, atol=-1.0)  # every difference is above a negative tolerance
    assert _folder(tmp_path) == []  # was: the unverified file, without a sidecar (the next export refused it)
    info = export_embedder(loaded, out)
    assert info["format"] == fmt and info["sha256"] == _sha(out)
    assert json.loads((tmp_path / f"{name}.json").read_text()) == info
    before = (out.read_bytes(), (tmp_path / f"{name}.json").read_text())
    with pytest.raises(DynametricError, match="differs from the eager model"):
        export_embedder(loaded, out, atol=-1.0)
    assert (out.read_bytes(), (tmp_path / f"{name}.json").read_text()) == before  # was: a new file, the old sidecar
    assert _folder(tmp_path) == sorted([name, f"{name}.json"])


def test_an_export_killed_before_its_rename_leaves_a_sidecar_the_next_export_accepts(run_ckpt: Path, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    import dynametric.utils.io as io_mod

    loaded = load_embedder(run_ckpt)
    out = tmp_path / "m.pt"
    real_replace = io_mod.os.replace

    def killed(src, dst):
        if Path(dst) == out:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        export_embedder(loaded, out)
    monkeypatch.undo()
    assert not out.exists() and json.loads((tmp_path / "m.pt.json").read_text())["file"] == "m.pt"
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(out)]) == 0  # its own sidecar: accepted
    assert json.loads((tmp_path / "m.pt.json").read_text())["sha256"] == _sha(out)


def test_an_upper_case_onnx_suffix_is_onnx(run_ckpt: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / "UP.ONNX")]) == 0
    assert json.loads((tmp_path / "UP.ONNX.json").read_text())["format"] == "onnx"
    assert capsys.readouterr().out.startswith("onnx -> ")


def test_the_sidecar_describes_the_preprocessing_as_torchvision_steps(tmp_path: Path) -> None:
    """A deploying user rebuilds the evaluation transform from the steps alone and gets the same tensor."""
    from torchvision import transforms as T

    from dynametric.data.transforms import build_transform

    transform = build_transform("standard", train=False, size=64, resize=73)
    steps = preprocessing_steps(transform)
    assert [s["op"] for s in steps] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert steps[0]["size"] == 73 and steps[0]["interpolation"] == "bilinear" and steps[0]["max_aspect"] > 1
    assert steps[1]["size"] == [64, 64]
    assert steps[3]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and steps[3]["std"] == pytest.approx(
        [0.229, 0.224, 0.225])
    json.dumps(steps)  # plain data
    rebuilt = T.Compose([T.Resize(steps[0]["size"], interpolation=T.InterpolationMode(steps[0]["interpolation"]),
                                  antialias=steps[0]["antialias"]), T.CenterCrop(steps[1]["size"]), T.ToTensor(),
                         T.Normalize(steps[3]["mean"], steps[3]["std"])])
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8))
    assert torch.equal(rebuilt(image), transform(image))


def test_an_image_size_the_backbone_cannot_take_is_one_line_before_anything_is_written(tmp_path: Path,
                                                                                      capsys) -> None:
    run = tmp_path / "vit"
    run.mkdir()
    cfg = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.backbone_kwargs={img_size: 32}",
                             "model.pooling=token", "model.embedding_dim=8"])
    save_config(cfg, run / "config.yaml")
    model = build_model(cfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0},
                         run / "best.ckpt")
    with pytest.raises(ConfigError, match=r"cannot run on a 48x48 image") as exc:
        load_embedder(run / "best.ckpt", image_size=48)
    assert exc.value.key == "image_size"
    assert load_embedder(run / "best.ckpt", image_size=32).input_size == 32  # the size it was built for
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (32, 32), "red").save(images / "a.png")
    for argv in (["export", "--out", str(tmp_path / "v.onnx")],
                 ["embed", "--images", str(images), "--out", str(tmp_path / "emb"), "--no-progress"]):
        assert main([*argv, "--checkpoint", str(run / "best.ckpt"), "--image-size", "48"]) == 2
        err = capsys.readouterr().err.strip()
        assert "key '--image-size': backbone 'vit_tiny_patch16_224' cannot run on a 48x48 image" in err, err
        assert "\n" not in err and "Traceback" not in err
    assert _folder(tmp_path) == ["imgs", "vit"]  # was: a traceback, and embed's half-started emb/ folder
