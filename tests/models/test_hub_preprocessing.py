"""What a model folder says besides its weights: the evaluation preprocessing (``preprocessing_steps``, applied by
the model card's usage and exposed as ``model.preprocessing``), the precision the run trained in and its test
metrics were computed in, and a card without a dict's repr or a link to nowhere.

The preprocessing is checked against an oracle of plain PIL + numpy (no torchvision): applying the recorded steps
to image files gives, through ``from_pretrained``, the embeddings ``embed`` computes from the run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.config import load_config, save_config
from dynametric.data import IMAGENET_MEAN, IMAGENET_STD
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import save_checkpoint_file
from dynametric.errors import InputError
from dynametric.models import Embedder, build_embedder
from dynametric.models import hub as hubmod

SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}
STEPS = [{"op": "Resize", "size": 20, "interpolation": "bilinear", "antialias": True},
         {"op": "CenterCrop", "size": [16, 16]}, {"op": "ToTensor"},
         {"op": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 0.5]}]


def _run(tmp_path: Path, overrides: list[str], metrics: dict | None = None) -> Path:
    """A run folder (config.yaml, best.ckpt of random weights, metrics.json where given)."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, overrides)
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0},
                         run / "best.ckpt")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps({"test": metrics}))
    return run


def _images(folder: Path) -> list[Path]:
    """Three noisy RGB images of other sizes than the crop (portrait, landscape, square)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(50, 40), (40, 64), (33, 33)]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _apply_plain(steps: list[dict], path: Path, *, stats: tuple | None = None) -> np.ndarray:
    """The recorded ``steps`` applied with PIL and numpy alone (``stats``: another ``(mean, std)`` than recorded)."""
    img = Image.open(path).convert("RGB")
    x: np.ndarray | None = None
    for step in steps:
        op = step["op"]
        if op == "Resize":
            assert step["interpolation"] == "bilinear" and isinstance(step["size"], int)
            w, h = img.size
            assert max(w, h) <= step.get("max_aspect", math.inf) * min(w, h)  # no centre-cut to the aspect bound
            side = step["size"]
            img = img.resize((side, int(side * h / w)) if w <= h else (int(side * w / h), side), Image.BILINEAR)
        elif op == "CenterCrop":
            th, tw = step["size"]
            w, h = img.size
            left, top = int(round((w - tw) / 2.0)), int(round((h - th) / 2.0))
            img = img.crop((left, top, left + tw, top + th))
        elif op == "SwapRB":
            assert step["channel_order"] == "BGR"
            img = Image.fromarray(np.asarray(img)[:, :, ::-1].copy())
        elif op == "ToTensor":
            x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
        elif op == "Normalize":
            assert x is not None
            mean, std = stats if stats is not None else (step["mean"], step["std"])
            m = np.asarray(mean, dtype=np.float32)[:, None, None]
            s = np.asarray(std, dtype=np.float32)[:, None, None]
            x = (x - m) / s
        else:
            pytest.fail(f"a step this PIL + numpy oracle does not apply yet: {step}")
    assert x is not None
    return x


def _card_code(folder: Path) -> str:
    card = (folder / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Usage\n\n```python\n(.*?)```", card, re.S)
    assert code is not None, card
    return code.group(1).replace("'path/to/this/folder'", repr(str(folder)))


def test_export_run_of_a_vit_run_records_the_preprocessing_that_reproduces_embed(tmp_path):
    """A ViT run normalises with 0.5 / 0.5: the folder said nothing of it (input_size only; the card's usage was
    ``emb = model(images)``), and ImageNet statistics gave embeddings off by up to 0.19. The recorded steps,
    applied with PIL + numpy, and the card's own usage code reproduce ``embed``."""
    from dynametric.engine.inference import InferenceOptions
    from dynametric.retrieval.model import embed_image_files, load_embedder

    run = _run(tmp_path, ["model.backbone=vit_tiny_patch16_224", "model.backbone_kwargs={img_size: 32}",
                          "model.pooling=token", "model.embedding_dim=8", "data.transform=standard",
                          "data.image_size=32"])
    folder = hubmod.export_run(run, tmp_path / "mf")
    meta = json.loads((folder / "dynametric.json").read_text())
    steps = meta["preprocessing_steps"]
    by_op = {s["op"]: s for s in steps}
    assert by_op["Normalize"] == {"op": "Normalize", "mean": [0.5] * 3, "std": [0.5] * 3}
    assert by_op["Resize"]["size"] == 37 and by_op["CenterCrop"]["size"] == [32, 32]

    paths = _images(tmp_path / "images")
    loaded = load_embedder(run / "best.ckpt", options=InferenceOptions(device="cpu", precision="fp32"))
    expected = embed_image_files(loaded, paths)
    model = Embedder.from_pretrained(folder)
    assert model.preprocessing == steps
    assert Embedder.from_pretrained(run).preprocessing == steps  # the run folder itself says the same
    with torch.no_grad():
        got = model(torch.from_numpy(np.stack([_apply_plain(steps, p) for p in paths]))).numpy()
        imagenet = model(torch.from_numpy(np.stack([_apply_plain(steps, p, stats=(IMAGENET_MEAN, IMAGENET_STD))
                                                    for p in paths]))).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.abs(imagenet - expected).max() > 1e-2  # what a reader guessing ImageNet's statistics got

    scope: dict = {"paths": [str(p) for p in paths]}
    exec(compile(_card_code(folder), "README.md", "exec"), scope)  # noqa: S102 - the card this test wrote
    np.testing.assert_allclose(scope["emb"].numpy(), expected, rtol=0, atol=1e-6)


