"""What a user migrating from pytorch-metric-learning (PML) is told: PML classes without a native port reached as
module attributes or registry names, the losses that wrap another loss in a config, SelfSupervisedLoss's positional
call, and a ref_emb of the wrong width. Each error is one line naming what was given and what is expected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import dynametric.losses as DL
import dynametric.miners as DM
import dynametric.pml as dpml
from dynametric.errors import ConfigError, InputError
from dynametric.losses import LOSSES, build_loss, pml_loss, pml_miner
from dynametric.miners import MINERS, build_miner

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

NATIVE_LOSSES = ", ".join(sorted(LOSSES))
PML_LOSS_NAMES = dpml.pml_catalogue("losses")


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# 1. dynametric.losses.<PML class> / dynametric.miners.<PML class> --------------------------------------------------

def test_a_pml_class_without_a_native_port_as_a_module_attribute_says_how_to_use_pml_s():
    with pytest.raises(AttributeError) as err:
        DL.SupConLoss  # noqa: B018
    assert _one_line(err) == (
        "module 'dynametric.losses' has no attribute 'SupConLoss': dynametric has no native SupConLoss; use "
        "pytorch-metric-learning's through the adapter: pml_loss('SupConLoss', ...) (from dynametric.losses import "
        "pml_loss; it reads label column label_scale), or loss: {name: pml:SupConLoss} in a config")
    with pytest.raises(AttributeError) as err:
        DM.BatchEasyHardMiner  # noqa: B018
    assert _one_line(err) == (
        "module 'dynametric.miners' has no attribute 'BatchEasyHardMiner': dynametric has no native "
        "BatchEasyHardMiner; use pytorch-metric-learning's through the adapter: pml_miner('BatchEasyHardMiner', ...) "
        "(from dynametric.miners import pml_miner; it reads label column label_scale), or miner: "
        "{name: pml:BatchEasyHardMiner} in a config")
    with pytest.raises(AttributeError) as err:  # it wraps a loss object: the Python call only
        DL.CrossBatchMemory  # noqa: B018
    assert _one_line(err) == (
        "module 'dynametric.losses' has no attribute 'CrossBatchMemory': dynametric has no native CrossBatchMemory; "
        "use pytorch-metric-learning's through the adapter, in Python only (it wraps another loss object, which a "
        'config cannot give): pml_loss("CrossBatchMemory", label_scale=s, loss=ContrastiveLoss(), embedding_size=D, '
        "memory_size=M)(embeddings, labels) (from dynametric.losses import pml_loss)")
    # what the message suggests works
    emb, labels = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 3
    torch.testing.assert_close(pml_loss("SupConLoss")(emb, labels), pml_losses.SupConLoss()(emb, labels))


@pytest.mark.parametrize("module, name", [(DL, "NoSuchLoss"), (DL, "supConLoss"), (DM, "SupConLoss"),
                                          (DL, "BatchEasyHardMiner"), (DL, "__wrapped__")])
def test_other_missing_attributes_keep_python_s_message(module, name):
    """A name PML does not have (or has in the other module) gets Python's usual message; hasattr stays False."""
    with pytest.raises(AttributeError) as err:
        getattr(module, name)
    assert str(err.value) == f"module {module.__name__!r} has no attribute {name!r}"
    assert not hasattr(module, name)


def test_every_pml_class_without_a_native_port_gets_the_hint_and_no_native_one_does():
    for kind, module in (("losses", DL), ("miners", DM)):
        ported = [n for n in dpml.pml_catalogue(kind) if n in module.__dict__]
        missing = [n for n in dpml.pml_catalogue(kind) if n not in module.__dict__]
        assert len(missing) == {"losses": 24, "miners": 5}[kind]  # docs/losses.md: 14 of 38, 5 of 10 ported
        for name in missing:
            with pytest.raises(AttributeError, match=f"dynametric has no native {name}; use pytorch-metric-learning"):
                getattr(module, name)
        assert all(getattr(module, n).__module__.startswith("dynametric.") for n in ported)


