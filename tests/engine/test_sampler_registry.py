"""The engine builds its batch sampler through the data layer's registry (``BATCH_SAMPLERS``): the constructor
arguments each config name maps to, the errors re-keyed to the config, and a new sampler registered in one place."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from dynametric.config import load_config
from dynametric.data import samplers
from dynametric.engine.builders import build_model, build_objectives, sampler_factory
from dynametric.errors import ConfigError, InputError

LABELS = torch.tensor([[f, f // 3, f // 6] for f in range(12) for _ in range(4)])


def _make(*overrides: str, rank: int = 0, world: int = 1):
    return sampler_factory(load_config(None, ["trainer.seed=5", *overrides]))(LABELS, rank, world)


def test_each_config_name_builds_its_class_with_the_data_settings() -> None:
    s = _make("data.sampler=m_per_class", "data.m=3", "data.batch_size=6", "data.sampler_scale=1",
              "data.iterations_per_epoch=7", rank=1, world=2)  # a step of 2 ranks: 4 distinct classes, all of scale 1
    assert type(s) is samplers.MPerClassSampler
    assert (s.m, s.batch_size, s.scale, s.seed, s.rank, s.world_size, len(s)) == (3, 6, 1, 5, 1, 2, 7)
    t = _make("data.sampler=three_scale", "data.m=2", "data.batch_size=12")
    assert type(t) is samplers.ThreeScaleSampler and (t.k, t.items_per_batch, t.seed) == (2, 2, 5)
    h = _make("data.sampler=hierarchical", "data.m=2", "data.batch_size=8",
              "data.sampler_options={parents_per_batch: 2}")
    assert type(h) is samplers.HierarchicalSampler and (h.k, h.classes_per_parent, h.scale) == (2, 2, 0)
    r = _make("data.sampler=random", "data.batch_size=6", rank=1, world=2)
    assert type(r) is samplers.RandomBatchSampler and (r.n, r.bs, r.seed, r.rank, r.world) == (48, 6, 5, 1, 2)
    # the same batches as the class built directly
    direct = samplers.MPerClassSampler(LABELS, 3, 6, scale=1, seed=5, rank=1, world_size=2, iterations_per_epoch=7)
    assert list(s) == list(direct)


def test_errors_keep_their_config_keys() -> None:
    with pytest.raises(ConfigError, match=r"^key 'data.batch_size': batch_size 8 must be a multiple of m x "
                                          r"scales = 2 x 3 = 6 \(an item holds m images at each of its 3 "
                                          r"scale\(s\)\)$") as info:
        _make("data.sampler=three_scale", "data.m=2", "data.batch_size=8")
    assert info.value.key == "data.batch_size"
    with pytest.raises(ConfigError, match=r"MPerClassSampler takes no option 'nope' \(it takes no options\)$") as info:
        _make("data.sampler_options={nope: 1}")
    assert info.value.key == "data.sampler_options.nope"
    with pytest.raises(ConfigError, match="parent_scale must differ from scale") as info:
        _make("data.sampler=hierarchical", "data.batch_size=8", "data.m=2", "data.sampler_options={parent_scale: 0}")
    assert info.value.key == "data.sampler_options.parent_scale"  # not 'data.parent_scale': no such key
    # the arguments a setting decides are named by that setting's key (not the sampler's own argument names)
    with pytest.raises(ConfigError, match="48 images give 12 items per epoch, fewer than one batch of 50") as info:
        _make("data.sampler=three_scale", "data.m=4", "data.batch_size=600")  # items_per_batch = 600 / (4 x 3)
    assert info.value.key == "data.batch_size"
    with pytest.raises(ConfigError, match="needs 5 distinct parents but scale 1 has only 4") as info:
        _make("data.sampler=hierarchical", "data.batch_size=10", "data.m=2",
              "data.sampler_options={parents_per_batch: 5}")
    assert info.value.key == "data.sampler_options.parents_per_batch"
    with pytest.raises(ConfigError, match=r"expected label columns in \[0, 3\), got \[0, 5\]$") as info:
        _make("data.sampler=three_scale", "data.m=2", "data.batch_size=12", "data.sampler_options={scales: [0, 5]}")
    assert info.value.key == "data.sampler_options.scales"
    with pytest.raises(ConfigError, match="has 2 parents at scale 1") as info:  # fine class 0 under two parents
        sampler_factory(load_config(None, ["data.sampler=hierarchical", "data.batch_size=8", "data.m=2"]))(
            torch.tensor([[0, 0, 0], [0, 1, 0], [1, 1, 0], [2, 2, 0]] * 2), 0, 1)
    assert info.value.key == "data.sampler_options.parent_scale"
    with pytest.raises(ConfigError, match="did you mean 'three_scale'") as info:
        load_config(None, ["data.sampler=three_scal"])
    assert info.value.key == "data.sampler"


@pytest.mark.parametrize("sampler, world, per", [
    ("m_per_class", 1, "data.iterations_per_epoch=100 divided by the number of ranks"),  # ranks unknown (dry run)
    ("random", 1, "data.iterations_per_epoch=100 divided by the number of ranks"),
    ("hierarchical", 2, "data.iterations_per_epoch=50"),  # a run of 2 ranks knows them
    ("three_scale", 2, "data.iterations_per_epoch=50"),  # data.batch_size rows there too (m x scales per item)
])
def test_pml_s_length_before_new_iter_as_a_sampler_option_names_its_equivalent(sampler, world, per) -> None:
    """It got the generic 'MPerClassSampler takes no option ...'; the Python sampler's message, in config keys."""
    with pytest.raises(ConfigError) as info:
        _make(f"data.sampler={sampler}", "data.batch_size=12", *(["data.m=2"] if sampler != "random" else []),
              "data.sampler_options={length_before_new_iter: 1200}", world=world)
    assert (info.value.key, info.value.message) == (
        "data.sampler_options.length_before_new_iter",
        "length_before_new_iter is pytorch-metric-learning's epoch length in indices; here the epoch is "
        f"data.iterations_per_epoch batches per rank: give {per} (length_before_new_iter // data.batch_size // "
        "world_size)")