def test_save_pretrained_records_the_preprocessing_given_and_from_pretrained_exposes_it(tmp_path):
    torch.manual_seed(1)
    model = build_embedder(**SMALL).eval()
    steps = [*STEPS[:2], {"op": "SwapChannels", "repr": "SwapChannels()"}, *STEPS[2:]]
    model.save_pretrained(tmp_path / "m", preprocessing=steps, input_size=16)
    assert json.loads((tmp_path / "m" / "dynametric.json").read_text())["preprocessing_steps"] == steps
    card = (tmp_path / "m" / "README.md").read_text()
    assert "    T.Resize(20, interpolation=T.InterpolationMode.BILINEAR, antialias=True),\n" \
           "    T.CenterCrop([16, 16]),\n" \
           '    # apply here: {"op": "SwapChannels", "repr": "SwapChannels()"}\n' \
           "    T.ToTensor(),\n" \
           "    T.Normalize(mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 0.5]),\n])" in card, card
    loaded = Embedder.from_pretrained(tmp_path / "m")
    assert loaded.preprocessing == steps
    loaded.save_pretrained(tmp_path / "again")  # a loaded model saved again keeps its preprocessing
    assert Embedder.from_pretrained(tmp_path / "again").preprocessing == steps

    # the card's code applies what it says: on a 30x24 image, Resize 20 (shorter side), crop 16, normalise
    x = torch.rand(3, 24, 30, generator=torch.Generator().manual_seed(2))
    img = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    path = tmp_path / "a.png"
    img.save(path)
    plain = STEPS  # the steps the oracle knows; the SwapChannels comment is not code
    with torch.no_grad():
        expected = model(torch.from_numpy(_apply_plain(plain, path))[None])
    (tmp_path / "m2").mkdir()
    model.save_pretrained(tmp_path / "m2", preprocessing=STEPS)
    scope: dict = {"paths": [str(path)]}
    exec(compile(_card_code(tmp_path / "m2"), "README.md", "exec"), scope)  # noqa: S102 - the card this test wrote
    torch.testing.assert_close(scope["emb"], expected, rtol=0, atol=1e-6)


def test_without_preprocessing_nothing_is_recorded_and_the_card_says_to_apply_the_training_one(tmp_path):
    torch.manual_seed(1)
    build_embedder(**SMALL).save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "dynametric.json"
    assert "preprocessing_steps" not in json.loads(meta_path.read_text())
    card = (tmp_path / "m" / "README.md").read_text()
    assert "This folder records no preprocessing: apply the evaluation preprocessing the model was trained with" in card
    assert "* preprocessing: not recorded" in card
    assert Embedder.from_pretrained(tmp_path / "m").preprocessing is None
    # a folder of an earlier dynametric (no such key) loads as before
    assert Embedder.from_pretrained(tmp_path / "m").hub_meta.get("preprocessing_steps") is None