def test_the_static_catalogue_is_the_installed_pml_s():
    """PML_CLASSES (used without PML) must list the installed PML 2.9's classes; a new PML fails this test."""
    assert list(dpml.PML_CLASSES["losses"]) == dpml.pml_catalogue("losses")
    assert list(dpml.PML_CLASSES["miners"]) == dpml.pml_catalogue("miners")


def test_without_pml_the_static_catalogue_answers_and_with_it_a_new_class_is_found(monkeypatch):
    monkeypatch.setattr(dpml.importlib.util, "find_spec", lambda name: None)  # as if PML were not installed
    monkeypatch.setattr(pml_losses, "BrandNewLoss", type("BrandNewLoss", (torch.nn.Module,), {}), raising=False)
    with pytest.raises(AttributeError, match=r"dynametric has no native SupConLoss; use pytorch-metric-learning's "
                       r"through the adapter \(pip install pytorch-metric-learning first\): pml_loss\('SupConLoss'"):
        DL.SupConLoss  # noqa: B018
    with pytest.raises(AttributeError) as err:  # not in the static list, and PML is not looked at
        DL.BrandNewLoss  # noqa: B018
    assert str(err.value) == "module 'dynametric.losses' has no attribute 'BrandNewLoss'"
    monkeypatch.undo()
    monkeypatch.setattr(pml_losses, "BrandNewLoss", type("BrandNewLoss", (torch.nn.Module,), {}), raising=False)
    with pytest.raises(AttributeError, match=r"pml_loss\('BrandNewLoss', \.\.\.\)"):  # the installed PML's class
        DL.BrandNewLoss  # noqa: B018


def test_importing_dynametric_does_not_import_pml():
    code = ("import sys, dynametric.losses, dynametric.miners, dynametric.pml; "
            "assert 'pytorch_metric_learning' not in sys.modules, 'PML imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# 2. unknown registry names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("SupConLoss", "unknown loss 'SupConLoss': dynametric has no native SupConLoss; did you mean 'pml:SupConLoss' "
                   "(pytorch-metric-learning's, through the adapter: pml_loss('SupConLoss', ...) in Python)?"),
    ("pml:SupConLos", "unknown loss 'pml:SupConLos': pytorch-metric-learning has no loss 'SupConLos'; did you mean "
                      "'pml:SupConLoss'?"),
    ("PML:SupConLoss", "unknown loss 'PML:SupConLoss': the prefix is 'pml:', lower-case; did you mean "
                       "'pml:SupConLoss'?"),
    ("pml: SupConLoss", "unknown loss 'pml: SupConLoss': no space after 'pml:'; did you mean 'pml:SupConLoss'?"),
    ("PML:SupConLos", "unknown loss 'PML:SupConLos': pytorch-metric-learning has no loss 'SupConLos'; did you mean "
                      "'pml:SupConLoss' (the prefix is 'pml:', lower-case)?"),
    ("pml:NoSuchLoss", "unknown loss 'pml:NoSuchLoss': pytorch-metric-learning has no loss 'NoSuchLoss'; its "
                       f"losses: {', '.join(PML_LOSS_NAMES)}"),
    ("pml:BatchHardMiner", "unknown loss 'pml:BatchHardMiner': BatchHardMiner is a pytorch-metric-learning miner, "
                           "not a loss; name it in the miner section"),
    ("SupConLos", "unknown loss 'SupConLos'; did you mean 'pml:SupConLoss' (pytorch-metric-learning's, through the "
                  f"adapter)? native losses: {NATIVE_LOSSES}"),
    ("TripletMarginLos", "unknown loss 'TripletMarginLos'; did you mean 'TripletMarginLoss', 'MarginLoss', "
                         f"'SoftTripleLoss'? native losses: {NATIVE_LOSSES}"),
    ("Foo", f"unknown loss 'Foo'; expected one of the native losses: {NATIVE_LOSSES}, or pml:<ClassName> for "
            "pytorch-metric-learning's"),
])
def test_an_unknown_loss_name_says_what_was_probably_meant(name, expected):
    with pytest.raises(ConfigError) as err:
        build_loss(name)
    # the Python call's parameter; a config's key is loss.name. After a name that is not pml:, how a user's own
    # component is found (docs/extending.md)
    assert _one_line(err) == f"key 'name': {expected}" + _import_hint(name, expected)
    assert LOSSES.unknown_message(name) == expected  # type: ignore[attr-defined]


