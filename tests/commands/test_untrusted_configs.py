"""Folders from elsewhere (a downloaded run, index or model folder): what their files can make a command do.

A config's ``imports`` runs code, so every command that imports the modules a config file lists says so first
(``note:`` on the command line, a ``ConfigImportWarning`` in Python); an index's recorded model paths are read
relative to the index folder; a YAML alias bomb is one line; a model folder's description cannot make loading
download weights or read another file, nor crash with a RecursionError."""

from __future__ import annotations

import functools
import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.errors import ConfigError, InputError
from dynametric.models import Embedder, build_embedder
from dynametric.models import hub as hubmod
from dynametric.utils.registry import ConfigImportWarning
from tests.retrieval.conftest import make_images, make_run


def _run_with_helpers(folder: Path, module: str) -> Path:
    """A run folder whose config lists ``imports: [module]`` with ``module.py`` inside (as downloaded); the module
    counts its imports in ``module.RAN``."""
    ckpt = make_run(folder)
    config = folder / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert text.count("imports: []\n") == 1
    config.write_text(text.replace("imports: []\n", f"imports:\n- {module}\n"), encoding="utf-8")
    (folder / f"{module}.py").write_text("RAN = 1\n", encoding="utf-8")
    return ckpt


def _forget(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """As a new process: ``module`` not imported yet."""
    if module in sys.modules:
        monkeypatch.delitem(sys.modules, module)


def test_search_names_the_modules_the_index_config_imports_and_reads_its_paths_from_the_index_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Finding: ``search --image`` imported the modules of the config ``index.json`` names without a word, and a
    relative ``model.checkpoint`` / ``model.config`` was read from the working directory. An index folder shipped
    with its model inside (relative paths) now loads from anywhere, and the import is said first, naming the file."""
    module = "dm_trust_index_helpers"
    images = make_images(tmp_path / "data", n=6)
    run = tmp_path / "run"
    ckpt = _run_with_helpers(run, module)
    monkeypatch.syspath_prepend(str(run))  # the folder on sys.path, as `python -m dynametric` run inside it does
    _forget(monkeypatch, module)
    assert main(["embed", "--checkpoint", str(ckpt), "--images", str(images / "imgs"), "--out",
                 str(tmp_path / "emb"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: importing {module} (imports: of {run / 'config.yaml'}; this runs their code)\n" in err
    index = tmp_path / "index"
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--kind", "flat", "--out", str(index)]) == 0
    shutil.copytree(run, index / "model")
    meta = json.loads((index / "index.json").read_text(encoding="utf-8"))
    assert meta["model"]["checkpoint"] == str(ckpt.resolve())  # index build records absolute paths
    meta["model"]["checkpoint"], meta["model"]["config"] = "model/best.ckpt", "model/config.yaml"
    (index / "index.json").write_text(json.dumps(meta), encoding="utf-8")
    shutil.rmtree(run)  # the only copy left is the index's
    monkeypatch.syspath_prepend(str(index / "model"))  # its module found there (PYTHONPATH=INDEX/model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _forget(monkeypatch, module)
    capsys.readouterr()
    query = images / "imgs" / "rock" / "img_02.png"
    assert main(["search", "--index", str(index), "--image", str(query), "-k", "1", "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"note: importing {module} (imports: of {index / 'model' / 'config.yaml'}; this "
                                    "runs their code)"]
    assert json.loads(out.out)["queries"][0]["results"][0]["id"] == "rock/img_02.png"
    # a checkpoint of other weights is refused before its config is read: nothing imported, nothing said
    other = torch.load(index / "model" / "best.ckpt", weights_only=True)
    other["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    torch.save(other, index / "model" / "best.ckpt")
    _forget(monkeypatch, module)
    assert main(["search", "--index", str(index), "--image", str(query), "-k", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differ from the model the index was built with" in err[0], err
    assert module not in sys.modules


def test_a_run_folder_command_says_what_it_imports_and_from_pretrained_warns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A downloaded run folder whose config lists its own ``helpers.py``: the import is said (once, before it runs)
    by ``export`` and by ``Embedder.from_pretrained(run_dir)``; a module already imported is not said again."""
    module = "dm_trust_run_helpers"
    run = tmp_path / "run"
    ckpt = _run_with_helpers(run, module)
    monkeypatch.syspath_prepend(str(run))
    _forget(monkeypatch, module)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e.pt")]) == 0
    err = capsys.readouterr().err
    line = f"note: importing {module} (imports: of {run / 'config.yaml'}; this runs their code)"
    assert err.splitlines()[0] == line and err.count("note: importing") == 1
    _forget(monkeypatch, module)
    with pytest.warns(ConfigImportWarning) as caught:
        Embedder.from_pretrained(run)
    assert [str(w.message) for w in caught if w.category is ConfigImportWarning] == [line[len("note: "):]]
    with warnings.catch_warnings():  # imported now: nothing runs again, nothing is said
        warnings.simplefilter("error", ConfigImportWarning)
        Embedder.from_pretrained(run)


def test_the_import_warning_names_the_users_line_not_the_loaders(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding: the ``ConfigImportWarning`` pointed at a line of the config loader inside dynametric
    (``stacklevel=3``). It now names the first frame outside the package: the user's line that loaded the config,
    through ``load_config(file)`` and through ``Embedder.from_pretrained(run_dir)``."""
    module = "dm_trust_where_helpers"
    run = tmp_path / "run"
    _run_with_helpers(run, module)
    monkeypatch.syspath_prepend(str(run))
    for load in (lambda: load_config(run / "config.yaml"), lambda: Embedder.from_pretrained(run)):
        _forget(monkeypatch, module)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigImportWarning)
            load()
        found = [w for w in caught if w.category is ConfigImportWarning]
        assert len(found) == 1, [str(w.message) for w in caught]
        assert Path(found[0].filename).resolve() == Path(__file__).resolve(), found[0].filename
        assert found[0].lineno == load.__code__.co_firstlineno  # the user's call into the library
        assert module in sys.modules


def test_imports_typed_on_the_command_line_or_not_found_are_not_announced(tmp_path: Path) -> None:
    """The note is for a file's list: an ``imports=[...]`` override is the user's own words, and a module that is not
    found runs nothing (its error line alone, whose PYTHONPATH advice now warns about running untrusted code)."""
    module = "dm_trust_typed_helpers"
    (tmp_path / f"{module}.py").write_text("X = 1\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigImportWarning)
            load_config(None, [f"imports=[{module}]"])
            config = tmp_path / "missing.yaml"
            config.write_text("imports: [dm_trust_no_such_module]\n", encoding="utf-8")
            with pytest.raises(ConfigError) as exc:
                load_config(config)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
    assert str(exc.value) == (f"{config}:1 key 'imports': cannot import 'dm_trust_no_such_module' "
                              "(ModuleNotFoundError: No module named 'dm_trust_no_such_module'); is it on PYTHONPATH? "
                              "the dynametric command does not search the current folder; only for code you trust "
                              "(importing runs it): PYTHONPATH=. dynametric ...")


def _bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_one_line(tmp_path: Path) -> None:
    """Nested aliases that multiply (672,588 values from under 300 bytes here; the reported file had 9 levels and
    hung every config-reading command) are refused before anything walks them."""
    config = tmp_path / "bomb.yaml"
    config.write_text(_bomb(6), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert str(exc.value) == (f"{config}: its aliases (*name) expand to 672,588 values more than the file writes (at "
                              "most 100,000: each alias repeats what its anchor holds, and aliases inside anchors "
                              "multiply); write the values out, or use fewer aliases")


def test_an_alias_inside_its_own_anchor_is_one_line(tmp_path: Path) -> None:
    """A value holding itself was a RecursionError traceback."""
    config = tmp_path / "self.yaml"
    config.write_text("data:\n  options: &r\n    x: *r\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert str(exc.value) == (f"{config}:2: invalid YAML at column 12: an alias (*name) inside the value its anchor "
                              "(&name) names: a value cannot hold itself")


def test_a_few_anchors_and_aliases_keep_working_and_keep_their_lines(tmp_path: Path) -> None:
    config = tmp_path / "anchors.yaml"
    config.write_text("loss:\n  kwargs: &k\n    margin: 0.3\nextra_losses:\n  - name: ContrastiveLoss\n"
                      "    weight: 0.5\n    kwargs: *k\noptim:\n  lr: &lr 0.01\n  weight_decay: *lr\n",
                      encoding="utf-8")
    cfg = load_config(config)
    assert cfg.extra_losses[0].kwargs == {"margin": 0.3} and cfg.optim.weight_decay == 0.01
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: &word fast\ntrainer:\n  max_epochs: *word\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert (exc.value.file, exc.value.line, exc.value.key) == (str(bad), 2, "optim.lr")


def _small_model_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    model = build_embedder("simple_cnn", embedding_dim=8, backbone_kwargs={"width": 4, "depth": 2})
    model.save_pretrained(folder)
    return folder / "dynametric.json"


def test_a_model_folder_is_built_without_pretrained_weights_whatever_it_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``"pretrained": true`` went to the network, ``"pretrained_path"`` opened the file it named: the folder's own
    weights replace both, so the build never asks for them."""
    import dynametric.models.embedder as embedder_module

    meta_path = _small_model_folder(tmp_path / "m")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    secret = tmp_path / "secret.txt"
    secret.write_text("not weights\n", encoding="utf-8")
    meta["model"]["pretrained"], meta["model"]["pretrained_path"] = True, str(secret)
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    calls: list[dict] = []
    real = embedder_module.build_embedder

    @functools.wraps(real)  # its annotations: the description's entries are checked against them
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(embedder_module, "build_embedder", spy)
    model = hubmod.from_pretrained(tmp_path / "m")
    assert [(c["pretrained"], c["pretrained_path"]) for c in calls] == [(False, None)]
    assert isinstance(model, Embedder)


def test_a_deeply_nested_description_is_one_line(tmp_path: Path) -> None:
    meta_path = _small_model_folder(tmp_path / "m")
    meta_path.write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(InputError) as exc:
        hubmod.from_pretrained(tmp_path / "m")
    assert str(exc.value) == f"{meta_path}: not a description dynametric can read: JSON nested too deep"
