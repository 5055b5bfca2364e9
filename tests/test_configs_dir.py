"""Every YAML under configs/ loads, validates (schema and component construction) and documents its target."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.config import Config, config_hash, load_config
from dynametric.engine.builders import validate_components

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
PACKAGED = sorted((ROOT / "src" / "dynametric" / "configs").rglob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    for protocol in ("roth2020", "reality_check"):
        for dataset in ("cub", "cars", "sop", "inshop"):
            assert f"{protocol}/{dataset}.yaml" in names
    assert "synthetic.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_file_validates(path: Path) -> None:
    cfg = load_config(path)
    # num_classes stands in for the dataset (losses with proxies need it); class_paths-only losses are checked by
    # name and keyword arguments.
    built = validate_components(cfg, data_args={"num_classes": 8})
    assert "loss" in built
    assert len(config_hash(cfg)) == 16


def _file_keys(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Every dotted key of a loaded YAML mapping (sections and leaves) with its value."""
    keys: dict[str, object] = {}
    for name, value in mapping.items():
        keys[prefix + name] = value
        if isinstance(value, dict):
            keys |= _file_keys(value, f"{prefix}{name}.")
    return keys


def test_synthetic_yaml_is_the_default() -> None:
    assert load_config(ROOT / "configs" / "synthetic.yaml") == Config()


def test_synthetic_yaml_writes_out_every_key() -> None:
    """Its header says it holds every key at its default: a key left out loads to the same Config (the default
    fills it in), so equality alone would not notice; the file's keys must be the schema's, but for the keys inside
    a section the defaults leave empty (``miner: null``, ``extra_losses: []``)."""
    import yaml

    from dynametric.config.schema import schema_keys

    written = _file_keys(yaml.safe_load((ROOT / "configs" / "synthetic.yaml").read_text(encoding="utf-8")))
    empty = [key for key, value in written.items() if value is None or value == []]
    expected = {key for key in schema_keys() if not any(key.startswith(f"{e}.") for e in empty)}
    assert sorted(expected - set(written)) == [], "configs/synthetic.yaml lacks these keys"
    assert sorted(set(written) - expected) == []
    assert "data.val_carve_scale" in written


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in ("roth2020", "reality_check")
                                  and not p.name.startswith("_")], ids=lambda p: p.stem)
def test_protocol_configs_state_their_published_target(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "Published" in text and "extends: _base.yaml" in text
    cfg = load_config(path)
    assert cfg.data.format in ("cub200", "cars196", "sop", "inshop") and cfg.data.root
    assert cfg.model.freeze_bn and cfg.model.embedding_dim == 128
    # Model selection never uses the test split.
    assert cfg.data.val_split is None and (cfg.data.val_fraction > 0 or cfg.data.val_folds)
    if cfg.data.format == "inshop":
        assert cfg.eval.protocol == "query_gallery" and cfg.eval.k_values[:2] == [1, 10]
    elif path.parent.name == "reality_check":
        assert cfg.trainer.monitor == "finest/map@r" and {"r_precision", "map@r"} <= set(cfg.eval.metrics or [])
        assert cfg.data.val_folds == 4 and cfg.data.batch_size == 32 and cfg.data.m == 4
    elif cfg.data.format == "sop":
        assert cfg.eval.k_values[:2] == [1, 10]
    else:
        assert cfg.eval.k_values == [1, 2, 4, 8] and cfg.data.batch_size == 112 and cfg.data.m == 2
    if path.parent.name == "roth2020":  # margin loss with one global learnable beta, its own learning rate
        loss = validate_components(cfg, data_args={"num_classes": 8})["loss"]
        assert [p.numel() for p in loss.parameters()] == [1] and cfg.optim.group_lr("loss") == 5e-4


def test_cli_default_run_is_packaged_and_hierarchy_aware() -> None:
    from dynametric.commands.train import DEFAULT_RUN_CONFIG

    assert DEFAULT_RUN_CONFIG.is_file()  # shipped as package data (CI installs the wheel, not the tree)
    cfg = load_config(DEFAULT_RUN_CONFIG)
    assert cfg.data.format == "synthetic" and cfg.loss.multiscale and cfg.loss.kwargs == {"margin": 0.1}
    assert (cfg.data.batch_size, cfg.model.pooling, cfg.trainer.max_epochs) == (96, "max", 20)
    # overrides apply on top of the file, as for any --config file
    assert load_config(DEFAULT_RUN_CONFIG, ["loss.kwargs.margin=0.2"]).loss.multiscale


@pytest.fixture(scope="module")
def real_scale_names(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, ...]]:
    """The scale names each file format's reader gives a training split (read from tiny datasets in that layout)."""
    from dynametric.data import build_dataset
    from tests.data.conftest import write_cars, write_cub, write_dyml, write_inshop, write_sop

    root = tmp_path_factory.mktemp("formats")
    roots = {"cub200": write_cub(root / "cub"), "cars196": write_cars(root / "cars"), "sop": write_sop(root / "sop"),
             "inshop": write_inshop(root / "inshop"), "dyml-vehicle": write_dyml(root / "vehicle", "vehicle"),
             "dyml-animal": write_dyml(root / "animal", "animal"),
             "dyml-product": write_dyml(root / "product", "product")}
    names = {fmt: tuple(build_dataset(fmt, path, "train").scale_names) for fmt, path in roots.items()}
    names["synthetic"] = tuple(build_dataset("synthetic", None, "train", images_per_class=1).scale_names)
    return names


@pytest.mark.parametrize("path", CONFIGS + PACKAGED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_config_dry_runs_against_its_formats_real_scale_names(
        path: Path, tmp_path: Path, real_scale_names: dict[str, tuple[str, ...]]) -> None:
    """The monitor of every shipped config names a scale of its dataset (``finest``/``coarsest`` resolved), and a
    dry run without the data checks it against the names the format's reader gives (not placeholders)."""
    from dynametric.engine.builders import check_monitor
    from dynametric.pipeline.run import dry_run

    cfg = load_config(path)
    names = real_scale_names[cfg.data.format]
    check_monitor(cfg, names)  # e.g. 'fine/recall@1' on SOP (product, category) is refused
    if cfg.data.format != "synthetic":  # no data on disk: the dry run uses the format's own scale names
        cfg = load_config(path, [f"data.root={tmp_path / 'absent'}"])
    out: list[str] = []
    dry_run(cfg, log=out.append)
    shown = next(line for line in out if line.startswith("data: "))
    assert f"scales {list(names)}" in shown, shown
