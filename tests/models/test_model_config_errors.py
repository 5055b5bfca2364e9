"""Model-config errors name the key the user set: a head width of 0 in ``model.head_dims`` (not
``model.embedding_dim``), and ``train --dry-run`` refuses the pretrained requests a real run refuses, without
loading any weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.errors import ConfigError
from dynametric.models import build_embedder
from dynametric.pipeline.run import dry_run
from tests.optional import needs_local_dir_timm

TINY = ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}", "data.options={images_per_class: 2}"]


def test_a_zero_head_width_is_keyed_on_head_dims_where_it_was_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^<command line> key 'model.head_dims\[1\]': expected a positive integer "
                                          r"\(a head's width\) or null, got 0$"):
        load_config(None, ["model.num_heads=2", "model.head_dims=[8, 0]"])
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  embedding_dim: 16\n  head_dims: [0]\n")
    with pytest.raises(ConfigError, match=rf"^{config}:3 key 'model.head_dims\[0\]': "):
        load_config(config)
    with pytest.raises(ConfigError, match=r"^key 'model.head_dims\[0\]': a head's width must be an integer from 1 to "
                                          r"2147483647 or null, got 0$"):
        build_embedder("simple_cnn", head_dims=[0])
    with pytest.raises(ConfigError, match=r"^key 'model.embedding_dim': "):
        build_embedder("simple_cnn", embedding_dim=0)


@pytest.mark.parametrize("dim", [10**20, 2**31])
def test_a_head_width_past_a_c_int_is_refused_keyed_where_it_was_set(dim: int, capsys) -> None:
    # torch sizes a layer with a C int: a wider head ended in a TypeError traceback
    message = f"a head's width must be an integer from 1 to 2147483647 or null, got {dim}"
    with pytest.raises(ConfigError) as info:
        build_embedder("simple_cnn", embedding_dim=dim)
    assert (info.value.key, info.value.message) == ("model.embedding_dim", message)
    with pytest.raises(ConfigError) as info:
        build_embedder("simple_cnn", num_heads=2, head_dims=[8, dim])
    assert (info.value.key, info.value.message) == ("model.head_dims[1]", message)
    assert main(["train", "--dry-run", *TINY, f"model.embedding_dim={dim}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dynametric train: error: <command line> key 'model.embedding_dim': {message}")


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.pretrained=true"],
     r"^<command line> key 'model.pretrained': simple_cnn has no pretrained weights"),
    (["model.backbone=bninception", "model.pretrained=true", "model.in_chans=1", "model.backbone_kwargs={}"],
     r"^<command line> key 'model.in_chans': pretrained BN-Inception weights need in_chans=3$"),
])
def test_the_dry_run_refuses_what_a_real_run_refuses_about_pretrained_weights(overrides: list[str],
                                                                              message: str) -> None:
    cfg = load_config(None, [*TINY, *overrides])
    from dynametric.config import errors_located

    with pytest.raises(ConfigError, match=message), errors_located(cfg):  # as `dynametric train` locates errors
        dry_run(cfg, log=lambda line: None)


@needs_local_dir_timm
def test_the_dry_run_refuses_a_local_dir_without_weights_with_pretrained(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(tmp_path / "src"), safe_serialization=True)
    (tmp_path / "src" / "model.safetensors").unlink()
    cfg = load_config(None, [*TINY, f"model.backbone=local-dir:{tmp_path / 'src'}", "model.backbone_kwargs={}",
                             "model.pretrained=true"])
    with pytest.raises(ConfigError, match=r"key 'model.backbone': model.pretrained is true, but no weight file in "):
        dry_run(cfg, log=lambda line: None)
    with pytest.raises(ConfigError, match=r"key 'model.backbone': model.pretrained is true, but no weight file in "):
        build_embedder(f"local-dir:{tmp_path / 'src'}", pretrained=True)  # the real build: the same line


def test_the_dry_run_prints_the_build_notes() -> None:
    cfg = load_config(None, ["model.backbone=vit_tiny_patch16_224", "model.embedding_dim=8", "model.freeze_bn=true",
                             "model.backbone_kwargs={img_size: 32}", "data.options={images_per_class: 2}"])
    lines: list[str] = []
    dry_run(cfg, log=lines.append)
    assert "note: model.freeze_bn is true, but backbone 'vit_tiny_patch16_224' has no BatchNorm layer: nothing is " \
           "frozen" in lines


@pytest.mark.parametrize("option, instead", [
    ("global_pool", "choose the pooling with model.pooling (build_embedder(pooling=...)): avg, max, avgmax, "
                    "catavgmax or token"),
    ("num_classes", "set their width with model.embedding_dim (build_embedder(embedding_dim=...))"),
    ("in_chans", "use model.in_chans (build_embedder(in_chans=...))"),
    ("pretrained", "use model.pretrained (build_embedder(pretrained=...))"),
])
def test_a_backbone_option_dynametric_sets_itself_names_the_option_to_use(option: str, instead: str) -> None:
    """``backbone_kwargs`` that dynametric passes the backbone itself: one line naming ``backbone_kwargs['<name>']``
    and dynametric's own option (was timm's ``got multiple values for keyword argument 'global_pool'``, or a
    ``TypeError`` traceback for ``in_chans``), from Python and when a run config loads."""
    with pytest.raises(ConfigError) as err:
        build_embedder("resnet18", backbone_kwargs={option: 1})
    assert err.value.key == f"model.backbone_kwargs.{option}"
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"key 'model.backbone_kwargs.{option}': backbone_kwargs[{option!r}] "
                                                 "cannot be given for backbone 'resnet18': ")
    assert line.endswith(instead)
    with pytest.raises(ConfigError, match=rf"^<command line> key 'model.backbone_kwargs.{option}': "
                                          rf"backbone_kwargs\['{option}'\] cannot be given"):
        load_config(None, ["model.backbone=resnet18", f"model.backbone_kwargs={{{option}: 1}}"])


def test_a_dynametric_backbone_keeps_its_own_options() -> None:
    """``global_pool`` / ``num_classes`` are dynametric's only for timm models: simple_cnn says its own options."""
    with pytest.raises(ConfigError, match=r"^key 'model.backbone_kwargs.global_pool': backbone 'simple_cnn' has no "
                                          r"option 'global_pool'; its options: width, depth$"):
        build_embedder("simple_cnn", backbone_kwargs={"global_pool": "avg"})
    assert build_embedder("simple_cnn", embedding_dim=4, backbone_kwargs={"width": 4, "depth": 1}) is not None
