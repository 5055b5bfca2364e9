"""Components registered from outside the package (docs/extending.md): a config's ``imports`` key and the CLI's
``dynametric --import`` import the user's module before names are checked; an unknown name says how to import one;
a dataset format registered at run time is taken by the config check and by ``data inspect --format``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.config import Config, config_hash, config_to_dict, load_config, save_config
from dynametric.errors import ConfigError

PLUGIN = "dm_test_plugin"

PLUGIN_SOURCE = '''
import json
from pathlib import Path

import torch

from dynametric.data.base import LoadReport, SplitRecords
from dynametric.data.registry import FORMATS
from dynametric.losses import LOSSES
from dynametric.losses.base import MetricLoss


class PluginLoss(MetricLoss):
    def __init__(self, margin: float = 0.5, scale: int = 0, **kwargs):
        super().__init__(scale, **kwargs)
        self.margin = margin

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        d2 = torch.cdist(embeddings, embeddings).pow(2)
        same = labels[:, None] == labels[None, :]
        return d2[same].mean() - d2[~same].clamp(max=self.margin).mean()


class PluginFormat:
    name = "dmjson"
    root_expected = "a folder with labels.json"
    options: dict = {}

    def splits(self, root, **_):
        return sorted({r["split"] for r in json.loads((Path(root) / "labels.json").read_text())})

    def read(self, root, split, *, check_files=True):
        rows = [r for r in json.loads((Path(root) / "labels.json").read_text()) if r["split"] == split]
        return SplitRecords(split=split, paths=[str(Path(root) / r["path"]) for r in rows],
                            raw_labels=[(r["fine"], r["coarse"]) for r in rows], scale_names=("fine", "coarse"),
                            locations=[("labels.json", i + 1) for i in range(len(rows))],
                            report=LoadReport(split=split))


LOSSES["PluginLoss"] = PluginLoss
FORMATS["dmjson"] = PluginFormat()
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's module on ``sys.path`` (not imported yet) registering ``PluginLoss`` and the format ``dmjson``; the
    registries and ``sys.modules`` are restored afterwards, whatever the test imported."""
    from dynametric.data.registry import FORMATS
    from dynametric.losses import LOSSES

    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    saved = [(registry, dict(registry)) for registry in (LOSSES, FORMATS)]
    assert "PluginLoss" not in LOSSES and "dmjson" not in FORMATS
    try:
        yield PLUGIN
    finally:
        sys.modules.pop(PLUGIN, None)
        for registry, before in saved:
            for name in [n for n in dict(registry) if n not in before]:
                del registry[name]
            registry.update(before)


def _forget(plugin: str) -> None:
    """As a new process: the module not imported, its registrations gone."""
    from dynametric.data.registry import FORMATS
    from dynametric.losses import LOSSES

    sys.modules.pop(plugin, None)
    LOSSES.pop("PluginLoss", None)
    FORMATS.pop("dmjson", None)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_imports_the_listed_modules_first(plugin: str, tmp_path: Path) -> None:
    cfg_file = _write(tmp_path / "run.yaml",
                      f"imports: [{plugin}]\nloss:\n  name: PluginLoss\n  kwargs: {{margin: 0.3}}\n")
    cfg = load_config(cfg_file)
    assert cfg.imports == [plugin] and cfg.loss.name == "PluginLoss"
    from dynametric.engine.builders import validate_components

    built = validate_components(cfg, data_args={"num_classes": 4})
    assert type(built["loss"]).__name__ == "PluginLoss" and built["loss"].margin == 0.3

    # the saved config (a run's config.yaml) records the module: a new process finds the loss again
    saved = tmp_path / "config.yaml"
    save_config(cfg, saved)
    _forget(plugin)
    with pytest.raises(ConfigError, match="unknown loss 'PluginLoss'"):
        load_config(saved, ["imports=[]"])
    assert load_config(saved) == cfg
    assert plugin in sys.modules


def test_imports_from_an_override_and_a_config_dict(plugin: str) -> None:
    from dynametric.config import config_from_dict

    cfg = load_config(None, [f"imports=[{plugin}]", "loss.name=PluginLoss"])
    assert cfg.imports == [plugin]
    _forget(plugin)
    assert config_from_dict(config_to_dict(cfg)) == cfg  # a published config (another rank) imports it too


