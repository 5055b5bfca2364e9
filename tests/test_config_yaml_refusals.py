"""Hand-written YAML configs and overrides that once loaded a value the run could not use, or ended in a traceback,
are refused in one line naming the key (and the file and line): head names torch cannot take, integers past 64 bits,
values no run folder could record (sets, bytes, keys that are not names), non-finite scale weights, a run name over
several lines; and the messages stay on one short line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.config import load_config, parse_value, save_config
from dynametric.errors import ConfigError
from tests.commands.test_train import TINY


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _refused(path: Path | None = None, overrides: list[str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    assert "\n" not in str(info.value) and len(str(info.value)) < 600
    return info.value


def _dry_error(tmp_path: Path, capsys, *argv: str) -> str:
    cfg = _write(tmp_path / "tiny.yaml", TINY)
    assert main(["train", "--dry-run", "--config", str(cfg), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    return err


# --------------------------------------------------------------------------------- through the command line

@pytest.mark.parametrize("overrides, expected", [
    # each was a KeyError traceback from torch's ModuleDict when the model was built
    (["model.num_heads=2", "model.head_names=['', b]"],
     "key 'model.head_names[0]': expected a head name (a non-empty string), got ''"),
    (["model.num_heads=2", "model.head_names=[a.b, c]"],
     "key 'model.head_names[0]': expected a head name without '.'"),
    (["model.num_heads=2", "model.head_names=[x, training]"],
     "key 'model.head_names[1]': 'training' is an attribute of torch's ModuleDict"),
    # loaded, and eval's 'concat' (all heads) then meant two things
    (["model.num_heads=2", "model.head_names=[concat, b]"],
     "key 'model.head_names[0]': 'concat' names all heads together"),
    # an OverflowError traceback from len(sampler) in the preflight
    (["data.iterations_per_epoch=9223372036854775808"],
     "key 'data.iterations_per_epoch': expected an integer from -2**63 to 2**63 - 1"),
    # an OverflowError traceback from Lightning's Trainer
    (["trainer.devices=9223372036854775808"], "key 'trainer.devices': expected at most 65536 processes on one "
                                              "machine"),
    # Lightning made a list of that many devices: 'out of memory; lower eval.memory_budget_bytes'
    (["trainer.devices=9223372036854775807"], "key 'trainer.devices': expected at most 65536 processes on one "
                                              "machine"),
    # ValueError traceback: Exceeds the limit (4300 digits) for integer string conversion
    (["trainer.seed=" + "9" * 5000], "key 'trainer.seed': invalid YAML value (an integer of more than 4,300 digits"),
    # RecursionError traceback
    (["data.options.foo=&a [1, *a]"], "key 'data.options.foo': invalid YAML at column 1: an alias (*name) inside "
                                      "the value its anchor (&name) names"),
])
def test_the_dry_run_refuses_in_one_line(tmp_path: Path, capsys, overrides: list[str], expected: str) -> None:
    err = _dry_error(tmp_path, capsys, *overrides)
    assert err.startswith("dynametric train: error: <command line> " + expected), err


def test_a_device_file_as_config_is_not_said_missing(tmp_path: Path, capsys) -> None:
    assert main(["train", "--dry-run", "--config", "/dev/null"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("dynametric train: error: /dev/null: is not a regular file (a device, a pipe or a socket), not a "
                   "YAML config file: save the config to a file")  # was "config file not found"


# ------------------------------------------------------------------------------------------- in a file

@pytest.mark.parametrize("weights", [".nan", ".inf"])
def test_scale_weights_must_be_finite(tmp_path: Path, weights: str) -> None:
    path = _write(tmp_path / "c.yaml", f"loss:\n  multiscale: true\n  scale_weights: [1, {weights}, 1]\n")
    err = _refused(path)  # loaded; the dry run then failed with "key 'weights'" from MultiScaleLoss
    assert (err.key, err.line) == ("loss.scale_weights", 3)
    assert err.message.startswith("expected finite non-negative weights, not all zero, got [1.0, ")


def test_an_integer_past_64_bits_is_refused_where_it_is_written(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "trainer:\n  max_epochs: 0x" + "f" * 4000 + "\n")
    err = _refused(path)  # loaded; config_hash and save_config then raised ValueError
    assert (err.key, err.line) == ("trainer.max_epochs", 2)
    assert err.message == ("expected an integer from -2**63 to 2**63 - 1 (what torch, numpy and Python's sizes "
                           "hold), got an integer of 16000 bits (int)")
    assert load_config(_write(tmp_path / "ok.yaml", "trainer:\n  seed: 0xffffffff\n")).trainer.seed == 2**32 - 1


def test_a_huge_integer_for_a_string_is_said_by_its_size(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", "run:\n  name: 0x" + "f" * 4000 + "\n"))  # ValueError traceback
    assert (err.key, err.line) == ("run.name", 2)
    assert err.message.startswith("expected str | null, got an integer of 16000 bits (int)")


def test_an_integer_too_long_to_read_is_named_in_a_short_line(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", "trainer:\n  max_epochs: " + "9" * 5000 + "\n"))  # was 5,246 chars
    assert err.line == 2 and err.message.endswith("at column 15 (an integer of more than 4,300 digits, the most "
                                                  "Python reads)")


@pytest.mark.parametrize("value, got", [
    ("!!set {a}", "{'a'} (set), made by !!set"),
    ("!!binary aGVsbG8=", "b'hello' (bytes), made by !!binary"),
])
def test_values_no_run_folder_records_are_refused_in_a_free_form_mapping(value: str, got: str) -> None:
    err = _refused(overrides=[f"run.logger_options={{x: {value}}}"])  # config_hash raised TypeError
    assert err.key == "run.logger_options.x"
    assert f"got {got}" in err.message


def test_an_ordered_mapping_is_recorded_as_the_list_it_reloads_as(tmp_path: Path) -> None:
    cfg = load_config(overrides=["run.logger_options={x: !!omap [a: 1]}"])  # was a tuple: reloaded unequal
    assert cfg.run.logger_options == {"x": [["a", 1]]}
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("value", ["{1: a, b: 2}", "{null: a, b: 2}", "{1: a}"])
def test_keys_that_are_not_names_are_refused_inside_a_free_form_value(value: str) -> None:
    err = _refused(overrides=[f"data.options.foo={value}"])  # mixed keys: config_hash raised TypeError
    assert err.key == "data.options.foo" and err.message.startswith("expected string keys, got ")


def test_a_huge_integer_in_a_free_form_mapping_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "run:\n  logger_options:\n    x: 0x" + "f" * 4000 + "\n")
    err = _refused(path)  # loaded; config_hash and save_config raised ValueError
    assert (err.key, err.line) == ("run.logger_options.x", 3)
    assert err.message == "expected a number Python can write out, got an integer of 16000 bits (int)"


def test_two_spellings_of_one_key_are_a_duplicate(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", "data:\n  options:\n    1: a\n    0x1: b\n"))  # PyYAML kept b
    assert (err.key, err.line) == ("data.options.1", 4) and err.message == "duplicate key (first given on line 3)"


def test_a_null_key_at_the_top_names_its_file_and_line(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", "trainer: {}\n~: 2\n"))  # was "key 'None'" with no file
    assert (Path(str(err.file)).name, err.line) == ("c.yaml", 2)
    assert err.message.startswith("expected a key name, got None (NoneType); valid keys here: imports, data, ")


def test_a_key_with_a_line_break_stays_on_one_line(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", 'trainer:\n  "max\\nepochs": 1\n'))
    assert (err.key, err.line) == ("trainer.max\\nepochs", 2)


def test_a_missing_space_after_a_colon_is_hinted(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "c.yaml", "trainer:\n  max_epochs:3\n"))
    assert err.key == "trainer" and err.message.endswith(
        "got 'max_epochs:3' (str); a YAML mapping needs a space after ':' (write max_epochs: 3 on its own line "
        "under the key)")


@pytest.mark.parametrize("text, shown", [
    ("run:\n  name: |\n    multi\n    line\n", r"'multi\nline\n'"),
    ('run:\n  name: "a\\tb"\n', r"'a\tb'"),
])
def test_a_run_name_on_several_lines_is_refused(tmp_path: Path, text: str, shown: str) -> None:
    err = _refused(_write(tmp_path / "c.yaml", text))  # was a folder name with a line break in it
    assert (err.key, err.line) == ("run.name", 2)
    assert err.message.startswith(f"expected a folder name on one line, got {shown}, which holds the character U+")


@pytest.mark.parametrize("name", ['""', "' '", ".."])
def test_a_run_name_that_names_no_folder_of_its_own_is_refused(tmp_path: Path, name: str) -> None:
    err = _refused(_write(tmp_path / "c.yaml", f"run:\n  name: {name}\n"))
    assert (err.key, err.line) == ("run.name", 2) and err.message.startswith("expected a folder name, got ")


# --------------------------------------------------------------------------------------------- overrides

@pytest.mark.parametrize("override, start", [
    # was the folder name "'unterminated"
    ("run.name='unterminated", "invalid YAML: \"'unterminated\" starts a quoted string that does not parse"),
    # was "expected list of int, got '[1, 2' (str)"
    ("eval.k_values=[1, 2", "invalid YAML: '[1, 2' starts a list that does not parse"),
    # what a shell makes of an unquoted loss.kwargs={margin: 0.1}: was the string '{margin:'
    ("loss.kwargs={margin:", "invalid YAML: '{margin:' starts a mapping that does not parse"),
])
def test_an_override_that_starts_as_yaml_and_does_not_parse_is_refused(override: str, start: str) -> None:
    err = _refused(overrides=[override])
    assert err.key == override.split("=")[0] and str(err.file) == "<command line>"
    assert err.message.startswith(start), err.message
    if "{" in override or "[" in override:
        assert "put the whole KEY=VALUE in quotes" in err.message


def test_parse_value_keeps_plain_text_and_refuses_broken_yaml() -> None:
    assert parse_value("a: b c") == {"a": "b c"} and parse_value("x]") == "x]" and parse_value("*x") == "*x"
    with pytest.raises(ConfigError, match="starts a list that does not parse"):
        parse_value("[1, 2")
