"""Config system: defaults, YAML + dotted overrides, errors naming keys with suggestions, hash, round trip."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynametric
from dynametric.config import (
    Config,
    ExtraLossConfig,
    MinerConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    load_config,
    parse_value,
    save_config,
    schema_default,
    schema_keys,
)
from dynametric.engine.builders import build_component, validate_components
from dynametric.errors import ConfigError
from tests.optional import pml_case

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_default_config_is_the_synthetic_cpu_run() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.format == "synthetic" and cfg.model.backbone == "simple_cnn"
    assert cfg.trainer.monitor == "finest/map@r" and cfg.miner is None and cfg.extra_losses == []


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(overrides=["trainer.max_epochs=3", "loss.name=MultiSimilarityLoss", "optim.lr=1e-5",
                                 "eval.k_values=[1, 10, 100]", "model.embedding_dim=null", "trainer.precision=32",
                                 "loss.kwargs.alpha=2", "miner.name=MultiSimilarityMiner", "optim.head.lr=0.01",
                                 "model.freeze_bn=true", "run.name=a=b"])
    assert cfg.trainer.max_epochs == 3 and cfg.loss.name == "MultiSimilarityLoss"
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.eval.k_values == [1, 10, 100] and cfg.model.embedding_dim is None
    assert cfg.trainer.precision == "32" and cfg.loss.kwargs == {"alpha": 2}
    assert cfg.miner == MinerConfig(name="MultiSimilarityMiner", kwargs={})
    assert cfg.optim.group_lr("head") == 0.01 and cfg.optim.group_lr("backbone") == 1e-5
    assert cfg.model.freeze_bn is True and cfg.run.name == "a=b"


def test_parse_value_reads_exponent_floats() -> None:
    assert parse_value("1e-5") == 1e-5 and parse_value("3E2") == 300.0 and parse_value("5") == 5
    assert parse_value("") is None and parse_value("bf16-mixed") == "bf16-mixed"


def test_file_then_overrides_then_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "trainer:\n  max_epochs: 7\n  seed: 3\noptim:\n  lr: 2.0e-4\n")
    cfg = load_config(path, ["trainer.seed=5"])
    assert (cfg.trainer.max_epochs, cfg.trainer.seed, cfg.optim.lr) == (7, 5, 2e-4)
    assert cfg.trainer.precision == Config().trainer.precision  # untouched keys keep their defaults


def test_extends_merges_sections_deeply(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", "model:\n  backbone: resnet50\n  freeze_bn: true\noptim:\n  lr: 1.0e-5\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nmodel:\n  embedding_dim: 64\n")
    cfg = load_config(child)
    assert (cfg.model.backbone, cfg.model.freeze_bn, cfg.model.embedding_dim, cfg.optim.lr) == \
        ("resnet50", True, 64, 1e-5)
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("override, key, hint", [
    ("trainer.max_epoch=3", "trainer.max_epoch", "did you mean 'trainer.max_epochs'"),
    ("optim.max_epochs=3", "optim.max_epochs", "did you mean 'trainer.max_epochs'"),
    ("modle.backbone=resnet50", "modle", "did you mean 'model'"),
    ("data.sampler_option.x=1", "data.sampler_option", "did you mean 'data.sampler_options'"),
    ("optim.backbone.qqqq=1", "optim.backbone.qqqq", "valid keys here: lr, weight_decay"),
    ("trainer.lr=1", "trainer.lr", "did you mean 'optim.lr'"),
])
def test_unknown_key_names_key_and_suggests(override: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.key == key and hint in str(info.value) and info.value.file == "<command line>"


def test_unknown_key_in_file_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "data:\n  format: synthetic\n  batch_sise: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.key, err.line) == ("data.batch_sise", 3) and Path(err.file).name == "c.yaml"
    assert "did you mean 'data.batch_size'" in str(err)


@pytest.mark.parametrize("override, key, expected", [
    ("trainer.max_epochs=abc", "trainer.max_epochs", "expected int, got 'abc' (str)"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs", "expected int"),
    ("trainer.max_epochs=true", "trainer.max_epochs", "expected int, got True (bool)"),
    ("model.normalize=1", "model.normalize", "expected bool, got 1 (int)"),
    ("optim.lr=fast", "optim.lr", "expected float"),
    ("eval.k_values=[1, x]", "eval.k_values[1]", "expected int"),
    ("model.pooling=mean", "model.pooling", "expected one of"),
    ("model.pooling=avgg", "model.pooling", "did you mean 'avg'"),
    ("data.options=3", "data.options", "expected mapping"),
    ("miner=5", "miner", "expected mapping (section) | null"),
    ("trainer.precision=bf16", "trainer.precision", "Lightning reads 'bf16' as 'bf16-mixed'"),
    ("data.batch_size=30", "data.batch_size", "data.batch_size 30 must be a multiple of data.m 4"),
    ("data.val_fraction=1.5", "data.val_fraction", "fraction"),
    ("loss.head=shared", "loss.head", "single head"),
    ("eval.metrics=[bogus]", "eval.metrics", "unknown metric 'bogus'"),
    ("eval.metrics=[recall@x]", "eval.metrics", "expected recall@K or recall@<positive int>"),
    ("trainer.monitor=fine/cmc@1", "trainer.monitor", "the results call 'cmc@1' 'recall@1'"),
])
def test_wrong_values_name_the_key(override: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.key == key and expected in str(info.value)


def test_int_widens_to_float_and_heads_are_checked() -> None:
    assert load_config(overrides=["optim.lr=1"]).optim.lr == 1.0
    cfg = load_config(overrides=["model.num_heads=2", "extra_losses=[{name: MarginLoss, head: shared}]",
                                 "loss.head=class"])
    assert cfg.extra_losses == [ExtraLossConfig(name="MarginLoss", head="shared")]
    with pytest.raises(ConfigError, match=r"did you mean 'shared'") as info:
        load_config(overrides=["model.num_heads=2", "extra_losses=[{name: MarginLoss, head: sharde}]"])
    assert info.value.key == "extra_losses[0].head"


def test_bad_yaml_and_bad_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", "data:\n  format: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config(path)
    assert info.value.line is not None
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["trainer.max_epochs"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(overrides=["trainer.max_epochs=3", "trainer.max_epochs.x=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n"))


def test_overrides_address_list_entries_by_index(tmp_path: Path) -> None:
    path = _write(tmp_path / "two.yaml", "extra_losses:\n  - {name: MarginLoss, kwargs: {margin: 0.2}, head: null}\n"
                                         "  - {name: TripletMarginLoss, weight: 0.5}\n")
    cfg = load_config(path, ["extra_losses[0].kwargs.margin=0.3", "extra_losses[1].weight=2",
                             "extra_losses[1].miner={name: BatchHardMiner}"])
    assert cfg.extra_losses[0].kwargs == {"margin": 0.3} and cfg.extra_losses[0].name == "MarginLoss"
    assert cfg.extra_losses[1].weight == 2.0 and cfg.extra_losses[1].miner.name == "BatchHardMiner"
    assert load_config(path, ["model.num_heads=2", "model.head_dims=[8, 4]", "model.head_dims[1]=16"]).model.head_dims \
        == [8, 16]
    for override, message in [("extra_losses[2].weight=1", "'extra_losses' has 2 entries, no index 2"),
                              ("extra_losses[0].name[0]=X", "'extra_losses[0].name' is not a list"),
                              ("extra_losses[0][1]=3", "'extra_losses[0]' is not a list"),
                              ("extra_losses[x].weight=1", "malformed dotted key")]:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            load_config(path, [override])
        assert info.value.file == "<command line>"
    # a later error in an entry set from the command line is attributed to it
    with pytest.raises(ConfigError, match="extra_losses\\[1\\].weight") as info:
        load_config(path, ["extra_losses[1].weight=heavy"])
    assert info.value.file == "<command line>"


def test_every_command_applies_overrides_in_one_order_the_last_winning(tmp_path: Path, monkeypatch) -> None:
    """`train`'s KEY=VALUE words first, in the order given, then each `--set` in order, in every command that takes
    overrides; of two that set one key the later wins (docs/config.md), a whole mapping replacing what an earlier
    override set inside it."""
    import dynametric.config as config
    from dynametric.cli import main
    from tests.retrieval.conftest import make_images, make_run

    assert load_config(overrides=["trainer.max_epochs=1", "trainer.max_epochs=2"]).trainer.max_epochs == 2
    assert load_config(overrides=["loss.kwargs.margin=0.1", "loss.kwargs={}"]).loss.kwargs == {}
    ckpt, images = make_run(tmp_path / "run", dim=8), make_images(tmp_path / "data", n=3) / "imgs"
    seen: list[list[str]] = []

    def recorded(path: object = None, overrides: list[str] = ()) -> object:  # what each command hands the loader
        seen.append(list(overrides))
        raise ConfigError("recorded")

    monkeypatch.setattr(config, "load_config", recorded)
    a = ("--set", "trainer.max_epochs=3", "--set", "trainer.max_epochs=4")
    model = ("--checkpoint", str(ckpt))
    for argv in (["train", "--dry-run", "trainer.max_epochs=1", *a, "trainer.max_epochs=2"],
                 ["evaluate", *model, *a], ["embed", *model, "--images", str(images), "--out", str(tmp_path / "e"),
                                            *a],
                 ["export", *model, "--out", str(tmp_path / "m.onnx"), *a]):
        assert main(argv) == 2, argv
    expected = ["trainer.max_epochs=3", "trainer.max_epochs=4"]
    assert seen == [["trainer.max_epochs=1", "trainer.max_epochs=2", *expected], expected, expected, expected]
    monkeypatch.undo()
    assert load_config(overrides=seen[0]).trainer.max_epochs == 4


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_config(overrides=["model.num_heads=2", "model.head_dims=[64, 32]", "miner.name=BatchHardMiner",
                                 "miner.kwargs.epsilon=0.1",
                                 "extra_losses=[{name: MarginLoss, head: shared, miner: {name: MultiSimilarityMiner}}]",
                                 "optim.scheduler.name=multistep", "optim.scheduler.milestones=[3, 6]",
                                 "trainer.devices=[0, 1]", "data.options={images_per_class: 5}"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert yaml.safe_load(path.read_text())["model"]["head_dims"] == [64, 32]


def test_hash_is_stable_and_sensitive(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "trainer:\n  seed: 1\n  max_epochs: 4\noptim:\n  lr: 0.01\n")
    b = _write(tmp_path / "b.yaml", "optim:\n  lr: 1.0e-2\ntrainer:\n  max_epochs: 4\n  seed: 1\n")
    assert config_hash(load_config(a)) == config_hash(load_config(b))
    assert config_hash(load_config(a)) != config_hash(load_config(a, ["trainer.seed=2"]))
    assert len(config_hash(Config())) == 16 and len(config_hash(Config(), length=64)) == 64
    # Same digest in a fresh interpreter with a different string-hash seed.
    code = "from dynametric.config import Config, config_hash; print(config_hash(Config()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "",  # the same source tree as this process
                              "PYTHONPATH": str(Path(dynametric.__file__).parents[1])}).stdout.strip()
    assert out == config_hash(Config())


def _folder_name(text: str) -> bool:
    """A run.name the schema takes: not blank, not . or .., on one line (odd text still comes in loss.kwargs)."""
    return bool(text.strip()) and text not in (".", "..") and \
        not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


_override_values = st.fixed_dictionaries({
    "trainer.max_epochs": st.integers(1, 1000),
    "trainer.seed": st.integers(0, 2**31),
    "optim.lr": st.floats(0, 10, allow_nan=False),
    "model.embedding_dim": st.one_of(st.none(), st.integers(1, 4096)),
    "model.pooling": st.sampled_from(["avg", "max", "avgmax", "catavgmax"]),
    "loss.kwargs": st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                                   st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                                             st.booleans(), st.none()), max_size=3),
    "run.name": st.one_of(st.none(), st.text(min_size=1, max_size=10).filter(_folder_name)),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=_override_values)
def test_round_trip_property(values: dict, tmp_path: Path) -> None:
    raw: dict = {}
    for dotted, value in values.items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})[key] = value
    cfg = config_from_dict(raw)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_to_dict(again) == config_to_dict(cfg)


class _Loss:
    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.1) -> None:
        if margin < 0:
            raise ValueError("margin must be >= 0")
        self.args = (num_classes, embedding_size, margin)


class _Miner:
    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = epsilon


LOSSES = {"ProxyLoss": _Loss}
MINERS = {"EpsMiner": _Miner}


def _stand_in(*overrides: str, loss: str = "ProxyLoss", miner: str = "EpsMiner", **kwargs: object) -> Config:
    """A config naming the stand-in registries' classes (built directly: load_config checks the names against the
    real registries)."""
    cfg = load_config(overrides=list(overrides))
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, name=loss, kwargs={**cfg.loss.kwargs, **kwargs}),
                               miner=MinerConfig(miner, dict(cfg.miner.kwargs) if cfg.miner else {}))


def test_component_validation_with_stand_in_registries() -> None:
    cfg = _stand_in("loss.kwargs.margin=0.3", "model.embedding_dim=64")
    built = validate_components(cfg, losses=LOSSES, miners=MINERS, data_args={"num_classes": 10})
    assert built["loss"].args == (10, 64, 0.3) and built["miner"].epsilon == 0.1
    # Without the data, a loss needing num_classes is checked by name and keywords only.
    assert validate_components(cfg, losses=LOSSES, miners=MINERS)["loss"] is None
    bad = [(_stand_in(marign=0.3), "loss.kwargs.marign", "did you mean 'margin'"),
           (_stand_in(loss="ProxyLos"), "loss.name", "did you mean 'ProxyLoss'"),
           (_stand_in(margin=-1), "loss.kwargs.margin", "margin must be >= 0"),  # the one argument it names
           (_stand_in("miner.name=MultiSimilarityMiner", "miner.kwargs.eps=1"), "miner.kwargs.eps",
            "did you mean 'epsilon'")]
    for bad_cfg, key, hint in bad:
        with pytest.raises(ConfigError) as info:
            validate_components(bad_cfg, losses=LOSSES, miners=MINERS, data_args={"num_classes": 3})
        assert info.value.key == key and hint in str(info.value)


@pytest.mark.parametrize(("override", "key", "hint"), [
    ("loss.name=TripletMarginLos", "loss.name", "did you mean 'TripletMarginLoss'"),
    ("miner.name=MultiSimilarityMiners", "miner.name", "did you mean 'MultiSimilarityMiner'"),
    ("extra_losses=[{name: MarginLoss, miner: {name: NoMiner}}]", "extra_losses[0].miner.name",
     "expected one of the native miners: "),
    ("extra_losses=[{name: Margin}]", "extra_losses[0].name", "did you mean 'MarginLoss'"),
])
def test_loss_and_miner_names_are_checked_when_the_config_loads(tmp_path: Path, override: str, key: str,
                                                                 hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.key == key and hint in str(info.value) and info.value.file == "<command line>"
    path = _write(tmp_path / "c.yaml", "trainer:\n  max_epochs: 2\nloss:\n  name: TripletLoss\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("loss.name", 4) and "TripletMarginLoss" in str(info.value)


@pytest.mark.parametrize("name", ["CSLLoss", "MultiScaleLoss"])
def test_multiscale_on_a_loss_that_reads_every_scale_itself_is_refused_when_the_config_loads(tmp_path: Path,
                                                                                             name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[f"loss.name={name}", "loss.multiscale=true"])
    assert (info.value.file, info.value.key) == ("<command line>", "loss.multiscale")
    assert info.value.message == (f"{name} is multi-scale by itself (it reads every label column); loss.multiscale "
                                  "must be false")
    path = _write(tmp_path / "c.yaml", "extra_losses:\n  - name: CSLLoss\n    multiscale: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("extra_losses[0].multiscale", 3)
    assert info.value.message.endswith("extra_losses[0].multiscale must be false")
    assert load_config(overrides=["loss.name=CSLLoss"]).loss.multiscale is False


def test_build_component_rekeys_input_errors() -> None:
    from dynametric.errors import InputError

    class Strict:
        def __init__(self, mode: str = "a") -> None:
            raise InputError(f"mode must be 'a', got {mode!r}", key="mode")

    with pytest.raises(ConfigError) as info:
        build_component({"Strict": Strict}, "Strict", {"mode": "b"}, "extra_losses[1]")
    assert info.value.key == "extra_losses[1].kwargs.mode"


def test_real_registries_validate_the_default_and_a_distance_spec() -> None:
    built = validate_components(load_config(overrides=["loss.kwargs.distance=cosine"]))
    assert type(built["loss"]).__name__ == "TripletMarginLoss"
    with pytest.raises(ConfigError) as info:
        validate_components(load_config(overrides=["loss.kwargs.distance=cosin"]))
    assert info.value.key == "loss.kwargs.distance"


def test_every_schema_key_is_documented() -> None:
    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    missing = [k for k in schema_keys() if f"`{k}`" not in doc]
    assert not missing, f"keys missing from docs/config.md: {missing}"


def test_schema_keys_cover_nested_sections() -> None:
    keys = schema_keys()
    assert "optim.scheduler.milestones" in keys and "miner.kwargs" in keys and "extra_losses.miner.name" in keys
    assert len(keys) == len(set(keys))
    assert all(dataclasses.is_dataclass(v) for v in (Config().data, Config().optim.scheduler))


def test_a_miner_needs_a_name() -> None:
    with pytest.raises(ConfigError, match="missing required key") as info:
        load_config(overrides=["miner.kwargs.epsilon=0.1"])
    assert info.value.key == "miner.name"


def test_a_typo_in_any_key_suggests_that_key() -> None:
    checked = 0
    for key in schema_keys():
        parent, _, leaf = key.rpartition(".")
        if not parent or len(leaf) < 4 or parent.startswith(("miner", "extra_losses")):
            continue
        typo = leaf[:-2] + leaf[-1]
        with pytest.raises(ConfigError) as info:
            load_config(overrides=[f"{parent}.{typo}=1"])
        assert info.value.key == f"{parent}.{typo}" and f"did you mean '{key}'?" in str(info.value)
        checked += 1
    assert checked > 60


@pytest.mark.parametrize("override, hint", [("data.format=cub", "did you mean 'cub200'"),
                                            ("data.transform=realitycheck", "did you mean 'reality_check'"),
                                            ("data.sampler=m_per_clas", "did you mean 'm_per_class'")])
def test_data_names_are_checked_against_the_data_registries(override: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.key == override.split("=")[0] and hint in str(info.value)


def test_yaml_file_exponent_floats_and_int_precision(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "optim:\n  lr: 1e-5\n  weight_decay: 4E-4\ntrainer:\n  precision: 32\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-5 and cfg.optim.weight_decay == 4e-4 and cfg.trainer.precision == "32"


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "dup.yaml", "optim:\n  lr: 0.1\n  name: sgd\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="duplicate key") as info:
        load_config(path)
    assert (info.value.key, info.value.line) == ("optim.lr", 4)


def test_distance_names_become_distance_objects_in_any_component() -> None:
    from dynametric.distances import CosineSimilarity, LpDistance

    class WithDistance:
        def __init__(self, distance: object = None) -> None:
            self.distance = distance

    built = build_component({"W": WithDistance}, "W", {"distance": "cosine"}, "loss")
    assert isinstance(built.distance, CosineSimilarity)
    built = build_component({"W": WithDistance}, "W", {"distance": {"name": "LpDistance", "p": 1}}, "miner")
    assert isinstance(built.distance, LpDistance) and built.distance.p == 1
    with pytest.raises(ConfigError) as info:
        build_component({"W": WithDistance}, "W", {"distance": "cosin"}, "extra_losses[0]")
    assert info.value.key == "extra_losses[0].kwargs.distance"


def test_an_extra_loss_needs_a_name() -> None:
    with pytest.raises(ConfigError, match="missing required key") as info:
        load_config(overrides=["model.num_heads=2", "extra_losses=[{head: shared}]"])
    assert info.value.key == "extra_losses[0].name"


def test_strings_with_unicode_line_breaks_round_trip(tmp_path):
    # found by the round-trip property: PyYAML folds a NEL (U+0085) in a single-quoted scalar into a space
    kwargs = {"a": "\x85", "b": "x\x85y", "c": "p\u2028q\u2029", "d": "plain", "e": "0E0"}
    # (a string key of the schema: run.name refuses line breaks, a folder name is on one line)
    cfg = config_from_dict({"loss": {"kwargs": kwargs}, "run": {"output_dir": "runs\x85one"}})
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again.loss.kwargs == kwargs and again.run.output_dir == "runs\x85one"
    assert config_hash(again) == config_hash(cfg)


def test_accelerator_and_strategy_are_the_names_lightning_accepts(tmp_path: Path) -> None:
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", "trainer:\n  max_epochs: 2\n  accelerator: banana\n"))
    err = info.value
    assert (err.key, err.line, Path(str(err.file)).name) == ("trainer.accelerator", 3, "c.yaml")
    assert err.message.startswith("unknown accelerator 'banana'; expected one of auto, gpu, ")
    assert all(name in err.message for name in AcceleratorRegistry.available_accelerators())
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["trainer.strategy=ddpp"])
    err = info.value
    assert err.key == "trainer.strategy" and err.message.startswith("unknown strategy 'ddpp'; expected one of auto, ")
    assert all(name in err.message for name in StrategyRegistry.available_strategies())
    assert err.message.endswith("did you mean 'ddp'?") and "\n" not in str(err)
    cfg = load_config(overrides=["trainer.accelerator=CPU", "trainer.strategy=DDP_Find_Unused_Parameters_True"])
    assert (cfg.trainer.accelerator, cfg.trainer.strategy) == ("cpu", "ddp_find_unused_parameters_true")


def test_a_gpu_config_loads_on_a_machine_without_one(monkeypatch) -> None:
    """Whether this machine can run the trainer is checked when training starts, not when a config loads:
    `evaluate --checkpoint` of a GPU run reads its config.yaml on a laptop."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(overrides=["trainer.accelerator=cuda", "trainer.precision=16-mixed", "trainer.strategy=ddp"])
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("cuda", "16-mixed")


