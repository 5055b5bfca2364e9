"""The transforms normalise with the backbone's pretrained statistics (timm's ``pretrained_cfg``), ``data.mean`` /
``data.std`` override them, and a trained run embeds with the statistics it trained with (also a run from before)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from dynametric.config import config_to_dict, load_config, save_config
from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD, backbone_statistics
from dynametric.engine.builders import build_model, transform_for
from dynametric.engine.checkpoint import save_checkpoint_file
from dynametric.errors import ConfigError
from dynametric.retrieval.model import embedding_config_hash, load_embedder

CSV = ["data.format=csv", "data.root=/nowhere"]
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _norm(*overrides: str, train: bool = False) -> tuple[list[float], list[float]]:
    step = transform_for(load_config(None, [*CSV, *overrides]), train).transforms[-1]
    return [round(v, 8) for v in step.mean], [round(v, 8) for v in step.std]


@pytest.mark.parametrize("backbone, mean, std", [
    ("simple_cnn", IMAGENET_MEAN, IMAGENET_STD),  # dynametric's own: ImageNet (as before)
    ("resnet50", IMAGENET_MEAN, IMAGENET_STD),  # timm, ImageNet weights
    ("inception_v3", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # was ImageNet
    ("vit_base_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ("vit_base_patch16_clip_224.openai", *CLIP),
])
def test_train_and_eval_transforms_use_the_backbones_statistics(backbone: str, mean: tuple, std: tuple) -> None:
    for train in (False, True):
        assert _norm(f"model.backbone={backbone}", train=train) == ([round(v, 8) for v in mean],
                                                                    [round(v, 8) for v in std])


def test_data_mean_and_std_override_and_are_checked(tmp_path: Path) -> None:
    assert _norm("model.backbone=vit_base_patch16_224", "data.mean=[0.1, 0.2, 0.3]") == ([0.1, 0.2, 0.3],
                                                                                          [0.5, 0.5, 0.5])
    assert _norm("data.std=[1, 2, 3]") == ([0.485, 0.456, 0.406], [1.0, 2.0, 3.0])
    for override, message in [
        ("data.mean=[0.1, 0.2]", "key 'data.mean': expected a list of 3 numbers, one per input channel "
                                 "(model.in_chans = 3), got [0.1, 0.2]"),
        ("data.std=[0.2, 0, 0.2]", "key 'data.std': every std must be > 0, got [0.2, 0.0, 0.2]"),
        ("data.std=[0.2, -1, 0.2]", "key 'data.std': every std must be > 0"),
        ("data.mean=[.nan, 0, 0]", "key 'data.mean': expected a list of 3 numbers"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace(".", r"\.")):
            load_config(None, [override])
    load_config(None, ["model.in_chans=1", "data.mean=[0.5]", "data.std=[0.25]"])  # one per channel
    # a local timm folder: its config.json's pretrained_cfg
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": {
        "mean": [0.25, 0.5, 0.75], "std": [0.1, 0.2, 0.3]}}))
    assert backbone_statistics(f"local-dir:{tmp_path}")[:2] == ((0.25, 0.5, 0.75), (0.1, 0.2, 0.3))
    assert backbone_statistics(f"local-dir:{tmp_path / 'none'}")[:2] == (IMAGENET_MEAN, IMAGENET_STD)


def test_embedding_hash_counts_the_statistics_only_where_they_are_not_imagenets() -> None:
    def old_hash(cfg) -> str:  # the digest before the keys existed: model section and preset only
        model = {k: v for k, v in config_to_dict(cfg)["model"].items()
                 if k not in ("pretrained", "pretrained_path", "freeze_bn", "channels_last")}
        text = json.dumps({"model": model, "transform": "standard"}, sort_keys=True, separators=(",", ":"),
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    imagenet = load_config(None, CSV)
    assert embedding_config_hash(imagenet) == old_hash(imagenet)  # embed jobs and indexes of before still match
    assert embedding_config_hash(load_config(None, [*CSV, f"data.mean={list(IMAGENET_MEAN)}"])) == old_hash(imagenet)
    vit = load_config(None, [*CSV, "model.backbone=vit_base_patch16_224"])
    assert embedding_config_hash(vit) != old_hash(vit)
    other = load_config(None, [*CSV, "data.mean=[0.5, 0.5, 0.5]"])
    assert embedding_config_hash(other) != embedding_config_hash(imagenet)


def _run(root: Path, recorded: bool | str | None) -> Path:
    """A run of timm's test_resnet (pretrained statistics 0.5 / 0.5); its checkpoint records a config with the keys
    (``True``), one from before them (``False``), one where a resume of such a run recorded ImageNet's while its
    config.yaml leaves them unset (``"resumed"``), or none (``None``)."""
    root.mkdir(parents=True)
    cfg = load_config(None, [*CSV, "model.backbone=test_resnet", "model.embedding_dim=8"])
    save_config(cfg, root / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt: dict = {"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0}
    if recorded is not None:
        stored = config_to_dict(cfg)
        if recorded == "resumed":
            stored["data"]["mean"], stored["data"]["std"] = list(IMAGENET_MEAN), list(IMAGENET_STD)
        elif not recorded:
            del stored["data"]["mean"], stored["data"]["std"]
        ckpt["dynametric"] = {"config": stored}
    save_checkpoint_file(ckpt, root / "best.ckpt")
    return root / "best.ckpt"


def test_a_run_embeds_with_the_statistics_it_trained_with(tmp_path: Path) -> None:
    new = load_embedder(_run(tmp_path / "new", True))
    assert list(new.transform.transforms[-1].mean) == [0.5, 0.5, 0.5]
    assert "Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])" in repr(new.transform)  # what export records
    old = load_embedder(_run(tmp_path / "old", False))  # trained before: with ImageNet's, as then
    assert tuple(old.transform.transforms[-1].mean) == IMAGENET_MEAN
    assert old.embedding_hash != new.embedding_hash
    # resumed by this version, its checkpoint records the ImageNet statistics its config.yaml leaves unset (the
    # run's resume and inference once pinned them by two copies of the rule, and inference missed this case)
    resumed = load_embedder(_run(tmp_path / "resumed", "resumed"))
    assert tuple(resumed.transform.transforms[-1].mean) == IMAGENET_MEAN
    assert tuple(resumed.transform.transforms[-1].std) == IMAGENET_STD
    bare = load_embedder(_run(tmp_path / "bare", None))  # no record: the config decides
    assert list(bare.transform.transforms[-1].mean) == [0.5, 0.5, 0.5]
    forced = load_embedder(_run(tmp_path / "forced", False), overrides=["data.mean=[0.5, 0.5, 0.5]"])
    assert list(forced.transform.transforms[-1].mean) == [0.5, 0.5, 0.5]  # an explicit setting wins