@pytest.mark.parametrize(("bad", "key", "says"), [
    ("Resize(256)", "preprocessing", "expected a non-empty list of preprocessing steps"),
    ([], "preprocessing", "expected a non-empty list of preprocessing steps"),
    ([{"size": 3}], "preprocessing[0].op", "expected an 'op' naming the step"),
    ([STEPS[0], "ToTensor"], "preprocessing[1]", "expected a dict of a step"),
    ([{"op": "Resize", "size": 0}], "preprocessing[0].size", "Resize: expected a positive whole number"),
    ([{"op": "Resize", "size": 8, "interpolation": "smooth"}], "preprocessing[0].interpolation", "expected one of"),
    ([{"op": "Normalize", "mean": [0.5], "std": [0.5, 0.5]}], "preprocessing[0].std", "expected as many values"),
    ([{"op": "Normalize", "mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}], "preprocessing[0].std", "positive values"),
    ([{"op": "Normalize", "mean": [float("nan")] * 3, "std": [1.0] * 3}], "preprocessing[0].mean", "finite"),
    ([{"op": "Custom", "fn": object()}], "preprocessing[0]", "expected JSON values"),
])
def test_bad_preprocessing_is_one_line_naming_the_step_and_nothing_is_written(tmp_path, bad, key, says):
    torch.manual_seed(1)
    with pytest.raises(InputError) as info:
        build_embedder(**SMALL).save_pretrained(tmp_path / "m", preprocessing=bad)
    assert info.value.key == key and says in info.value.message, str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m").exists()


def test_a_model_folder_with_bad_preprocessing_steps_is_refused_naming_the_file_and_the_entry(tmp_path):
    torch.manual_seed(1)
    build_embedder(**SMALL).save_pretrained(tmp_path / "m", preprocessing=STEPS)
    meta_path = tmp_path / "m" / "dynametric.json"
    meta = json.loads(meta_path.read_text())
    meta["preprocessing_steps"][3]["std"] = [0.5, 0.5]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError) as info:
        Embedder.from_pretrained(tmp_path / "m")
    assert str(info.value) == (f"{meta_path} key 'preprocessing_steps[3].std': Normalize: expected as many values as "
                               "mean (3), got 2")


def test_a_bf16_run_folder_records_the_precision_its_metrics_were_computed_in(tmp_path):
    metrics = {"fine": {"map@r": 0.5}, "mean": {"map@r": 0.5}}
    run = _run(tmp_path, ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}",
                          "trainer.precision=bf16-mixed"], metrics)
    folder = hubmod.export_run(run, tmp_path / "mf")
    meta = json.loads((folder / "dynametric.json").read_text())
    assert (meta["trained_precision"], meta["metrics_precision"]) == ("bf16-mixed", "bf16")
    card = (folder / "README.md").read_text()
    assert "* trained in precision bf16-mixed" in card
    assert ("Test split, per label scale, computed in bf16 (autocast, as the run evaluated with trainer.precision "
            "bf16-mixed). `from_pretrained` computes in float32 unless you autocast") in card
    assert "torch.autocast(device_type, dtype=torch.bfloat16)" in card

    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("bf16-mixed", "32-true"))
    meta = json.loads((hubmod.export_run(run, tmp_path / "mf32") / "dynametric.json").read_text())
    assert (meta["trained_precision"], meta["metrics_precision"]) == ("32-true", "fp32")
    assert "Test split, per label scale, computed in fp32:" in (tmp_path / "mf32" / "README.md").read_text()
    (run / "metrics.json").unlink()  # no test metrics: no precision of them
    meta = json.loads((hubmod.export_run(run, tmp_path / "none") / "dynametric.json").read_text())
    assert meta["trained_precision"] == "32-true" and "metrics_precision" not in meta

    with pytest.raises(InputError) as info:
        build_embedder(**SMALL).save_pretrained(tmp_path / "x", metrics=metrics, metrics_precision="bf16-mixed")
    assert info.value.key == "metrics_precision" and "expected one of ['fp32', 'bf16', 'fp16']" in info.value.message


