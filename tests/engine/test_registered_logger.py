"""A logger of the user's own (any Lightning logger: Neptune, Comet, ClearML, ...) registered from a module that
`imports:` / `--import` names: `LOGGERS["name"] = factory(run_dir, **options)`. It receives the metrics the built-in
loggers receive; its options are checked against the factory's signature before any work; a factory that fails or
returns something else, and a write that fails, are one line naming the logger."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.utils.logger_registry import LOGGERS
from tests.engine.test_loggers import TINY

MODULE = '''
import json
from pathlib import Path

from lightning.pytorch.loggers import Logger

from dynametric.utils.logger_registry import LOGGERS


class JsonLinesLogger(Logger):
    def __init__(self, path, fail_on=None):
        super().__init__()
        self.path, self.fail_on = Path(path), fail_on

    @property
    def name(self):
        return "jsonl"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        if self.fail_on is not None and any(k.startswith(self.fail_on) for k in metrics):
            raise RuntimeError("the tracking server said no")
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\\n")


def make_jsonl(run_dir, filename="metrics.jsonl", fail_on=None):
    return JsonLinesLogger(Path(run_dir) / filename, fail_on)


LOGGERS["jsonl"] = make_jsonl
LOGGERS["not_a_logger"] = lambda run_dir: object()
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "my_jsonl_logger.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    for name in ("jsonl", "not_a_logger"):  # the module registers them when imported; each test imports it anew
        monkeypatch.delitem(LOGGERS, name, raising=False)
    monkeypatch.delitem(__import__("sys").modules, "my_jsonl_logger", raising=False)
    yield "my_jsonl_logger"
    for name in ("jsonl", "not_a_logger"):
        LOGGERS.pop(name, None)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_registered_logger_gets_the_metrics_of_the_run(tmp_path, user_module, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--import", user_module, "train", "--out", str(out), "run.logger=jsonl",
                 "run.logger_options={filename: m.jsonl}", *TINY]) == 0
    rows = _rows(out / "m.jsonl")
    metrics = json.loads((out / "metrics.json").read_text())
    test = [r for r in rows if "test/coarse/map@r" in r]
    assert len(test) == 1 and test[0]["test/coarse/map@r"] == pytest.approx(metrics["test"]["coarse"]["map@r"])
    assert any("val/fine/map@r" in r for r in rows) and any("untrained/mean/map@r" in r for r in rows)
    assert any("train/loss_step" in r or "train/loss" in r for r in rows)
    assert json.loads((out / "run_info.json").read_text())["logged_figures"] == 0  # no image API: none sent
    assert "jsonl" in (out / "config.yaml").read_text() and user_module in (out / "config.yaml").read_text()


def test_options_the_factory_does_not_take_are_refused_before_any_work(tmp_path, user_module, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--import", user_module, "train", "--out", str(out), "run.logger=jsonl",
                 "run.logger_options={filenme: m.jsonl}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("key 'run.logger_options.filenme': the jsonl logger takes no option 'filenme'; did you mean "
                        "'filename'? it takes fail_on, filename"), err
    assert not (out / "metrics.json").exists()
    assert main(["--import", user_module, "train", "--dry-run", "run.logger=jsonl",
                 "run.logger_options={filenme: m.jsonl}"]) == 2


def test_an_unregistered_name_says_how_to_import_the_module(capsys) -> None:
    assert main(["train", "--dry-run", "run.logger=jsonl"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'run.logger': unknown logger 'jsonl'" in err and "dynametric --import MODULE" in err
    assert len(err.splitlines()) == 1


def test_a_factory_returning_no_logger_is_one_line(tmp_path, user_module, capsys) -> None:
    assert main(["--import", user_module, "train", "--out", str(tmp_path / "run"), "run.logger=not_a_logger",
                 *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'run.logger': the not_a_logger logger's factory" in err and "returned a object, not a Lightning " \
        "logger (lightning.pytorch.loggers.Logger)" in err and "Traceback" not in err


def test_a_failing_write_of_a_registered_logger_is_one_line_naming_it(tmp_path, user_module, capsys) -> None:
    out = tmp_path / "run"
    assert main(["--import", user_module, "train", "--out", str(out), "run.logger=jsonl",
                 "run.logger_options={fail_on: val/}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "key 'run.logger': the jsonl logger failed logging " in err
    assert "RuntimeError: the tracking server said no" in err


def test_an_alias_builds_the_built_in_logger_and_a_bad_entry_is_named(monkeypatch, tmp_path) -> None:
    from dynametric.engine.loggers import KeepingCSVLogger, build_logger, check_logger_available
    from dynametric.errors import ConfigError

    monkeypatch.setitem(LOGGERS, "plain", "csv")
    logger = build_logger("plain", tmp_path)
    assert isinstance(logger, KeepingCSVLogger) and Path(logger.log_dir) == tmp_path / "logs"
    with pytest.raises(ConfigError, match="the plain logger takes no option 'project'"):
        build_logger("plain", tmp_path, {"project": "x"})
    monkeypatch.setitem(LOGGERS, "broken", 42)
    with pytest.raises(ConfigError, match=r"^key 'run.logger': the registered logger 'broken' is 42, neither a "
                                          r"factory"):
        check_logger_available("broken")


def test_a_registered_logger_is_written_from_global_rank_zero_only(monkeypatch, tmp_path) -> None:
    """Under DDP every rank logs the loss and the untrained metrics; Lightning's own loggers write on rank 0 only,
    and a registered one got every row once per rank."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    from dynametric.engine.loggers import build_logger

    rows: list[dict] = []

    class Recording(CSVLogger):
        def log_metrics(self, metrics, step=None):
            rows.append(dict(metrics))

    monkeypatch.setitem(LOGGERS, "rec", lambda run_dir: Recording(run_dir))
    logger = build_logger("rec", tmp_path)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger.log_metrics({"train/loss": 1.0}, step=1)
    logger.finalize("success")
    assert rows == []
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    logger.log_metrics({"train/loss": 2.0}, step=2)
    assert rows == [{"train/loss": 2.0}]


@pytest.mark.parametrize("factory", [lambda: None, lambda run_dir, filename, /: None, lambda *, run_dir: None])
def test_a_factory_that_cannot_take_the_run_folder_is_refused_by_the_dry_run(monkeypatch, capsys, factory) -> None:
    monkeypatch.setitem(LOGGERS, "odd", factory)
    assert main(["train", "--dry-run", "run.logger=odd"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'run.logger': the odd logger's factory" in err and "cannot be called as factory(run_dir, " \
        "**run.logger_options)" in err and len(err.splitlines()) == 1, err
