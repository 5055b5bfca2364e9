"""Loading local backbone weights: weights_only, wrappers, classifier keys, clear mismatch errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models import SimpleCNN, build_embedder, create_backbone, load_backbone_weights
from tests.optional import needs_local_dir_timm


def _reference_state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = SimpleCNN(width=8, depth=2)
    for m in net.modules():  # non-default statistics so that a load is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.state_dict()


def _kw() -> dict:
    return {"backbone_kwargs": {"width": 8, "depth": 2}, "embedding_dim": 4}


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.body.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(own[k], v)


def test_plain_state_dict_round_trip(tmp_path: Path) -> None:
    state = _reference_state()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = build_embedder("simple_cnn", pretrained_path=str(path), **_kw())
    _assert_loaded(model, state)


def test_torch_load_is_called_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save(_reference_state(), path)
    seen: list[dict] = []
    real = torch.load

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    build_embedder("simple_cnn", pretrained_path=str(path), **_kw())
    assert seen and all(kw.get("weights_only") is True for kw in seen)


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("arbitrary code ran",))


def test_arbitrary_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"conv.weight": _Payload()}, fh, protocol=2)
    with pytest.raises(InputError, match=r"evil\.pt.*refusing to load"):
        build_embedder("simple_cnn", pretrained_path=str(path), **_kw())
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_wrapped_and_ddp_prefixed_state_dicts(tmp_path: Path) -> None:
    state = _reference_state(2)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    _assert_loaded(build_embedder("simple_cnn", pretrained_path=str(path), **_kw()), state)


def test_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _reference_state(3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    _assert_loaded(build_embedder("simple_cnn", pretrained_path=str(path), **_kw()), state)


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = _reference_state()
    del state["features.0.weight"]
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match=r"w\.pt.*missing keys 'features\.0\.weight'"):
        build_embedder("simple_cnn", pretrained_path=str(path), **_kw())


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    state = _reference_state()
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match=r"unexpected keys 'extra\.weight'"):
        build_embedder("simple_cnn", pretrained_path=str(path), **_kw())


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    state = _reference_state()
    state["features.0.weight"] = torch.zeros(9, 3, 3, 3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(InputError, match=r"features\.0\.weight: file \(9, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        build_embedder("simple_cnn", pretrained_path=str(path), **_kw())


def test_missing_file_and_non_state_dict(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        build_embedder("simple_cnn", pretrained_path=str(tmp_path / "nope.pt"), **_kw())
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InputError, match="state dict"):
        build_embedder("simple_cnn", pretrained_path=str(path), **_kw())


def test_pretrained_and_path_are_exclusive(tmp_path: Path) -> None:
    from dynametric.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        build_embedder("resnet18", pretrained=True, pretrained_path=str(tmp_path / "w.pt"))


def test_timm_classifier_keys_are_ignored_and_reported(tmp_path: Path) -> None:
    import timm

    full = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    backbone = create_backbone("resnet18")
    report = load_backbone_weights(backbone, path)
    assert report.ignored_classifier == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(backbone.body.conv1.weight, full.conv1.weight)
    assert len(report.loaded) == len(backbone.body.state_dict())


def test_old_files_without_num_batches_tracked(tmp_path: Path) -> None:
    state = {k: v for k, v in _reference_state().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    backbone = create_backbone("simple_cnn", width=8, depth=2)
    report = load_backbone_weights(backbone, path)
    assert report.kept_initial == ["features.1.num_batches_tracked", "features.5.num_batches_tracked"]


class _Foo:
    pass


def test_weight_file_refusals_name_the_file_the_reason_and_the_entry(tmp_path: Path) -> None:
    # a text file: refused before torch.load by its first bytes (torch said "refused it: 101")
    text = tmp_path / "notes.pth"
    text.write_text("hello world\n")
    with pytest.raises(InputError, match=r"^.*notes\.pth key 'model.pretrained_path': not a torch weight file: it "
                                         r"does not start like a torch.save file \(first bytes b'hell'\)"):
        build_embedder("simple_cnn", pretrained_path=str(text), **_kw())
    # a wrapped state dict with one non-tensor entry: that entry is named, not the wrapper
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {**_reference_state(), "extra_note": 3}}, wrapped)
    with pytest.raises(InputError, match=r"expected a state dict of tensors \(under 'state_dict'\); entry "
                                         r"'extra_note' is not a tensor \(int; 1 such entry\)$"):
        build_embedder("simple_cnn", pretrained_path=str(wrapped), **_kw())
    # a pickled object: the reason torch gives, whole, without terminal colour codes
    obj = tmp_path / "pickle.pth"
    torch.save({"obj": _Foo()}, obj)
    with pytest.raises(InputError) as info:
        build_embedder("simple_cnn", pretrained_path=str(obj), **_kw())
    msg = str(info.value)
    assert "\x1b" not in msg and "\n" not in msg
    assert msg.endswith(f"(loaded with weights_only=True: Unsupported global: GLOBAL {__name__}._Foo was not an "
                        "allowed global by default)")
    # a folder, and a truncated file
    with pytest.raises(InputError, match=r"is a folder; expected a weight file"):
        build_embedder("simple_cnn", pretrained_path=str(tmp_path), **_kw())
    good = tmp_path / "good.pth"
    torch.save(_reference_state(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match=r"cut\.pth key 'model.pretrained_path': truncated or corrupt weight file"):
        build_embedder("simple_cnn", pretrained_path=str(cut), **_kw())


def test_the_build_notes_say_what_the_weight_file_gave(tmp_path: Path) -> None:
    state = _reference_state()
    counters = sorted(k for k in state if k.endswith("num_batches_tracked"))
    assert len(counters) == 2
    path = tmp_path / "w.pt"
    torch.save({k: v for k, v in state.items() if k not in counters}, path)
    model = build_embedder("simple_cnn", pretrained_path=str(path), **_kw())
    assert model.notes == [f"backbone weights from {path}: {len(state) - 2} tensors loaded; 2 BatchNorm counter(s) "
                           f"not in the file keep their initial value ('{counters[0]}', '{counters[1]}')"]
    assert build_embedder("simple_cnn", **_kw()).notes == []


@needs_local_dir_timm
def test_notes_for_freeze_bn_without_batchnorm_and_a_local_dir_without_its_weights(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    vit = build_embedder("vit_tiny_patch16_224", freeze_bn=True, embedding_dim=4, backbone_kwargs={"img_size": 32})
    assert vit.notes == ["model.freeze_bn is true, but backbone 'vit_tiny_patch16_224' has no BatchNorm layer: "
                         "nothing is frozen"]
    assert build_embedder("simple_cnn", freeze_bn=True, **_kw()).notes == []
    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(tmp_path / "src"), safe_serialization=True)
    name = f"local-dir:{tmp_path / 'src'}"
    assert build_embedder(name, pretrained=False, embedding_dim=4).notes == [
        f"backbone {name!r} with model.pretrained false: its architecture alone, with random initial weights (the "
        "weights there are not loaded); set model.pretrained=true to start from them"]
    assert build_embedder(name, pretrained=True, embedding_dim=4).notes == []


def test_a_home_folder_tilde_in_a_weight_path_given_in_python_is_expanded(tmp_path: Path, monkeypatch) -> None:
    """``load_backbone_weights(backbone, "~/w.pt")`` reads the home folder's file (was: weight file not found, the
    literal ``./~/w.pt``), as ``model.pretrained_path`` in a config does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    state = _reference_state(seed=3)
    torch.save(state, tmp_path / "w.pt")
    backbone = create_backbone("simple_cnn", width=8, depth=2)
    load_backbone_weights(backbone, "~/w.pt")
    for k, v in state.items():
        torch.testing.assert_close(backbone.body.state_dict()[k], v)
