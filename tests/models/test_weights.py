"""Loading local backbone weights: weights_only, wrappers, classifier keys, clear mismatch errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models import SimpleCNN, build_embedder, create_backbone, load_backbone_weights


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
    with pytest.raises(InputError, match=r"evil\.pt.*weights-only"):
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