def _import_hint(name: str, message: str) -> str:
    """What follows an unknown name that is not a ``pml:`` one: how a user's own component is found."""
    if name.lower().startswith("pml"):
        return ""
    hint = ("a component registered by your own code needs its module imported first: "
            "dynametric --import MODULE ..., or 'imports:' in a config")
    return f" A{hint[1:]}" if message.endswith("?") else f"; {hint}"


@pytest.mark.parametrize("name, expected", [
    ("BatchEasyHardMiner", "dynametric has no native BatchEasyHardMiner; did you mean 'pml:BatchEasyHardMiner' "
                           "(pytorch-metric-learning's, through the adapter: pml_miner('BatchEasyHardMiner', ...) in "
                           "Python)?"),
    ("pml:BatchEasyHardMine", "pytorch-metric-learning has no miner 'BatchEasyHardMine'; did you mean "
                              "'pml:BatchEasyHardMiner', 'pml:BatchHardMiner'?"),
    ("Pml:HDCMiner", "the prefix is 'pml:', lower-case; did you mean 'pml:HDCMiner'?"),
    ("pml:SupConLoss", "SupConLoss is a pytorch-metric-learning loss, not a miner; name it in the loss section"),
])
def test_an_unknown_miner_name_says_what_was_probably_meant(name, expected):
    with pytest.raises(ConfigError) as err:
        build_miner(name)
    assert _one_line(err) == f"key 'name': unknown miner {name!r}: {expected}" + _import_hint(name, expected)
    assert MINERS.unknown_message(name) == f"unknown miner {name!r}: {expected}"  # type: ignore[attr-defined]


def test_without_pml_a_pml_name_says_to_install_it_and_a_pml_class_name_still_gets_its_hint(monkeypatch):
    def no_pml(kind):
        raise ConfigError(f"PML {kind} need pytorch-metric-learning: pip install pytorch-metric-learning", key=kind)

    monkeypatch.setattr(dpml, "_pml_module", no_pml)
    with pytest.raises(ConfigError) as err:
        build_loss("pml:SupConLoss")
    assert _one_line(err) == ("key 'name': unknown loss 'pml:SupConLoss': pml: names need "
                              "pytorch-metric-learning, which is not installed (pip install pytorch-metric-learning)")
    with pytest.raises(ConfigError) as err:
        build_miner("BatchEasyHardMiner")
    assert _one_line(err).endswith("did you mean 'pml:BatchEasyHardMiner' (pytorch-metric-learning's, through the "
                                   "adapter: pml_miner('BatchEasyHardMiner', ...) in Python; it needs pip install "
                                   "pytorch-metric-learning)?" + _import_hint("BatchEasyHardMiner", "?"))


# 3. losses that wrap another loss, named in a config -----------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, expected", [
    ("pml:CrossBatchMemory", {"embedding_size": 4},
     "key 'loss': CrossBatchMemory wraps another loss: its loss= is a loss object, which a config cannot give; build "
     'it in Python: pml_loss("CrossBatchMemory", label_scale=s, loss=ContrastiveLoss(), embedding_size=D, '
     "memory_size=M)(embeddings, labels)"),
    ("pml:CrossBatchMemory", {"loss": "ContrastiveLoss", "embedding_size": 4},
     "key 'loss': CrossBatchMemory wraps another loss: its loss= is a loss object, got 'ContrastiveLoss', which a "
     'config cannot give; build it in Python: pml_loss("CrossBatchMemory", label_scale=s, loss=ContrastiveLoss(), '
     "embedding_size=D, memory_size=M)(embeddings, labels)"),
    ("pml:SelfSupervisedLoss", {},
     "key 'loss': SelfSupervisedLoss wraps another loss: its loss= is a loss object, which a config cannot give; "
     'build it in Python: pml_loss("SelfSupervisedLoss", loss=TripletMarginLoss())(embeddings, augmented), no '
     "labels, so in a training loop of your own"),
    ("pml:MultipleLosses", {"losses": ["ContrastiveLoss"]},
     "key 'losses': MultipleLosses wraps another loss: its losses= is a list of loss objects, got ['ContrastiveLoss'], "
     "which a config cannot give; build it in Python: pml_loss(MultipleLosses([...], weights=[...]), "
     "label_scale=s)(embeddings, labels), MultipleLosses being pytorch-metric-learning's"),
])
def test_a_wrapping_pml_loss_by_name_without_a_loss_object_says_how_to_build_it(name, kwargs, expected):
    with pytest.raises(ConfigError) as err:
        build_loss(name, **kwargs)
    assert _one_line(err) == expected
    inner = pml_losses.ContrastiveLoss()  # with the object (the Python API) the registry name builds
    assert build_loss("pml:SelfSupervisedLoss", loss=inner).loss.loss is inner