def test_workers_auto_in_any_case_in_the_config_as_on_the_command_line() -> None:
    from dynametric.commands.options import _workers

    for text in ("AUTO", "Auto", " auto "):
        assert load_config(overrides=[f"data.workers={text}"]).data.workers == "auto"
        assert _workers(text) == "auto"
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["data.workers=many"])
    assert info.value.key == "data.workers"
    assert "expected an integer from 0 to 128 or 'auto', got 'many'" in str(info.value)


def test_workers_have_one_range_in_the_config_the_flags_and_the_library(capsys) -> None:
    """data.workers, every command's --workers (and data inspect's decoding threads) and InferenceOptions.workers
    accept 0 to MAX_WORKERS (128) or auto, and refuse more with one line naming the key or flag, the value and the
    range (100000 was accepted everywhere)."""
    from dynametric.cli import main
    from dynametric.commands.options import _workers
    from dynametric.engine.inference import InferenceOptions
    from dynametric.utils.device import MAX_WORKERS

    assert MAX_WORKERS == 128
    assert load_config(overrides=["data.workers=128"]).data.workers == 128 and _workers("128") == 128
    assert load_config(overrides=["data.workers=0"]).data.workers == 0 and _workers("auto") == "auto"
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["data.workers=100000"])
    assert info.value.key == "data.workers"
    assert info.value.message == "expected an integer from 0 to 128 or 'auto', got 100000"
    with pytest.raises(ConfigError, match=r"^key 'workers': expected an integer from 0 to 128 or 'auto', got 129$"):
        InferenceOptions(device="cpu", workers=129).resolve()
    for argv in (["evaluate", "--checkpoint", "c.ckpt"], ["embed", "--checkpoint", "c", "--images", "d", "--out", "o"],
                 ["search", "--index", "i", "--image", "q.png"]):
        assert main([*argv, "--workers", "100000"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
            "error: argument --workers: expected an integer from 0 to 128 or 'auto', got 100000")
    assert main(["data", "inspect", "--format", "synthetic", "--workers", "129"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dynametric data inspect: error: argument --workers: expected an integer from 0 to 128, got 129")


@pytest.mark.parametrize("spelling,policy", [("exclude", "exclude"), ("count_as_zero", "count_as_zero"),
                                             ("zero", "count_as_zero")])
def test_eval_empty_queries_takes_the_evaluation_spelling_and_the_old_one(spelling, policy):
    """eval.empty_queries accepts count_as_zero, the spelling of evaluate_embeddings and `--empty-queries`, and
    still the older zero; the run hands evaluate_embeddings the policy, which changes what an empty query counts."""
    import numpy as np

    from dynametric.engine.builders import eval_kwargs
    from dynametric.metrics import evaluate_embeddings

    cfg = load_config(overrides=[f"eval.empty_queries={spelling}"])
    assert cfg.eval.empty_queries == spelling
    kwargs = eval_kwargs(cfg)
    assert kwargs["empty_queries"] == policy
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 0, 1])  # item 2 is alone in its class: a query without a relevant item
    fine = evaluate_embeddings(emb, labels, metrics=["recall@1"], k_values=(1,),
                               empty_queries=kwargs["empty_queries"])["fine"]
    assert fine["empty_queries"] == 1
    assert fine["excluded_queries"] == (1 if policy == "exclude" else 0)
    assert fine["recall@1"] == pytest.approx(1.0 if policy == "exclude" else 2 / 3)


def test_eval_empty_queries_rejects_other_spellings():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["eval.empty_queries=count_as_0"])
    assert info.value.key == "eval.empty_queries"
    assert "'exclude', 'count_as_zero', 'zero'" in str(info.value) and "did you mean 'count_as_zero'" in str(info.value)


