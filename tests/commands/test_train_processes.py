"""`dynametric train` with several processes, none started: under a launcher that started its processes itself
(torchrun; the variables set in this process), a step of several processes' batches that the training classes cannot
fill with distinct classes, and the run's `data:` line for a test protocol of its own splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from tests.commands.test_train import _LAUNCH_ENV, TINY

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def torchrun(monkeypatch):
    """The variables `torchrun --standalone --nproc-per-node 2` gives its process of rank ``rank``."""
    for name in (*_LAUNCH_ENV, "LOCAL_WORLD_SIZE", "DYNAMETRIC_RUN_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    def set_vars(rank: int) -> None:
        for name, value in {"RANK": rank, "LOCAL_RANK": rank, "GROUP_RANK": 0, "WORLD_SIZE": 2,
                            "LOCAL_WORLD_SIZE": 2, "TORCHELASTIC_RUN_ID": "d41d8cd9", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29517"}.items():
            monkeypatch.setenv(name, str(value))

    return set_vars


@pytest.mark.parametrize("rank", [0, 1])
def test_torchrun_with_one_device_is_refused_before_anything_is_written(tmp_path, capsys, torchrun, rank) -> None:
    """It ran two full separate trainings (exit 0, run_info processes: 1) into one folder."""
    torchrun(rank)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "run"
    expected = ("key 'trainer.devices': torchrun started 2 processes (WORLD_SIZE=2, LOCAL_WORLD_SIZE=2) but "
                "trainer.devices=1 x trainer.num_nodes=1 is 1 process (each of its processes would train a run of its "
                "own); set trainer.devices: 2 and trainer.num_nodes: 1")
    for dry in ([], ["--dry-run"]):
        assert main(["train", *dry, "--config", str(config), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(expected), err
        assert not out.exists()
    assert main(["train", "--dry-run", "--config", str(config), "--no-progress", "trainer.devices=2"]) == 0


def test_a_one_process_method_under_torchrun_says_so_whatever_trainer_devices_says(capsys, torchrun) -> None:
    """MIC / sharing_alternating refuse several processes; under torchrun with trainer.devices: 1 the check passed
    (and each process trained alone), and asking for trainer.devices: 2 would only meet that refusal."""
    torchrun(0)
    for devices in ("1", "2"):
        assert main(["train", "--dry-run", "--config", str(CONFIGS / "mic" / "synthetic.yaml"),
                     f"trainer.devices={devices}"]) == 2
        assert capsys.readouterr().err.strip().endswith(
            "key 'trainer.devices': method 'mic' runs on one process, and torchrun started 2 (WORLD_SIZE=2, "
            "LOCAL_WORLD_SIZE=2); start dynametric train without torchrun, with trainer.devices: 1")


def test_the_data_line_counts_the_test_images_of_a_method_s_own_protocol(tmp_path, capsys, monkeypatch) -> None:
    """A `method.name: dyml` run printed `... / protocol test images`."""
    for name in _LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("run: {report: true}", "run: {report: false}"))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress", "trainer.max_epochs=1",
                 "method.name=dyml", "method.kwargs.variant=all_in_one",
                 "method.kwargs.query_in_gallery=contained"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
    # TINY: 2 test classes per shape of 4 images: 18 x 4 = 72 test images
    assert lines == ["data: 72 train / 36 validation (split 'val') / 72 test images (split 'test'); scales ['fine', "
                     "'middle', 'coarse']"]


def test_test_images_name_every_split_of_the_protocol() -> None:
    from dynametric.pipeline.run import _test_images

    assert _test_images([0] * 5, {"test": [0] * 5}) == "5 test images"
    assert _test_images(None, {"test": [0] * 7}) == "7 test images (split 'test')"
    assert _test_images(None, {"gallery": [0] * 9, "query": [0] * 3}) == \
        "9 + 3 test images (splits 'gallery' + 'query')"


def test_a_step_of_two_processes_needs_twice_the_distinct_classes(tmp_path, capsys, monkeypatch) -> None:
    """Under DDP the loss sees the two processes' batches together; they shared classes (and images) where the
    training split had too few classes for both. TINY's training split has 18 fine classes: 10 per batch fit one
    process, not two."""
    for name in _LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    argv = ["--config", str(config), "--no-progress", "data.batch_size=40", "trainer.accelerator=cpu"]
    assert main(["train", "--dry-run", *argv]) == 0
    capsys.readouterr()
    expected = ("key 'data.batch_size': a step of 2 processes needs 2 x 10 = 20 distinct fine classes (batch_size "
                "40 / m 4 per process; the loss sees the step's batches together) but the training split has only 18; "
                "try data.batch_size=36 or data.m=5 or at most 1 process(es) in all (trainer.devices x "
                "trainer.num_nodes)")
    assert main(["train", "--dry-run", *argv, "trainer.devices=2"]) == 2
    assert capsys.readouterr().err.strip().endswith(expected)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *argv, "trainer.devices=2"]) == 2  # before the other rank starts
    assert capsys.readouterr().err.strip().endswith(expected) and not out.exists()