def test_a_wrapping_pml_loss_in_a_run_config_is_one_line_naming_the_python_call(capsys):
    """It was `CrossBatchMemory.__init__() missing 1 required positional argument: 'loss'`."""
    from dynametric.cli import main
    from dynametric.config import LossConfig
    from dynametric.engine.builders import build_loss_term

    assert main(["train", "--dry-run", "loss.name=pml:SelfSupervisedLoss", "loss.multiscale=false",
                 "loss.kwargs={}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: <command line> key 'loss.kwargs': pml:SelfSupervisedLoss: SelfSupervisedLoss wraps "
        "another loss: its loss= is a loss object, which a config cannot give; build it in Python: "
        f"{dpml.WRAPPER_USAGE['SelfSupervisedLoss']}")
    labels = torch.arange(12) % 3
    for kwargs, key, got in (({}, "loss.kwargs", ""), ({"loss": "ContrastiveLoss"}, "loss.kwargs.loss",
                                                         ", got 'ContrastiveLoss'")):
        with pytest.raises(ConfigError) as err:
            build_loss_term(LossConfig(name="pml:CrossBatchMemory", kwargs=kwargs), "loss", labels, dim=4,
                            num_scales=1)
        assert _one_line(err) == (
            f"key '{key}': pml:CrossBatchMemory: CrossBatchMemory wraps another loss: its loss= is a loss object{got}, "
            f"which a config cannot give; build it in Python: {dpml.WRAPPER_USAGE['CrossBatchMemory']}")


def test_a_wrapped_loss_the_pml_wrapper_does_not_support_is_one_line_on_loss():
    """PML's CrossBatchMemory / SelfSupervisedLoss raise a bare `Exception("... not supported for ArcFaceLoss")` in
    their constructor; the adapter refuses the pair first, naming the losses PML supports, and builds the others."""
    arcface = pml_losses.ArcFaceLoss(num_classes=3, embedding_size=4)
    for build, cls in ((lambda: pml_loss("CrossBatchMemory", loss=arcface, embedding_size=4), "CrossBatchMemory"),
                       (lambda: build_loss("pml:SelfSupervisedLoss", loss=arcface), "SelfSupervisedLoss")):
        with pytest.raises(ConfigError) as err:
            build()
        supported = ", ".join(getattr(pml_losses, cls).supported_losses())
        assert _one_line(err) == (f"key 'loss': {cls} does not support ArcFaceLoss: its loss= must be one of "
                                  f"{supported} (pytorch-metric-learning's list)")
        assert "ArcFaceLoss" not in supported.split(", ") and "ContrastiveLoss" in supported.split(", ")
    inner = pml_losses.TripletMarginLoss()  # a supported one still builds, around that very object
    assert pml_loss("CrossBatchMemory", loss=inner, embedding_size=4, memory_size=8).loss.loss is inner


@pytest.mark.parametrize("cls", ["CrossBatchMemory", "SelfSupervisedLoss"])
def test_a_wrapped_loss_that_is_not_a_loss_object_is_one_line_on_loss(cls):
    """The QA report: a name, None or a number as loss= reached PML's bare `Exception: CrossBatchMemory not supported
    for str`; a class or a list was called an unsupported loss ("does not support type"), though ContrastiveLoss is
    supported. Each is now one line on `loss` saying what is needed."""
    supported = ", ".join(getattr(pml_losses, cls).supported_losses())
    takes = f"it takes one of {supported} (pytorch-metric-learning's list)"
    extra = {"embedding_size": 4, "memory_size": 8} if cls == "CrossBatchMemory" else {}
    for value, expected in (
            ("ContrastiveLoss", f"got 'ContrastiveLoss' (str); build the object: ContrastiveLoss(); {takes}"),
            ("pml:ContrastiveLoss", f"got 'pml:ContrastiveLoss' (str); build the object: ContrastiveLoss(); {takes}"),
            ("Nonsense", f"got 'Nonsense' (str); {takes}"),
            (None, f"got None (NoneType); {takes}"),
            (5, f"got 5 (int); {takes}"),
            ({"name": "ContrastiveLoss"}, f"got {{'name': 'ContrastiveLoss'}} (dict); {takes}"),
            ([pml_losses.ContrastiveLoss()], f"got a list of 1 (it wraps a single loss); {takes}"),
            (pml_losses.ContrastiveLoss, "got the class ContrastiveLoss; instantiate it: ContrastiveLoss()")):
        with pytest.raises(ConfigError) as err:
            pml_loss(cls, loss=value, **extra)
        assert _one_line(err) == f"key 'loss': {cls}'s loss= must be a loss object, {expected}"
    with pytest.raises(ConfigError) as err:  # the class of an unsupported loss: it is not supported either way
        pml_loss(cls, loss=pml_losses.ArcFaceLoss, **extra)
    assert _one_line(err) == (f"key 'loss': {cls} does not support ArcFaceLoss: its loss= must be one of "
                              f"{supported} (pytorch-metric-learning's list)")


def test_a_wrapping_pml_loss_with_its_inner_loss_named_in_a_run_config_is_one_line_on_loss_kwargs_loss(tmp_path,
                                                                                                       capsys):
    """The QA report: `loss: {name: pml:CrossBatchMemory, kwargs: {loss: ContrastiveLoss, ...}}` in a run config."""
    from dynametric.cli import main

    cfg = tmp_path / "cbm.yaml"
    cfg.write_text("loss:\n  name: pml:CrossBatchMemory\n  multiscale: false\n"
                   "  kwargs: {loss: ContrastiveLoss, embedding_size: 128, memory_size: 64}\n")
    assert main(["train", "--dry-run", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: {cfg}:4 key 'loss.kwargs.loss': pml:CrossBatchMemory: CrossBatchMemory wraps "
        "another loss: its loss= is a loss object, got 'ContrastiveLoss', which a config cannot give; build it in "
        f"Python: {dpml.WRAPPER_USAGE['CrossBatchMemory']}")


# 4. SelfSupervisedLoss's positional call ----------------------------------------------------------------------------

def _value_and_grads(loss, emb, *args, **kwargs):
    e = emb.clone().requires_grad_(True)
    value = loss(e, *args, **kwargs)
    value.backward()
    return value.detach(), e.grad


@pytest.mark.parametrize("inner", ["NTXentLoss", "ContrastiveLoss", "MultiSimilarityLoss"])
def test_self_supervised_loss_takes_ref_emb_by_position_as_pml_does(inner):
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(16, 8, dtype=torch.float64, generator=g)
    aug = emb + 0.3 * torch.randn(16, 8, dtype=torch.float64, generator=g)
    ours = pml_loss("SelfSupervisedLoss", loss=getattr(pml_losses, inner)())
    theirs = pml_losses.SelfSupervisedLoss(getattr(pml_losses, inner)())
    v1, g1 = _value_and_grads(ours, emb, aug)  # PML's documented call: loss_fn(embeddings, ref_emb)
    v2, g2 = _value_and_grads(theirs, emb, aug)
    assert v2.item() > 0
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(ours(emb, ref_emb=aug), v2, rtol=0, atol=0)
    # symmetric=False is PML's too, by position
    one_way = pml_loss("SelfSupervisedLoss", loss=getattr(pml_losses, inner)(), symmetric=False)(emb, aug)
    torch.testing.assert_close(one_way, pml_losses.SelfSupervisedLoss(getattr(pml_losses, inner)(),
                                                                      symmetric=False)(emb, aug), rtol=0, atol=0)


def test_self_supervised_loss_s_positional_form_refuses_labels_extra_and_doubled_arguments():
    emb, aug = torch.randn(6, 4), torch.randn(6, 4)
    ssl = pml_loss("SelfSupervisedLoss", loss=pml_losses.ContrastiveLoss())
    cases = [
        (lambda: ssl(emb, torch.arange(6)), "key 'labels': SelfSupervisedLoss takes no labels: its second positional "
         "argument is ref_emb (PML's forward(embeddings, ref_emb)), got a torch.int64 tensor of shape (6,)"),
        (lambda: ssl(emb, aug, torch.arange(6)), "SelfSupervisedLoss takes at most 1 positional argument(s) after "
         "the embeddings (ref_emb), got 2"),
        (lambda: ssl(emb, aug, ref_emb=aug), "key 'ref_emb': SelfSupervisedLoss got ref_emb twice, by position and "
         "by keyword"),
        (lambda: ssl(emb, torch.randn(6, 3)), "key 'ref_emb': ref_emb has width 3 but the embeddings have width 4 "
         "(both must be [*, D] with the same D)"),
    ]
    for call, expected in cases:
        with pytest.raises(InputError) as err:
            call()
        assert _one_line(err) == expected


def test_other_wrapped_losses_keep_the_contract_s_positional_order():
    """CrossBatchMemory.forward(embeddings, labels, indices_tuple, enqueue_mask): the third positional argument is
    still indices_tuple and the fourth ref_emb (the contract's order, which MultiScaleLoss uses), refused by name."""
    g = torch.Generator().manual_seed(2)
    emb, labels = torch.randn(10, 4, dtype=torch.float64, generator=g), torch.arange(10) % 3
    mined = pml_miners.MultiSimilarityMiner()(emb, labels)
    ours = pml_loss("CrossBatchMemory", loss=pml_losses.ContrastiveLoss(), embedding_size=4, memory_size=20)
    theirs = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), embedding_size=4, memory_size=20)
    torch.testing.assert_close(ours(emb, labels, mined), theirs(emb, labels, mined))
    with pytest.raises(InputError) as err:
        ours(emb, labels, None, emb, labels)
    assert _one_line(err).startswith("key 'ref_emb': CrossBatchMemory takes no ref_emb")


