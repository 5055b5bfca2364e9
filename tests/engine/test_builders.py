"""Config -> components: auto-filled loss arguments, per-scale losses, heads, groups, validation carve-out."""

from __future__ import annotations

import pytest
import torch

from dynametric.config import load_config
from dynametric.engine.builders import (
    RandomBatchSampler,
    build_model,
    build_objectives,
    carve_validation,
    check_monitor,
    optim_settings,
)
from dynametric.engine.module import parameter_groups
from dynametric.errors import ConfigError
from tests.optional import pml_case

SMALL = ["model.backbone=simple_cnn", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 1}"]
LABELS = torch.tensor([[f, f // 3, f // 6] for f in range(12) for _ in range(3)])


class _DS:
    def __init__(self, labels):
        self.labels = labels
        self.scale_names = ["fine", "middle", "coarse"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), self.labels[i]


def test_proxy_loss_gets_num_classes_and_embedding_size_and_its_own_group():
    cfg = load_config(None, [*SMALL, "loss.name=ProxyAnchorLoss", "optim.loss.lr=0.5"])
    model = build_model(cfg)
    [obj] = build_objectives(cfg, model, LABELS, 3)
    proxies = obj.loss.loss_parameters()
    assert [tuple(p.shape) for p in proxies] == [(12, 8)]
    groups = {g["name"]: g for g in parameter_groups(model, [obj], optim_settings(cfg))}
    assert groups["loss"]["lr"] == 0.5 and [id(p) for p in groups["loss"]["params"]] == [id(proxies[0])]
    emb = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    assert torch.isfinite(obj.loss(emb, LABELS[:6]))


def test_csl_built_from_training_label_paths():
    cfg = load_config(None, [*SMALL, "loss.name=CSLLoss"])
    [obj] = build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert obj.loss.loss_parameters()[0].shape[0] == 12  # one proxy per fine training class


def test_csl_built_by_the_engine_trusts_the_training_labels_checked_once():
    """The engine's training batches are rows of the training labels: the builder checks them once and the loss
    skips its per-step check (two host reads a step); a dry run without data, or a term trained on a method's
    surrogate labels, keeps it."""
    from dynametric.engine.builders import build_loss

    cfg = load_config(None, [*SMALL, "loss.name=CSLLoss"])
    [obj] = build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert obj.loss.labels_trusted
    with pytest.warns(UserWarning, match="class paths unknown"):
        [dry] = build_objectives(cfg, build_model(cfg), None, 3)
    assert not dry.loss.labels_trusted
    surrogate = build_loss("CSLLoss", {"mode": "pairs"}, "extra_losses[0]", LABELS, 8,
                           surrogate=(4, "method.kwargs.num_clusters"))
    assert not surrogate.labels_trusted
    # class paths given in the config: the training labels are checked against them when the run is built
    paths = [[f, f // 3, f // 6] for f in range(12)]
    assert build_loss("CSLLoss", {"class_paths": paths}, "loss", LABELS, 8).labels_trusted
    paths[5] = [5, 0, 0]
    with pytest.raises(ConfigError) as info:
        build_loss("CSLLoss", {"class_paths": paths}, "loss", LABELS, 8)
    assert info.value.key == "loss.kwargs.class_paths" and str(info.value) == (
        "key 'loss.kwargs.class_paths': CSLLoss: training label row 15 has label path [5, 1, 0] but fine class 5 "
        "was registered with path [5, 0, 0]")


def test_multiscale_three_scale_chunks_and_per_scale_num_classes():
    cfg = load_config(None, [*SMALL, "loss.name=NormalizedSoftmaxLoss", "loss.multiscale=true",
                             "loss.scale_weights=[1.0, 0.5, 0.25]", "data.sampler=three_scale", "data.m=2",
                             "data.batch_size=12"])
    [obj] = build_objectives(cfg, build_model(cfg), LABELS, 3)
    sizes = [tuple(p.shape) for p in obj.loss.loss_parameters()]
    assert sorted(sizes) == sorted([(8, 12), (8, 4), (8, 2)]) or sorted(sizes) == sorted([(12, 8), (4, 8), (2, 8)])
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    assert torch.isfinite(obj.loss(emb, LABELS[:12]))
    with pytest.raises(ConfigError, match="loss.scale_weights"):
        bad = load_config(None, [*SMALL, "loss.multiscale=true", "loss.scale_weights=[1.0, 0.5]"])
        build_objectives(bad, build_model(bad), LABELS, 3)


def test_two_heads_with_extra_loss_and_miners():
    cfg = load_config(None, [*SMALL, "model.num_heads=2", "model.head_names=[class, shared]", "loss.head=class",
                             "miner={name: TripletMarginMiner, kwargs: {margin: 0.2}}",
                             "extra_losses=[{name: MarginLoss, head: shared, weight: 0.3}]"])
    model = build_model(cfg)
    objs = build_objectives(cfg, model, LABELS, 3)
    assert [(o.head, o.weight, type(o.miner).__name__ if o.miner else None) for o in objs] == [
        ("class", 1.0, "TripletMarginMiner"), ("shared", 0.3, None)]
    assert [o.name for o in objs] == ["TripletMarginLoss@class", "MarginLoss@shared"]
    with pytest.raises(ConfigError, match="head"):
        bad = load_config(None, [*SMALL, "loss.head=nope"])
        build_objectives(bad, build_model(bad), LABELS, 3)


def test_bad_loss_kwarg_names_the_key():
    cfg = load_config(None, [*SMALL, "loss.kwargs={margn: 0.1}"])
    with pytest.raises(ConfigError, match=r"loss\.kwargs\.margn"):
        build_objectives(cfg, build_model(cfg), LABELS, 3)


def test_monitor_must_exist():
    cfg = load_config(None, ["trainer.monitor=tiny/map@r"])
    with pytest.raises(ConfigError, match="trainer.monitor"):
        check_monitor(cfg, ["fine", "middle", "coarse"])
    with pytest.raises(ConfigError, match="not computed"):  # the metric is checked when the config loads
        load_config(None, ["eval.metrics=[recall@1]"])


def test_carve_validation_is_class_disjoint_and_seeded():
    ds = _DS(LABELS)
    train, val = carve_validation(ds, 0.25, seed=3)
    tr, va = set(train.labels[:, 0].tolist()), set(val.labels[:, 0].tolist())
    assert len(va) == 3 and not tr & va and len(tr) + len(va) == 12
    assert len(train) + len(val) == len(ds)
    assert torch.equal(train.labels, LABELS[train.indices])
    train2, val2 = carve_validation(ds, 0.25, seed=3)
    assert val2.indices.tolist() == val.indices.tolist()
    _, val3 = carve_validation(ds, 0.25, seed=4)
    assert val3.indices.tolist() != val.indices.tolist()
    folds = [set(carve_validation(ds, 0.0, seed=0, folds=4, fold=k)[1].labels[:, 0].tolist()) for k in range(4)]
    assert set().union(*folds) == set(range(12)) and sum(len(f) for f in folds) == 12


def test_random_batch_sampler_shards_without_overlap():
    a = list(RandomBatchSampler(40, 5, seed=1, rank=0, world_size=2))
    b = list(RandomBatchSampler(40, 5, seed=1, rank=1, world_size=2))
    assert len(a) == len(b) == 4
    flat_a, flat_b = sum(a, []), sum(b, [])
    assert not set(flat_a) & set(flat_b) and len(set(flat_a) | set(flat_b)) == 40


def test_runtime_settings_have_the_schema_defaults() -> None:
    """OptimSettings / TrainerSettings built without a config mean what the default config means (they once
    drifted: adamw vs adam, step vs epoch interval, step size 10 vs 30); only the monitor is stored resolved."""
    from dataclasses import asdict

    from dynametric.config import Config
    from dynametric.engine.builders import optim_settings, trainer_settings
    from dynametric.engine.module import OptimSettings
    from dynametric.engine.trainer import TrainerSettings

    from_config, plain = asdict(optim_settings(Config())), asdict(OptimSettings())
    assert from_config.pop("monitor") == "val/finest/map@r" and plain.pop("monitor") == "val/fine/map@r"
    assert from_config == plain and plain["optimizer"] == "adam" and plain["interval"] == "epoch"
    from_config, plain = asdict(trainer_settings(Config())), asdict(TrainerSettings())
    assert from_config.pop("monitor") == "finest/map@r" and plain.pop("monitor") == "fine/map@r"
    assert from_config == plain and plain["precision"] == "32"


def test_the_stored_monitor_is_the_schema_default_resolved() -> None:
    """The settings' monitor default is derived from the schema's, resolved as a run resolves it for the default
    (synthetic) data: a different schema default would move it along instead of leaving a stale copy behind."""
    from dynametric.config import Config
    from dynametric.data.synthetic import SCALE_NAMES
    from dynametric.engine import module
    from dynametric.engine.builders import resolve_monitor

    resolved = resolve_monitor(Config().trainer.monitor, SCALE_NAMES)
    assert module.DEFAULT_MONITOR == resolved == "fine/map@r"
    assert module.OptimSettings().monitor == f"val/{resolved}"
    for other, expected in (("coarsest/recall@1", "coarse/recall@1"), ("finest/asi", "fine/asi"),
                            ("mean/map", "mean/map"), ("middle/map@r", "middle/map@r")):
        assert module._for_default_data(other) == expected == resolve_monitor(other, SCALE_NAMES)


def test_the_data_modules_evaluate_in_batches_of_the_schema_default() -> None:
    """MetricDataModule / EvalDataModule built without a config evaluate in data.eval_batch_size's default batches
    (they once said 256 where the schema says 128)."""
    from dynametric.config import Config
    from dynametric.engine.data import EvalDataModule, MetricDataModule

    assert Config().data.eval_batch_size == 128
    assert MetricDataModule(None).eval_batch_size == 128
    assert EvalDataModule([]).batch_size == 128


def test_one_precision_check_for_config_and_settings() -> None:
    from dynametric.engine.trainer import TrainerSettings, validate_settings

    for value in ("64", 64, "bf16-mixed"):  # "64" used to pass the config and fail the trainer
        load_config(overrides=[f"trainer.precision={value}"])
        validate_settings(TrainerSettings(precision=str(value)))
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["trainer.precision=bf16"])
    with pytest.raises(ConfigError) as again:
        validate_settings(TrainerSettings(precision="bf16"))
    assert info.value.message == again.value.message and again.value.key == "trainer.precision"


def test_the_machine_checks_of_the_trainer_settings(monkeypatch) -> None:
    """trainer.accelerator asking for a GPU this machine lacks, or a float16 precision on the CPU: one-line errors
    naming the key; the CUDA check is the one of `--device cuda`."""
    from dynametric.engine.trainer import TrainerSettings, check_machine, validate_settings
    from dynametric.utils.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for asked in ("cuda", "gpu"):
        with pytest.raises(ConfigError) as info:
            validate_settings(TrainerSettings(accelerator=asked))
        assert info.value.key == "trainer.accelerator" and "\n" not in str(info.value)
        assert info.value.message.startswith(f"accelerator '{asked}' asked for, but no CUDA GPU is available here (")
        assert info.value.message.endswith("; use trainer.accelerator: cpu or auto")
    with pytest.raises(ConfigError) as device:
        resolve_device("cuda")
    assert device.value.message.split(" asked for")[1].split(";")[0] == \
        info.value.message.split(" asked for")[1].split(";")[0]  # the same check and wording
    assert device.value.message.endswith("; use device='cpu' or 'auto'")  # a Python argument: its own wording
    for precision in ("16-mixed", "16-true"):
        for accelerator in ("auto", "cpu"):
            with pytest.raises(ConfigError) as info:
                validate_settings(TrainerSettings(accelerator=accelerator, precision=precision))
            assert info.value.key == "trainer.precision"
            assert info.value.message == (f"'{precision}' trains in float16, which needs a CUDA GPU, and this run "
                                          f"trains on the CPU (trainer.accelerator={accelerator}); on the CPU use "
                                          "bf16-mixed or 32")
    for precision in ("32", "bf16-mixed", "bf16-true", "64"):
        assert check_machine(TrainerSettings(precision=precision)) == "cpu"
    with pytest.raises(ConfigError, match="key 'trainer.accelerator': unknown accelerator 'banana'"):
        validate_settings(TrainerSettings(accelerator="banana"))  # settings built without a config
    with pytest.raises(ConfigError, match="key 'trainer.strategy': unknown strategy 'banana'"):
        validate_settings(TrainerSettings(strategy="banana"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine: the same settings are fine
    for accelerator in ("auto", "gpu", "cuda"):
        assert check_machine(TrainerSettings(accelerator=accelerator, precision="16-mixed")) == "cuda"
    assert check_machine(TrainerSettings(accelerator="cpu")) == "cpu"
    with pytest.raises(ConfigError, match="key 'trainer.precision'"):
        check_machine(TrainerSettings(accelerator="cpu", precision="16-mixed"))


def test_sync_batchnorm_goes_to_lightning_and_is_refused_on_the_cpu(monkeypatch) -> None:
    """trainer.sync_batchnorm: Lightning's SyncBatchNorm conversion for multi-process runs of BatchNorm models (each
    process normalised with its own batch's statistics). torch's SyncBatchNorm is GPU-only: on the CPU it is refused
    before anything is written, pointing at model.freeze_bn."""
    import lightning as L

    from dynametric.config import load_config
    from dynametric.engine.builders import trainer_settings
    from dynametric.engine.trainer import TrainerSettings, check_machine, lightning_trainer

    assert trainer_settings(load_config(None, ["trainer.sync_batchnorm=true"])).sync_batchnorm is True
    assert trainer_settings(load_config(None, [])).sync_batchnorm is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for accelerator in ("auto", "cpu"):
        with pytest.raises(ConfigError) as info:
            check_machine(TrainerSettings(accelerator=accelerator, sync_batchnorm=True))
        assert info.value.key == "trainer.sync_batchnorm"
        assert info.value.message.startswith("trainer.sync_batchnorm uses torch's SyncBatchNorm, which runs on GPUs "
                                             f"only, and this run trains on the CPU (trainer.accelerator="
                                             f"{accelerator}); on the CPU use model.freeze_bn: true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_machine(TrainerSettings(accelerator="cuda", sync_batchnorm=True)) == "cuda"
    seen = {}
    monkeypatch.setattr(L, "Trainer", lambda **kwargs: seen.update(kwargs))
    lightning_trainer(TrainerSettings(sync_batchnorm=True), logger=False)
    assert seen["sync_batchnorm"] is True and seen["logger"] is False


@pytest.mark.parametrize(("name", "extra"), [("ProxyAnchorLoss", []), ("NormalizedSoftmaxLoss", []),
                                             ("MarginLoss", ["loss.kwargs.learn_beta=true"])])
def test_a_given_num_classes_must_cover_the_training_labels(name, extra):
    # fine ids 0..11: num_classes=11 would stop the run at its first step, after the untrained evaluation
    cfg = load_config(None, [*SMALL, f"loss.name={name}", "loss.kwargs.num_classes=11", *extra])
    with pytest.raises(ConfigError, match=rf"{name}\(num_classes=11\) is too small: the training labels' column 0 "
                                          r"has ids 0\.\.11; set loss\.kwargs\.num_classes=12") as err:
        build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert err.value.key == "loss.kwargs.num_classes"
    assert ("leave it out" in str(err.value)) == (name != "MarginLoss")  # MarginLoss's is optional (one beta)
    ok = load_config(None, [*SMALL, f"loss.name={name}", "loss.kwargs.num_classes=12", *extra])
    build_objectives(ok, build_model(ok), LABELS, 3)  # enough, and more is allowed (unused classes)
    more = load_config(None, [*SMALL, f"loss.name={name}", "loss.kwargs.num_classes=20", *extra])
    build_objectives(more, build_model(more), LABELS, 3)


def _mic_config(*overrides: str):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "mic" / "synthetic.yaml"
    return load_config(path, [*SMALL, "model.num_heads=2", "model.head_names=[class, shared]", *overrides])


def test_mic_shared_terms_are_sized_by_the_clusters_not_the_data():
    from dynametric.pipeline import build_components

    # a proxy loss on the shared head needs one proxy per cluster (5), not per fine training class (12); a shared
    # batch of 32 with m_shared 8 takes 4 of the 5 clusters (m_shared 4 would take 8: refused by the method's check)
    cfg = _mic_config("method.kwargs.num_clusters=5", "method.kwargs.m_shared=8",
                      "extra_losses[0].name=ProxyAnchorLoss", "extra_losses[0].kwargs={}")
    from dynametric.methods import method_for

    method = method_for(cfg)
    surrogate = method.surrogate_classes(cfg, method.validate(cfg))
    assert surrogate == {"extra_losses[0]": (5, "method.kwargs.num_clusters")}  # the only term on the shared head
    objs = build_objectives(cfg, build_model(cfg), LABELS, 3, surrogate)
    shared = next(o for o in objs if o.head == "shared")
    assert tuple(shared.loss.loss_parameters()[0].shape) == (5, 8)
    # and through the pipeline (without data: the method's count is known, no placeholder)
    comps = build_components(cfg, datasets=None, num_scales=3)
    shared = next(o for o in comps.objectives if o.head == "shared")
    assert tuple(shared.loss.loss_parameters()[0].shape) == (5, 8)


def test_mic_shared_term_with_fewer_classes_than_clusters_is_refused():
    cfg = _mic_config("method.kwargs.num_clusters=12", "extra_losses[0].kwargs.num_classes=5")
    from dynametric.methods import method_for

    method = method_for(cfg)
    surrogate = method.surrogate_classes(cfg, method.validate(cfg))
    with pytest.raises(ConfigError, match=r"MarginLoss\(num_classes=5\) is too small: the method trains this term "
                                          r"on 12 surrogate classes \(method\.kwargs\.num_clusters\)") as err:
        build_objectives(cfg, build_model(cfg), LABELS, 3, surrogate)
    assert err.value.key == "extra_losses[0].kwargs.num_classes"
    # the same term without the method's clusters is checked against the data (12 fine classes): refused as well
    with pytest.raises(ConfigError, match="training labels' column 0"):
        build_objectives(cfg, build_model(cfg), LABELS, 3)


def test_datasets_say_whether_validation_was_carved_from_the_training_classes() -> None:
    """Datasets.val_carved (what the batch preflight's message depends on) is True exactly when the validation
    classes were set aside from the training split, whatever the display string val_source says."""
    from dynametric.engine.builders import build_datasets

    small = ["data.options={images_per_class: 2}"]
    official = build_datasets(load_config(overrides=small), with_test=False)  # synthetic has its own val split
    assert official.val is not None and official.val_carved is False and official.val_source == "split 'val'"
    assert len(official.train) == 2 * 180  # the whole training split
    carved = build_datasets(load_config(overrides=[*small, "data.val_split=null", "data.val_fraction=0.2"]),
                            with_test=False)
    assert carved.val is not None and carved.val_carved is True
    train_classes = set(carved.train.labels[:, 0].tolist())
    val_classes = set(carved.val.labels[:, 0].tolist())
    assert len(val_classes) == 36 and len(train_classes) == 144 and not train_classes & val_classes
    assert len(carved.train) + len(carved.val) == 2 * 180
    none = build_datasets(load_config(overrides=[*small, "data.val_split=null", "data.val_fraction=0"]),
                          with_test=False)
    assert none.val is None and none.val_carved is False and none.val_source == "none"


# ------------------------------------------------------------------ constructor errors keyed to the argument at fault


class _Picky:
    def __init__(self, margin: float = 0.1, scales: list[int] | None = None, name: str = "x", flag: bool = False):
        if margin > 1:
            raise ValueError(f"margin {margin} is too large for this loss")
        if name == "boom":
            raise TypeError("something went wrong")


@pytest.mark.parametrize(("kwargs", "key", "message"), [
    ({"margin": "abc"}, "loss.kwargs.margin", "Picky: expected a number for margin, got 'abc' (str)"),
    ({"margin": True}, "loss.kwargs.margin", "Picky: expected a number for margin, got True (bool)"),
    ({"scales": [1, "a"]}, "loss.kwargs.scales",
     "Picky: expected a list of integers or null for scales, got [1, 'a'] (list)"),
    ({"flag": 1}, "loss.kwargs.flag", "Picky: expected true or false for flag, got 1 (int)"),
    # a constructor's own error: the one given argument its message names, else the section with every value
    ({"margin": 2, "name": "y"}, "loss.kwargs.margin", "Picky(margin=2) failed: margin 2 is too large for this loss"),
    ({"margin": 0.5, "name": "boom"}, "loss.kwargs",
     "Picky(margin=0.5, name='boom') failed: something went wrong"),
])
def test_a_constructor_argument_of_the_wrong_type_or_value_is_keyed_to_it(kwargs, key, message) -> None:
    from dynametric.engine.builders import build_component

    with pytest.raises(ConfigError) as info:
        build_component({"Picky": _Picky}, "Picky", kwargs, "loss")
    assert info.value.key == key and info.value.message == message
    assert build_component({"Picky": _Picky}, "Picky", {"margin": 1, "scales": [0, 2], "flag": True}, "loss")


def test_csl_and_pddm_check_the_type_of_their_numbers_themselves() -> None:
    from dynametric.errors import InputError
    from dynametric.losses import CSLLoss, PDDMLoss

    with pytest.raises(InputError) as info:
        CSLLoss(None, 8, margins=0.3, mode="pairs")  # type: ignore[arg-type]
    assert info.value.key == "margins" and info.value.message == (
        "expected a list of numbers for margins (one margin per scale, finest first), got 0.3 (float)")
    with pytest.raises(InputError) as info:
        CSLLoss(None, 8, margins=(0.1, 0.2), weights=[1, "x"], mode="pairs")
    assert info.value.key == "weights"
    with pytest.raises(InputError) as info:
        PDDMLoss(8, beta="abc")  # type: ignore[arg-type]
    assert info.value.key == "beta" and info.value.message == "expected a number >= 0 for beta, got 'abc' (str)"


@pytest.mark.parametrize(("kwargs", "key", "message"), [
    ({"marign": 0.1}, "loss.kwargs.marign", "ProxyAnchorLoss has no argument 'marign'; did you mean 'margin'?"),
    # an argument of a base class the loss passes its **kwargs on to
    ({"weight_reg_wieght": 2}, "loss.kwargs.weight_reg_wieght",
     "ProxyAnchorLoss has no argument 'weight_reg_wieght'; did you mean 'weight_reg_weight'?"),
    ({"embedding_reg_weight": "x"}, "loss.kwargs.embedding_reg_weight",
     "ProxyAnchorLoss: expected a number for embedding_reg_weight, got 'x' (str)"),
])
def test_keywords_a_loss_passes_on_to_its_base_classes_are_checked_against_theirs(kwargs, key, message) -> None:
    from dynametric.engine.builders import build_component
    from dynametric.losses import LOSSES

    with pytest.raises(ConfigError) as info:
        build_component(LOSSES, "ProxyAnchorLoss", kwargs, "loss", data_args={"num_classes": 3, "embedding_size": 4})
    assert info.value.key == key and info.value.message == message
    loss = build_component(LOSSES, "ProxyAnchorLoss", {"weight_reg_weight": 2, "collect_stats": True}, "loss",
                           data_args={"num_classes": 3, "embedding_size": 4})
    assert loss.weight_reg_weight == 2 and loss.collect_stats


# ---------------------------------------------------------------------------------- miners of multi-scale losses

def test_a_multiscale_term_gives_its_miner_to_the_loss_one_object_per_scale():
    """The engine used to mine the whole batch once and hand that one tuple to MultiScaleLoss (a refusal at the first
    step); the configured miner now mines each scale itself, one object per scale, and the dry run says so."""
    from dynametric.engine.objective import term_miners
    from dynametric.losses import MultiScaleLoss
    from dynametric.miners import TripletMarginMiner

    cfg = load_config(None, [*SMALL, "loss.multiscale=true", "miner.name=TripletMarginMiner",
                             "miner.kwargs={margin: 0.3}", "extra_losses=[{name: ContrastiveLoss, term: c, miner: "
                             "{name: MultiSimilarityMiner}}]"])
    first, second = build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert first.miner is None and isinstance(first.loss, MultiScaleLoss)
    miners = first.loss.scale_miners
    assert all(isinstance(m, TripletMarginMiner) and m.margin == 0.3 and m.scale == 0 for m in miners)
    assert len({id(m) for m in miners}) == 3
    assert term_miners(first) == "TripletMarginMiner per scale"
    assert type(second.miner).__name__ == "MultiSimilarityMiner" and term_miners(second) == "MultiSimilarityMiner"


# after every unknown name but a pml: one: how a user's own component is found (docs/extending.md)
_IMPORT_HINT = "needs its module imported first: dynametric --import MODULE ..., or 'imports:' in a config"
_AFTER_QUESTION = f" A component registered by your own code {_IMPORT_HINT}"


@pytest.mark.parametrize("registry, name, key, expected", [
    # the hints name pytorch-metric-learning's classes: read from the installed package
    pml_case("losses", "SupConLoss", "loss", "unknown loss 'SupConLoss': dynametric has no native SupConLoss; did you "
             "mean 'pml:SupConLoss' (pytorch-metric-learning's, through the adapter: pml_loss('SupConLoss', ...) in "
             "Python)?" + _AFTER_QUESTION),
    pml_case("losses", "pml:SupConLos", "extra_losses[0]", "unknown loss 'pml:SupConLos': pytorch-metric-learning "
             "has no loss 'SupConLos'; did you mean 'pml:SupConLoss'?"),
    pml_case("miners", "BatchEasyHardMiner", "miner", "unknown miner 'BatchEasyHardMiner': dynametric has no native "
             "BatchEasyHardMiner; did you mean 'pml:BatchEasyHardMiner' (pytorch-metric-learning's, through the "
             "adapter: pml_miner('BatchEasyHardMiner', ...) in Python)?" + _AFTER_QUESTION),
    ("plain", "Alpah", "loss", "unknown name 'Alpah'; did you mean 'Alpha'?" + _AFTER_QUESTION),  # no hook
    ("plain", "Xyz", "loss", f"unknown name 'Xyz'; available: Alpha, Beta; a component registered by your own code "
                             f"{_IMPORT_HINT}"),
])
def test_build_component_s_unknown_name_is_the_registry_s_message(registry, name, key, expected):
    """build_component gave its own 'unknown name ...; available: <native names>' for the loss and miner registries,
    without the pytorch-metric-learning hints the config loader gives; one message function now answers both."""
    from dynametric.engine.builders import build_component
    from dynametric.losses import LOSSES
    from dynametric.miners import MINERS

    reg = {"losses": LOSSES, "miners": MINERS, "plain": {"Alpha": int, "Beta": int}}[registry]
    with pytest.raises(ConfigError) as info:
        build_component(reg, name, {}, key)
    assert (info.value.key, info.value.message) == (f"{key}.name", expected)
    if registry != "plain":  # the same line as the config loader's
        section = "miner" if registry == "miners" else "loss"
        with pytest.raises(ConfigError) as loaded:
            load_config(None, [f"{section}.name={name}"])
        assert (loaded.value.key, loaded.value.message) == (f"{section}.name", expected)


@pytest.mark.parametrize("overrides, key, message", [
    (["loss.name=CSLLoss", "loss.kwargs={}", "miner.name=TripletMarginMiner"], "miner.name",
     "CSLLoss reads every label column; one miner output for the whole batch would be mined at a single scale: "
     "remove miner (set miner: null)"),
    (["loss.name=MultiScaleLoss", "loss.kwargs={base_losses_or_factory: TripletMarginLoss, num_scales: 3}",
      "miner.name=TripletMarginMiner"], "miner.name",
     "MultiScaleLoss reads every label column; one miner output for the whole batch would be mined at a single "
     "scale: give it to the loss as loss.kwargs.miners (mined per scale), or train the base loss with "
     "loss.multiscale: true"),
    (["loss.multiscale=true", "miner.name=TripletMarginMiner", "miner.kwargs.scale=1"], "miner.kwargs.scale",
     "with loss.multiscale: true the miner mines every scale on that scale's labels, so it takes no label column "
     "of its own: remove miner.kwargs.scale (got 1), or set loss.multiscale: false to mine and train on one column"),
    (["loss.multiscale=true", "miner.name=TripletMarginMiner", "miner.kwargs.scale=0"], "miner.kwargs.scale",
     "with loss.multiscale: true the miner mines every scale on that scale's labels, so it takes no label column "
     "of its own: remove miner.kwargs.scale (got 0), or set loss.multiscale: false to mine and train on one column"),
])
def test_a_miner_that_does_not_fit_its_term_is_refused_when_the_objective_is_built(overrides, key, message):
    cfg = load_config(None, [*SMALL, *overrides])
    with pytest.raises(ConfigError) as err:
        build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert (err.value.key, err.value.message) == (key, message)


@pytest.mark.parametrize("overrides, key, got", [
    (["loss.name=ContrastiveLoss", "loss.kwargs={scale: 1}"], "loss.kwargs.scale", 1),
    (["loss.name=ContrastiveLoss", "loss.kwargs={scale: 0}"], "loss.kwargs.scale", 0),
    pml_case(["loss.name=pml:ContrastiveLoss", "loss.kwargs={label_scale: 1}"], "loss.kwargs.label_scale", 1),
    pml_case(["loss.name=pml:ContrastiveLoss", "loss.kwargs={label_scale: 0}"], "loss.kwargs.label_scale", 0),
    (["loss.name=CosFaceLoss", "loss.kwargs={label_scale: 2, scale: 30}"], "loss.kwargs.label_scale", 2),
])
def test_a_label_column_of_the_loss_itself_is_refused_under_multiscale(overrides, key, got):
    """Each scale's copy trains on that scale's column: a column of its own (0 included, as pml_loss(weights=...,
    label_scale=0) refuses it) was refused from inside MultiScaleLoss on 'base_losses_or_factory' (1), or silently
    accepted (0); now on the config key, as the miner's own column is."""
    cfg = load_config(None, [*SMALL, "loss.multiscale=true", *overrides])
    name = overrides[0].split("=", 1)[1]
    for labels in (LABELS, None):  # with the data and without it (a dry run without data)
        with pytest.raises(ConfigError) as err:
            build_objectives(cfg, build_model(cfg), labels, 3)
        assert (err.value.key, err.value.message) == (key, (
            f"with loss.multiscale: true each scale's {name} trains on that scale's labels, so it takes no label "
            f"column of its own: remove {key} (got {got}), or set loss.multiscale: false to train on one column"))


def test_a_logit_scale_and_a_one_column_loss_s_column_are_not_refused():
    """CosFace's `scale` is its logit scale (its column is `label_scale`); without multiscale a column is allowed."""
    from dynametric.losses import MultiScaleLoss

    cfg = load_config(None, [*SMALL, "loss.multiscale=true", "loss.name=CosFaceLoss", "loss.kwargs={scale: 30}"])
    loss = build_objectives(cfg, build_model(cfg), LABELS, 3)[0].loss
    assert isinstance(loss, MultiScaleLoss)
    assert [(loss.loss_at(s).logit_scale, loss.loss_at(s).scale) for s in range(3)] == [(30.0, 0)] * 3
    cfg = load_config(None, [*SMALL, "loss.multiscale=false", "loss.name=ContrastiveLoss", "loss.kwargs={scale: 2}"])
    assert build_objectives(cfg, build_model(cfg), LABELS, 3)[0].loss.scale == 2


def test_an_error_inside_a_named_multiscale_loss_s_base_kwargs_is_keyed_down_to_it():
    """MultiScaleLoss's own keys inside a keyword (base_kwargs.scale) were cut to `loss.kwargs`."""
    cfg = load_config(None, [*SMALL, "loss.multiscale=false", "loss.name=MultiScaleLoss",
                             "loss.kwargs={base_losses_or_factory: ContrastiveLoss, num_scales: 3, "
                             "base_kwargs: {scale: 1}}"])
    with pytest.raises(ConfigError) as err:
        build_objectives(cfg, build_model(cfg), LABELS, 3)
    assert (err.value.key, err.value.message) == ("loss.kwargs.base_kwargs.scale", (
        "MultiScaleLoss: base_kwargs['scale']=1: MultiScaleLoss gives each scale's ContrastiveLoss that scale's label "
        "column; remove 'scale'"))


def test_the_config_and_the_python_refusal_of_a_whole_batch_miner_are_one_condition_and_wording():
    """Objective (Python) and the builders (config keys) ask whole_batch_miner_refusal: the same condition for a
    class and an object, the loss's own advice (per-scale miners or removal), and no refusal for a one-column loss."""
    from dynametric.engine.objective import Objective, whole_batch_miner_refusal
    from dynametric.losses import CSLLoss, MultiScaleLoss, TripletMarginLoss
    from dynametric.miners import TripletMarginMiner

    head = "reads every label column; one miner output for the whole batch would be mined at a single scale: "
    multi = MultiScaleLoss(TripletMarginLoss(), num_scales=3)
    csl = CSLLoss(None, 8, mode="pairs")
    assert whole_batch_miner_refusal(multi) == whole_batch_miner_refusal(MultiScaleLoss) == (
        f"MultiScaleLoss {head}give the miner to the loss instead (MultiScaleLoss(..., miners=miner) mines each "
        "scale on its own labels)")
    assert whole_batch_miner_refusal(csl) == whole_batch_miner_refusal(CSLLoss) == f"CSLLoss {head}remove the miner"
    assert whole_batch_miner_refusal(csl, "X", remove="r", per_scale="p") == f"X {head}r"
    assert whole_batch_miner_refusal(TripletMarginLoss()) is None and whole_batch_miner_refusal(None) is None
    for loss in (multi, csl):
        with pytest.raises(ConfigError) as info:
            Objective(loss, TripletMarginMiner())
        assert (info.value.key, info.value.message) == ("miner", whole_batch_miner_refusal(loss))
    assert Objective(TripletMarginLoss(), TripletMarginMiner()).miner is not None


def test_an_objective_refuses_a_whole_batch_miner_for_a_loss_that_reads_every_scale():
    """What the builders refuse by config key, the objective refuses for a Python caller, when it is built (the
    compute step would refuse it only at the first training step)."""
    from dynametric.engine.objective import Objective, compute_objective
    from dynametric.losses import MultiScaleLoss, TripletMarginLoss
    from dynametric.miners import TripletMarginMiner

    with pytest.raises(ConfigError, match=r"^key 'miner': MultiScaleLoss reads every label column; .*give the miner"):
        Objective(MultiScaleLoss(TripletMarginLoss(), num_scales=3), TripletMarginMiner())
    loss = MultiScaleLoss(TripletMarginLoss(), num_scales=3, miners=TripletMarginMiner())
    emb = torch.randn(len(LABELS), 4, generator=torch.Generator().manual_seed(0))
    total, _ = compute_objective(emb, LABELS, [Objective(loss)])
    torch.testing.assert_close(total, loss(emb, LABELS))