def test_a_dry_run_refuses_length_before_new_iter_in_one_line_on_its_key(capsys) -> None:
    from dynametric.cli import main

    assert main(["train", "--dry-run", "data.batch_size=96", "data.sampler_options.length_before_new_iter=9600"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: <command line> key 'data.sampler_options.length_before_new_iter': "
        "length_before_new_iter is pytorch-metric-learning's epoch length in indices; here the epoch is "
        "data.iterations_per_epoch batches per rank: give data.iterations_per_epoch=100 divided by the number of "
        "ranks (length_before_new_iter // data.batch_size // world_size)")


def test_a_random_batch_larger_than_the_data_is_one_error_on_the_batch_size() -> None:
    with pytest.raises(ConfigError, match=r"^<command line> key 'data.batch_size': 48 items give no batch: one step "
                                          r"takes batch_size 30 x 2 rank\(s\) = 60 items; lower the batch size$"):
        from dynametric.config import errors_located

        cfg = load_config(None, ["data.sampler=random", "data.batch_size=30"])
        with errors_located(cfg):
            sampler_factory(cfg)(LABELS, 1, 2)


def test_the_sampler_declares_its_loss_chunks() -> None:
    small = ["model.backbone=simple_cnn", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 1}",
             "loss.multiscale=true", "data.batch_size=12"]
    for name, chunked in (("three_scale", True), ("m_per_class", False), ("random", False)):
        cfg = load_config(None, [*small, f"data.sampler={name}", *(["data.m=2"] if name != "random" else [])])
        [obj] = build_objectives(cfg, build_model(cfg), LABELS, 3)
        chunks = obj.loss.chunks
        assert (chunks is not None) == chunked
        if chunked:
            assert (chunks.images_per_class, chunks.num_scales) == (2, 3)


def test_a_new_sampler_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    class FirstRows(samplers.RandomBatchSampler):
        m_divides_batch = True
        settings_used = frozenset({"m"})  # RandomBatchSampler's own is empty: data.m would be refused

        def __iter__(self):
            for b in range(len(self)):
                yield list(range(b * self.bs, (b + 1) * self.bs))

    monkeypatch.setitem(samplers.BATCH_SAMPLERS, "first_rows", FirstRows)
    with pytest.raises(ConfigError, match="must be a multiple of data.m 5"):  # its declared batch rule, at load
        load_config(None, ["data.sampler=first_rows", "data.m=5", "data.batch_size=12"])
    s = _make("data.sampler=first_rows", "data.m=4", "data.batch_size=12")
    assert type(s) is FirstRows and next(iter(s)) == list(range(12))
    assert "FirstRows" not in samplers.SAMPLERS  # the by-class-name view lists the resumable samplers


