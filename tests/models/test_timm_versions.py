"""Older timm releases (the floor is timm 0.9). `local-dir:` backbones need timm >= 1.0.16: on an older timm (a timm
whose name parser takes no `local-dir:` source) a build says so in one line keyed `model.backbone`, instead of timm's
bare `AssertionError`; so does loading a model folder whose `hf-hub:` / `local-dir:` backbone is rebuilt from its
recorded timm config. A bare assertion of timm's own (0.9 refusing global_pool="") is one line too."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import timm
import timm.models
import timm.models._factory

from dynametric.cli import main
from dynametric.errors import ConfigError, InputError
from dynametric.models import build_embedder
from dynametric.models.backbones import LOCAL_DIR_TIMM, timm_reads_local_dir
from dynametric.models.embedder import Embedder


def _old_parse_model_name(model_name: str):
    """timm 0.9's parser (sources '', 'timm' and 'hf-hub' only)."""
    parsed = urlsplit(model_name)
    assert parsed.scheme in ("", "timm", "hf-hub")
    if parsed.scheme == "hf-hub":
        return parsed.scheme, parsed.path
    return "timm", parsed.path.split("/")[-1]


@pytest.fixture
def old_timm(monkeypatch):
    monkeypatch.setattr(timm.models, "parse_model_name", _old_parse_model_name)
    monkeypatch.setattr(timm.models._factory, "parse_model_name", _old_parse_model_name)
    monkeypatch.setattr(timm, "__version__", "0.9.0")


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3}), encoding="utf-8")
    return folder


EXPECTED = (f"key 'model.backbone': a local-dir: backbone needs timm >= {LOCAL_DIR_TIMM} (installed: timm 0.9.0); "
            f"upgrade it with pip install 'timm>={LOCAL_DIR_TIMM}'")


def test_the_capability_is_asked_of_timm(old_timm):
    assert not timm_reads_local_dir()


def test_build_embedder_names_the_timm_version_a_local_dir_backbone_needs(old_timm, model_folder):
    with pytest.raises(ConfigError) as err:
        build_embedder(f"local-dir:{model_folder}", embedding_dim=8)
    assert str(err.value) == EXPECTED
    with pytest.raises(ConfigError) as err:  # the pretrained check (train --dry-run) says the same
        build_embedder(f"local-dir:{model_folder}", pretrained=True, embedding_dim=8)
    assert str(err.value) == EXPECTED


def test_train_names_the_timm_version_in_one_line(old_timm, model_folder, capsys):
    assert main(["train", "--dry-run", f"model.backbone=local-dir:{model_folder}", "model.backbone_kwargs={}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dynametric train: error: <command line> {EXPECTED}"


def test_a_model_folder_rebuilt_from_its_timm_config_names_the_timm_version(old_timm, tmp_path):
    model = build_embedder("simple_cnn", embedding_dim=8, backbone_kwargs={"width": 4, "depth": 2})
    folder = model.save_pretrained(tmp_path / "shared")
    meta_path = folder / "dynametric.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["backbone"] = "hf-hub:timm/resnet18.a1_in1k"  # as a folder saved from an hf-hub: backbone
    meta["model"]["backbone_kwargs"] = None
    meta["backbone_config"] = {"architecture": "resnet18", "num_classes": 1000}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        Embedder.from_pretrained(folder)
    assert err.value.file == str(meta_path) and err.value.key == "model.backbone"
    assert err.value.message == (f"the backbone 'hf-hub:timm/resnet18.a1_in1k', rebuilt from the timm config the "
                                 f"folder records, needs timm >= {LOCAL_DIR_TIMM} (installed: timm 0.9.0); upgrade "
                                 f"it with pip install 'timm>={LOCAL_DIR_TIMM}'")


def test_a_bare_assertion_of_an_older_timm_is_one_line(monkeypatch):
    """timm 0.9 refuses global_pool="" of a distilled DeiT with `assert self.global_pool in ('token',)`, no message:
    it came out as a bare AssertionError traceback."""
    def create_model(name, **kwargs):
        if kwargs["global_pool"] not in ("token",):
            raise AssertionError  # as timm's bare assert (a plain assert here would get pytest's message)

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(timm, "__version__", "0.9.0")
    with pytest.raises(ConfigError) as err:
        build_embedder("deit_tiny_distilled_patch16_224", embedding_dim=8)
    assert str(err.value) == ("key 'model.backbone': timm model 'deit_tiny_distilled_patch16_224' refused the "
                              "arguments dynametric builds it with (num_classes=0, global_pool=''): timm 0.9.0 "
                              "stopped on an assertion without a message, as it does for a model that cannot be built "
                              "without its own pooling; choose another backbone")
