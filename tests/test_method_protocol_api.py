"""A method's own test protocol is used through :class:`dynametric.engine.protocols.MethodTestProtocol` only: a method
other than DyML, with a protocol of its own, is bound, checked and recorded by the pipeline as DyML's is (its split
keys, its missing-split error, its run_info header and report view), with nothing DyML-shaped asked of it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.engine.protocols import EmbeddedSet, Evaluate, LeaveOneOut, MethodTestProtocol
from dynametric.errors import ConfigError
from dynametric.methods import METHODS, Method
from dynametric.pipeline import method_test_protocol, protocol_from_config
from dynametric.pipeline.protocols import check_test_splits, protocol_split_keys


@dataclass(frozen=True)
class ProbeProtocol(MethodTestProtocol):
    """Leave-one-out on the split ``method.kwargs.probe`` names (not ``data.test_split``)."""

    probe: str
    scale_names: tuple[str, ...] | None = None
    bound_test_split: str | None = None

    @property
    def name(self) -> str:
        return "probe"

    def required_splits(self) -> list[str]:
        return [self.probe]

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        return LeaveOneOut(self.probe, self.scale_names, per_category=False).evaluate(sets, evaluate)

    def bind(self, *, test_split: str | None = None,
             scale_names: Sequence[str] | None = None) -> ProbeProtocol:
        return replace(self, bound_test_split=test_split,
                       scale_names=None if scale_names is None else tuple(scale_names))

    def header(self) -> dict[str, Any]:
        return {"name": self.name, "probe_split": self.probe}

    def split_keys(self, cfg: Any) -> dict[str, str]:
        return {self.probe: "method.kwargs.probe"}

    def missing_splits_error(self, cfg: Any, missing: Sequence[str], splits: Sequence[str],
                             offered: str) -> ConfigError | None:
        return ConfigError(f"the probe split {missing[0]!r} is not in the data: {offered}", key="method.kwargs.probe")

    @property
    def report_view_uses_validation(self) -> bool:
        return True

    @property
    def report_view_note(self) -> str:
        return "validation (probe protocol)"


class Probe(Method):
    name = "probe"

    def validate(self, cfg: Any) -> Any:
        for arg in cfg.method.kwargs:
            if arg != "probe":
                raise ConfigError("unknown option", key=f"method.kwargs.{arg}")
        return str(cfg.method.kwargs.get("probe", "test"))

    def test_protocol(self, settings: Any) -> MethodTestProtocol | None:
        return ProbeProtocol(settings)


@pytest.fixture
def probe_method(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, "probe", Probe())


def _cfg(*overrides: str) -> Any:
    return load_config(overrides=["method.name=probe", "method.kwargs={probe: val}", *overrides])


def test_a_method_protocol_is_bound_and_its_split_keys_are_its_own(probe_method: None) -> None:
    cfg = _cfg("data.test_split=test")
    assert method_test_protocol(cfg) == ProbeProtocol("val")
    protocol = protocol_from_config(cfg, scale_names=["a", "b"])
    assert protocol == ProbeProtocol("val", ("a", "b"), "test")  # bound to data.test_split and the run's scales
    assert protocol.required_splits() == ["val"]
    assert protocol_split_keys(cfg) == {"val": "method.kwargs.probe"}  # not attributed to data.test_split
    assert protocol_from_config(cfg, split="train") == LeaveOneOut("train", None, True)  # --split: leave-one-out


def test_a_method_protocol_says_what_is_missing(probe_method: None) -> None:
    cfg = _cfg()
    check_test_splits(cfg, ["train", "val"])  # its split is there
    with pytest.raises(ConfigError) as info:
        check_test_splits(cfg, ["train", "test"])
    assert info.value.key == "method.kwargs.probe"
    assert "the probe split 'val' is not in the data: the synthetic data has the splits train, test" in str(info.value)


TINY = """
data:
  format: synthetic
  options: {images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}
  batch_size: 16
  m: 4
  eval_batch_size: 64
  val_split: null
  val_fraction: 0.25
model: {backbone: simple_cnn, embedding_dim: 8, backbone_kwargs: {width: 4, depth: 2}}
loss: {name: TripletMarginLoss}
optim: {lr: 0.003}
trainer: {max_epochs: 1, progress_bar: false, log_every_n_steps: 1}
method: {name: probe, kwargs: {probe: test}}
run: {report: true}
"""


def test_a_run_records_the_method_protocol_and_its_report_view(probe_method: None, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["test_protocol"] == {"name": "probe", "probe_split": "test"}
    assert info["report_view_set"] == "validation (probe protocol)" and info["test_images"] is None
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert list(test) == ["fine", "middle", "coarse", "mean"]
    assert test["fine"]["num_queries"] == 3 * 2 * 3 * 4 - test["fine"]["excluded_queries"]  # the test split's items
