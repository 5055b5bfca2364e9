"""``save_pretrained`` checks that the model its recorded ``build_embedder`` arguments build is the embedder it saves:
a model changed after its build (a head's ``normalize`` turned off, another pooling or a wider head put in) is
refused before anything is written, instead of a folder that loads as another model or not at all."""

from __future__ import annotations

import time

import pytest
import torch

from dynametric.errors import InputError
from dynametric.models import Embedder, build_embedder
from dynametric.models.heads import EmbeddingHead

SMALL = {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 2}}


def _small(**overrides: object) -> Embedder:
    torch.manual_seed(0)
    return build_embedder(**{**SMALL, **overrides}).eval()  # type: ignore[arg-type]


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_normalize_turned_off_after_the_build_is_refused_before_anything_is_written(tmp_path):
    model = _small()
    model.heads["embedding"].normalize = False
    norms = model(_images()).norm(dim=1)
    assert not torch.allclose(norms, torch.ones(2))  # the model as it is gives unnormalised embeddings
    with pytest.raises(InputError) as err:
        model.save_pretrained(tmp_path / "m")
    assert err.value.key == "model_kwargs"
    assert "heads.embedding" in err.value.message and "normalize=False" in err.value.message
    assert "normalize=True" in err.value.message and "recorded build_embedder arguments" in err.value.message
    assert not (tmp_path / "m").exists()  # the folder it made is removed: nothing written


def test_model_kwargs_describing_the_changed_model_save_it_and_it_round_trips(tmp_path):
    model = _small()
    model.heads["embedding"].normalize = False
    model.save_pretrained(tmp_path / "m", model_kwargs={**SMALL, "normalize": False})
    loaded = Embedder.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images()), model(_images()), rtol=0, atol=0)


def test_explicit_model_kwargs_that_do_not_match_are_refused_and_named_as_given(tmp_path):
    model = _small()
    with pytest.raises(InputError) as err:
        model.save_pretrained(tmp_path / "m", model_kwargs={**SMALL, "embedding_dim": 16})
    assert err.value.key == "model_kwargs" and "the model_kwargs given" in err.value.message
    assert "out_dim=8" in err.value.message and "out_dim=16" in err.value.message
    with pytest.raises(InputError) as err:  # arguments that build nothing: the folder would not load
        model.save_pretrained(tmp_path / "m", model_kwargs={**SMALL, "no_such_argument": 1})
    assert err.value.key == "model_kwargs" and "do not build a model" in err.value.message
    assert not (tmp_path / "m").exists()


def test_a_pooling_put_in_after_the_build_is_refused(tmp_path):
    model = _small()
    model.pool = _small(pooling="max").pool
    with pytest.raises(InputError) as err:
        model.save_pretrained(tmp_path / "m")
    assert err.value.key == "model_kwargs" and err.value.message.startswith("pool: ")
    assert "mode='max'" in err.value.message and "mode='avg'" in err.value.message


def test_a_wider_head_saved_over_a_good_folder_is_refused_and_the_folder_stays_as_it_was(tmp_path):
    folder = tmp_path / "m"
    model = _small()
    model.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    expected = model(_images())
    model.heads["embedding"] = EmbeddingHead(model.feature_dim, 16)
    with pytest.raises(InputError) as err:
        model.save_pretrained(folder)
    assert err.value.key == "model_kwargs" and "heads.embedding" in err.value.message
    assert "out_dim=16" in err.value.message and "out_dim=8" in err.value.message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # byte-identical, no temporary file left
    with torch.no_grad():
        torch.testing.assert_close(Embedder.from_pretrained(folder)(_images()), expected, rtol=0, atol=0)
    assert model(_images()).shape == (2, 16)
    assert model.embedding_dims == {"embedding": 16} and model.embedding_dim == 16  # the heads as they are


def test_a_replaced_linear_layer_is_named_by_its_shape(tmp_path):
    model = _small()
    model.heads["embedding"].proj = torch.nn.Linear(model.feature_dim, 5)
    with pytest.raises(InputError) as err:
        model.save_pretrained(tmp_path / "m")
    assert err.value.message.startswith("heads.embedding.proj: ")
    assert "out_features=5" in err.value.message and "out_features=8" in err.value.message


def test_feature_dim_follows_the_pooling():
    model = _small()
    assert model.feature_dim == 4 * 2 ** 1  # simple_cnn width 4, depth 2: 8 channels
    model.pool = _small(pooling="catavgmax").pool
    assert model.feature_dim == 16


def test_the_check_builds_on_the_meta_device_and_keeps_the_callers_random_state(tmp_path, monkeypatch):
    from dynametric.models import embedder as embedder_module
    from dynametric.models import hub

    devices: list[torch.device] = []
    real = embedder_module.build_embedder

    def spy(**kwargs):  # type: ignore[no-untyped-def]
        built = real(**kwargs)
        devices.append(next(built.parameters()).device)
        return built

    model = _small()
    monkeypatch.setattr(embedder_module, "build_embedder", spy)
    state = torch.get_rng_state()
    started = time.perf_counter()
    hub._check_rebuilds(model, {**model.build_kwargs}, None, given=False)
    assert time.perf_counter() - started < 5
    assert devices == [torch.device("meta")]
    assert torch.equal(torch.get_rng_state(), state)


def test_a_resnet50_check_is_cheap():
    from dynametric.models import hub

    model = build_embedder("resnet50")
    started = time.perf_counter()
    hub._check_rebuilds(model, model.build_kwargs, None, given=False)
    assert time.perf_counter() - started < 3  # ~0.15 s here: meta tensors, no memory, no initialisation
