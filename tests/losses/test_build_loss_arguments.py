"""``build_loss`` (the Python factory of the loss registry) checks its keyword arguments before anything is built,
by the rule the config's factory uses (:mod:`dynametric.utils.arguments`): an unknown keyword lists the loss's
arguments as the command line does, and every numeric hyper-parameter of every registry loss refuses a value of
another type or a non-finite number in one line keyed by the argument."""

from __future__ import annotations

import math

import pytest

from dynametric.engine.builders import build_component
from dynametric.errors import ConfigError, UnknownArgumentError
from dynametric.losses import LOSSES, build_loss
from dynametric.utils.arguments import expected, keyword_arguments

REQUIRED = {  # what each loss needs to be built at all (the engine fills these in from the data and the model)
    "ProxyNCALoss": {"num_classes": 3, "embedding_size": 4},
    "ProxyAnchorLoss": {"num_classes": 3, "embedding_size": 4},
    "NormalizedSoftmaxLoss": {"num_classes": 3, "embedding_size": 4},
    "CosFaceLoss": {"num_classes": 3, "embedding_size": 4},
    "ArcFaceLoss": {"num_classes": 3, "embedding_size": 4},
    "SoftTripleLoss": {"num_classes": 3, "embedding_size": 4, "centers_per_class": 2},
    "CSLLoss": {"class_paths": None, "embedding_size": 4, "mode": "pairs"},
    "PDDMLoss": {"embedding_dim": 4},
    "DecorrelationLoss": {"embedding_size": 8, "class_dim": 4},
    "MultiScaleLoss": {"base_losses_or_factory": "TripletMarginLoss", "num_scales": 3},
}
NATIVE = sorted(LOSSES)


def _numeric_arguments(name: str) -> list[tuple[str, str]]:
    """``(argument, what it expects)`` for each argument of loss ``name`` annotated with a number (or a list of
    numbers), as the factories read the annotations."""
    _, named, _, hints = keyword_arguments(LOSSES[name])
    out = []
    for arg in named:
        want = expected(hints.get(arg))
        if want is not None and "number" in want:
            out.append((arg, want))
    return out


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_an_unknown_keyword_lists_the_loss_arguments_as_the_command_line_does() -> None:
    with pytest.raises(UnknownArgumentError) as err:
        build_loss("TripletMarginLoss", bogus=1)
    assert err.value.key == "bogus"
    line = _one_line(err)
    assert line == ("key 'bogus': TripletMarginLoss has no argument 'bogus'; its arguments: margin, swap, smooth_loss, "
                    "triplets_per_anchor, distance, scale, reducer, embedding_regularizer, embedding_reg_weight, "
                    "collect_stats")
    with pytest.raises(ConfigError) as cfg_err:  # the config's factory: the same words, its way to drop the key added
        build_component(LOSSES, "TripletMarginLoss", {"bogus": 1}, "loss")
    assert str(cfg_err.value).startswith(line.replace("key 'bogus'", "key 'loss.kwargs.bogus'") + " (remove ")
    with pytest.raises(UnknownArgumentError, match=r"^key 'margn': TripletMarginLoss has no argument 'margn'; did "
                                                   r"you mean 'margin'\?$"):
        build_loss("TripletMarginLoss", margn=1)


def test_a_margin_of_another_type_is_refused_when_built_not_when_called() -> None:
    with pytest.raises(ConfigError) as err:
        build_loss("TripletMarginLoss", margin="x")
    assert err.value.key == "margin"
    assert _one_line(err) == "key 'margin': TripletMarginLoss: expected a number for margin, got 'x' (str)"


@pytest.mark.parametrize("name", NATIVE)
def test_every_numeric_hyperparameter_of_every_registry_loss_refuses_a_bad_value_at_build_time(name: str) -> None:
    required = REQUIRED.get(name, {})
    build_loss(name, **required)  # the baseline builds
    args = [(arg, want) for arg, want in _numeric_arguments(name) if arg not in required]
    assert args, f"{name} has no numeric hyper-parameter the check reads"
    for arg, want in args:
        list_of = want.startswith("a list of")
        for bad in ("x", math.nan, math.inf, -math.inf):
            value = [bad] if list_of else bad
            with pytest.raises(ConfigError) as err:
                build_loss(name, **required, **{arg: value})
            assert err.value.key == arg, (name, arg, bad)
            said = want if bad == "x" else want.replace("number", "finite number")  # NaN, inf: not finite
            assert _one_line(err) == (f"key {arg!r}: {name}: expected {said} for {arg}, got {value!r} "
                                      f"({type(value).__name__})"), (name, arg, bad)