# 5. a ref_emb of the wrong width: one shared check --------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: DL.TripletMarginLoss(), lambda: DL.ContrastiveLoss(), lambda: DL.MultiSimilarityLoss(),
    lambda: pml_loss("ContrastiveLoss"),
    lambda: DM.TripletMarginMiner(), lambda: DM.BatchHardMiner(), lambda: DM.MultiSimilarityMiner(),
    lambda: DM.PairMarginMiner(), lambda: pml_miner("BatchEasyHardMiner"),
], ids=["triplet", "contrastive", "ms", "pml_loss", "triplet_miner", "batch_hard", "ms_miner", "pair_margin",
        "pml_miner"])
def test_a_ref_emb_of_another_width_names_ref_emb_and_both_widths(make):
    emb, labels = torch.randn(12, 4), torch.arange(12) % 3
    with pytest.raises(InputError) as err:
        make()(emb, labels, ref_emb=torch.randn(5, 3), ref_labels=labels[:5])
    assert _one_line(err) == ("key 'ref_emb': ref_emb has width 3 but the embeddings have width 4 (both must be "
                              "[*, D] with the same D)")
    with pytest.raises(InputError) as err:
        make()(emb, labels, ref_emb=torch.randn(5), ref_labels=labels[:5])
    assert _one_line(err) == "key 'ref_emb': ref_emb must be [R, D] like the embeddings' [B, D], got shape (5,)"
    make()(emb, labels, ref_emb=torch.randn(5, 4), ref_labels=labels[:5])  # the same width passes