def test_the_card_names_head_widths_in_words_and_links_nowhere(tmp_path):
    torch.manual_seed(1)
    build_embedder(**{**SMALL, "embedding_dim": 128}).save_pretrained(tmp_path / "one")
    card = (tmp_path / "one" / "README.md").read_text()
    assert "* backbone: `simple_cnn`, pooling `avg`, L2-normalised embedding width 128\n" in card and "{'" not in card
    assert "github.com" not in card and "](" not in card  # no link to a page that is not the project's
    build_embedder(**{**SMALL, "num_heads": 2, "head_names": ["a", "b"], "head_dims": [128, 64]}).save_pretrained(
        tmp_path / "two", eval_head="b")
    card = (tmp_path / "two" / "README.md").read_text()
    assert "L2-normalised embeddings; heads: a 128, b 64\n* evaluated head: b\n" in card and "width {" not in card
    assert "emb = model(images)   # {'a': [B, 128], 'b': [B, 64]}\n    emb = emb['b']   # the evaluated head" in card


def test_a_swap_rb_run_folder_records_the_channel_swap_and_its_card_applies_it(tmp_path):
    """A run of ``data.options.swap_rb: true`` saw its images with R and B exchanged: its folder's steps begin with
    ``SwapRB``, the PIL + numpy oracle and the card's usage code (which writes the swap as code, not as a comment)
    reproduce ``embed``, and leaving the swap out would not."""
    from dynametric.engine.inference import InferenceOptions
    from dynametric.retrieval.model import embed_image_files, load_embedder

    run = _run(tmp_path, ["model.backbone=simple_cnn", "model.backbone_kwargs={width: 4, depth: 2}",
                          "model.embedding_dim=8", "data.image_size=16", "data.format=folder",
                          "data.options.swap_rb=true"])
    folder = hubmod.export_run(run, tmp_path / "mf")
    steps = json.loads((folder / "dynametric.json").read_text())["preprocessing_steps"]
    assert steps[0] == {"op": "SwapRB", "channel_order": "BGR"}
    assert "# apply here" not in _card_code(folder)

    paths = _images(tmp_path / "images")
    loaded = load_embedder(run / "best.ckpt", options=InferenceOptions(device="cpu", precision="fp32"))
    expected = embed_image_files(loaded, paths)
    model = Embedder.from_pretrained(folder)
    with torch.no_grad():
        got = model(torch.from_numpy(np.stack([_apply_plain(steps, p) for p in paths]))).numpy()
        unswapped = model(torch.from_numpy(np.stack([_apply_plain(steps[1:], p) for p in paths]))).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.abs(unswapped - expected).max() > 1e-3
    scope: dict = {"paths": [str(p) for p in paths]}
    exec(compile(_card_code(folder), "README.md", "exec"), scope)  # noqa: S102 - the card this test wrote
    np.testing.assert_allclose(scope["emb"].numpy(), expected, rtol=0, atol=1e-6)


def test_an_attribute_of_the_callers_own_named_preprocessing_is_left_alone(tmp_path):
    """``save_pretrained`` keeps the steps a model folder gave ``model.preprocessing``; a value of the caller's own
    under that name (a torchvision ``Compose``) is not a list of steps: the save goes on as before the key existed
    (was: refused, keyed ``preprocessing``, an argument the caller never gave), recording none."""
    from torchvision import transforms as T

    torch.manual_seed(1)
    model = build_embedder(**SMALL).eval()
    model.preprocessing = T.Compose([T.Resize(32), T.ToTensor()])
    model.save_pretrained(tmp_path / "m", input_size=16)
    assert "preprocessing_steps" not in json.loads((tmp_path / "m" / "dynametric.json").read_text())
    assert Embedder.from_pretrained(tmp_path / "m").preprocessing is None
