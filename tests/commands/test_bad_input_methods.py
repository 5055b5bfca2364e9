"""`dynametric train --dry-run` on the method configs (Sharing Matters, MIC, PDDM, DyML) with a wrong value: the
config is refused before training, in one line naming the config key that is wrong and what was expected; values the
engine derives from the model (the decorrelation term's split) follow the model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.engine.builders import Datasets
from dynametric.pipeline import build_components

ROOT = Path(__file__).resolve().parents[2]
SYN = ["--set", "data.options.images_per_class=4", "--set", "data.options.image_size=16", "--set",
       "data.workers=0", "--set", "trainer.max_epochs=2", "--set", "model.backbone_kwargs.width=8"]


def _dry(capsys: pytest.CaptureFixture[str], config: str, *overrides: str) -> str:
    argv = ["train", "--dry-run", "--config", str(ROOT / "configs" / config), *SYN]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _labels() -> Datasets:
    labels = torch.stack([torch.arange(8).repeat(2), torch.arange(8).repeat(2) // 2,
                          torch.arange(8).repeat(2) // 4], 1)
    return Datasets(train=SimpleNamespace(labels=labels), val=None, test=None,
                    scale_names=["fine", "middle", "coarse"], val_source="none")


# ----------------------------------------------------------------------------- the decorrelation term's split
def test_decorrelation_splits_the_concat_at_the_heads_widths() -> None:
    cfg = load_config(ROOT / "configs" / "sharing" / "synthetic.yaml", ["model.head_dims=[64,32]"])
    dec = build_components(cfg, datasets=_labels()).objectives[2].loss
    assert (dec.decorrelation.class_dim, dec.decorrelation.shared_dim) == (64, 32)


def test_decorrelation_split_follows_the_head_order() -> None:
    cfg = load_config(ROOT / "configs" / "sharing" / "synthetic.yaml",
                      ["model.head_dims=[16,48]", "model.head_names=[shared,class]"])
    dec = build_components(cfg, datasets=_labels()).objectives[2].loss
    assert (dec.decorrelation.class_dim, dec.decorrelation.shared_dim) == (16, 48)


def test_decorrelation_class_dim_that_disagrees_with_the_heads_is_refused(capsys) -> None:
    err = _dry(capsys, "sharing/synthetic.yaml", "extra_losses[1].kwargs.class_dim=100")
    assert ("key 'extra_losses[1].kwargs.class_dim': DecorrelationLoss(class_dim=100) does not fit the model: the "
            "concat head is [class: 64-d; shared: 64-d]; set extra_losses[1].kwargs.class_dim=64") in err


def test_decorrelation_on_one_head_is_refused(capsys) -> None:
    err = _dry(capsys, "sharing/synthetic.yaml", "extra_losses[1].head=class")
    assert "key 'extra_losses[1].head': DecorrelationLoss splits the two heads side by side" in err
    assert "got head 'class'; set extra_losses[1].head=concat" in err


# ----------------------------------------------------------------------------- backbone options
@pytest.mark.parametrize("override, expected", [
    ("model.backbone_kwargs.widht=8",
     "key 'model.backbone_kwargs.widht': backbone 'simple_cnn' has no option 'widht'; did you mean 'width'?"),
    ("model.backbone_kwargs={width:8}",
     "key 'model.backbone_kwargs.width:8': backbone 'simple_cnn' has no option 'width:8'; did you mean 'width'? "
     "(a YAML flow mapping needs a space after the colon: {width: 8})"),
])
def test_unknown_backbone_option_is_one_line_naming_it(capsys, override: str, expected: str) -> None:
    assert expected in _dry(capsys, "pddm/synthetic.yaml", override)


# ----------------------------------------------------------------------------- evaluated heads
def test_unknown_eval_head_is_refused_when_the_config_loads(capsys) -> None:
    err = _dry(capsys, "sharing/synthetic.yaml", "eval.heads=[concat,klass]")
    assert ("key 'eval.heads': unknown head 'klass'; expected the model's heads ['class', 'shared'] or 'concat'; "
            "did you mean 'class'?") in err


# ----------------------------------------------------------------------------- checks a dry run used to miss
@pytest.mark.parametrize("config, override, expected", [
    ("pddm/synthetic.yaml", "loss.kwargs.scale=3",
     "key 'loss.kwargs.scale': PDDMLoss(scale=3) trains on a label scale the data does not have: expected 0..2 "
     "(the labels have 3 scale(s))"),
    ("pddm/synthetic.yaml", "miner.name=TripletMarginMiner",
     "key 'miner.name': PDDMLoss mines its own tuples from the batch; a miner would be ignored or clash with it: "
     "remove miner (set miner: null)"),
    ("mic/synthetic.yaml", "method.kwargs.feature_layer=backbone.body.nope",
     "key 'method.kwargs.feature_layer': the model has no module 'backbone.body.nope' (expected a name from the "
     "embedder's named_modules()); did you mean 'backbone.body'?"),
    # the cluster count is blamed before the shared term's num_classes (which would ask for 100000 classes)
    ("mic/synthetic.yaml", "method.kwargs.num_clusters=100000",
     "key 'method.kwargs.num_clusters': 100000 clusters of 720 training images: expected at most 720"),
])
def test_method_values_are_checked_when_the_run_is_built(capsys, config: str, override: str, expected: str) -> None:
    assert expected in _dry(capsys, config, override)


# ----------------------------------------------------------------------------- method options
def test_method_kwargs_without_a_method_are_refused(capsys) -> None:
    err = _dry(capsys, "pddm/synthetic.yaml", "method.kwargs.foo=1")
    assert ("key 'method.kwargs.foo': method.name is null (the standard run), which takes no method.kwargs; set "
            "method.name or remove the option") in err


def test_dyml_scales_on_the_all_in_one_protocol_are_refused() -> None:
    from dynametric.errors import ConfigError
    from dynametric.methods import method_for

    cfg = load_config(ROOT / "configs" / "dyml" / "product-csl.yaml", ["method.kwargs.scales=[a,b,c]"])
    with pytest.raises(ConfigError) as info:
        method_for(cfg).validate(cfg)
    assert info.value.key == "method.kwargs.scales"
    assert "the 'product' variant tests all in one and takes its scale names from the data" in info.value.message


def test_dyml_scale_without_its_splits_names_the_scales_key() -> None:
    from dynametric.errors import ConfigError
    from dynametric.pipeline.protocols import check_test_splits

    cfg = load_config(ROOT / "configs" / "dyml" / "vehicle-csl.yaml", ["method.kwargs.scales=[fine,mid,coarse]"])
    splits = ["train", *(f"{r}_{s}" for s in ("fine", "middle", "coarse") for r in ("query", "gallery"))]
    with pytest.raises(ConfigError) as info:
        check_test_splits(cfg, splits)
    assert info.value.key == "method.kwargs.scales"
    assert info.value.message == ("scale 'mid' has no query_mid / gallery_mid split; expected scale names of the "
                                  "data: fine, middle, coarse; did you mean 'middle'?")
