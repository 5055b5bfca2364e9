"""Checkpoints across dynametric versions: a checkpoint whose stored ``model`` section has keys this version does
not know (a later dynametric's architecture option) loads with a ``note:`` naming them, through every command and
function that loads a checkpoint to embed; an emptied run ``config.yaml`` is refused as ``is empty`` (not read as
the defaults and reported as another model); every checkpoint records the dynametric version that wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric import __version__
from dynametric.cli import main
from dynametric.config import config_hash, config_to_dict, load_config, save_config
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import (
    load_checkpoint_file,
    save_checkpoint_file,
    unknown_model_keys,
    unknown_model_keys_note,
)
from dynametric.engine.inference import config_beside, load_trained
from dynametric.errors import InputError
from dynametric.models import hub
from dynametric.pipeline.protocols import checkpoint_config, evaluate_checkpoint
from tests.retrieval.conftest import make_images

BASE = ["model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}", "data.image_size=16",
        "data.eval_batch_size=8",
        "data.options={images_per_class: 3, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}"]


def _run(root: Path, *, extra_model: dict[str, object] | None = None, version: str | None = None) -> Path:
    """A run folder as `dynametric train` writes it: config.yaml and best.ckpt with the embedder's weights, the
    resolved config and its hash; ``extra_model``: keys added to the stored ``model`` section (as a later
    dynametric would write them), ``version``: the ``dynametric_version`` it records."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, BASE)
    save_config(cfg, root / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    stored = config_to_dict(cfg)
    stored["model"].update(extra_model or {})
    extra: dict[str, object] = {"config": stored, "config_hash": config_hash(cfg)}
    if version is not None:
        extra["dynametric_version"] = version
    ckpt = {"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0,
            "dynametric": extra}
    save_checkpoint_file(ckpt, root / "best.ckpt")
    return root / "best.ckpt"


def _unknown_notes(notes: list[str]) -> list[str]:
    return [n for n in notes if "does not know" in n]


def test_unknown_model_keys_are_the_stored_keys_this_version_lacks() -> None:
    stored = {"backbone": "simple_cnn", "head_activation": "gelu", "pooling": "avg", "adapter": {"rank": 4}}
    current = {"backbone": "simple_cnn", "pooling": "max", "num_heads": 1}
    assert unknown_model_keys(stored, current) == ["model.head_activation", "model.adapter"]
    assert unknown_model_keys(current, {**current, "extra": 1}) == []


def test_a_later_versions_model_key_is_a_note_naming_it_and_the_writer(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run", extra_model={"head_activation": "gelu"}, version="9.0.0")
    trained = load_trained(ckpt)
    assert _unknown_notes(trained.notes) == [
        f"{ckpt} records model key(s) this version of dynametric does not know (model.head_activation: 'gelu'; "
        f"written by dynametric 9.0.0; this is {__version__}): the model is built without them, so its embeddings "
        "may differ from the run's; load it with the dynametric that trained it"]
    # built without it: the same model as the config describes, with the checkpoint's weights
    x = torch.randn(2, 3, 16, 16)
    plain = load_trained(_run(tmp_path / "plain"))
    assert plain.notes == [] and torch.equal(trained.model(x), plain.model(x))


def test_without_a_recorded_version_the_note_asks_whether_a_newer_dynametric_wrote_it(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run", extra_model={"head_activation": "gelu", "head_dropout": 0.1})
    (note,) = _unknown_notes(load_trained(ckpt).notes)
    assert "(model.head_activation: 'gelu', model.head_dropout: 0.1; written by a newer dynametric?)" in note
    assert unknown_model_keys_note({"state_dict": {}}, {}, ckpt) is None  # records no config: nothing to say


def test_the_note_reaches_evaluate_embed_and_from_pretrained(tmp_path: Path, capsys) -> None:
    ckpt = _run(tmp_path / "run", extra_model={"head_activation": "gelu"})
    # evaluate --checkpoint's library path (the config read once by checkpoint_config)
    ce = evaluate_checkpoint(checkpoint_config(ckpt))
    assert len(_unknown_notes(ce.notes)) == 1
    # from_pretrained of a run folder: a warning and the model's notes
    with pytest.warns(UserWarning, match=r"model\.head_activation: 'gelu'"):
        model = hub.from_pretrained(ckpt.parent)
    assert len(_unknown_notes(model.notes)) == 1
    # the embed command prints it
    images = make_images(tmp_path / "data", n=4)
    assert main(["embed", "--checkpoint", str(ckpt), "--images", str(images / "imgs"), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: {ckpt} records model key(s) this version of dynametric does not know (model.head_activation" in err


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  \n", "{}\n", "---\n", "# c\nnull\n"])
def test_an_empty_run_config_yaml_is_refused_as_empty(tmp_path: Path, capsys, text: str) -> None:
    ckpt = _run(tmp_path / "run")
    config = ckpt.parent / "config.yaml"
    config.write_text(text)
    expected = (f"{config}: is empty: it holds no config for {ckpt} (read as the defaults, it would describe another "
                "model than the one the checkpoint was trained with); restore the config the run was trained with, "
                "or give it with --config")
    for load in (lambda: load_trained(ckpt), lambda: config_beside(ckpt, None), lambda: checkpoint_config(ckpt),
                 lambda: hub.from_pretrained(ckpt.parent)):
        with pytest.raises(InputError) as info:
            load()
        assert str(info.value) == expected
    # the commands: one line, the same words (was "trained with another model than this config describes")
    images = make_images(tmp_path / "data", n=4)
    assert main(["embed", "--checkpoint", str(ckpt), "--images", str(images / "imgs"), "--out", str(tmp_path / "e"),
                 "--no-progress"]) == 2
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"dynametric embed: error: {expected}", f"dynametric evaluate: error: {expected}"]
    assert not (tmp_path / "e").exists()


def test_an_empty_config_given_with_config_is_refused_too(tmp_path: Path) -> None:
    ckpt = _run(tmp_path / "run")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for text in ("", "{}\n"):
        empty.write_text(text)
        with pytest.raises(InputError) as info:
            load_trained(ckpt, empty)
        assert str(info.value).startswith(f"{empty}: is empty: it holds no config for {ckpt} ")
        assert str(info.value).endswith("; give the config the run was trained with")  # it was given: no --config
    assert load_checkpoint_file(ckpt)["epoch"] == 0  # nothing written
