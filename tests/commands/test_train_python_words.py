"""How to go on after a stopped or refused run, said to a Python caller (``run_training`` from a notebook, the
``folder_key`` of :data:`~dynametric.pipeline.run_folder.PYTHON_FOLDER_KEY`) as the Python call that does it
(``run_training(load_config(...), run_dir[, resume=True])``, paths as Python literals), where the command line keeps
its own ``dynametric train ...`` line byte for byte: a Ctrl-C before and after the first checkpoint, ``resume=True``
without a checkpoint, a file error during the run, and a resume refused because the config changed (or is empty,
or changed only its imports). Each Python call a message gives is evaluated: it does what the message says."""

from __future__ import annotations

import errno
import functools
import shutil
from pathlib import Path

import pytest

from dynametric.config import load_config
from dynametric.engine.callbacks import ResumeState
from dynametric.errors import InputError, Interrupted
from dynametric.pipeline.run import check_resume, run_training
from dynametric.pipeline.run_errors import _file_error, _interrupted
from dynametric.pipeline.run_folder import PYTHON_FOLDER_KEY

TINY = ["model.backbone_kwargs={width: 4, depth: 2}", "model.embedding_dim=8", "trainer.max_epochs=2",
        "run.report=false", "trainer.progress_bar=false", "data.options={images_per_class: 4, image_size: 16}",
        "data.iterations_per_epoch=2"]
QUIET = {"log": lambda _: None, "note": lambda _: None}
NAME = "it's run"  # a quote in the folder's name: the Python calls quote it as a literal that pastes as it is


def _call(line: str) -> object:
    """Evaluate the Python call a message gives (quiet)."""
    return eval(line, {"run_training": functools.partial(run_training, **QUIET), "load_config": load_config})


def _after(text: str, marker: str) -> str:
    assert marker in text, text
    return text.split(marker, 1)[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / NAME
    run_training(load_config(None, TINY), run, **QUIET)
    return run


def test_ctrl_c_from_python_before_the_first_checkpoint_names_the_python_call(tmp_path, monkeypatch) -> None:
    import lightning as L

    run = tmp_path / NAME
    config = run / "config.yaml"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "fit", interrupt)
        with pytest.raises(Interrupted) as info:
            run_training(load_config(None, TINY), run, **QUIET)
    start = f'run_training(load_config("{config}"), "{run}")'  # repr of a path holding ': double quotes
    assert info.value.next_step == f"no checkpoint yet; start again with: {start}"
    assert not (run / "last.ckpt").exists() and config.is_file()
    # resume=True has no checkpoint to resume from: the same Python call starts the run again
    with pytest.raises(InputError) as refused:
        run_training(load_config(str(config)), run, resume=True, **QUIET)
    assert str(refused.value) == (f"{run / 'last.ckpt'}: no last.ckpt to resume from (the run stopped before its "
                                  f"first checkpoint; start it again with {start})")
    result = _call(start)  # what the messages say works: the run starts again in its folder and finishes
    assert result.run_dir == run and result.metrics["test"] and (run / "last.ckpt").is_file()  # type: ignore[attr-defined]


def test_ctrl_c_from_python_after_a_checkpoint_names_the_python_resume(tmp_path, monkeypatch) -> None:
    run = tmp_path / NAME
    real_end = ResumeState.on_train_epoch_end

    def end_then_ctrl_c(self, trainer, pl_module):  # Ctrl-C right after the first epoch's last.ckpt
        real_end(self, trainer, pl_module)
        if trainer.current_epoch == 0:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ResumeState, "on_train_epoch_end", end_then_ctrl_c)
        with pytest.raises(Interrupted) as info:
            run_training(load_config(None, TINY), run, **QUIET)
    resume = f'run_training(load_config("{run / "config.yaml"}"), "{run}", resume=True)'
    assert info.value.next_step == f"resume with: {resume}"
    assert (run / "last.ckpt").is_file() and not (run / "run_info.json").exists()
    result = _call(_after(info.value.next_step, "resume with: "))  # the resume finishes the run
    assert [v["epoch"] for v in result.metrics["validation"]] == [0, 1]  # type: ignore[attr-defined]
    assert result.metrics["test"] and (run / "run_info.json").is_file()  # type: ignore[attr-defined]


