"""``check_validation_queries``: a monitored metric the validation data cannot give a value is refused before the
run trains (every validation class a singleton at the monitored scale)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dynametric.config import load_config
from dynametric.engine.preflight import check_validation_queries
from dynametric.errors import ConfigError

SCALES = ["fine", "middle", "coarse"]


def _val(fine, coarse_of=lambda f: f // 2, sequences=None):
    labels = torch.tensor([[f, f // 2 if coarse_of is None else coarse_of(f), 0] for f in fine])
    return SimpleNamespace(labels=labels, sequence_ids=sequences)


def test_singleton_classes_at_the_monitored_scale_are_refused_naming_trainer_monitor():
    cfg = load_config()
    val = _val([0, 1, 2, 3])  # fine: four singletons; middle: two pairs
    with pytest.raises(ConfigError) as info:
        check_validation_queries(cfg, val, "fine/map@r", SCALES, "split 'val'")
    assert info.value.key == "trainer.monitor"
    text = str(info.value)
    assert "the monitored fine/map@r has no value on the split 'val' data (4 images)" in text and "\n" not in text
    assert "trainer.monitor=middle/map@r" in text
    check_validation_queries(cfg, val, "middle/map@r", SCALES)  # pairs: queries count
    check_validation_queries(cfg, _val([0, 0, 1, 2]), "fine/map@r", SCALES)  # one pair is enough
    with pytest.raises(ConfigError, match="no fine class there has two images"):  # the mean needs every scale
        check_validation_queries(cfg, val, "mean/recall@1", SCALES)
    check_validation_queries(cfg, None, "fine/map@r", SCALES)  # no validation: nothing to check


def test_what_the_check_leaves_alone():
    val = _val([0, 1, 2, 3])
    check_validation_queries(load_config(overrides=["eval.empty_queries=count_as_zero"]), val, "fine/map@r", SCALES)
    check_validation_queries(load_config(), val, "fine/nmi", SCALES)  # a clustering metric needs no query


def test_two_images_of_one_sequence_are_no_relevant_item():
    # the same-sequence exclusion: a query never finds the frames of its own sequence
    cfg = load_config()
    same = _val([0, 0, 1, 1], sequences=["a", "a", "b", "b"])
    with pytest.raises(ConfigError, match="no fine class there has two images from another sequence"):
        check_validation_queries(cfg, same, "fine/map@r", SCALES)
    check_validation_queries(cfg, _val([0, 0, 1, 1], sequences=["a", "b", "c", "c"]), "fine/map@r", SCALES)


def test_the_batches_are_checked_for_every_process_of_the_run(tmp_path, capsys):
    """72 training items, data.sampler=random, data.batch_size=48 under 2 processes (96 items a step): the check
    built the sampler for one process, the dry run said OK, and the run failed after evaluating the untrained model
    and writing config.yaml, metrics.json and logs/."""
    from dynametric.cli import main
    from dynametric.config import errors_located
    from dynametric.engine.preflight import check_batches
    from tests.commands.test_train import TINY

    cfg = load_config(None, ["data.sampler=random", "data.batch_size=48"])
    train = SimpleNamespace(labels=torch.arange(72).reshape(72, 1) // 4)
    check_batches(cfg, train, world=1)  # one process: 48 of 72 items
    with pytest.raises(ConfigError) as info, errors_located(cfg):
        check_batches(cfg, train, world=2)
    assert str(info.value) == ("<command line> key 'data.batch_size': 72 items give no batch: one step takes "
                               "batch_size 48 x 2 rank(s) = 96 items; lower the batch size")
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    args = ["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress",
            "trainer.accelerator=cpu", "data.sampler=random", "data.batch_size=48"]
    assert main([*args, "--dry-run", "trainer.devices=2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dynametric train: error: <command line> key 'data.batch_size': 72 items give no batch: one step takes "
        "batch_size 48 x 2 rank(s) = 96 items; lower the batch size")
    assert main([*args, "trainer.devices=2"]) == 2  # the run: refused before the other rank starts, nothing written
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("= 96 items; lower the batch size")
    assert not out.exists()


def test_the_fitting_m_hint_is_found_at_once_for_a_huge_batch_size():
    """QA: ``--dry-run data.batch_size=4000000028`` hung: the ``data.m=`` hint tried every m up to batch_size / 2.
    4000000028 = 4 x 1000000007 (a prime): the fitting m with at most 10 classes per batch is 1000000007."""
    import threading

    from dynametric.engine.preflight import check_batches

    cfg = load_config(None, ["data.batch_size=4000000028", "data.m=4"])
    train = SimpleNamespace(labels=torch.arange(40).reshape(40, 1) // 4)  # 10 classes of 4
    errors: list[ConfigError] = []

    def check() -> None:
        try:
            check_batches(cfg, train)
        except ConfigError as err:
            errors.append(err)

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the hint search did not finish within 5 s"
    assert len(errors) == 1 and errors[0].key == "data.batch_size"
    assert str(errors[0]).endswith("but the training split has only 10; try data.batch_size=40 or data.m=1000000007")
