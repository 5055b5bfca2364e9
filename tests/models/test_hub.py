"""Sharing models: save_pretrained / from_pretrained round trip (same outputs), model card, export of a run
folder, push_to_hub / from_pretrained through a mocked Hugging Face Hub (no network), timm `local-dir:` /
`hf-hub:` backbone names, and the repository's hubconf.py through torch.hub."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.models import Embedder, build_embedder
from dynametric.models import hub as hubmod
from tests.optional import needs_local_dir_timm

REPO = Path(__file__).resolve().parents[2]
SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}


def _perturbed(**kwargs) -> Embedder:
    torch.manual_seed(3)
    model = build_embedder(**{**SMALL, **kwargs})
    with torch.no_grad():  # weights (and BN statistics) no fresh build reproduces
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.1)
    return model.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_a, out_b = a.eval()(x), b.eval()(x)
    if isinstance(out_a, dict):
        assert list(out_a) == list(out_b)
        for k in out_a:
            torch.testing.assert_close(out_a[k], out_b[k], rtol=0, atol=0)
    else:
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)


def test_save_and_load_round_trip_with_model_card(tmp_path):
    model = _perturbed(num_heads=2, head_names=["class", "shared"])
    metrics = {"fine": {"map@r": 0.3125, "recall@1": 0.5}, "coarse": {"map@r": 0.25, "recall@1": 0.75},
               "mean": {"map@r": 0.28125, "recall@1": 0.625}}
    model.save_pretrained(tmp_path / "m", scale_names=["fine", "coarse"], metrics=metrics,
                          data={"format": "oml", "train images": 120}, config_yaml="model:\n  backbone: simple_cnn\n",
                          eval_head="concat", input_size=16)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.yaml", "dynametric.json",
                                                                 "model.safetensors"]
    loaded = Embedder.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, Embedder) and not loaded.training
    _same_outputs(model, loaded)
    meta = json.loads((tmp_path / "m" / "dynametric.json").read_text())
    assert meta["model"]["pretrained"] is False and meta["embedding_dims"] == {"class": 8, "shared": 8}
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dynametric\n")
    assert "| fine | 0.3125 | 0.5000 |" in card and "| mean | 0.2812 | 0.6250 |" in card
    assert "* format: oml" in card and "backbone: simple_cnn" in card and "Embedder.from_pretrained(" in card


def test_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="not a dynametric model folder"):
        hubmod.from_pretrained(tmp_path / "nope" / "deeper")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dynametric.json"):
        hubmod.from_pretrained(tmp_path / "empty")
    bare = torch.nn.Linear(2, 2)
    with pytest.raises(InputError, match="pass model_kwargs"):
        hubmod.save_pretrained(bare, tmp_path / "x")
    model = _perturbed()
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "dynametric.json").read_text())
    meta["model"]["embedding_dim"] = 16  # the weights no longer fit
    (tmp_path / "m" / "dynametric.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="weights do not match the described model"):
        hubmod.from_pretrained(tmp_path / "m")


def test_export_of_a_run_folder(tmp_path):
    from dynametric.config import load_config, save_config

    cfg = load_config(None, ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}"])
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    model = _perturbed()
    torch.save({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}}, run / "best.ckpt")
    (run / "metrics.json").write_text(json.dumps({"test": {"fine": {"map@r": 0.5}, "mean": {"map@r": 0.5}}}))
    (run / "run_info.json").write_text(json.dumps({"scale_names": ["fine", "middle", "coarse"], "train_images": 9}))
    folder = hubmod.export_run(run, tmp_path / "export")
    _same_outputs(model, Embedder.from_pretrained(folder))
    _same_outputs(model, Embedder.from_pretrained(run))  # a run folder loads directly too
    card = (folder / "README.md").read_text()
    assert "| fine | 0.5000 |" in card and "* format: synthetic" in card and "* train images: 9" in card
    assert (folder / "config.yaml").read_text() == (run / "config.yaml").read_text()


class FakeHub:
    """A stand-in for huggingface_hub's HfApi / snapshot_download over a local 'remote' folder."""

    def __init__(self, remote: Path) -> None:
        self.remote, self.calls = remote, []

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private, exist_ok):
                hub.calls.append(("create_repo", repo_id, private, exist_ok))

            def upload_folder(self, repo_id, folder_path, commit_message, allow_patterns):
                hub.calls.append(("upload_folder", repo_id, commit_message))
                dest = hub.remote / repo_id
                dest.mkdir(parents=True, exist_ok=True)
                for name in allow_patterns:
                    if (Path(folder_path) / name).is_file():
                        shutil.copy(Path(folder_path) / name, dest / name)

                class Info:
                    commit_url = f"https://huggingface.co/{repo_id}/commit/1"

                return Info()

        return Api()

    def snapshot_download(self, repo_id, revision, cache_dir, local_files_only, token, allow_patterns):
        self.calls.append(("snapshot_download", repo_id, revision))
        if not (self.remote / repo_id).is_dir():
            raise OSError(f"404 Repository Not Found for url: https://huggingface.co/{repo_id}")
        return str(self.remote / repo_id)


