"""``run_training(cfg, run_dir, resume=True)`` from Python with a ``cfg`` other than the one the run was trained
with: the refusal names the argument ``cfg`` (the run's ``config.yaml`` is as the run wrote it), says the resume
that works (the run's own config, evaluated here) and how to start a new run with ``cfg``; where ``config.yaml``
was edited too, it says so."""

from __future__ import annotations

import pytest

from dynametric.config import load_config
from dynametric.errors import InputError
from dynametric.pipeline.run import run_training
from tests.commands.test_train_python_words import QUIET, TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("pyresume") / "run"
    run_training(load_config(None, TINY), run, **QUIET)
    return run


def test_a_python_cfg_other_than_the_runs_names_cfg_and_the_resume_that_works(trained) -> None:
    run = trained
    config, last = run / "config.yaml", run / "last.ckpt"
    with pytest.raises(InputError) as info:
        run_training(load_config(config, ["optim.lr=0.5"]), run, resume=True, **QUIET)
    message = str(info.value)
    resume = f"run_training(load_config({str(config)!r}), {str(run)!r}, resume=True)"
    assert message.startswith(f"key 'cfg': no longer matches the checkpoint the run was saved with ({last} was "
                              "trained with config hash ")
    assert message.endswith(f"; changed: optim.lr (0.001 -> 0.5)); resume with the config the run was trained with, "
                            f"which {config} holds: {resume}; or start a new run with this cfg: run_training(cfg, NEW) "
                            "(NEW: another run_dir)")
    assert not message.startswith(str(config))  # the file is as the run wrote it
    metrics = (run / "metrics.json").read_text(encoding="utf-8")
    result = eval(resume, {"run_training": lambda *a, **k: run_training(*a, **k, **QUIET), "load_config": load_config})
    assert result.run_dir == run and (run / "metrics.json").read_text(encoding="utf-8") == metrics


def test_an_edited_config_yaml_loaded_into_cfg_is_said_too(trained, tmp_path) -> None:
    import shutil

    run = shutil.copytree(trained, tmp_path / "copy")
    config = run / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace("lr: 0.001", "lr: 0.5"), encoding="utf-8")
    with pytest.raises(InputError) as info:
        run_training(load_config(config), run, resume=True, **QUIET)
    assert (f"resume with the config the run was trained with, which {config} no longer holds either (edited since "
            f"{run / 'last.ckpt'} was saved): restore it, then run_training(") in str(info.value)


@pytest.mark.parametrize("same", [("lr: 0.001", "lr: 1.0e-3"), ("workers: auto", "workers: AUTO"),
                                  ("precision: '32'", "precision: 32")])
def test_a_config_yaml_holding_the_trained_values_written_otherwise_still_holds_them(trained, tmp_path, same) -> None:
    """The file is loaded as a resume of it loads it: 1.0e-3 and 0.001 alike (QA: read as raw YAML, such a file was
    said to be edited, with advice to restore a file that resumes as it is)."""
    import shutil

    run = shutil.copytree(trained, tmp_path / "copy")
    config = run / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert same[0] in text
    config.write_text(text.replace(same[0], same[1]), encoding="utf-8")
    with pytest.raises(InputError) as info:
        run_training(load_config(config, ["optim.lr=0.5"]), run, resume=True, **QUIET)
    assert f"resume with the config the run was trained with, which {config} holds: run_training(" in str(info.value)


@pytest.mark.parametrize("damage", ["missing", "a list"])
def test_a_missing_or_broken_config_yaml_is_said_before_the_call_that_needs_it(trained, tmp_path, damage) -> None:
    import shutil

    run = shutil.copytree(trained, tmp_path / "copy")
    config = run / "config.yaml"
    if damage == "missing":
        config.unlink()
    else:
        config.write_text("- a\n- list\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        run_training(load_config(trained / "config.yaml", ["optim.lr=0.5"]), run, resume=True, **QUIET)
    assert (f"resume with the config the run was trained with, which {config} should hold, but it is missing or "
            f"cannot be loaded: restore it, then run_training(load_config({str(config)!r}), {str(run)!r}, "
            "resume=True)") in str(info.value)


def test_the_refusal_never_runs_the_code_of_modules_the_runs_config_yaml_lists(trained, tmp_path, monkeypatch) -> None:
    """QA: to word the refusal, RUN/config.yaml was loaded, which imported (ran) the modules its imports list without
    the import note, and registered them for every later loader's workers."""
    import shutil
    import sys

    import dynametric.utils.registry as registry

    run = shutil.copytree(trained, tmp_path / "copy")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "never_run_mod.py").write_text(
        f"open({str(tmp_path / 'ran')!r}, 'w').close()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.setattr(registry, "_FOR_WORKERS", [])
    config = run / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert text.count("imports: []\n") == 1
    config.write_text(text.replace("imports: []\n", "imports: [never_run_mod]\n"), encoding="utf-8")
    with pytest.raises(InputError) as info:
        run_training(load_config(trained / "config.yaml", ["optim.lr=0.5"]), run, resume=True, **QUIET)
    assert (f"resume with the config the run was trained with, which {config} should hold (not checked here: that "
            "would import the modules it lists, never_run_mod): run_training(") in str(info.value)
    assert not (tmp_path / "ran").exists() and "never_run_mod" not in sys.modules
    assert registry.modules_for_workers() == ()
