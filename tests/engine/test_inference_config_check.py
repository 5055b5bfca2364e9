"""Loading a trained checkpoint for inference (engine/inference.load_trained) with a config whose model section is
not the one the checkpoint was trained with is refused, naming the keys, both values and where the new value was
set; keys that do not change the embeddings, and checkpoints that record no config, load as before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.config import config_hash, config_to_dict, load_config, save_config
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import ABSENT, model_config_changes, save_checkpoint_file
from dynametric.engine.inference import load_trained
from dynametric.errors import ConfigError

BASE = ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}"]


def _run(root: Path, *, record_config: bool = True, overrides: list[str] = BASE) -> Path:
    """A run folder as `dynametric train` writes it: config.yaml and last.ckpt holding the embedder's weights and
    (unless ``record_config`` is off, as in an older dynametric) the resolved config and its hash."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, overrides)
    save_config(cfg, root / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = {"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0}
    if record_config:
        ckpt["dynametric"] = {"config": config_to_dict(cfg), "config_hash": config_hash(cfg)}
    save_checkpoint_file(ckpt, root / "last.ckpt")
    return root / "last.ckpt"


def _edit(config: Path, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in the config file; the 1-based line it is on."""
    lines = config.read_text(encoding="utf-8").splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.strip() == old]
    lines[index] = lines[index].replace(old, new)
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return index + 1


def test_edited_config_yaml_is_refused_naming_line_key_and_both_values(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run")
    line = _edit(ckpt.parent / "config.yaml", "pooling: avg", "pooling: max")
    with pytest.raises(ConfigError) as info:
        load_trained(ckpt)
    msg = str(info.value)
    assert msg.startswith(f"{ckpt.parent / 'config.yaml'}:{line} key 'model.pooling': {ckpt} was trained with")
    assert "model.pooling: 'avg' in the checkpoint, 'max' here" in msg
    assert msg.endswith("use the config the run was trained with (model.pooling='avg')")
    assert "\n" not in msg


def test_overrides_and_another_runs_config_are_refused(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^<command line> key 'model.normalize': .*model.normalize: True in the "
                                          r"checkpoint, False here\)"):
        load_trained(ckpt, overrides=["model.normalize=false"])
    # another run's config: a wider head and another backbone option (the shapes differ too, but the config says why)
    other = _run(tmp_path / "other", overrides=["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 3}",
                                                "model.pooling=catavgmax"])
    with pytest.raises(ConfigError) as info:
        load_trained(ckpt, other.parent / "config.yaml")
    msg = str(info.value)
    assert "model.pooling: 'avg' in the checkpoint, 'catavgmax' here" in msg
    assert "model.backbone_kwargs.depth: 2 in the checkpoint, 3 here" in msg
    assert "model.backbone_kwargs.width" not in msg  # the same in both


def test_keys_that_do_not_change_the_embeddings_load_and_nothing_is_downloaded(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run")
    ref = load_trained(ckpt)
    x = torch.randn(2, 3, 16, 16)
    # a pretrained_path that does not exist here and freeze_bn: the checkpoint's weights replace the initial ones
    got = load_trained(ckpt, overrides=["model.pretrained_path=/nowhere/weights.pth", "model.freeze_bn=true",
                                        "model.channels_last=true"])
    assert torch.equal(got.model(x), ref.model(x))
    # a key added to the schema after the checkpoint was written, at its default, is no change
    state = torch.load(ckpt, weights_only=True)
    del state["dynametric"]["config"]["model"]["head_names"]
    save_checkpoint_file(state, ckpt)
    assert torch.equal(load_trained(ckpt).model(x), ref.model(x))


def test_checkpoint_without_a_recorded_config_loads_as_before(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "old", record_config=False)
    _edit(ckpt.parent / "config.yaml", "pooling: avg", "pooling: max")
    trained = load_trained(ckpt)  # nothing to compare with: the tensors fit, the config is taken as it is
    assert trained.model.pool.mode == "max"


def test_model_config_changes_compares_mappings_option_by_option() -> None:
    stored = {"backbone": "simple_cnn", "pooling": "avg", "pretrained": True, "backbone_kwargs": {"width": 4},
              "removed_key": 1}
    current = {"backbone": "simple_cnn", "pooling": "avg", "pretrained": False,
               "backbone_kwargs": {"width": 4, "depth": 3}, "in_chans": 3, "num_heads": 2}
    assert model_config_changes(stored, current) == [("model.backbone_kwargs.depth", ABSENT, 3),
                                                     ("model.num_heads", ABSENT, 2)]
    assert repr(ABSENT) == "absent"
    assert model_config_changes(stored, {**current, "backbone_kwargs": {}, "num_heads": 1}) == [
        ("model.backbone_kwargs.width", 4, ABSENT)]
