"""How config values are read: YAML 1.2 numbers and booleans (files and overrides), a string key's override taken
as typed, and ``~`` in the keys that name a path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dynametric.config import Config, config_to_dict, embedder_kwargs, load_config, parse_value, save_config
from dynametric.config.loader import _parse_yaml
from dynametric.config.schema import PATH_KEYS, schema_keys
from dynametric.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "src" / "dynametric" / "configs").rglob("*.yaml"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path | None = None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    return str(info.value)


# ------------------------------------------------------------------------------------------ YAML 1.2 numbers

@pytest.mark.parametrize("key, text, expected", [
    ("trainer.seed", "012345", 12345),  # was 5349 (YAML 1.1 octal)
    ("trainer.max_epochs", "010", 10),  # was 8
    ("data.m", "08", 8),  # was "expected int, got '08' (str)"
    ("trainer.max_epochs", "0o17", 15),  # YAML 1.2 octal (was the string '0o17')
    ("trainer.max_epochs", "0x1F", 31),
    ("trainer.max_epochs", "+7", 7),
    ("optim.lr", "1e-5", 1e-5),
    ("optim.lr", "2", 2.0),
])
def test_integers_are_read_as_yaml_1_2_on_the_command_line_and_in_files(tmp_path: Path, key: str, text: str,
                                                                        expected: float) -> None:
    section, name = key.split(".")
    from_file = load_config(_write(tmp_path / "c.yaml", f"{section}:\n  {name}: {text}\n"))
    from_line = load_config(overrides=[f"{key}={text}"])
    for cfg in (from_file, from_line):
        value = getattr(getattr(cfg, section), name)
        assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, meant", [
    ("trainer.max_epochs", "1:30", "90"),  # was 90 (YAML 1.1 base 60)
    ("optim.lr", "1:30", "90"),  # was 90.0
    ("optim.lr", "1:30.5", "90.5"),
    ("trainer.max_epochs", "1_000", "1000"),
    ("trainer.max_epochs", "0b101", "5"),
    ("trainer.deterministic", "yes", "true"),  # was True
    ("model.channels_last", "off", "false"),
])
def test_yaml_1_1_forms_are_strings_refused_with_what_to_write(tmp_path: Path, key: str, text: str,
                                                                meant: str) -> None:
    section, name = key.split(".")
    expected = _error(overrides=[f"{key}={text}"]).split(": ", 1)[1]
    wanted = "bool" if meant in ("true", "false") else ("int" if name == "max_epochs" else "float")
    what = "true and false are the only booleans" if wanted == "bool" else f"{text} is not a number"
    assert expected == (f"expected {wanted}{' | null' if name == 'channels_last' else ''}, got {text!r} (str); "
                        f"dynametric reads YAML 1.2, where {what} (YAML 1.1 read it as {meant}): write {meant} if "
                        "that is meant")
    path = _write(tmp_path / "c.yaml", f"# a comment\n{section}:\n  {name}: {text}\n")
    assert _error(path) == f"{path}:3 key '{key}': {expected}"


def test_parse_value_reads_yaml_1_2() -> None:
    assert [parse_value(t) for t in ("012", "0o10", "0x10", "1e3", ".inf", "true", "FALSE", "null", "~")] == \
        [12, 8, 16, 1000.0, float("inf"), True, False, None, None]
    for text in ("1:30", "1_000", "0b11", "-0x1F", "yes", "No", "ON", "off", "2024-01-01", "="):
        value = parse_value(text)
        assert value == text and type(value) is str  # a plain str (no marker subclass escapes)
    assert parse_value("[yes, 010, {on: 1}]") == ["yes", 10, {"on": 1}]


def test_yes_no_on_off_in_a_free_form_mapping_are_refused(tmp_path: Path) -> None:
    """A component takes the string 'no' as true: YAML 1.1 read it as false. Neither reading is silent."""
    assert _error(overrides=["loss.kwargs.swap=no"]) == (
        "<command line> key 'loss.kwargs.swap': no is ambiguous: dynametric reads YAML 1.2, where it is the string "
        "'no' (YAML 1.1 read it as false); write false for a boolean, or 'no' in quotes for the string")
    path = _write(tmp_path / "c.yaml", "data:\n  options:\n    images_per_class: 4\n    extra: [1, {flag: On}]\n")
    assert _error(path).startswith(f"{path}:4 key 'data.options.extra[1].flag': On is ambiguous")
    # quoted, it is the string; true / false are booleans
    # (the loss's own check, when the config loads, then says the string is not the boolean its swap takes)
    assert _error(overrides=["loss.kwargs.swap='no'"]) == (
        "<command line> key 'loss.kwargs.swap': TripletMarginLoss: expected true or false for swap, got 'no' (str)")
    assert load_config(overrides=["loss.kwargs.swap=false"]).loss.kwargs == {"swap": False}
    assert load_config(overrides=["model.freeze_bn=True"]).model.freeze_bn is True


def test_a_date_is_a_string_and_a_tagged_date_is_refused(tmp_path: Path) -> None:
    """YAML 1.2 has no dates: ``name: 2024-01-01`` is the string (was "expected str | null, got
    datetime.date(2024, 1, 1) (date)"); a date asked for with ``!!timestamp`` is never a config value."""
    assert load_config(_write(tmp_path / "a.yaml", "run:\n  name: 2024-01-01\n")).run.name == "2024-01-01"
    tagged = _write(tmp_path / "b.yaml", "run:\n  name: x\nloss:\n  kwargs:\n    since: !!timestamp 2024-01-01\n")
    assert _error(tagged) == (f"{tagged}:5 key 'loss.kwargs.since': expected a number, a string, true/false, null, "
                              "a list or a mapping, got datetime.date(2024, 1, 1) (date); write it in quotes for a "
                              "string")
    assert _error(overrides=["trainer.seed=2024-01-01"]) == \
        "<command line> key 'trainer.seed': expected int, got '2024-01-01' (str)"


def test_a_number_or_bool_in_a_file_for_a_string_key_says_to_quote_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "run:\n  name: 123\n")
    assert _error(path) == \
        f"{path}:2 key 'run.name': expected str | null, got 123 (int); write it in quotes for a string"
    assert load_config(_write(tmp_path / "d.yaml", "run:\n  name: no\n  output_dir: '123'\n")).run == \
        load_config(overrides=["run.name=no", "run.output_dir=123"]).run