def test_how_an_interrupted_run_goes_on_in_each_callers_words(tmp_path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    assert _interrupted(run, None, [], write=False, folder_key=PYTHON_FOLDER_KEY).next_step is None
    (run / "config.yaml").write_text("")
    assert _interrupted(run, None, [], write=False, folder_key="--out").next_step == (
        f"no checkpoint yet; start again with: dynametric train --config {run / 'config.yaml'} --out {run}")
    assert _interrupted(run, None, [], write=False, folder_key="run.name").next_step == (
        f"no checkpoint yet; start again with: dynametric train --config {run / 'config.yaml'} --out {run}")
    assert _interrupted(run, None, [], write=False, folder_key=PYTHON_FOLDER_KEY).next_step == (
        f"no checkpoint yet; start again with: run_training(load_config('{run / 'config.yaml'}'), '{run}')")
    (run / "last.ckpt").write_bytes(b"")
    assert _interrupted(run, None, [], write=False, folder_key="--resume").next_step == (
        f"resume with: dynametric train --resume {run}")
    assert _interrupted(run, None, [], write=False, folder_key=PYTHON_FOLDER_KEY).next_step == (
        f"resume with: run_training(load_config('{run / 'config.yaml'}'), '{run}', resume=True)")


def test_a_file_error_of_a_python_run_names_the_python_resume(tmp_path) -> None:
    run = tmp_path / NAME
    run.mkdir()
    full = OSError(errno.ENOSPC, "No space left on device", str(run / "best.ckpt"))
    assert _file_error(full, run, PYTHON_FOLDER_KEY) is None  # before the first last.ckpt: raised as it was
    (run / "last.ckpt").write_bytes(b"")
    python = _file_error(full, run, PYTHON_FOLDER_KEY)
    cli = _file_error(full, run, "--out")
    assert python is not None and cli is not None
    assert str(python).endswith(f'; resume with: run_training(load_config("{run / "config.yaml"}"), "{run}", '
                                'resume=True)')
    assert str(cli).endswith(f"; resume with: dynametric train --resume {run}")
    assert str(python).split("; resume with: ")[0] == str(cli).split("; resume with: ")[0]
    assert isinstance(python, OSError) and python.errno == errno.ENOSPC


def test_a_refused_python_resume_names_the_python_calls(finished, tmp_path) -> None:
    run = finished
    config, last = run / "config.yaml", run / "last.ckpt"
    new = f'restore it, or start a new run with run_training(load_config("{config}"), NEW) (NEW: another run_dir)'
    cli_new = f"restore it, or start a new run with dynametric train --config {config} --out NEW"
    # an edited config: Python's words for a Python call, the command line's for its key
    edited = load_config(config, ["data.batch_size=8"])
    with pytest.raises(InputError) as info:
        run_training(edited, run, resume=True, **QUIET)
    python = str(info.value)
    resume = f'run_training(load_config("{config}"), "{run}", resume=True)'
    # the argument cfg differs, not config.yaml (as the run wrote it): named cfg, with the resume that works
    assert python.startswith(f"key 'cfg': no longer matches the checkpoint the run was saved with ({last} was "
                             "trained ")
    assert python.endswith(f"; changed: data.batch_size (32 -> 8)); resume with the config the run was trained with, "
                           f"which {config} holds: {resume}; or start a new run with this cfg: run_training(cfg, NEW) "
                           "(NEW: another run_dir)")
    with pytest.raises(InputError) as info:
        check_resume(edited, run, "--resume", lambda _: None)
    cli = str(info.value)
    assert cli.startswith(f"{config}: no longer matches the checkpoint it was saved with ({last} was trained ")
    assert cli.endswith(f"; changed: data.batch_size (32 -> 8)); {cli_new}")
    # only the imports changed
    imports = load_config(config)
    imports.imports = ["json"]
    with pytest.raises(InputError) as info:
        run_training(imports, run, resume=True, **QUIET)
    assert str(info.value) == (f"key 'cfg.imports': changed only its imports ([] in {last}, ['json'] here), which "
                               "resuming keeps as the run recorded them: resume with the config the run was trained "
                               f"with, which {config} holds: {resume} (import another module with import MODULE "
                               "before it)")
    with pytest.raises(InputError) as info:
        check_resume(imports, run, "--resume", lambda _: None)
    assert str(info.value).endswith(f"and import another module for the resume with dynametric --import MODULE train "
                                    f"--resume {run}")
    # an empty config.yaml (in a copy of the run)
    copy = Path(shutil.copytree(run, tmp_path / NAME))
    (copy / "config.yaml").write_text("")
    with pytest.raises(InputError) as info:
        run_training(load_config(config), copy, resume=True, **QUIET)
    empty = str(info.value)
    copy_new = new.replace(str(config), str(copy / "config.yaml"))
    assert empty.startswith(f"{copy / 'config.yaml'}: is empty: ") and empty.endswith(f"; {copy_new}")
    with pytest.raises(InputError) as info:
        check_resume(load_config(config), copy, "--resume", lambda _: None)
    assert str(info.value) == empty.replace(copy_new, cli_new.replace(str(config), str(copy / "config.yaml")))
    # the suggested resume, the run's own config: accepted (the finished run resumes and is as it was)
    metrics = (run / "metrics.json").read_text(encoding="utf-8")
    assert _call(resume).run_dir == run  # type: ignore[attr-defined]
    assert (run / "metrics.json").read_text(encoding="utf-8") == metrics
