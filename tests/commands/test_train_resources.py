"""``dynametric train`` when a resource runs out: the open files its loader workers need (``ulimit -n``), a full
disk as the run starts or at a later checkpoint."""

from __future__ import annotations

import resource

from dynametric.cli import main
from tests.metrics_csv import TINY_SYNTHETIC

TRAIN = [*TINY_SYNTHETIC, "--no-progress"]


def _open_file_limit(monkeypatch, soft: int, hard: int) -> list[tuple[int, int]]:
    """``getrlimit(RLIMIT_NOFILE)`` answering ``(soft, hard)``; ``setrlimit`` recorded, not made."""
    real = resource.getrlimit
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit",
                        lambda which: (soft, hard) if which == resource.RLIMIT_NOFILE else real(which))
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: calls.append(value))
    return calls


def test_workers_beyond_the_hard_open_file_limit_are_refused_before_anything_is_written(tmp_path, capsys,
                                                                                           monkeypatch) -> None:
    # was: `OSError: [Errno 24] Too many open files` in the workers, then a loader waiting for them forever
    run = tmp_path / "run"
    calls = _open_file_limit(monkeypatch, 24, 24)
    assert main(["train", "--out", str(run), *TRAIN, "data.workers=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dynametric train: error: <command line> key 'data.workers'"
                                                         ": 2 loader workers need about ")
    assert "(ulimit -n: 24 soft, 24 hard)" in err and "data.workers=0: loading in the main process" in err
    assert calls == [] and not run.exists()
    # the dry run says it too
    assert main(["train", "--dry-run", "--out", str(run), *TRAIN, "data.workers=2"]) == 2
    assert "key 'data.workers': 2 loader workers need about " in capsys.readouterr().err


def test_a_low_soft_open_file_limit_is_raised_and_the_run_trains(tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    calls = _open_file_limit(monkeypatch, 24, 100_000)
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1", "data.workers=1"]) == 0
    assert calls and calls[0] == (4096, 100_000)
    assert (run / "last.ckpt").is_file()


def test_a_full_disk_at_config_yaml_leaves_a_folder_the_same_command_starts_again_in(tmp_path, capsys,
                                                                                    monkeypatch) -> None:
    # was: logs/hparams.yaml written as the trainer was built, before config.yaml: the rerun said `output folder is
    # not empty and holds no dynametric run` and the folder had to be deleted by hand
    import errno

    import dynametric.config

    run = tmp_path / "run"
    command = ["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]

    def full(cfg, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(dynametric.config, "save_config", full)
        assert main(command) == 2
    assert f"{run / 'config.yaml'}: No space left on device" in capsys.readouterr().err
    assert not (run / "logs").exists()
    assert main(command) == 0
    assert (run / "last.ckpt").is_file() and (run / "logs" / "hparams.yaml").is_file()


def test_a_full_disk_at_a_later_checkpoint_says_how_to_resume(tmp_path, capsys, monkeypatch) -> None:
    # was: `RUN/best.ckpt: No space left on device (...)` alone, where a logger's failure said how to resume
    import errno

    from dynametric.engine.checkpoint import SafeCheckpointIO

    run = tmp_path / "run"
    real = SafeCheckpointIO.save_checkpoint

    def full_at_epoch_2(self, checkpoint, path, storage_options=None):
        if checkpoint["epoch"] >= 1:  # the second epoch's best.ckpt (written before its last.ckpt)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(SafeCheckpointIO, "save_checkpoint", full_at_epoch_2)
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"dynametric train: error: {run}")
    assert ".ckpt: No space left on device (nothing was left half-written" in err
    assert err.endswith(f"; resume with: dynametric train --resume {run}")
    assert (run / "last.ckpt").is_file()


def test_a_run_file_error_stays_the_oserror_it_was(tmp_path) -> None:
    import errno

    from dynametric.pipeline.run_errors import _file_error

    assert _file_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")), tmp_path, "--out") is None
    (tmp_path / "last.ckpt").write_bytes(b"")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "best.ckpt"))
    error = _file_error(full, tmp_path, "--out")
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == str(tmp_path / "best.ckpt")
    assert str(error).endswith(f"; resume with: dynametric train --resume {tmp_path}")