@pytest.mark.parametrize("name", ["0o17", "yes", "1:30", "012", "1e5", "0x1F", "true", "~", "null", "2024-01-01",
                                  "No", "1_000", ".5", "0b1"])
def test_a_saved_config_loads_back_equal(tmp_path: Path, name: str) -> None:
    """The dumper quotes every string YAML 1.1 or the loader's YAML 1.2 would read as another type."""
    cfg = load_config(overrides=[f"run.name='{name}'", f"data.val_split='{name}'"])
    assert cfg.run.name == name and cfg.data.val_split == name
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["run"]["name"] == name  # YAML 1.1 tools too


class _Yaml11Loader(yaml.SafeLoader):
    """How the loader read files before it followed YAML 1.2: PyYAML's YAML 1.1 plus ``1e-5`` floats."""


_Yaml11Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                    list("-+0123456789"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_config_reads_the_same_under_yaml_1_1_and_1_2(path: Path) -> None:
    """No shipped config writes a value whose meaning changed with YAML 1.2 (same values, same types): each
    resolves as it did before."""
    text = path.read_text(encoding="utf-8")
    new, _ = _parse_yaml(text, str(path))
    old = yaml.load(text, Loader=_Yaml11Loader)
    assert new == old and repr(new) == repr(old)  # repr: 1 == 1.0 == True


# ---------------------------------------------------------------------- a string key's override, as typed

@pytest.mark.parametrize("text, expected", [
    ("no", "no"),  # was "expected str | null, got False (bool)"
    ("123", "123"),  # was "got 123 (int)"
    ("2024-01-01", "2024-01-01"),
    ("1e5", "1e5"),  # not 100000.0
    ("exp #3", "exp #3"),  # not 'exp' (a YAML comment)
    ("-", "-"),  # not [None] (a YAML list)
    ("a: b", "a: b"),
    (" x ", "x"),
    ("~", "~"),  # on the command line ~ is the home folder, not null
    ("'a b'", "a b"),  # quoted, as YAML
    ('"1:30"', "1:30"),
    ("null", None),
    ("NULL", None),
    ("", None),
])
def test_an_override_of_a_string_key_is_the_text_typed(text: str, expected: str | None) -> None:
    assert load_config(overrides=[f"run.name={text}"]).run.name == expected
    assert load_config(overrides=[f"data.val_split={text}"]).data.val_split == expected


def test_string_keys_inside_sections_and_list_entries_take_the_text_too(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "extra_losses:\n  - name: MarginLoss\n")
    cfg = load_config(path, ["extra_losses[0].term=2024", "eval.query_split=on", "data.train_split=0o1"])
    assert (cfg.extra_losses[0].term, cfg.eval.query_split, cfg.data.train_split) == ("2024", "on", "0o1")
    # a list or mapping is still one, refused by the type check; a key that takes no string still reads YAML
    assert _error(overrides=["run.name=[a]"]) == "<command line> key 'run.name': expected str | null, got ['a'] (list)"
    assert _error(overrides=["run.output_dir=null"]) == "<command line> key 'run.output_dir': expected str, got None " \
                                                        "(NoneType)"
    assert load_config(overrides=["trainer.precision=32", "data.workers=0"]).data.workers == 0
    assert _error(overrides=["optim.name=sgd #x"]).startswith("<command line> key 'optim.name': expected one of")


# --------------------------------------------------------------------------------------------- ~ in paths

def test_a_home_folder_tilde_in_run_output_dir_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run.output_dir=~/runs run.name=x` made the folder ./~/runs/x."""
    from dynametric.pipeline.run import default_run_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(overrides=["run.output_dir=~/runs", "run.name=x"])
    assert default_run_dir(cfg) == tmp_path / "runs" / "x"
    assert cfg.run.output_dir == "~/runs"  # the config keeps it as written (config.yaml, the hash)
    assert config_to_dict(cfg)["run"]["output_dir"] == "~/runs"


def test_a_home_folder_tilde_in_model_pretrained_path_is_expanded(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from dynametric.engine.builders import build_model

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(overrides=["model.pretrained_path=~/weights/w.pt"])
    assert embedder_kwargs(cfg.model)["pretrained_path"] == str(tmp_path / "weights" / "w.pt")
    assert cfg.model.pretrained_path == "~/weights/w.pt"
    with pytest.raises(InputError) as info:  # looked for in the home folder, not in ./~/weights
        build_model(cfg)
    assert str(info.value) == f"{tmp_path / 'weights' / 'w.pt'} key 'model.pretrained_path': weight file not found"
    assert embedder_kwargs(Config().model)["pretrained_path"] is None


def test_every_key_that_names_a_path_is_a_path_key() -> None:
    """A key added later that names a file or folder must be listed (and expanded where it is used)."""
    pathlike = [k for k in schema_keys() if re.search(r"(root|_path|_dir|_file)$", k)]
    assert sorted(pathlike) == sorted(PATH_KEYS)


@pytest.mark.parametrize("short,meant", [("bf16", "bf16-mixed"), ("16", "16-mixed")])
def test_lightnings_short_precision_names_are_pointed_at_what_lightning_means(short, meant):
    """Lightning reads ``bf16`` as ``bf16-mixed``; the closest spelling would have suggested ``bf16-true`` (16-bit
    weights, another mode)."""
    with pytest.raises(ConfigError, match=rf"got '{short}'; Lightning reads '{short}' as '{meant}'") as info:
        load_config(overrides=[f"trainer.precision={short}"])
    assert "bf16-true" not in str(info.value).split("got", 1)[1]
