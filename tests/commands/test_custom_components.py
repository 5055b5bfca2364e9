"""User-written components plugged into dynametric's registries (``LOSSES``, ``MINERS``, ``BATCH_SAMPLERS``,
``BACKBONES``, ``FORMATS``): their mistakes are one line naming the config key that chose them, caught before the
run writes anything where a check can be made then. Every component is defined here and registered for one test
only (``monkeypatch.setitem``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dynametric.cli import main
from dynametric.data.samplers import BATCH_SAMPLERS, RandomBatchSampler
from dynametric.losses import LOSSES
from dynametric.losses.base import MetricLoss
from dynametric.miners import MINERS
from dynametric.miners.base import Miner
from dynametric.models.backbones import BACKBONES
from dynametric.tuples import get_all_pairs_indices

TINY = """
data:
  format: synthetic
  options: {images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}
  batch_size: 16
  m: 4
  eval_batch_size: 64
  workers: 0
model: {backbone: simple_cnn, embedding_dim: 8, backbone_kwargs: {width: 4, depth: 2}}
loss: {name: TripletMarginLoss}
trainer: {max_epochs: 1, progress_bar: false}
run: {report: false}
"""


class TinyNet(nn.Module):
    """A user's backbone: ``width`` channels, or reports 5 more than it gives with ``lie``."""

    classifier_prefixes = ()

    def __init__(self, in_chans: int = 3, width: int = 8, lie: bool = False) -> None:
        super().__init__()
        if width > 64:
            raise ValueError(f"TinyNet is tiny: width must be at most 64, got {width}")
        self.conv = nn.Conv2d(in_chans, width, 3, stride=4, padding=1)
        self.num_features = width + (5 if lie else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def tiny_factory(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:
    return TinyNet(in_chans=in_chans, **kwargs)


class VectorLoss(MetricLoss):
    """A user's loss: the mean squared distance of same-class pairs, or that value three times (``vector``)."""

    def __init__(self, scale: int = 0, mode: str = "ok", **kwargs: Any) -> None:
        super().__init__(scale, **kwargs)
        self.mode = mode

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):  # type: ignore[no-untyped-def]
        same = (labels[:, None] == labels[None, :]).float()
        value = (torch.cdist(embeddings, embeddings).pow(2) * same).mean()
        return value.expand(3).clone() if self.mode == "vector" else value


class OffsetMiner(Miner):
    """A user's miner: every pair, its positives shifted out of the batch with ``bad``."""

    def __init__(self, scale: int = 0, bad: bool = False, **kwargs: Any) -> None:
        super().__init__(scale, **kwargs)
        self.bad = bad

    def mine(self, embeddings, labels, ref_emb, ref_labels):  # type: ignore[no-untyped-def]
        a1, p, a2, n = get_all_pairs_indices(labels, ref_labels)
        return (a1, p + 1000, a2, n) if self.bad else (a1, p, a2, n)


class ShortSampler(RandomBatchSampler):
    """A user's sampler: random batches, ``short`` indices fewer than asked for."""

    def __init__(self, *args: Any, short: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if short < 0:
            raise ValueError(f"short must be >= 0, got {short}")
        self.short = short

    def _batches(self):  # type: ignore[no-untyped-def]
        for batch in super()._batches():
            yield batch[: len(batch) - self.short] if self.short else batch


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKBONES, "tiny", tiny_factory)
    monkeypatch.setitem(LOSSES, "VectorLoss", VectorLoss)
    monkeypatch.setitem(MINERS, "OffsetMiner", OffsetMiner)
    monkeypatch.setitem(BATCH_SAMPLERS, "short", ShortSampler)


def _train(tmp_path: Path, capsys: pytest.CaptureFixture[str], *overrides: str, code: int = 2) -> tuple[Path, str]:
    """``dynametric train`` of :data:`TINY` with ``overrides`` into ``tmp_path/run``: the folder and the last line
    on stderr (the exit status must be ``code``)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", *overrides]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return out, err.strip().splitlines()[-1] if err.strip() else ""


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_a_backbone_reporting_another_width_is_refused_before_the_run_writes(tmp_path, capsys, registered) -> None:
    out, line = _train(tmp_path, capsys, "model.backbone=tiny", "model.backbone_kwargs.lie=true")
    assert line.endswith("key 'model.backbone': backbone 'tiny' gives 8-channel features, but reports 13 (the heads' "
                         "input width): its features would not fit the heads"), line
    assert _nothing_written(out)


def test_a_loss_returning_a_vector_is_one_line_naming_its_term(tmp_path, capsys, registered) -> None:
    """Finding: the line came at the first training step, after the untrained evaluation, with ``config.yaml`` and
    the logs written. The preflight now calls each term once on the first batch's labels: the same line, the run
    folder left empty, and the dry run says it too."""
    out, line = _train(tmp_path, capsys, "loss.name=VectorLoss", "loss.kwargs.mode=vector")
    expected = ("key 'loss.name': loss term 'VectorLoss' (VectorLoss) returned a tensor of shape [3]; expected a "
                "single value (0-dim tensor)")
    assert line.endswith(expected), line
    assert _nothing_written(out) and not (out / "config.yaml").exists()
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--dry-run", "loss.name=VectorLoss",
                 "loss.kwargs.mode=vector"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(expected)


def test_compute_objective_names_the_config_key_of_the_term_whose_loss_is_not_one_value() -> None:
    from dynametric.engine.objective import Objective, compute_objective
    from dynametric.errors import ConfigError

    emb, labels = torch.randn(8, 4), torch.tensor([[0], [0], [1], [1], [2], [2], [3], [3]])
    good = Objective(VectorLoss(), name="first", key="loss")
    total, terms = compute_objective(emb, labels, [good])
    assert total.shape == () and terms["first"].shape == ()
    bad = Objective(VectorLoss(mode="vector"), name="second", key="extra_losses[0]")
    with pytest.raises(ConfigError, match=r"^key 'extra_losses\[0\].name': loss term 'second' \(VectorLoss\) "
                                          r"returned a tensor of shape \[3\]; expected a single value"):
        compute_objective(emb, labels, [good, bad])

    class FloatLoss(nn.Module):
        def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> float:
            return 0.5

    with pytest.raises(ConfigError, match=r"^loss term 'loss' \(FloatLoss\) returned a float; expected a single"):
        compute_objective(emb, labels, [Objective(FloatLoss())])


class RowsFormat:
    """A user's dataset format: ``rows.txt`` holds ``split path fine coarse`` lines; ``short`` drops the coarse label
    of every odd record."""

    name = "rows"
    root_expected = "a folder with rows.txt"
    options: dict[str, object] = {"short": False}

    def splits(self, root: str, **_: Any) -> list[str]:
        return sorted({line.split()[0] for line in (Path(root) / "rows.txt").read_text().splitlines()})

    def read(self, root: str, split: str, *, check_files: bool = True, short: bool = False) -> Any:
        from dynametric.data.base import LoadReport, SplitRecords

        lines = [(n, line.split()) for n, line in enumerate((Path(root) / "rows.txt").read_text().splitlines(), 1)]
        mine = [(n, f) for n, f in lines if f[0] == split]
        raw = [(int(f[2]),) if short and i % 2 else (int(f[2]), int(f[3])) for i, (_, f) in enumerate(mine)]
        return SplitRecords(split=split, paths=[str(Path(root) / f[1]) for _, f in mine], raw_labels=raw,
                            scale_names=("fine", "coarse"), locations=[("rows.txt", n) for n, _ in mine],
                            report=LoadReport(split=split, files=["rows.txt"]))


def test_a_format_reader_giving_a_short_label_row_names_the_record(tmp_path, capsys, monkeypatch) -> None:
    import dynametric.data.registry as registry

    monkeypatch.setitem(registry.FORMATS, "rows", RowsFormat())
    monkeypatch.setattr(registry, "FORMAT_NAMES", (*registry.FORMAT_NAMES, "rows"))
    root = tmp_path / "data"
    root.mkdir()
    (root / "rows.txt").write_text("".join(f"{split} {split}{i}.png {i % 4} {i % 4 // 2}\n"
                                           for split in ("train", "test") for i in range(8)))
    args = ["train", "--dry-run", "data.format=rows", f"data.root={root}", "data.batch_size=8", "data.m=2"]
    assert main([*args, "data.options.short=true"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("rows.txt:2: rows split 'train': the record has 1 label [1]; expected 2, one per scale "
                         "(fine, coarse)"), line


def test_from_records_refuses_label_rows_that_do_not_fit_the_scales() -> None:
    from dynametric.data.base import HierarchicalImageDataset, LoadReport, SplitRecords
    from dynametric.errors import InputError

    def records(raw: list[Any], paths: int = 3) -> SplitRecords:
        return SplitRecords(split="train", paths=[f"/x/{i}.png" for i in range(paths)], raw_labels=raw,
                            scale_names=("fine", "coarse"), locations=[("list.csv", i + 2) for i in range(paths)],
                            report=LoadReport(split="train", files=["list.csv"]))

    build = HierarchicalImageDataset.from_records
    assert build(records([(0, 0), (1, 0), (2, 1)]), name="mine").labels.tolist() == [[0, 0], [1, 0], [2, 1]]
    with pytest.raises(InputError, match=r"^list.csv:4: mine split 'train': the record has 3 labels \['b', 'x', 'y'\]; "
                                         r"expected 2, one per scale \(fine, coarse\)$"):
        build(records([("a", "x"), ("a", "x"), ("b", "x", "y")]), name="mine")  # was: 'y' silently dropped
    with pytest.raises(InputError, match=r"^list.csv:3: mine split 'train': the record has a bare int 7; expected 2"):
        build(records([(0, 0), 7, (1, 0)]), name="mine")
    with pytest.raises(InputError, match=r"^list.csv: mine split 'train': the format's reader gave 3 image paths but "
                                         r"2 label rows; expected one row per image$"):
        build(records([(0, 0), (1, 0)]), name="mine")


def _dry(capsys: pytest.CaptureFixture[str], *overrides: str) -> str:
    """The one error line of ``train --dry-run`` (the default synthetic config) with ``overrides``."""
    assert main(["train", "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_mistyped_option_of_a_user_backbone_names_the_key_and_the_closest_argument(capsys, registered) -> None:
    # the factory takes **kwargs: the constructor it passes them to (TinyNet, found beside it) gives the spellings
    assert _dry(capsys, "model.backbone=tiny", "model.backbone_kwargs.widht=3").endswith(
        "key 'model.backbone_kwargs.widht': backbone 'tiny' has no option 'widht'; did you mean 'width'?")


def test_a_backbone_factory_with_a_closed_signature_is_checked_before_it_is_built(monkeypatch) -> None:
    from dynametric.errors import ConfigError
    from dynametric.models.backbones import create_backbone

    built: list[int] = []

    def closed(pretrained: bool, in_chans: int, width: int = 8) -> nn.Module:
        built.append(width)
        return TinyNet(in_chans, width)

    def hidden(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:  # a class not found beside it
        class Local(TinyNet):
            def __init__(self, in_chans: int, width: int = 8) -> None:
                super().__init__(in_chans, width)

        return Local(in_chans, **kwargs)

    def buggy(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:  # a bug of its own, not an option
        return TinyNet(in_chans, colour=1)  # type: ignore[call-arg]

    monkeypatch.setitem(BACKBONES, "closed", closed)
    monkeypatch.setitem(BACKBONES, "hidden", hidden)
    monkeypatch.setitem(BACKBONES, "buggy", buggy)
    with pytest.raises(ConfigError, match=r"^key 'model.backbone_kwargs.colour': backbone 'closed' has no option "
                                          r"'colour'; its options: width$"):
        create_backbone("closed", colour=2)
    assert built == []  # refused before the factory ran
    assert create_backbone("closed", width=4).feature_dim == 4
    with pytest.raises(ConfigError, match=r"^key 'model.backbone_kwargs.widht': backbone 'hidden' has no option "
                                          r"'widht' \(.*unexpected keyword argument 'widht'\)$"):
        create_backbone("hidden", widht=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        create_backbone("buggy", width=3)


@pytest.mark.parametrize(("overrides", "expected"), [
    (("model.backbone=tiny", "model.backbone_kwargs.width=100"),
     "key 'model.backbone_kwargs.width': backbone 'tiny' refused its options: TinyNet is tiny: width must be at most "
     "64, got 100"),
    (("data.sampler=short", "data.sampler_options.short=-1"),
     "key 'data.sampler_options.short': sampler 'short' (ShortSampler) refused its settings: short must be >= 0, got "
     "-1"),
])
def test_a_value_error_of_a_user_component_s_constructor_is_one_line_on_its_key(capsys, registered, overrides,
                                                                                 expected) -> None:
    assert _dry(capsys, *overrides).endswith(expected)


def test_other_exceptions_of_a_backbone_constructor_stay_tracebacks(monkeypatch) -> None:
    from dynametric.models.backbones import create_backbone

    def broken(pretrained: bool, in_chans: int) -> nn.Module:
        raise RuntimeError("a bug in the factory")

    monkeypatch.setitem(BACKBONES, "broken", broken)
    with pytest.raises(RuntimeError, match="a bug in the factory"):
        create_backbone("broken")


def test_a_sampler_forming_batches_of_another_size_is_one_line_naming_data_sampler(tmp_path, capsys,
                                                                                   registered) -> None:
    out, line = _train(tmp_path, capsys, "data.sampler=short", "data.sampler_options.short=3")
    assert line.endswith(f"key 'data.sampler': sampler 'short' ({__name__}.ShortSampler) formed a training batch of "
                         "13 items (its first batch, drawn by the preflight); every training batch holds "
                         "data.batch_size = 16 items (per process)"), line
    assert _nothing_written(out)  # said by the preflight, before the run writes anything
    cfg = tmp_path / "tiny.yaml"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--dry-run", "data.sampler=short",
                 "data.sampler_options.short=3"]) == 2  # and by the dry run
    assert "formed a training batch of 13 items" in capsys.readouterr().err and _nothing_written(out)


def test_the_batch_size_check_passes_full_batches_and_reads_the_sampler_through() -> None:
    from dynametric.config import load_config
    from dynametric.engine.builders import BatchSizeChecked, checked_sampler_factory
    from dynametric.errors import ConfigError

    cfg = load_config(None, ["data.sampler=random", "data.batch_size=4"])
    sampler = checked_sampler_factory(cfg)(torch.zeros(10, 1, dtype=torch.long), 0, 1)
    assert isinstance(sampler, BatchSizeChecked) and sampler.bs == 4 and len(sampler) == 2
    sampler.set_epoch(3)
    assert sampler.sampler.epoch == 3 and [len(b) for b in sampler] == [4, 4]
    short = BatchSizeChecked(ShortSampler(10, 4, short=1), 4, "short")
    short.set_epoch(2)
    with pytest.raises(ConfigError, match=r"^key 'data.sampler': sampler 'short' \(.*ShortSampler\) formed a training "
                                          r"batch of 3 items \(batch 0 of epoch 2\)"):
        list(short)


def test_a_miner_returning_indices_outside_the_batch_is_named_with_its_class(tmp_path, capsys, registered) -> None:
    _, line = _train(tmp_path, capsys, "miner.name=OffsetMiner", "miner.kwargs.bad=true")
    assert line.endswith(f"key 'miner.name': miner OffsetMiner ({__name__}.OffsetMiner) of loss term "
                         "'TripletMarginLoss' returned indices the loss cannot take: entry 1 has indices outside "
                         "[0, 16)"), line


def test_run_info_records_component_classes_and_a_resume_notes_a_replaced_registry_entry(tmp_path, capsys,
                                                                                         monkeypatch,
                                                                                         registered) -> None:
    import json

    from dynametric.engine.checkpoint import load_checkpoint_file

    out, _ = _train(tmp_path, capsys, "model.backbone=tiny", "miner.name=OffsetMiner", code=0)
    recorded = json.loads((out / "run_info.json").read_text())["components"]
    assert recorded == {"loss.name": "dynametric.losses.triplet.TripletMarginLoss",
                        "miner.name": f"{__name__}.OffsetMiner",
                        "data.sampler": "dynametric.data.samplers.MPerClassSampler",
                        "model.backbone": f"{__name__}.TinyNet",
                        "data.format": "dynametric.data.synthetic.SyntheticHierarchy",
                        "method.name": "dynametric.methods.base.Standard"}
    assert load_checkpoint_file(out / "last.ckpt")["dynametric"]["components"] == recorded
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # nothing replaced: no note
    assert "component classes" not in capsys.readouterr().err
    monkeypatch.setitem(LOSSES, "TripletMarginLoss", VectorLoss)  # user code registering over a built-in name
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "component classes" in line]
    assert notes == [f"note: the run was trained with other component classes than the config's names resolve to now "
                     f"({out / 'last.ckpt'}): loss.name dynametric.losses.triplet.TripletMarginLoss -> "
                     f"{__name__}.VectorLoss; resuming with the classes of now (a registry entry replaced by user "
                     "code, or the code that registered it not imported?)"], notes


def test_a_model_folder_of_a_user_backbone_names_the_module_to_import_where_it_is_not_registered(tmp_path) -> None:
    import json

    from dynametric.errors import InputError
    from dynametric.models import build_embedder
    from dynametric.models.embedder import Embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, "tiny", tiny_factory)
        model = build_embedder("tiny", embedding_dim=4)
        folder = model.save_pretrained(tmp_path / "m")
        meta = json.loads((folder / "dynametric.json").read_text())
        assert meta["backbone_module"] == __name__
        assert Embedder.from_pretrained(folder).embedding_dims == model.embedding_dims  # loads where registered
    assert "tiny" not in BACKBONES  # a process without the user's code
    assert meta["backbone_factory"] == f"{__name__}:tiny_factory"
    with pytest.raises(InputError, match=rf"dynametric.json key 'model.backbone': unknown backbone 'tiny': registered "
                                         rf"with the factory {__name__}.tiny_factory when the model was saved; import "
                                         r"the module that registers it under 'tiny' before loading \(where the model "
                                         r"was trained with a config, its 'imports:' lists it\)$"):
        Embedder.from_pretrained(folder)
    del meta["backbone_module"], meta["backbone_factory"]  # a folder saved before the factory was recorded
    (folder / "dynametric.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"unknown backbone 'tiny' \(neither .* nor a timm model\).*; a "
                                         r"backbone registered by user code \(BACKBONES\['tiny'\] = \.\.\.\) is known "
                                         r"only where the module that registers it is imported: import the module "
                                         r"that registers it under 'tiny' before loading"):
        Embedder.from_pretrained(folder)
    assert "backbone_module" not in json.loads(build_embedder("simple_cnn", embedding_dim=4).save_pretrained(
        tmp_path / "own").joinpath("dynametric.json").read_text())  # dynametric's own backbones record none


def gelu_cnn_factory(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:
    """A user's backbone registered over the built-in name ``simple_cnn``: its network, another activation."""
    from dynametric.models.backbones import SimpleCNN

    class GeluCNN(SimpleCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(self.features(x)) * 3.0

    return GeluCNN(in_chans, **kwargs)


def test_a_model_folder_whose_backbone_replaced_a_built_in_name_is_refused_where_the_name_is_dynametric_own(
        tmp_path) -> None:
    """``BACKBONES["simple_cnn"] = GeluCNN`` when saved: loading where the name is dynametric's own SimpleCNN (or
    another user's factory) would load the weights into another network (other embeddings, silently)."""
    import json

    from dynametric.errors import InputError
    from dynametric.models import build_embedder
    from dynametric.models.embedder import Embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, "simple_cnn", gelu_cnn_factory)
        model = build_embedder("simple_cnn", embedding_dim=4).eval()
        folder = model.save_pretrained(tmp_path / "m")
        meta = json.loads((folder / "dynametric.json").read_text())
        assert meta["backbone_factory"] == f"{__name__}:gelu_cnn_factory"
        assert (f"import {__name__}  # the module that registers backbone 'simple_cnn'"
                in (folder / "README.md").read_text())  # the model card's usage imports it
        x = torch.rand(2, 3, 32, 32)
        assert torch.allclose(Embedder.from_pretrained(folder)(x), model(x))  # the same factory: loads
        mp.setitem(BACKBONES, "simple_cnn", tiny_factory)  # another user's factory under the name
        with pytest.raises(InputError, match=rf"key 'model.backbone': backbone 'simple_cnn' was the factory "
                                             rf"{__name__}.gelu_cnn_factory when the model was saved, and here it is "
                                             rf"another \({__name__}.tiny_factory\)"):
            Embedder.from_pretrained(folder)
    with pytest.raises(InputError) as err:  # the registry as dynametric has it: its own SimpleCNN
        Embedder.from_pretrained(folder)
    assert err.value.key == "model.backbone"
    assert (f"backbone 'simple_cnn' was the factory {__name__}.gelu_cnn_factory when the model was saved, and here "
            "it is dynametric's own (dynametric.models.backbones.") in err.value.message
    assert "import the module that registers it under 'simple_cnn'" in err.value.message
    assert "\n" not in str(err.value)
    del meta["backbone_factory"]  # a folder that records the module only (saved before the factory was recorded)
    (folder / "dynametric.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=rf"was the factory {__name__} when the model was saved, and here it is "
                                         r"dynametric's own"):
        Embedder.from_pretrained(folder)


def _user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A user's package ``name`` under ``tmp_path`` (on ``sys.path`` for the test): ``name._nets`` defines the
    backbone factory ``make_tiny``, ``name.register`` registers it as ``BACKBONES["tiny2"]`` (so the module that
    defines it is not the one to import). The registry entry is restored by ``monkeypatch``; the modules are
    removed from ``sys.modules`` by the caller (:func:`_forget`)."""
    pkg = tmp_path / "pp" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_nets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class TinyNet(nn.Module):\n"
        "    def __init__(self, in_chans, width=8):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(in_chans, width, 3, stride=4, padding=1)\n"
        "        self.num_features = width\n"
        "    def forward(self, x):\n"
        "        return torch.relu(self.conv(x))\n"
        "def make_tiny(pretrained, in_chans, **kwargs):\n"
        "    return TinyNet(in_chans, **kwargs)\n")
    (pkg / "register.py").write_text(f"from dynametric.models.backbones import BACKBONES\n"
                                     f"from {name}._nets import make_tiny\nBACKBONES['tiny2'] = make_tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pp"))
    monkeypatch.setitem(BACKBONES, "tiny2", None)  # restored (removed) after the test
    monkeypatch.delitem(BACKBONES, "tiny2")


def _forget(name: str) -> None:
    import sys

    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


def test_a_model_folder_exported_from_a_run_records_its_imports_and_names_them_where_the_backbone_is_unknown(
        tmp_path, monkeypatch) -> None:
    """The factory is defined in ``pk3._nets`` and registered by ``pk3.register`` (the run's ``imports:``): the
    error names ``import pk3.register`` first and the factory as the factory (was: ``import 'pk3._nets'``, which
    registers nothing); the model card's usage imports it."""
    import json

    from dynametric.errors import InputError
    from dynametric.models.embedder import Embedder
    from dynametric.models.hub import export_run

    _user_package(tmp_path, monkeypatch, "pk3")
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(TINY.replace("backbone: simple_cnn", "backbone: tiny2").replace(
            "backbone_kwargs: {width: 4, depth: 2}", "backbone_kwargs: {width: 4}") + "imports: [pk3.register]\n")
        out = tmp_path / "run"
        assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
        folder = export_run(out, tmp_path / "m")
        meta = json.loads((folder / "dynametric.json").read_text())
        assert (meta["imports"], meta["backbone_factory"]) == (["pk3.register"], "pk3._nets:make_tiny")
        card = (folder / "README.md").read_text()
        assert "import pk3.register  # registers the model's components" in card
        assert card.index("import pk3.register") < card.index("Embedder.from_pretrained(")
        del BACKBONES["tiny2"]  # a process without the user's code
        with pytest.raises(InputError) as err:
            Embedder.from_pretrained(folder)
        assert err.value.key == "model.backbone"
        assert err.value.message == ("unknown backbone 'tiny2': registered with the factory pk3._nets.make_tiny when "
                                     "the model was saved; import pk3.register (the imports of the run's config), or "
                                     "import the module that registers it under 'tiny2' before loading (where the "
                                     "model was trained with a config, its 'imports:' lists it)")
    finally:
        _forget("pk3")


def test_train_records_the_import_option_modules_in_the_run_config_and_a_resume_says_how_to_import_more(
        tmp_path, monkeypatch, capsys) -> None:
    """``dynametric --import pk4.register train ...``: the run's config.yaml lists the module under ``imports`` (was
    ``imports: []``: ``evaluate --checkpoint`` of the run failed, unknown backbone), once, after the config's own;
    a config.yaml whose only change is ``imports`` is refused on resume with the ``--import`` way to add one."""
    from dynametric.config import load_config

    _user_package(tmp_path, monkeypatch, "pk4")
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(TINY.replace("backbone: simple_cnn", "backbone: tiny2").replace(
            "backbone_kwargs: {width: 4, depth: 2}", "backbone_kwargs: {width: 4}") + "imports: [pk4._nets]\n")
        out = tmp_path / "run"
        assert main(["--import", "pk4.register", "--import", "pk4._nets", "--import", "pk4.register", "train",
                     "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
        capsys.readouterr()
        del BACKBONES["tiny2"]  # a later process without --import: the run's config imports it
        _forget("pk4")
        assert load_config(out / "config.yaml").imports == ["pk4._nets", "pk4.register"]
        assert "tiny2" in BACKBONES
        assert main(["evaluate", "--checkpoint", str(out / "best.ckpt")]) == 0
        text = (out / "config.yaml").read_text()
        (out / "config.yaml").write_text(text.replace("- pk4.register\n", "- pk4.register\n- json\n", 1))
        assert main(["train", "--resume", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "key 'imports': changed only its 'imports' (['pk4._nets', 'pk4.register'] in " in err, err
        assert f"import another module for the resume with dynametric --import MODULE train --resume {out}" in err
    finally:
        _forget("pk4")


def test_the_commands_that_load_a_checkpoint_note_a_backbone_class_other_than_the_run_s(tmp_path, monkeypatch,
                                                                                         capsys) -> None:
    """A run trained with ``BACKBONES["simple_cnn"]`` registered over by user code, loaded where the name is
    dynametric's own: ``evaluate --checkpoint``, ``embed``, ``export`` and ``from_pretrained(run_dir)`` say which
    class the run had and which one the weights load into (was: nothing; only ``train --resume`` noted it)."""
    import warnings

    from dynametric.models.embedder import Embedder

    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BACKBONES, "simple_cnn", gelu_cnn_factory)
        assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(out / "best.ckpt")]) == 0  # the same class: no note
        assert "was trained with model.backbone" not in capsys.readouterr().err
    note = (f"note: {out / 'best.ckpt'} was trained with model.backbone 'simple_cnn' of the class "
            f"{__name__}.gelu_cnn_factory.<locals>.GeluCNN; here the name builds "
            "dynametric.models.backbones.SimpleCNN, into which its weights are loaded, so the embeddings may differ "
            "from the run's (a registry entry replaced by user code, or the code that registered it not imported? "
            "import it: dynametric --import MODULE ..., or the config's 'imports:')")
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt")]) == 0
    assert note in capsys.readouterr().err.splitlines()
    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(images / "a.png")
    assert main(["embed", "--checkpoint", str(out / "best.ckpt"), "--images", str(images),
                 "--out", str(tmp_path / "emb")]) == 0
    assert note in capsys.readouterr().err.splitlines()
    assert main(["export", "--checkpoint", str(out / "best.ckpt"), "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 0
    assert note in capsys.readouterr().err.splitlines()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Embedder.from_pretrained(out)
    assert model.notes == [note[len("note: "):]]
    assert [str(w.message) for w in caught if "was trained with model.backbone" in str(w.message)] == model.notes


class NoFeaturesNet(nn.Module):
    """A user's backbone without ``num_features``."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.mark.parametrize(("factory", "message"), [
    (lambda pretrained, in_chans, **kw: NoFeaturesNet(in_chans),
     "backbone 'mine': its module NoFeaturesNet has no num_features attribute, expected a positive int (the channels "
     "of its feature maps)"),
    (lambda pretrained, in_chans, **kw: "hello",
     "backbone 'mine': its factory returned str, expected a torch.nn.Module (with num_features, giving [B, C, H, W] "
     "feature maps)"),
])
def test_a_user_backbone_without_num_features_or_not_a_module_is_one_line(tmp_path, monkeypatch, capsys, factory,
                                                                          message) -> None:
    """Was ``AttributeError: ... has no attribute 'num_features'`` with a traceback (in the dry run too)."""
    from dynametric.errors import ConfigError
    from dynametric.models import build_embedder

    monkeypatch.setitem(BACKBONES, "mine", factory)
    with pytest.raises(ConfigError) as err:
        build_embedder("mine", embedding_dim=4)
    assert (err.value.key, err.value.message) == ("model.backbone", message)
    out, last = _train(tmp_path, capsys, "model.backbone=mine", "model.backbone_kwargs={}", "--dry-run")
    assert last.endswith(f"key 'model.backbone': {message}"), last