def test_push_to_hub_and_back_through_a_mocked_hub(monkeypatch, tmp_path):
    import huggingface_hub

    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    model = _perturbed()
    url = model.push_to_hub("me/tiny-embedder", private=True, scale_names=["fine"])
    assert url == "https://huggingface.co/me/tiny-embedder/commit/1"
    assert fake.calls[:2] == [("create_repo", "me/tiny-embedder", True, True),
                              ("upload_folder", "me/tiny-embedder", "Upload dynametric embedder")]
    assert "# me/tiny-embedder" in (tmp_path / "remote" / "me" / "tiny-embedder" / "README.md").read_text()
    _same_outputs(model, Embedder.from_pretrained("me/tiny-embedder", revision="main"))
    assert fake.calls[-1] == ("snapshot_download", "me/tiny-embedder", "main")
    with pytest.raises(InputError, match="cannot fetch the model from the Hugging Face Hub .*404"):
        Embedder.from_pretrained("me/missing")


def test_pushing_a_run_folder_uploads_no_local_folder_names(monkeypatch, tmp_path):
    # a run records data.root absolute (the folder train started in): push_to_hub of the run published
    # /home/<user>/<project>/... in config.yaml, the model card and dynametric.json
    import huggingface_hub

    from dynametric.config import load_config, save_config

    local = tmp_path / "private-project" / "data"
    cfg = load_config(None, ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}", "data.format=csv",
                             f"data.root={local / 'labels.csv'}",
                             f"run.output_dir={tmp_path / 'private-runs' / 'dml'}"])
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    model = _perturbed()
    torch.save({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}}, run / "best.ckpt")
    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    hubmod.push_to_hub(run, "me/run-model")
    remote = tmp_path / "remote" / "me" / "run-model"
    for name in ("config.yaml", "README.md", "dynametric.json"):
        text = (remote / name).read_text(encoding="utf-8")
        assert str(tmp_path) not in text and "private-" not in text, name
    assert load_config(remote / "config.yaml").data.root == "labels.csv"
    assert json.loads((remote / "dynametric.json").read_text())["data"]["root"] == "labels.csv"
    _same_outputs(model, Embedder.from_pretrained("me/run-model"))
    # export_run keeps the paths by default (a local copy of the run), and drops them when asked
    kept = hubmod.export_run(run, tmp_path / "kept")
    assert load_config(kept / "config.yaml").data.root == str(local / "labels.csv")
    short = hubmod.export_run(run, tmp_path / "short", local_paths=False)
    assert (short / "config.yaml").read_text() == (remote / "config.yaml").read_text()


def test_missing_hub_extra_is_a_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name == "huggingface_hub":
            raise ImportError("no huggingface_hub")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(ConfigError, match=r"pip install 'dynametric\[hub\]'"):
        hubmod.push_to_hub(_perturbed(), "me/x")


@needs_local_dir_timm
def test_timm_local_dir_backbone_loads_the_saved_weights(tmp_path):
    import timm
    from timm.models import save_for_hf

    from dynametric.models.backbones import pretrained_weights_status

    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", pretrained=False)
    save_for_hf(ref, str(tmp_path / "tiny"), safe_serialization=True)
    name = f"local-dir:{tmp_path / 'tiny'}"
    assert pretrained_weights_status(name) == (True, str(tmp_path / "tiny" / "model.safetensors"))
    model = build_embedder(name, pretrained=True, embedding_dim=None)
    got = model.backbone.body.state_dict()
    for key, value in ref.state_dict().items():
        if key in got:  # the classifier is dropped (num_classes=0)
            torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    assert sum(k in got for k in ref.state_dict()) > 10
    fresh = build_embedder(name, pretrained=False, embedding_dim=None)  # architecture only
    assert not torch.equal(fresh.backbone.body.state_dict()["conv1.0.weight"], got["conv1.0.weight"])
    with pytest.raises(ConfigError, match="not a timm model folder"):
        build_embedder(f"local-dir:{tmp_path / 'missing'}")


