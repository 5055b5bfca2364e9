"""Library calls leave process-wide state as they found it: the global torch RNG (builders), the grad mode
(``dry_run``), warning filters and logger levels (only the CLI quiets Lightning, through ``quiet_lightning``)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from dynametric.config import load_config
from dynametric.pipeline import build_components
from dynametric.pipeline.run import dry_run, quiet_lightning, run_training

TINY = ["model.backbone_kwargs={width: 4, depth: 2}", "model.embedding_dim=8"]
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")


def _weights(comps) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in comps.module.state_dict().items()}


def test_build_components_draws_from_the_seed_without_touching_the_global_rng():
    cfg = load_config(None, [*TINY, "trainer.seed=5"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _weights(build_components(cfg, datasets=None))
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(1000)  # another global state: same weights, because they come from trainer.seed
    second = _weights(build_components(cfg, datasets=None))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # the weights are those of the seeded global RNG (what the builders did before they stopped seeding globally)
    torch.manual_seed(5)
    from dynametric.engine.builders import build_model

    reference = build_model(cfg).state_dict()
    assert all(torch.equal(reference[k], first[f"embedder.{k}"]) for k in reference)
    other = _weights(build_components(load_config(None, [*TINY, "trainer.seed=6"]), datasets=None))
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("mode", [False, True])
def test_dry_run_restores_the_grad_mode(mode):
    cfg = load_config(None, TINY)
    with torch.set_grad_enabled(mode):
        dry_run(cfg, log=lambda _: None)
        assert torch.is_grad_enabled() is mode


def test_run_training_leaves_warning_filters_and_logger_levels_alone(tmp_path):
    cfg = load_config(None, [*TINY, "trainer.max_epochs=1", "run.report=false", "trainer.progress_bar=false",
                             "data.options={images_per_class: 4, image_size: 16}", "data.iterations_per_epoch=2"])
    with warnings.catch_warnings():
        filters = list(warnings.filters)
        levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
        run_training(cfg, tmp_path / "run", log=lambda _: None)
        assert warnings.filters == filters
        assert {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS} == levels
        quiet_lightning()  # what the CLI opts into
        assert len(warnings.filters) > len(filters)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_run_training_stopped_by_ctrl_c_puts_the_sigint_handler_back(tmp_path):
    """Lightning ignores SIGINT while it shuts down after a Ctrl-C and never puts the handler back: every later
    Ctrl-C of the process (a notebook's interrupt button) was ignored. A real SIGINT, sent in the second step."""
    import os
    import signal

    from dynametric.engine.module import MetricLearningModule

    cfg = load_config(None, [*TINY, "trainer.max_epochs=2", "run.report=false", "trainer.progress_bar=false",
                             "data.options={images_per_class: 4, image_size: 16}", "data.iterations_per_epoch=3"])
    step = MetricLearningModule.training_step
    sent = []

    def ctrl_c_in_the_second_step(self, batch, batch_idx):
        if batch_idx == 1 and not sent:
            sent.append(batch_idx)
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode: a KeyboardInterrupt here
        return step(self, batch, batch_idx)

    def handler(signum, frame):  # the caller's own handler (a notebook kernel installs one)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(MetricLearningModule, "training_step", ctrl_c_in_the_second_step)
            with pytest.raises(KeyboardInterrupt):
                run_training(cfg, tmp_path / "run", log=lambda _: None, note=lambda _: None)
        assert sent == [1]
        assert signal.getsignal(signal.SIGINT) is handler  # Lightning left SIG_IGN here
    finally:
        signal.signal(signal.SIGINT, previous)
    # and the default handler, when it was the one in place (a plain Python session)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sent.clear()
        with pytest.MonkeyPatch.context() as m:
            m.setattr(MetricLearningModule, "training_step", ctrl_c_in_the_second_step)
            with pytest.raises(KeyboardInterrupt):
                run_training(cfg, tmp_path / "run2", log=lambda _: None, note=lambda _: None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
