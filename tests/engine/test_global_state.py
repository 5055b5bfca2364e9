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


RUN = [*TINY, "trainer.max_epochs=1", "run.report=false", "trainer.progress_bar=false", "trainer.seed=5",
       "data.options={images_per_class: 4, image_size: 16}", "data.iterations_per_epoch=2"]
_FRESH_RUN = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[3]))  # the test process's intra-op threads (1 under xdist): same float sums
from dynametric.config import load_config
from dynametric.pipeline.run import run_training
r = run_training(load_config(None, json.loads(sys.argv[1])), sys.argv[2], log=lambda _: None, note=lambda _: None)
print(json.dumps({k: r.metrics[k] for k in ("untrained", "validation", "test")}, sort_keys=True))
"""


def _global_states():
    import random

    import numpy as np

    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same_states(a, b) -> bool:
    import numpy as np

    return torch.equal(a[0], b[0]) and a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and \
        a[1][2:] == b[1][2:] and a[2] == b[2]


def test_run_training_leaves_the_callers_random_state_and_draws_what_a_fresh_process_draws(tmp_path, monkeypatch):
    """The run seeds the global generators (Lightning's seed_everything) and set PL_GLOBAL_SEED / PL_SEED_WORKERS;
    the caller's state comes back, and the run's results are those of the same run in a fresh process."""
    import json
    import os
    import random
    import subprocess
    import sys

    import numpy as np

    monkeypatch.setenv("PL_GLOBAL_SEED", "99")  # the caller's own value comes back; an unset one stays unset
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    torch.manual_seed(1000)
    np.random.seed(1001)
    random.seed(1002)
    before = _global_states()
    result = run_training(load_config(None, RUN), tmp_path / "run", log=lambda _: None, note=lambda _: None)
    assert _same_states(_global_states(), before)
    assert os.environ["PL_GLOBAL_SEED"] == "99" and "PL_SEED_WORKERS" not in os.environ
    here = json.dumps({k: result.metrics[k] for k in ("untrained", "validation", "test")}, sort_keys=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PL_")}
    fresh = subprocess.run([sys.executable, "-c", _FRESH_RUN, json.dumps(RUN), str(tmp_path / "fresh"),
                            str(torch.get_num_threads())],
                           capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    assert here == fresh  # bit-identical: the run draws from trainer.seed alone


def test_run_training_puts_the_random_state_back_when_it_raises(tmp_path, monkeypatch):
    import os

    from dynametric.engine.module import MetricLearningModule

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)

    def stopped(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(MetricLearningModule, "training_step", stopped)
    torch.manual_seed(7)
    before = _global_states()
    with pytest.raises(KeyboardInterrupt):
        run_training(load_config(None, RUN), tmp_path / "run", log=lambda _: None, note=lambda _: None)
    assert _same_states(_global_states(), before)
    assert "PL_GLOBAL_SEED" not in os.environ and "PL_SEED_WORKERS" not in os.environ


def _torch_flags():
    import os

    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


@pytest.mark.parametrize("caller, run", [((True, True, True, True, ":16:8"), "false"),
                                         ((False, False, False, False, None), "true"),
                                         ((True, False, False, False, None), "true")])
def test_run_training_puts_the_callers_deterministic_mode_back(tmp_path, monkeypatch, caller, run):
    """Lightning's Trainer(deterministic=...) calls torch.use_deterministic_algorithms with the config's value: a
    run with trainer.deterministic false switched the caller's deterministic mode off, one with it true left it on
    (with cudnn.benchmark off and CUBLAS_WORKSPACE_CONFIG set in os.environ)."""
    enabled, warn_only, benchmark, cudnn_deterministic, cublas = caller
    if cublas is None:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", cublas)
    saved = _torch_flags()
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
    try:
        assert _torch_flags() == caller
        seen = []
        from dynametric.engine.module import MetricLearningModule

        step = MetricLearningModule.training_step

        def watched(self, batch, batch_idx):  # the run itself runs with the config's mode
            seen.append(torch.are_deterministic_algorithms_enabled())
            return step(self, batch, batch_idx)

        monkeypatch.setattr(MetricLearningModule, "training_step", watched)
        run_training(load_config(None, [*RUN, f"trainer.deterministic={run}"]), tmp_path / "run", log=lambda _: None,
                     note=lambda _: None)
        assert seen and set(seen) == {run == "true"}
        assert _torch_flags() == caller
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


_REPORT_KEEPS_THE_BACKEND = """
import re, sys
import matplotlib
matplotlib.use("svg")  # stands for a notebook's inline backend
import matplotlib.pyplot as plt
import torch
plt.figure()  # the caller's own open figure
from dynametric.pipeline.report import write_report
g = torch.Generator().manual_seed(0)
emb, labels = torch.randn(24, 4, generator=g), torch.stack([torch.arange(24) % 6, torch.arange(24) % 2], dim=1)
write_report(sys.argv[1], metrics={"test": {}}, loss_history=[[0, 1.0], [1, 0.5]], scale_names=["fine", "coarse"],
             config_yaml="x: 1", emb=emb, labels=labels)
print(matplotlib.get_backend(), plt.get_fignums(), len(re.findall("data:image/png;base64,", open(sys.argv[1]).read())))
"""


def test_write_report_leaves_the_matplotlib_backend_and_pyplots_figures_alone(tmp_path):
    """The report called matplotlib.use("Agg") (a notebook's inline backend was replaced) and drew its plots as
    pyplot figures; it draws on Figure objects of its own now. In a fresh process: the backend is imported once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _REPORT_KEEPS_THE_BACKEND, str(tmp_path / "report.html")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "[1]", "2"]  # the curves and the embedding map are drawn all the same


_START_METHOD = """
import json, multiprocessing, sys
from dynametric.config import load_config
from dynametric.pipeline.run import run_training
run_training(load_config(None, [*json.loads(sys.argv[1]), f"data.workers={sys.argv[3]}"]), sys.argv[2],
             log=lambda _: None, note=lambda _: None)
print(multiprocessing.get_start_method(allow_none=True))
multiprocessing.set_start_method("spawn")  # raised 'context has already been set'
print(multiprocessing.get_start_method())
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_run_training_leaves_an_unset_start_method_unset(tmp_path, workers):
    """Lightning's trainer asks for the start method (multiprocessing.get_start_method(), which fixes the default
    one) and loader workers fix it too: a caller's later set_start_method raised. In a fresh process, where it is
    unset; a start method the caller set is kept (the second call below)."""
    import json
    import multiprocessing
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _START_METHOD, json.dumps(RUN), str(tmp_path / "run"), str(workers)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "spawn"]
    kept = multiprocessing.get_start_method()  # this process's: set now if it was not
    run_training(load_config(None, RUN), tmp_path / "run2", log=lambda _: None, note=lambda _: None)
    assert multiprocessing.get_start_method(allow_none=True) == kept