def test_schema_default_is_the_default_config_s_value_of_every_key() -> None:
    defaults = config_to_dict(Config())
    checked = 0
    for key in schema_keys():
        node: object = defaults
        for name in key.split("."):
            node = node.get(name, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:  # inside an optional section that is None by default (miner) or a list (extra_losses)
            continue
        assert schema_default(key) == node, key
        checked += 1
    assert checked > 60
    assert schema_default("trainer") == dataclasses.asdict(Config().trainer)
    assert schema_default("extra_losses[0].weight") == 1.0  # an element of a list of sections
    assert schema_default("extra_losses[1].miner.kwargs") == {}
    assert schema_default("miner.kwargs") == {}  # an optional section's value


@pytest.mark.parametrize("key", ["nope", "trainer.nope", "trainer.max_epochs.x", "loss.kwargs.margin",
                                 "data.options.images_per_class", "miner.name", "extra_losses[0].name",
                                 "extra_losses[0]", "extra_losses.weight", "extra_losses[x].weight",
                                 "trainer[0].seed"])
def test_schema_default_refuses_what_is_no_key_with_a_default(key: str) -> None:
    """Not in the schema, inside a free mapping, required (no default), or a list element as a whole."""
    with pytest.raises(KeyError):
        schema_default(key)


@pytest.mark.parametrize("data, expected", [
    # bytes that are not UTF-8: was "not a UTF-8 YAML file (invalid continuation byte at byte 36)"
    (b"trainer:\r\n  max_epochs: 3\r\n  seed: caf\xe9\r\n",
     ":3: not a UTF-8 YAML file: byte 0xe9 at column 12 cannot be decoded (save the file as UTF-8)"),
    (b"\xef\xbb\xbftrainer:\n  seed: \xff\n", ":2: not a UTF-8 YAML file: byte 0xff at column 9 cannot be decoded"),
    # syntax errors: were the line without the column
    (b"trainer:\n  max_epochs: [1, 2\n  seed: 3\n", ":3: invalid YAML at column 7: expected ',' or ']', but got ':'"),
    (b"trainer:\n  max_epochs: 3\n   seed: 3\n", ":3: invalid YAML at column 8: mapping values are not allowed here"),
    # a character YAML refuses: was two lines ending 'in "<unicode string>", position 25', with no line
    (b"run:\n  name: \"a\x01b\"\n", ":2: invalid YAML at column 11: character U+0001 is not allowed in YAML (it is "
                                    "not printable)"),
    # line ends as YAML counts them: CR only (old Mac files; was line 1, column 31), NEL, \u2028, CR LF
    (b"data:\r  m: 4\r  batch_size: 16 \x07\r", ":3: invalid YAML at column 18: character U+0007 is not allowed"),
    (b"# a\xc2\x85# b\xe2\x80\xa8run:\r\n  name: \"a\x01b\"\r\n", ":4: invalid YAML at column 11: character U+0001"),
    (b"data:\r  m: 4\r  # caf\xe9\r", ":3: not a UTF-8 YAML file: byte 0xe9 at column 8 cannot be decoded"),
    # a value PyYAML cannot construct: was no line at all (a plain 2020-13-45 is a string under YAML 1.2: the
    # explicit tag asks for a date)
    (b"run:\n  name: x\n  output_dir: !!timestamp 2020-13-45\n",
     ":3: invalid YAML value '2020-13-45' at column 15 (ValueError: month must be in 1..12)"),
    (b"trainer:\n  max_epochs: !!int 1:30\n",
     ":2: invalid YAML at column 15: '1:30' is not a YAML 1.2 integer (decimal digits, 0o octal or 0x hexadecimal)"),
])
def test_a_config_file_that_is_not_yaml_is_named_by_line_and_column(tmp_path: Path, data: bytes,
                                                                     expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}{expected}")
    assert "\n" not in str(info.value) and "byte 3" not in str(info.value)


# ----------------------------------------------------------------------- a component's name and its options

DEFAULT_RUN = ROOT / "src" / "dynametric" / "configs" / "default_run.yaml"


def _notes(cfg: Config) -> list[str]:
    from dynametric.config.loader import config_notes

    return config_notes(cfg)


def test_changing_a_name_on_the_command_line_drops_the_options_written_for_the_other_component() -> None:
    """`train loss.name=ArcFaceLoss` kept the default run's `loss.kwargs: {margin: 0.1}` (an ArcFace margin of 0.1
    degrees, without a word). The options a lower layer wrote are dropped when a higher one changes the name alone,
    and a note says so; the options the command line gives are kept; the same name again keeps them all."""
    cfg = load_config(DEFAULT_RUN, ["loss.name=ArcFaceLoss"])
    assert (cfg.loss.name, cfg.loss.kwargs, cfg.loss.multiscale) == ("ArcFaceLoss", {}, True)
    assert _notes(cfg) == [f"loss.kwargs {{margin: 0.1}} from {DEFAULT_RUN.resolve()}:13 not used: loss.name changed "
                           "on the command line (TripletMarginLoss -> ArcFaceLoss); set loss.kwargs where loss.name "
                           "is set to give ArcFaceLoss options"]
    # the command line's own options are kept, before or after the name, whole or key by key
    for overrides, kwargs in ((["loss.name=ArcFaceLoss", "loss.kwargs.scale=30"], {"scale": 30}),
                              (["loss.kwargs.scale=30", "loss.name=ArcFaceLoss"], {"scale": 30}),
                              (["loss.name=ArcFaceLoss", "loss.kwargs={margin: 28.6}"], {"margin": 28.6})):
        cfg = load_config(DEFAULT_RUN, overrides)
        assert cfg.loss.kwargs == kwargs
        assert len(_notes(cfg)) == ("margin" not in kwargs)  # a margin given again replaces the file's: nothing lost
    for overrides in (["loss.name=TripletMarginLoss"], ["loss.name=MarginLoss", "loss.name=TripletMarginLoss"],
                      ["loss.multiscale=false"]):
        cfg = load_config(DEFAULT_RUN, overrides)
        assert cfg.loss.kwargs == {"margin": 0.1} and _notes(cfg) == []


def test_every_name_and_options_pair_of_the_schema_follows_the_rule(tmp_path: Path) -> None:
    from dynametric.config.schema import (
        DataConfig,
        LossConfig,
        MethodConfig,
        ModelConfig,
        OptimConfig,
        RunConfig,
        named_options,
    )

    assert {(cls.__name__, pair) for cls in (DataConfig, ModelConfig, LossConfig, ExtraLossConfig, MinerConfig,
                                             OptimConfig, MethodConfig, RunConfig) for pair in named_options(cls)} == {
        ("DataConfig", ("format", "options")), ("DataConfig", ("sampler", "sampler_options")),
        ("ModelConfig", ("backbone", "backbone_kwargs")), ("LossConfig", ("name", "kwargs")),
        ("ExtraLossConfig", ("name", "kwargs")), ("MinerConfig", ("name", "kwargs")),
        ("OptimConfig", ("name", "kwargs")), ("MethodConfig", ("name", "kwargs")),
        ("RunConfig", ("logger", "logger_options"))}
    base = _write(tmp_path / "base.yaml", """\
data: {sampler: hierarchical, sampler_options: {coarse_per_batch: 2}, options: {images_per_class: 4}}
model: {backbone: simple_cnn, backbone_kwargs: {width: 8}}
miner: {name: TripletMarginMiner, kwargs: {margin: 0.3}}
optim: {name: sgd, kwargs: {nesterov: true}}
run: {logger: csv, logger_options: {flush_logs_every_n_steps: 10}}
extra_losses:
  - {name: MarginLoss, kwargs: {beta: 1.2}, miner: {name: DistanceWeightedMiner, kwargs: {cutoff: 0.5}}}
""")
    cfg = load_config(base, ["data.sampler=m_per_class", "data.format=synthetic", "model.backbone=resnet18",
                             "miner.name=BatchHardMiner", "optim.name=adamw", "run.logger=tensorboard",
                             "extra_losses[0].name=ContrastiveLoss", "extra_losses[0].miner.name=BatchHardMiner"])
    assert (cfg.data.sampler_options, cfg.model.backbone_kwargs, cfg.miner.kwargs, cfg.optim.kwargs,
            cfg.run.logger_options, cfg.extra_losses[0].kwargs, cfg.extra_losses[0].miner.kwargs) == ({},) * 7
    assert cfg.data.options == {"images_per_class": 4}  # data.format set again to its value: kept
    assert [n.split(" not used: ")[1].split(" changed")[0] for n in _notes(cfg)] == [
        "data.sampler", "model.backbone", "miner.name", "optim.name", "run.logger", "extra_losses[0].name",
        "extra_losses[0].miner.name"]
    assert _notes(cfg)[0].startswith(f"data.sampler_options {{coarse_per_batch: 2}} from {base}:1 not used: ")


def test_a_file_that_changes_a_name_drops_the_options_of_the_files_it_extends(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.yaml", "loss:\n  name: TripletMarginLoss\n  kwargs:\n    margin: 0.1\n"
                                          "    swap: true\nmodel:\n  backbone_kwargs: {width: 8}\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nloss:\n  name: MarginLoss\n  kwargs:\n"
                                            "    beta: 1.2\n")
    cfg = load_config(child)
    assert cfg.loss.kwargs == {"beta": 1.2} and cfg.model.backbone_kwargs == {"width": 8}  # no deep merge of kwargs
    assert _notes(cfg) == [f"loss.kwargs {{margin: 0.1, swap: true}} from {base}:4 not used: loss.name changed in "
                           f"{child}:3 (TripletMarginLoss -> MarginLoss); set loss.kwargs where loss.name is set to "
                           "give MarginLoss options"]
    # a second parent over the first is a layer too; the same name again keeps the options
    _write(tmp_path / "other.yaml", "model: {backbone: resnet18}\nloss: {name: TripletMarginLoss}\n")
    cfg = load_config(_write(tmp_path / "both.yaml", "extends: [base.yaml, other.yaml]\n"))
    assert cfg.model.backbone_kwargs == {} and cfg.loss.kwargs == {"margin": 0.1, "swap": True}
    assert [n.split(" not used")[0] for n in _notes(cfg)] == [f"model.backbone_kwargs {{width: 8}} from {base}:7"]


def test_options_kept_or_given_after_a_name_change_still_name_their_file_and_line(tmp_path: Path) -> None:
    """An error about a keyword names where it was set: the file that changed the name and wrote it, the command
    line, or (same name) the lower file; a dropped keyword is no longer located in the file that wrote it."""
    from dynametric.config import errors_located

    base = _write(tmp_path / "base.yaml", "loss:\n  name: TripletMarginLoss\n  kwargs: {margn: 0.1}\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nloss:\n  name: MarginLoss\n  kwargs:\n"
                                            "    betta: 1.2\n")

    def error(cfg: Config) -> str:
        with pytest.raises(ConfigError) as err, errors_located(cfg):
            validate_components(cfg)
        return str(err.value)

    assert error(load_config(child)) == (f"{child}:5 key 'loss.kwargs.betta': MarginLoss has no argument 'betta'; "
                                         "did you mean 'beta'?")
    assert error(load_config(base, ["loss.name=TripletMarginLoss"])).startswith(f"{base}:3 key 'loss.kwargs.margn'")
    assert error(load_config(base, ["loss.name=MarginLoss", "loss.kwargs.alpha=1"])).startswith(
        "<command line> key 'loss.kwargs.alpha': MarginLoss has no argument 'alpha'; its arguments: ")
    assert error(load_config(base, ["loss.name=MarginLoss", "loss.kwargs.alpha=1"])).endswith(
        "(remove loss.kwargs.alpha, or clear them all with loss.kwargs={})")
    validate_components(load_config(base, ["loss.name=MarginLoss"]))  # margn went with the name it was written for


@pytest.mark.parametrize("overrides, expected", [
    (["loss.name=ContrastiveLoss", "loss.kwargs={distance:l2}"],
     "key 'loss.kwargs.distance:l2': ContrastiveLoss has no argument 'distance:l2'; a YAML mapping needs a space "
     "after ':' (did you mean `distance: l2`?); 'distance' is one of its arguments"),
    pml_case(["loss.name=pml:TripletMarginLoss", "loss.kwargs={distance:l2}"],  # PML's own TypeError was passed on
             "key 'loss.kwargs.distance:l2': pml:TripletMarginLoss has no argument 'distance:l2'; a YAML mapping "
             "needs a space after ':' (did you mean `distance: l2`?)"),
    pml_case(["miner.name=pml:TripletMarginMiner", "miner.kwargs={margin:0.1}"],
             "key 'miner.kwargs.margin:0.1': pml:TripletMarginMiner has no argument 'margin:0.1'; a YAML mapping "
             "needs a space after ':' (did you mean `margin: 0.1`?)"),
])
def test_a_flow_mapping_without_a_space_after_the_colon_is_named(overrides, expected) -> None:
    # `{distance:l2}` is valid YAML for one key named 'distance:l2' with no value
    from dynametric.config import errors_located

    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError) as err, errors_located(cfg):
        validate_components(cfg)
    assert str(err.value).startswith(f"<command line> {expected}")