def test_the_preflight_class_count_check_follows_the_samplers_declaration(monkeypatch) -> None:
    """`engine.preflight.check_batches` asks the sampler class (`distinct_classes_per_batch`), not its name: P×K
    declares it and gets the message with values that fit; without the declaration the sampler's own error comes."""
    from dynametric.engine.preflight import check_batches

    class Train:
        labels = LABELS[:, :1][LABELS[:, 0] < 3]  # 3 fine classes x 4 images

        def __len__(self) -> int:
            return len(self.labels)

    assert [n for n, c in samplers.BATCH_SAMPLERS.items() if c.distinct_classes_per_batch] == ["m_per_class"]
    cfg = load_config(None, ["data.sampler=m_per_class", "data.m=2", "data.batch_size=8"])  # needs 4 classes
    with pytest.raises(ConfigError, match=r"needs 4 distinct .* only 3; try data\.batch_size=6") as declared:
        check_batches(cfg, Train(), scale_names=["fine"])
    monkeypatch.setattr(samplers.MPerClassSampler, "distinct_classes_per_batch", False)
    with pytest.raises(ConfigError) as undeclared:
        check_batches(cfg, Train(), scale_names=["fine"])
    assert "try data." not in str(undeclared.value) and str(undeclared.value) != str(declared.value)


def _keys_raised(source: str) -> set[str]:
    """The argument names a sampler's construction errors are keyed by (``key="..."``, ``_positive_int(v, "...")``)."""
    return set(re.findall(r'key="(\w+)"', source)) | set(re.findall(r'_positive_int\([^,]+, "(\w+)"', source))


def test_every_key_a_sampler_error_names_is_a_config_key() -> None:
    """Each key a sampler's construction can raise (read from its source) maps to a key of the schema (the setting
    that decides the argument) or to ``data.sampler_options.<argument>`` for an argument no setting decides."""
    from dynametric.config import schema_keys
    from dynametric.engine.builders import SETTING_KEYS, sampler_error_key

    schema = set(schema_keys())
    assert set(SETTING_KEYS.values()) <= schema
    assert set(SETTING_KEYS) == set(samplers.SamplerSettings.__dataclass_fields__) - {"options"}
    for name, cls in samplers.BATCH_SAMPLERS.items():
        parts = [cls.__init__, cls.from_settings]
        if issubclass(cls, samplers._EpochBatchSampler):
            parts += [samplers._EpochBatchSampler.__init__, samplers._EpochBatchSampler._set_iterations]
        data = {"labels", "num_samples"}  # the training data itself (from_settings passes it), not a setting
        raised = set().union(*(_keys_raised(inspect.getsource(p)) for p in parts)) - data
        arguments = set(inspect.signature(cls).parameters) - data
        assert raised <= arguments | {"batch_size"}, (name, raised - arguments)
        for arg in raised | arguments:
            key = sampler_error_key(cls, arg)
            if key.startswith("data.sampler_options."):  # an option: no setting may decide it
                assert arg not in cls.setting_of and "data.sampler_options" in schema, (name, arg)
            else:
                assert key in schema, (name, arg, key)


def test_the_hierarchical_sampler_on_one_scale_labels_names_the_sampler_not_its_default_option() -> None:
    """parent_scale 1 is the sampler's own default: labels of one scale are the sampler's problem (data.sampler),
    not an option the config did not set."""
    one_scale = torch.tensor([[f] for f in range(4) for _ in range(4)])
    with pytest.raises(ConfigError, match=r"the hierarchical sampler needs labels with at least two scales "
                                          r"\(classes and the parents that group them\), got 1 scale$") as info:
        sampler_factory(load_config(None, ["data.sampler=hierarchical", "data.batch_size=8", "data.m=2"]))(
            one_scale, 0, 1)
    assert info.value.key == "data.sampler"
    with pytest.raises(InputError, match="at least two scales"):
        samplers.HierarchicalSampler(one_scale, batch_size=8, samples_per_class=2)
