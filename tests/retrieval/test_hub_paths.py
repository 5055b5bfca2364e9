"""``export_run(..., local_paths=False)`` (what ``push_to_hub`` of a run folder uploads) publishes no absolute local
path: every string of the config that is one, at any depth, is shortened to its last component."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynametric.config import load_config, save_config
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import save_checkpoint_file
from dynametric.models import Embedder
from dynametric.models.backbones import SimpleCNN
from dynametric.retrieval.hub import export_run, local_path_name
from tests.optional import needs_local_dir_timm


class _CachedCNN(SimpleCNN):
    """A backbone with a path among its options (as a timm model's cache or weights folder)."""

    def __init__(self, in_chans: int = 3, width: int = 32, depth: int = 4, cache_dir: str | None = None) -> None:
        super().__init__(in_chans=in_chans, width=width, depth=depth)
        self.cache_dir = cache_dir


@pytest.fixture
def cached_cnn(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynametric.models.backbones as backbones

    monkeypatch.setitem(backbones.BACKBONES, "cached_cnn",
                        lambda pretrained, in_chans, **kwargs: _CachedCNN(in_chans=in_chans, **kwargs))
    monkeypatch.setitem(backbones.BACKBONE_OPTIONS, "cached_cnn", _CachedCNN)


def test_export_without_local_paths_publishes_no_absolute_path_anywhere(tmp_path: Path, cached_cnn: None) -> None:
    """data.options, run.logger_options and model.backbone_kwargs kept their absolute paths (only data.root,
    model.pretrained_path and run.output_dir were shortened): `image_root: /tmp/.../secret_images` was in the
    exported config.yaml and the model card."""
    secret = tmp_path / "secret"
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [
        "model.embedding_dim=8", "model.backbone=cached_cnn",
        f"model.backbone_kwargs={{width: 4, depth: 2, cache_dir: {secret}/weights}}",
        f"data.options={{image_root: {secret}/images, extra_roots: [{secret}/more, rel/dir], note: plain}}",
        "run.logger=mlflow",
        f"run.logger_options={{tracking_uri: 'file://{secret}/mlruns', save_dir: {secret}/logs, "
        "artifact_location: 's3://bucket/artifacts', registry_uri: 'https://example.org/reg'}",
        f"run.output_dir={secret}/runs"])
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0},
                         run / "best.ckpt")
    (run / "run_info.json").write_text(json.dumps({"train_images": 9, "validation_source": f"{secret}/val.csv"}))

    kept = export_run(run, tmp_path / "kept")  # the default keeps them: a local copy of the run
    assert str(secret) in (kept / "config.yaml").read_text()
    out = export_run(run, tmp_path / "public", local_paths=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"config.yaml", "README.md", "dynametric.json", "model.safetensors"}
    for p in files:  # no part of the machine's folders in any file, the weights' metadata included
        assert str(tmp_path).encode() not in p.read_bytes(), p.name
    published = load_config(out / "config.yaml")
    assert published.data.options == {"image_root": "images", "extra_roots": ["more", "rel/dir"], "note": "plain"}
    assert published.run.logger_options == {"tracking_uri": "mlruns", "save_dir": "logs",
                                            "artifact_location": "s3://bucket/artifacts",
                                            "registry_uri": "https://example.org/reg"}
    assert published.model.backbone_kwargs == {"width": 4, "depth": 2, "cache_dir": "weights"}
    assert published.run.output_dir == "runs"
    meta = json.loads((out / "dynametric.json").read_text())
    assert meta["model"]["backbone_kwargs"]["cache_dir"] == "weights" and meta["data"]["validation"] == "val.csv"
    loaded = Embedder.from_pretrained(out)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize(("value", "expected"), [
    ("/home/me/data/cars", "cars"), ("/home/me/data/cars/", "cars"), ("~/data/x.csv", "x.csv"),
    ("~me/data", "data"), ("C:\\Users\\me\\data", "data"), ("D:/data/set", "set"), ("\\\\server\\share\\imgs", "imgs"),
    ("file:///home/me/mlruns", "mlruns"), ("file:///C:/Users/me/mlruns", "mlruns"), ("FILE:/srv/runs", "runs"),
    ("file:///home/me/my%20runs", "my runs"), ("local-dir:/home/me/models/vit", "local-dir:vit"),
    ("local-dir:~/vit/", "local-dir:vit"), ("local-dir:rel/vit", "local-dir:rel/vit"),
    ("rel/dir", "rel/dir"), ("plain", "plain"), ("https://example.org/a/b", "https://example.org/a/b"),
    ("s3://bucket/key/x", "s3://bucket/key/x"), ("fine/map@r", "fine/map@r"), ("/", "/"), ("", "")])
def test_local_path_name(value: str, expected: str) -> None:
    assert local_path_name(value) == expected


@needs_local_dir_timm
def test_export_without_local_paths_shortens_a_local_dir_backbone(tmp_path: Path) -> None:
    """A run whose backbone is a timm model folder (``local-dir:/abs/folder``) published that absolute path in
    config.yaml, dynametric.json and the model card; the folder is rebuilt from the timm config it records, so the
    name is shortened as any other path and the published folder still loads, equal, where the source is absent."""
    import shutil

    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=3), str(tmp_path / "src" / "tiny"),
                safe_serialization=True)
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, ["model.embedding_dim=8", f"model.backbone=local-dir:{tmp_path / 'src' / 'tiny'}",
                             "model.backbone_kwargs={}", "model.pretrained=false"])
    save_config(cfg, run / "config.yaml")
    model = build_model(cfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0},
                         run / "best.ckpt")
    assert f"local-dir:{tmp_path}" in (export_run(run, tmp_path / "kept") / "config.yaml").read_text()
    out = export_run(run, tmp_path / "public", local_paths=False)
    for p in (p for p in out.rglob("*") if p.is_file()):
        assert str(tmp_path).encode() not in p.read_bytes(), p.name
    meta = json.loads((out / "dynametric.json").read_text())
    assert meta["model"]["backbone"] == "local-dir:tiny" and meta["backbone_config"]["architecture"] == "test_resnet"
    assert load_config(out / "config.yaml").model.backbone == "local-dir:tiny"
    shutil.rmtree(tmp_path / "src")
    loaded = Embedder.from_pretrained(out)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert loaded.backbone.name == "local-dir:tiny"
    loaded.save_pretrained(tmp_path / "again")  # and it saves again under the published name
    assert json.loads((tmp_path / "again" / "dynametric.json").read_text())["model"]["backbone"] == "local-dir:tiny"