@pytest.mark.parametrize("make", [
    lambda: DL.TripletMarginLoss(), lambda: DL.ContrastiveLoss(),
    lambda: DL.CSLLoss(None, 4, mode="pairs", margins=(0.25,)),
    lambda: pml_loss("ContrastiveLoss"),
    lambda: DM.TripletMarginMiner(), lambda: DM.BatchHardMiner(), lambda: pml_miner("BatchEasyHardMiner"),
], ids=["triplet", "contrastive", "csl", "pml_loss", "triplet_miner", "batch_hard", "pml_miner"])
def test_embeddings_that_are_not_a_floating_point_tensor_are_one_line(make):
    """Integer embeddings raised torch's RuntimeError from inside the distance (`cdist only supports floating-point
    dtypes`); a NumPy array said `embeddings must be [B, D], got ndarray`."""
    emb, labels = torch.randn(12, 4), torch.arange(12) % 3
    for bad, dtype in ((emb.long(), "torch.int64"), (emb > 0, "torch.bool"), (emb.to(torch.complex64),
                                                                               "torch.complex64")):
        with pytest.raises(InputError) as err:
            make()(bad, labels)
        assert _one_line(err) == f"key 'embeddings': expected a floating-point tensor, got {dtype}"
        with pytest.raises(InputError) as err:
            make()(emb, labels, ref_emb=bad[:5], ref_labels=labels[:5])
        assert _one_line(err) == f"key 'ref_emb': expected a floating-point tensor, got {dtype}"
    with pytest.raises(InputError) as err:
        make()(emb.numpy(), labels)
    assert _one_line(err) == ("key 'embeddings': expected a torch.Tensor, got numpy.ndarray (torch.from_numpy(array) "
                              "makes one)")
    with pytest.raises(InputError) as err:
        make()(emb.tolist(), labels)
    assert _one_line(err) == "key 'embeddings': expected a torch.Tensor, got list"
    with pytest.raises(InputError) as err:
        make()(emb[0], labels)
    assert _one_line(err) == "key 'embeddings': embeddings must be [B, D], got shape (4,)"
    make()(emb.double(), labels)  # any floating dtype passes