def test_cli_import_option_then_train_dry_run(plugin: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--dry-run", "loss.name=PluginLoss", "data.iterations_per_epoch=2", "data.workers=0"]
    assert main(argv) == 2  # not imported: the loss is unknown, and the line says how to import it
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "key 'loss.name': unknown loss 'PluginLoss'" in err
    assert "needs its module imported first: dynametric --import MODULE ..., or 'imports:' in a config" in err
    assert main(["--import", plugin, *argv]) == 0
    out = capsys.readouterr()
    assert plugin in sys.modules and "loss" in out.out + out.err


def test_cli_import_of_a_missing_module_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--import", "dm_no_such_pkg.components", "train", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == ("dynametric train: error: key '--import': cannot import 'dm_no_such_pkg.components' "
                   "(ModuleNotFoundError: No module named 'dm_no_such_pkg'); is it on PYTHONPATH? the dynametric co"
                   "mmand does not search the current folder; only for code you trust (importing runs it): "
                   "PYTHONPATH=. dynametric ...\n")


def test_cli_import_given_after_the_command_says_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--import", "mypkg", "--dry-run"]) == 2
    assert "--import is an option of dynametric itself, given before the command: dynametric --import MODULE " \
           "train ..." in capsys.readouterr().err


def test_a_module_that_cannot_be_imported_names_the_file_and_line(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = _write(tmp_path / "run.yaml", "trainer:\n  max_epochs: 1\nimports:\n  - dm_no_such_pkg.x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file)
    assert str(exc.value) == (f"{cfg_file}:3 key 'imports': cannot import 'dm_no_such_pkg.x' (ModuleNotFoundError: "
                              "No module named 'dm_no_such_pkg'); is it on PYTHONPATH? the dynametric co"
                              "mmand does not search the current folder; only for code you trust (importing runs "
                              "it): PYTHONPATH=. dynametric ...")
    assert main(["train", "--config", str(cfg_file), "--dry-run"]) == 2
    assert capsys.readouterr().err == f"dynametric train: error: {exc.value}\n"


def test_a_module_that_raises_on_import_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dm_broken_plugin.py").write_text("raise RuntimeError('no GPU here. Details follow')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(None, ["imports=[dm_broken_plugin]"])
    finally:
        sys.modules.pop("dm_broken_plugin", None)
    assert str(exc.value) == ("<command line> key 'imports': cannot import 'dm_broken_plugin' (RuntimeError: no GPU "
                              "here.)")


def test_a_module_that_calls_sys_exit_or_imports_a_missing_module_is_one_line(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``sys.exit(3)`` at import: one line naming the module (was: the process exited with status 3, silently); a
    module the module itself imports that is missing: no PYTHONPATH advice (the module was found)."""
    (tmp_path / "dm_exiting_plugin.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "dm_needy_plugin.py").write_text("import dm_not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(None, ["imports=[dm_exiting_plugin]"])
        assert str(exc.value) == ("<command line> key 'imports': cannot import 'dm_exiting_plugin' (it called "
                                  "sys.exit(3) at import)")
        assert main(["--import", "dm_exiting_plugin", "train", "--dry-run"]) == 2
        with pytest.raises(ConfigError) as exc:
            load_config(None, ["imports=[dm_needy_plugin]"])
        assert str(exc.value) == ("<command line> key 'imports': cannot import 'dm_needy_plugin' (ModuleNotFoundError: "
                                  "No module named 'dm_not_installed_dependency')")
    finally:
        sys.modules.pop("dm_exiting_plugin", None)
        sys.modules.pop("dm_needy_plugin", None)


def test_a_file_name_in_imports_is_refused_before_anything_is_imported(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``imports: [dm_heavy_plugin.py]``: was importing ``dm_heavy_plugin`` (running its code), then ``No module
    named 'dm_heavy_plugin.py'; 'dm_heavy_plugin' is not a package``."""
    (tmp_path / "dm_heavy_plugin.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError) as exc:
            load_config(None, ["imports=[dm_heavy_plugin.py]"])
        assert "dm_heavy_plugin" not in sys.modules
    finally:
        sys.modules.pop("dm_heavy_plugin", None)
    assert str(exc.value) == ("<command line> key 'imports[0]': expected a module name, got the file name "
                              "'dm_heavy_plugin.py': write dm_heavy_plugin (a module name, not a file)")


@pytest.mark.parametrize(("text", "message"), [
    ("imports: mypkg.components\n",
     "3 key 'imports': expected a list of module names, got 'mypkg.components' (str); write [mypkg.components]"),
    ("imports: [mypkg, 3]\n", "3 key 'imports[1]': expected str, got 3 (int)"),
    ("imports: [my-pkg.components]\n", "3 key 'imports[0]': expected a module name (Python identifiers joined by "
                                       "'.', e.g. mypkg.components), got 'my-pkg.components' (str)"),
    ("imports: [.relative]\n", "3 key 'imports[0]': expected a module name"),
    ("imports: null\n", "3 key 'imports': expected list of str, got None (NoneType)"),
])
def test_imports_value_checked(tmp_path: Path, text: str, message: str) -> None:
    cfg_file = _write(tmp_path / "run.yaml", "trainer:\n  max_epochs: 1\n" + text)
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file)
    assert str(exc.value).startswith(f"{cfg_file}:{message}")
    assert "\n" not in str(exc.value)


def test_unknown_names_hint_at_imports(tmp_path: Path) -> None:
    """Each component a user's module can register: an unknown name ends with how to import that module."""
    hint = "a component registered by your own code needs its module imported first"
    cfg_file = _write(tmp_path / "config.yaml", "run:\n  report: false\nloss:\n  name: MyLoss\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg_file)
    text = str(exc.value)
    assert text.startswith(f"{cfg_file}:4 key 'loss.name': unknown loss 'MyLoss'") and hint in text
    assert "\n" not in text
    for override, start in [
            ("miner.name=MyMiner", "<command line> key 'miner.name': unknown miner 'MyMiner'"),
            ("data.sampler=mysampler", "<command line> key 'data.sampler': unknown sampler 'mysampler'"),
            ("data.format=myjson", "<command line> key 'data.format': unknown dataset format 'myjson'")]:
        with pytest.raises(ConfigError) as exc:
            load_config(None, [override])
        assert str(exc.value).startswith(start) and str(exc.value).endswith(
            "dynametric --import MODULE ..., or 'imports:' in a config"), str(exc.value)
    from dynametric.methods import method_for

    with pytest.raises(ConfigError, match=f"unknown method 'mymethod'.*{hint}"):
        method_for(load_config(None, ["method.name=mymethod"]))
    from dynametric.data.registry import get_format

    with pytest.raises(ConfigError, match=f"unknown dataset format 'myjson'; valid formats: .*oml.*; {hint}"):
        get_format("myjson")


def test_a_suggestion_then_the_hint_reads_as_two_sentences() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["data.format=csvv"])
    assert str(exc.value) == ("<command line> key 'data.format': unknown dataset format 'csvv'; did you mean 'csv'? "
                              "A component registered by your own code needs its module imported first: "
                              "dynametric --import MODULE ..., or 'imports:' in a config")


def _json_dataset(root: Path) -> Path:
    import json

    from PIL import Image

    root.mkdir()
    rows = []
    for i in range(8):
        name = f"img{i}.png"
        Image.new("RGB", (8, 8), (30 * i, 10, 200)).save(root / name)
        rows.append({"split": "train" if i < 6 else "test", "path": name, "fine": i // 2, "coarse": i // 4})
    (root / "labels.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


def test_a_registered_format_passes_the_config_check_and_data_inspect(plugin: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = _json_dataset(tmp_path / "data")
    cfg = load_config(None, [f"imports=[{plugin}]", "data.format=dmjson", f"data.root={root}"])
    assert cfg.data.format == "dmjson"
    from dynametric.data.registry import format_names

    assert format_names()[-2:] == ("dmjson", "synthetic")

    argv = ["data", "inspect", "--format", "dmjson", "--root", str(root), "--no-verify-images"]
    _forget(plugin)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynametric data inspect: error: key '--format': unknown dataset format 'dmjson'; valid "
                          "formats: cub200,") and "dynametric --import MODULE" in err
    assert main(["--import", plugin, *argv]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images; classes: fine=3, coarse=2" in out and "test: 2 images; classes: fine=1, coarse=1" in out


def test_an_empty_imports_keeps_the_config_hash() -> None:
    """Runs written before the key existed keep their hash (resume and embed compare it); a module listed counts."""
    import hashlib
    import json

    plain = {k: v for k, v in config_to_dict(Config()).items() if k != "imports"}
    before = hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert config_hash(Config()) == before
    assert config_hash(Config(imports=["mypkg"])) != before


def test_an_unknown_backbone_hints_at_imports_once() -> None:
    """``model.backbone`` is a component a user's module can register too: its unknown name ends with the import
    hint, once."""
    from dynametric.models import build_embedder

    with pytest.raises(ConfigError) as exc:
        build_embedder("mybackbone_xyz", embedding_dim=4)
    text = str(exc.value)
    assert text.startswith("key 'model.backbone': unknown backbone 'mybackbone_xyz'"), text
    assert text.endswith("dynametric --import MODULE ..., or 'imports:' in a config")
    assert text.count("registered by your own code") == 1 and "\n" not in text