def test_train_prints_the_note_in_the_dry_run_and_the_run(tmp_path: Path, capsys) -> None:
    from dynametric.cli import main
    from dynametric.commands.train import DEFAULT_RUN_CONFIG  # the installed package's file (CI installs a copy)
    from dynametric.pipeline import run_training

    assert main(["train", "--dry-run", "loss.name=MarginLoss", "data.batch_size=16", "data.options={images_per_class: "
                 "4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert err[0] == (f"note: loss.kwargs {{margin: 0.1}} from {DEFAULT_RUN_CONFIG}:13 not used: loss.name changed "
                      "on the command line (TripletMarginLoss -> MarginLoss); set loss.kwargs where loss.name is set "
                      "to give MarginLoss options")
    assert "  kwargs: {}" in out[out.index("loss:") + 2]
    lines: list[str] = []
    (tmp_path / "last.ckpt").write_bytes(b"")  # the run stops at its folder check, after its first lines
    with pytest.raises(ConfigError, match="already holds a run"):
        run_training(load_config(DEFAULT_RUN_CONFIG, ["loss.name=MarginLoss"]), tmp_path, log=lines.append)
    assert lines == [err[0]]


def test_overrides_given_as_one_string_are_refused_not_read_letter_by_letter() -> None:
    """``load_config(path, overrides)`` takes a list of 'key=value' strings (as the docs write it); one string was
    iterated letter by letter (``got 'a'``)."""
    with pytest.raises(ConfigError) as err:
        load_config(None, "optim.lr=1e-4")
    assert err.value.key == "overrides"
    assert str(err.value) == ("key 'overrides': expected a list of 'key=value' strings, got the string "
                              "'optim.lr=1e-4'; write ['optim.lr=1e-4']")
    with pytest.raises(ConfigError, match=r"^key 'overrides': .* got the string 'optim.lr=1e-4 trainer.max_epochs=2'; "
                                          r"write \['optim.lr=1e-4', 'trainer.max_epochs=2'\]$"):
        load_config(None, "optim.lr=1e-4 trainer.max_epochs=2")
    with pytest.raises(ConfigError, match=r"^key 'overrides\[1\]': expected a 'key=value' string, got 3 \(int\)$"):
        load_config(None, ["optim.lr=1e-4", 3])
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert load_config(None, ("optim.lr=1e-4",)).optim.lr == 1e-4


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_non_finite_loss_hyperparameter_is_refused_when_the_config_loads(tmp_path: Path, value: str) -> None:
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}[value]
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"loss.kwargs.margin={value}"])
    assert err.value.key == "loss.kwargs.margin"
    assert str(err.value) == (f"<command line> key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number "
                              f"for margin, got {shown} (float)")
    config = tmp_path / "c.yaml"
    config.write_text(f"extra_losses:\n  - name: ContrastiveLoss\n    kwargs:\n      neg_margin: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{config}:4 key 'extra_losses\[0\].kwargs.neg_margin': ContrastiveLoss: "
                                          rf"expected a finite number for neg_margin, got {shown} \(float\)$"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"key 'loss.kwargs.margin': TripletMarginLoss: expected a number for "
                                          r"margin, got 'x' \(str\)$"):
        load_config(None, ["loss.kwargs.margin=x"])
    assert load_config(None, ["loss.kwargs.margin=0.3"]).loss.kwargs == {"margin": 0.3}