def test_python_calls_key_their_errors_by_their_own_parameters():
    """build_loss / build_miner / pml_loss / pml_miner called from Python named config keys (`loss.name`,
    `loss.TripletMarginLoss`, `losses`); a config's errors, built by the engine, keep theirs (next test)."""
    calls = [
        (lambda: DL.build_loss("Tripletloss"), "name", "unknown loss 'Tripletloss'; did you mean"),
        (lambda: DL.build_loss("TripletMarginLoss", margn=1), "margn",
         "TripletMarginLoss has no argument 'margn'; did you mean 'margin'?"),
        (lambda: DL.build_loss("TripletMarginLoss", distance="l3"), "distance", "unknown distance 'l3'"),
        (lambda: DM.build_miner("BatchHardMiner2"), "name", "unknown miner 'BatchHardMiner2'"),
        (lambda: DM.build_miner("BatchHardMiner", foo=1), "foo", "BatchHardMiner has no argument 'foo'; its "
         "arguments: "),
        (lambda: pml_loss("Tripletloss"), "loss", "pytorch-metric-learning has no loss 'Tripletloss'"),
        (lambda: pml_miner("Foo"), "miner", "pytorch-metric-learning has no miner 'Foo'"),
        # MultiScaleLoss builds its per-scale losses and its miner by name: keyed by its own parameters
        (lambda: DL.MultiScaleLoss("Tripletloss", num_scales=2), "base_losses_or_factory", "unknown loss"),
        (lambda: DL.MultiScaleLoss("TripletMarginLoss", num_scales=2, base_kwargs={"margn": 1}), "base_kwargs.margn",
         "TripletMarginLoss has no argument 'margn'"),
        (lambda: DL.MultiScaleLoss("TripletMarginLoss", num_scales=2, miners="Foo"), "miners", "unknown miner 'Foo'"),
        (lambda: DL.MultiScaleLoss("TripletMarginLoss", num_scales=2, miners={"name": "Foo"}), "miners.name",
         "unknown miner 'Foo'"),
        (lambda: DL.MultiScaleLoss("TripletMarginLoss", num_scales=2, miners={"name": "BatchHardMiner", "x": 1}),
         "miners.x", "BatchHardMiner has no argument 'x'; its arguments: "),
    ]
    for call, key, start in calls:
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.key == key and _one_line(err).startswith(f"key {key!r}: {start}"), _one_line(err)