@pytest.mark.parametrize("name", NATIVE)
def test_every_argument_with_a_numeric_default_is_one_the_check_reads(name: str) -> None:
    """No numeric hyper-parameter is left out of the check for want of an annotation it reads (the pair losses'
    spelled-out common options included: ``embedding_reg_weight``)."""
    import inspect

    sig, named, _, hints = keyword_arguments(LOSSES[name])
    assert sig is not None
    defaults = {p: v.default for p, v in sig.parameters.items()}
    numeric = [p for p in named if isinstance(defaults.get(p), (int, float)) and not isinstance(defaults[p], bool)
               and defaults[p] is not inspect.Parameter.empty]
    assert [p for p in numeric if expected(hints.get(p)) is None] == []


def test_good_numbers_still_build() -> None:
    assert build_loss("TripletMarginLoss", margin=1).margin == 1  # an int for a float
    assert build_loss("ContrastiveLoss", neg_margin=0.5, embedding_reg_weight=2).embedding_reg_weight == 2
    assert build_loss("CSLLoss", class_paths=None, embedding_size=4, mode="pairs", margins=[0.1, 0.2, 0.3]) is not None


def test_numbers_a_python_caller_passes_are_numbers() -> None:
    """NumPy scalars (a sweep over ``np.linspace``), 0-d tensors and 1-d arrays / tensors for a list of numbers built
    before the check existed and must still build, with the loss value of the Python float form; their non-finite
    or many-valued forms are refused like a float's."""
    import numpy as np
    import torch

    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    want = build_loss("TripletMarginLoss", margin=0.25)(emb, labels)
    for margin in (np.float32(0.25), np.float64(0.25), torch.tensor(0.25)):
        got = build_loss("TripletMarginLoss", margin=margin)(emb, labels)
        assert torch.allclose(got, want), margin
    assert build_loss("TripletMarginLoss", swap=np.bool_(True)) is not None
    assert build_loss("ArcFaceLoss", num_classes=np.int64(3), embedding_size=4) is not None
    ms = build_loss("MultiScaleLoss", base_losses_or_factory="TripletMarginLoss", num_scales=2,
                    weights=np.array([1.0, 0.5]))
    plain = build_loss("MultiScaleLoss", base_losses_or_factory="TripletMarginLoss", num_scales=2, weights=[1.0, 0.5])
    two = torch.stack([labels, labels // 2], 1)
    assert torch.allclose(ms(emb, two), plain(emb, two))
    for bad, said in ((torch.tensor(math.nan), "a finite number"), (np.float32(math.inf), "a finite number"),
                      (torch.tensor([0.2, 0.3]), "a number"), (np.array([0.2]), "a number")):
        with pytest.raises(ConfigError, match=rf"^key 'margin': TripletMarginLoss: expected {said} for margin"):
            build_loss("TripletMarginLoss", margin=bad)
    with pytest.raises(ConfigError, match=r"expected a list of finite numbers or null for weights"):
        build_loss("MultiScaleLoss", base_losses_or_factory="TripletMarginLoss", num_scales=2,
                   weights=np.array([1.0, math.nan]))


def test_values_beyond_a_float_or_a_line_are_one_short_line() -> None:
    """An integer beyond the float range is not a finite number (was: OverflowError from the check, a traceback when
    a run config loaded); an array or a huge integer is shown on one line of bounded length (a tensor of 300 values
    spanned 13 lines)."""
    import numpy as np
    import torch

    from dynametric.utils.arguments import VALUE_CHARS

    cases = [("TripletMarginLoss", {"margin": 10**400}, "margin", "a finite number"),
             ("TripletMarginLoss", {"margin": 10**5000}, "margin", "a finite number"),
             ("MultiScaleLoss", {"base_losses_or_factory": "TripletMarginLoss", "num_scales": 2,
                                 "weights": torch.full((300,), math.nan)}, "weights", "a list of finite numbers"),
             ("MultiScaleLoss", {"base_losses_or_factory": "TripletMarginLoss", "num_scales": 2,
                                 "weights": np.ones((3, 3))}, "weights", "a list of numbers")]
    for name, kwargs, arg, said in cases:
        with pytest.raises(ConfigError) as err:
            build_loss(name, **kwargs)
        line = _one_line(err)
        assert line.startswith(f"key {arg!r}: {name}: expected {said}"), line
        assert len(line) < 100 + len(said) + VALUE_CHARS, line