def test_a_config_changed_or_built_in_python_is_checked_again_by_the_run_and_its_dry_run(tmp_path: Path) -> None:
    """The dataclasses check nothing when built or assigned: a weight decay of -1 set after loading, or a Config
    built with one, reached the optimizer unchecked (the run trained with it). The run and the dry run refuse it as
    the loader does, keyed, with no file line (the file did not set that value); a config that passes is left as
    it was."""
    from dynametric.config import Config, OptimConfig, check_config
    from dynametric.pipeline.dryrun import dry_run
    from dynametric.pipeline.run import run_training

    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  weight_decay: 0.001\n")
    changed = load_config(config)
    changed.optim.weight_decay = -1.0
    expected = "key 'optim.weight_decay': weight decay must be a finite number >= 0, got -1.0"
    for call in (lambda: dry_run(changed, log=lambda _: None), lambda: run_training(changed, tmp_path / "run"),
                 lambda: check_config(Config(optim=OptimConfig(weight_decay=-1.0)))):
        with pytest.raises(ConfigError) as err:
            call()
        assert (str(err.value), err.value.key) == (expected, "optim.weight_decay")
    assert not (tmp_path / "run").exists()
    changed.loss.kwargs["margin"] = "big"
    changed.optim.weight_decay = 0.0
    with pytest.raises(ConfigError, match=r"^key 'loss.kwargs.margin': TripletMarginLoss: expected a number for "
                                          r"margin, got 'big' \(str\)$"):
        check_config(changed)
    fine = load_config(config)
    before = dataclasses.asdict(fine)
    check_config(fine)
    assert dataclasses.asdict(fine) == before
    with pytest.raises(ConfigError, match=r"^key 'cfg': expected a dynametric.config.Config, got dict$"):
        check_config({"optim": {}})  # type: ignore[arg-type]