def test_a_config_keeps_its_keys_for_the_same_mistakes():
    from dynametric.config import load_config
    from dynametric.pipeline import build_components

    for overrides, key in ((["loss.name=Tripletloss"], "loss.name"),
                           (["loss.name=TripletMarginLoss", "loss.kwargs.margn=1"], "loss.kwargs.margn"),
                           (["loss.name=MultiScaleLoss", "loss.kwargs.base_losses_or_factory=Tripletloss",
                             "loss.kwargs.num_scales=2"], "loss.kwargs.base_losses_or_factory")):
        with pytest.raises(ConfigError) as err:
            build_components(load_config(None, overrides), datasets=None)
        assert err.value.key == key, str(err.value)


@pytest.mark.parametrize("override, key, hint", [
    ("loss.name=SupConLoss", "loss.name", "did you mean 'pml:SupConLoss'"),
    ("loss.name=pml:SupConLos", "loss.name", "pytorch-metric-learning has no loss 'SupConLos'; did you mean "
                                             "'pml:SupConLoss'?"),
    ("miner.name=BatchEasyHardMiner", "miner.name", "did you mean 'pml:BatchEasyHardMiner'"),
])
def test_a_config_gets_the_same_hints_as_build_loss(override, key, hint):
    """The config checks loss / miner names when it loads (before any data): with the registries' own messages."""
    from dynametric.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.key == key and hint in str(err.value), str(err.value)


# 6. PML's annealed logit scale: `loss.scale = 16` on CosFace/ArcFace ---------------------------------------------

@pytest.mark.parametrize("name", ["ArcFaceLoss", "CosFaceLoss"])
def test_setting_scale_on_cosface_arcface_says_the_logit_scale_is_logit_scale(name):
    """PML users anneal ``loss.scale`` (PML's logit scale); in dynametric ``.scale`` is the label column, so the
    next call's error says where the logit scale lives (one line, keyed ``labels``), for an integer out of range
    and for a float alike; setting ``.logit_scale`` is what changes the logits."""
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = LOSSES[name](3, 4).double()
    hint = (f"on dynametric's {name} .scale is the label column (the constructor's label_scale), PML's .scale (the "
            "logit scale) is .logit_scale, now 64: set loss.logit_scale instead")
    for value, says in [(16, "scale 16 out of range for labels with 1 scale(s)"),
                        (30.0, "scale 30.0 is not a label column (an integer)"),
                        (0.5, "scale 0.5 is not a label column (an integer)")]:
        loss.scale = value
        with pytest.raises(InputError) as err:
            loss(emb, labels)
        assert _one_line(err) == f"key 'labels': {says}; {hint}"
    loss.scale = 0
    theirs = getattr(pml_losses, name)(num_classes=3, embedding_size=4).double()
    theirs.W.data.copy_(loss.W.data)
    loss.logit_scale = theirs.scale = 16
    assert loss(emb, labels).item() == pytest.approx(theirs(emb, labels).item(), rel=1e-12)


def test_scale_errors_of_other_losses_and_of_the_pml_adapter():
    emb, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = LOSSES["ContrastiveLoss"]()
    plain.scale = 3
    with pytest.raises(InputError) as err:
        plain(emb, labels)
    assert _one_line(err) == "key 'labels': scale 3 out of range for labels with 1 scale(s)"  # no hint: no such PML use
    wrapped = pml_loss("ArcFaceLoss", num_classes=3, embedding_size=4)
    wrapped.scale = 16
    with pytest.raises(InputError) as err:
        wrapped(emb, labels)
    assert _one_line(err) == ("key 'labels': scale 16 out of range for labels with 1 scale(s); PMLLoss's .scale is "
                              "the label column (label_scale), the wrapped ArcFaceLoss's own .scale is .loss.scale, "
                              "now 64: set loss.loss.scale instead")
    plain.scale = np.int64(1)  # a numpy integer is a column
    coarse = LOSSES["ContrastiveLoss"]()(emb, labels // 2)
    assert plain(emb, torch.stack([labels, labels // 2], 1)).item() == pytest.approx(coarse.item())
