"""``optim.kwargs`` is checked against the chosen optimizer's signature when the engine resolves the ``optim``
section (:func:`dynametric.engine.builders.optim_settings`, in a run and its dry run), with errors keyed like the
loss keywords' (``optim.kwargs.<arg>``, the file and line that set it), never Python's own wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.config import errors_located, load_config
from dynametric.engine.builders import check_optimizer_kwargs, optim_settings
from dynametric.errors import ConfigError


def _refused(*overrides: str) -> ConfigError:
    cfg = load_config(overrides=list(overrides))
    with pytest.raises(ConfigError) as info:
        with errors_located(cfg):
            optim_settings(cfg)
    assert "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize("overrides, key, message", [
    # the QA cases: once "'float' object is not subscriptable" and "Adam.__init__() got an unexpected keyword ..."
    (["optim.kwargs.betas=0.9"], "optim.kwargs.betas", "Adam: expected a list of 2 numbers for betas, got 0.9 (float)"),
    (["optim.kwargs.foo=1"], "optim.kwargs.foo",
     "Adam has no argument 'foo'; its arguments: betas, eps, amsgrad, foreach, maximize, capturable, differentiable, "
     "fused, decoupled_weight_decay (remove optim.kwargs.foo, or clear them all with optim.kwargs={})"),
    (["optim.kwargs.bets=[0.9, 0.99]"], "optim.kwargs.bets", "Adam has no argument 'bets'; did you mean 'betas'?"),
    (["optim.kwargs.betas=[0.9]"], "optim.kwargs.betas", "Adam: expected a list of 2 numbers for betas, got [0.9]"),
    (["optim.kwargs.betas=[0.9, 1.5]"], "optim.kwargs.betas",
     "Adam(betas=[0.9, 1.5]) failed: Invalid beta parameter at index 1: 1.5"),
    (["optim.kwargs.amsgrad=maybe"], "optim.kwargs.amsgrad", "Adam: expected true or false for amsgrad, got 'maybe'"),
    (["optim.kwargs.lr=0.1"], "optim.kwargs.lr",
     "Adam's lr is set by optim.lr (per group: optim.backbone.lr, optim.head.lr, optim.loss.lr), not optim.kwargs: "
     "remove optim.kwargs.lr"),
    (["optim.kwargs.weight_decay=0"], "optim.kwargs.weight_decay", "Adam's weight_decay is set by optim.weight_decay"),
    (["optim.name=sgd", "optim.kwargs.momentum=0.5"], "optim.kwargs.momentum",
     "SGD's momentum is set by optim.momentum, not optim.kwargs"),
    (["optim.name=adam", "optim.kwargs.momentum=0.5"], "optim.kwargs.momentum", "Adam has no argument 'momentum'"),
    (["optim.name=sgd", "optim.momentum=0", "optim.kwargs.nesterov=true"], "optim.kwargs.nesterov",
     "SGD(nesterov=True) failed: Nesterov momentum requires a momentum and zero dampening"),
    (["optim.kwargs={eps: -1, betas: [0.9, 1.5]}"], "optim.kwargs.eps", "Adam(eps=-1) failed: Invalid epsilon value"),
    (["optim.kwargs={fused: true, foreach: true}"], "optim.kwargs",
     "Adam(fused=True, foreach=True) failed: `fused` and `foreach` cannot be `True` together."),
    (["optim.name=rmsprop", "optim.kwargs.alpha=[1]"], "optim.kwargs.alpha", "RMSprop: expected a number for alpha"),
])
def test_optimizer_keywords_are_one_line_on_their_key(overrides, key, message) -> None:
    err = _refused(*overrides)
    assert err.key == key and str(err).startswith(f"<command line> key '{key}': {message}")


def test_an_optimizer_keyword_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "o.yaml"
    path.write_text("optim:\n  name: adamw\n  kwargs:\n    eps: 1.0e-6\n    betas: 0.9\n")
    cfg = load_config(path)
    with pytest.raises(ConfigError) as info:
        with errors_located(cfg):
            optim_settings(cfg)
    assert str(info.value) == (f"{path}:5 key 'optim.kwargs.betas': AdamW: expected a list of 2 numbers for betas, "
                               "got 0.9 (float)")


@pytest.mark.parametrize("overrides", [
    [], ["optim.kwargs={betas: [0.8, 0.99], eps: 1.0e-6, amsgrad: true}"], ["optim.kwargs.fused=true"],
    ["optim.name=sgd", "optim.kwargs={nesterov: true, dampening: 0}"],
    ["optim.name=rmsprop", "optim.kwargs.centered=true"],
])
def test_valid_optimizer_keywords_pass_and_reach_the_settings(overrides) -> None:
    cfg = load_config(overrides=overrides)
    check_optimizer_kwargs(cfg)
    assert optim_settings(cfg).kwargs == cfg.optim.kwargs
