"""YAML anchors (``&name``), aliases (``*name``) and merges (``<<: *name``) give each place its own value: an
override, or a layer that renames a component, changes the place it names and no other (PyYAML gives an alias the
very object of its anchor, so a change to one changed both). And an override that gives a whole mapping says which
keys of the mapping it replaces it dropped (``config_notes``)."""

from __future__ import annotations

from pathlib import Path

from dynametric.config import load_config
from dynametric.config.loader import config_notes

SHARED_LOSS = """\
model:
  num_heads: 2
  head_dims: [8, 8]
loss: &base
  name: TripletMarginLoss
  head: class
  kwargs: {margin: 0.1}
extra_losses:
  - <<: *base
    head: shared
    term: shared_triplet
"""

SHARED_MINER = """\
miner: &m
  name: MultiSimilarityMiner
  kwargs: {epsilon: 0.2}
extra_losses:
  - name: MarginLoss
    head: null
    miner: *m
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_an_override_of_a_merged_mapping_changes_that_place_only(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "c.yaml", SHARED_LOSS), ["loss.kwargs.margin=0.5"])
    assert cfg.loss.kwargs == {"margin": 0.5} and cfg.loss.head == "class"
    # was 0.5 too: the merge gave the extra loss the anchor's kwargs dict itself
    assert cfg.extra_losses[0].kwargs == {"margin": 0.1} and cfg.extra_losses[0].head == "shared"
    assert cfg.extra_losses[0].term == "shared_triplet"
    other = load_config(tmp_path / "c.yaml", ["extra_losses[0].kwargs.margin=0.3"])
    assert other.loss.kwargs == {"margin": 0.1} and other.extra_losses[0].kwargs == {"margin": 0.3}
    assert config_notes(cfg) == [] and config_notes(other) == []


def test_renaming_an_aliased_section_on_the_command_line_leaves_the_alias(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "c.yaml", SHARED_MINER), ["miner.name=TripletMarginMiner"])
    assert cfg.miner is not None and cfg.miner.name == "TripletMarginMiner" and cfg.miner.kwargs == {}
    miner = cfg.extra_losses[0].miner
    # was TripletMarginMiner with no kwargs: the rename and its dropped options reached the alias
    assert miner is not None and miner.name == "MultiSimilarityMiner" and miner.kwargs == {"epsilon": 0.2}
    notes = config_notes(cfg)
    assert len(notes) == 1 and notes[0].startswith("miner.kwargs {epsilon: 0.2} from ")
    assert "miner.name changed on the command line (MultiSimilarityMiner -> TripletMarginMiner)" in notes[0]


def test_a_child_file_renaming_an_aliased_section_leaves_the_alias(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", SHARED_MINER)
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nminer:\n  name: TripletMarginMiner\n")
    cfg = load_config(child)
    assert cfg.miner is not None and (cfg.miner.name, cfg.miner.kwargs) == ("TripletMarginMiner", {})
    miner = cfg.extra_losses[0].miner
    # was MultiSimilarityMiner with its epsilon dropped, and no note said so
    assert miner is not None and (miner.name, miner.kwargs) == ("MultiSimilarityMiner", {"epsilon": 0.2})
    notes = config_notes(cfg)
    assert len(notes) == 1 and notes[0].startswith(f"miner.kwargs {{epsilon: 0.2}} from {tmp_path / 'base.yaml'}:3 ")


def test_an_alias_inside_an_override_value_is_its_own_value(tmp_path: Path) -> None:
    cfg = load_config(overrides=["data.options={a: &x {b: 1}, c: *x}", "data.options.a.b=2"])
    assert cfg.data.options == {"a": {"b": 2}, "c": {"b": 1}}


def test_a_plain_alias_of_a_list_is_copied(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", "eval:\n  k_values: &k [1, 2]\nloss:\n  kwargs: {ks: *k}\n")
    cfg = load_config(path, ["eval.k_values[0]=4"])
    assert cfg.eval.k_values == [4, 2] and cfg.loss.kwargs == {"ks": [1, 2]}


# ------------------------------------------------------------------------ a whole mapping given by an override

TINY = """\
data:
  batch_size: 16
loss:
  kwargs: {margin: 0.2, swap: true}
trainer:
  max_epochs: 2
  progress_bar: false
"""


def test_an_override_replacing_a_section_names_the_keys_it_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", TINY)
    cfg = load_config(path, ["trainer={seed: 3}"])
    assert (cfg.trainer.seed, cfg.trainer.max_epochs, cfg.trainer.progress_bar) == (3, 10, True)  # as documented
    notes = config_notes(cfg)
    # was no note at all: max_epochs went back to 10 without a word
    assert len(notes) == 1
    assert notes[0].startswith(f"trainer.max_epochs: 2, trainer.progress_bar: false from {path}:6 not used: the "
                               "override trainer={seed: 3} gives the whole mapping")
    assert "trainer.KEY=VALUE" in notes[0]


def test_an_override_replacing_options_names_the_options_it_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", TINY)
    cfg = load_config(path, ["loss.kwargs={swap: false}"])
    assert cfg.loss.kwargs == {"swap": False}
    notes = config_notes(cfg)
    assert len(notes) == 1 and notes[0].startswith(f"loss.kwargs.margin: 0.2 from {path}:4 not used: ")


def test_an_override_giving_every_key_again_drops_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", TINY)
    cfg = load_config(path, ["trainer={max_epochs: 3, progress_bar: false, seed: 1}", "data={batch_size: 32}"])
    assert (cfg.trainer.max_epochs, cfg.data.batch_size) == (3, 32)
    assert config_notes(cfg) == []


def test_a_mapping_set_by_an_earlier_override_is_replaced_without_a_note() -> None:
    # of two overrides the later wins, as documented: the user wrote both
    cfg = load_config(overrides=["loss.kwargs.margin=0.2", "loss.kwargs={swap: true}"])
    assert cfg.loss.kwargs == {"swap": True} and config_notes(cfg) == []


def test_options_given_whole_with_a_new_name_drop_the_old_options_without_a_note(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.yaml", TINY)
    cfg = load_config(path, ["loss.name=MarginLoss", "loss.kwargs={margin: 0.3}"])
    assert (cfg.loss.name, cfg.loss.kwargs) == ("MarginLoss", {"margin": 0.3}) and config_notes(cfg) == []
    # a whole section with a new name: its other keys are still named
    path = _write(tmp_path / "w.yaml", TINY.replace("loss:\n", "loss:\n  weight: 2\n"))
    cfg = load_config(path, ["loss={name: MarginLoss}"])
    assert (cfg.loss.name, cfg.loss.kwargs, cfg.loss.weight) == ("MarginLoss", {}, 1.0)
    notes = config_notes(cfg)
    assert len(notes) == 1 and notes[0].startswith(f"loss.weight: 2 from {path}:4 not used: the override loss={{name: "
                                                   "MarginLoss}")


def test_an_empty_mapping_empties_without_a_note(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "c.yaml", TINY), ["loss.kwargs={}"])
    assert cfg.loss.kwargs == {} and config_notes(cfg) == []