def test_hf_hub_backbone_name_is_accepted_and_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as err:
        build_embedder("hf-hub:timm/test_resnet.r160_in1k", pretrained=True)
    assert "unknown backbone" not in str(err.value) and "hf-hub:timm/test_resnet.r160_in1k" in str(err.value)


def test_hubconf_entry_points(tmp_path):
    model = _perturbed()
    model.save_pretrained(tmp_path / "m")
    loaded = torch.hub.load(str(REPO), "embedder", str(tmp_path / "m"), source="local")
    _same_outputs(model, loaded)
    fresh = torch.hub.load(str(REPO), "build_embedder", source="local", **SMALL)
    assert fresh.embedding_dim == 8


def test_a_truncated_or_garbage_weight_file_names_the_file(tmp_path):
    _perturbed().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(InputError, match=rf"^{weights}: not a readable safetensors file \("):
        hubmod.from_pretrained(tmp_path / "m")
    weights.write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match=rf"^{weights}: not a readable safetensors file \("):
        hubmod.from_pretrained(tmp_path / "m")


def test_model_folder_description_errors_name_dynametric_json_and_the_entry(tmp_path):
    model = _perturbed()
    model.save_pretrained(tmp_path / "m")
    meta_path = tmp_path / "m" / "dynametric.json"
    meta = json.loads(meta_path.read_text())

    def with_model(**changes):
        meta_path.write_text(json.dumps({**meta, "model": {**meta["model"], **changes}}))

    with_model(num_heads="2")
    with pytest.raises(InputError, match=rf"^{meta_path} key 'model.num_heads': expected int, got '2' \(str\)$"):
        hubmod.from_pretrained(tmp_path / "m")
    with_model(backbone="resnet_999")
    with pytest.raises(InputError, match=rf"^{meta_path} key 'model.backbone': unknown backbone 'resnet_999'"):
        hubmod.from_pretrained(tmp_path / "m")
    with_model(colour="red")
    with pytest.raises(InputError, match=rf"^{meta_path} key 'model.colour': 'model' holds 'colour', which is not a "
                                         "build_embedder argument"):
        hubmod.from_pretrained(tmp_path / "m")
    with_model(head_dims=[8, "x"], num_heads=2)
    with pytest.raises(InputError, match=r"key 'model.head_dims': expected "):
        hubmod.from_pretrained(tmp_path / "m")
    # saving onto a file (not a folder): one line, the file untouched
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InputError, match=r"file: exists and is not a folder"):
        model.save_pretrained(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


@needs_local_dir_timm
def test_a_local_dir_backbone_folder_loads_where_its_source_folder_is_absent(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    save_for_hf(timm.create_model("test_resnet", pretrained=False, num_classes=3), str(tmp_path / "src"),
                safe_serialization=True)
    name = f"local-dir:{tmp_path / 'src'}"
    model = build_embedder(name, pretrained=True, embedding_dim=8).eval()
    model.save_pretrained(tmp_path / "shared")
    meta = json.loads((tmp_path / "shared" / "dynametric.json").read_text())
    assert meta["model"]["backbone"] == name and meta["backbone_config"]["architecture"] == "test_resnet"
    shutil.rmtree(tmp_path / "src")  # e.g. the model folder was copied to another machine
    loaded = Embedder.from_pretrained(tmp_path / "shared")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.backbone.name == name and loaded.build_kwargs["backbone"] == name
    loaded.save_pretrained(tmp_path / "again")  # and it saves again with the same description
    assert json.loads((tmp_path / "again" / "dynametric.json").read_text())["backbone_config"] == \
        meta["backbone_config"]


def test_hf_hub_architecture_unreachable_is_keyed_on_the_backbone(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^key 'model.backbone': could not read the timm model description "
                                          r"\(config.json\) of 'hf-hub:timm/test_resnet.r160_in1k' .* even with "
                                          r"pretrained=false"):
        build_embedder("hf-hub:timm/test_resnet.r160_in1k", pretrained=False)
