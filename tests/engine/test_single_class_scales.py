"""Hierarchical labels with a scale of one class (a root ``kingdom``), and scale names holding a ``/``.

* a ``multiscale`` term comparing the whole batch (any sampler but ``three_scale``, which refuses it) at a scale with
  one training class trains on nothing there: a one-line ``warning:`` from the preflight (run and dry run);
* a monitored scale with one validation class is constant (1.0): a ``warning:``; ``mean`` rows averaging in a scale
  with one class in the evaluated data: a ``note:`` (output, ``run_info.json`` ``notes``, the report's Run section);
* ``trainer.monitor`` is split at its last ``/`` (``genus/sub/map@r``: the scale ``genus/sub``).
"""

from __future__ import annotations

import csv
import html
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynametric.config import load_config
from dynametric.config.schema import resolve_monitor, split_monitor
from dynametric.engine.preflight import (
    check_validation_queries,
    mean_single_class_note,
    monitor_single_class_warning,
    multiscale_single_class_warnings,
    scale_notes,
    single_scale_one_class_warnings,
)
from dynametric.errors import ConfigError

SCALES = ["fine", "middle", "kingdom"]


def _labels(fines, kingdoms=None):
    """fine f, middle f // 2, kingdom 0 (or ``kingdoms``)."""
    kingdoms = kingdoms or [0] * len(fines)
    return SimpleNamespace(labels=torch.tensor([[f, f // 2, k] for f, k in zip(fines, kingdoms)]))


TRAIN = _labels([f for f in range(8) for _ in range(4)])


# --------------------------------------------------------------------------------------------------- finding 1


def test_a_whole_batch_multiscale_term_at_a_one_class_scale_is_one_warning_line():
    cfg = load_config(None, ["loss.multiscale=true"])
    lines = multiscale_single_class_warnings(cfg, TRAIN, SCALES)
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    assert line.startswith("warning: key 'loss.multiscale': the training labels have one class at kingdom "
                           "(column 2), so loss TripletMarginLoss compares the batch's embeddings with each other")
    assert "finds no negative pair at kingdom, training on nothing there" in line
    assert line.endswith("give that scale weight 0 ('loss.scale_weights=[1, 1, 0]') or set loss.multiscale: false")
    # two classes at every scale: nothing to say
    assert multiscale_single_class_warnings(cfg, _labels(list(range(8)), [0, 1] * 4), SCALES) == []


def test_what_the_multiscale_warning_leaves_alone():
    assert multiscale_single_class_warnings(load_config(), TRAIN, SCALES) == []  # not multiscale
    weighted = load_config(None, ["loss.multiscale=true", "loss.scale_weights=[2, 0.5, 0]"])
    assert multiscale_single_class_warnings(weighted, TRAIN, SCALES) == []  # the scale is weighted 0
    kept = load_config(None, ["loss.multiscale=true", "loss.scale_weights=[2, 0.5, 1]"])
    assert "'loss.scale_weights=[2, 0.5, 0]'" in multiscale_single_class_warnings(kept, TRAIN, SCALES)[0]
    # three_scale: check_batches refuses it (a chunk of one class), no second line here
    three = load_config(None, ["loss.multiscale=true", "data.sampler=three_scale", "data.batch_size=24",
                               "data.m=4"])
    assert multiscale_single_class_warnings(three, TRAIN, SCALES) == []


def test_a_single_scale_term_at_a_one_class_column_is_one_warning_line():
    """Finding: a term that is not multiscale but compares the batch at its own ``scale`` trained on nothing, with no
    word, when that column has one training class (the multiscale warning looked at multiscale terms only)."""
    cfg = load_config(None, ["loss.kwargs.scale=2"])
    lines = single_scale_one_class_warnings(cfg, TRAIN, SCALES)
    assert lines == ["warning: key 'loss.kwargs.scale': the training labels have one class at kingdom (column 2), so "
                     "loss TripletMarginLoss compares the batch's embeddings with each other at kingdom alone and "
                     "finds no negative pair in any batch, training on nothing; train it on a scale with two or more "
                     "classes (loss.kwargs.scale=1: middle) or use data with two or more classes at kingdom"]
    assert scale_notes(cfg, TRAIN, None, {}, "fine/map@r", SCALES) == lines  # said by the run and its dry run
    # an extra term and a pml: name (its column keyword is label_scale); every column one class: no finer scale
    extra = load_config(None, ["extra_losses=[{name: 'pml:ContrastiveLoss', kwargs: {label_scale: 2}}]"])
    line, = single_scale_one_class_warnings(extra, TRAIN, SCALES)
    assert line.startswith("warning: key 'extra_losses[0].kwargs.label_scale': the training labels have one class at "
                           "kingdom (column 2), so extra_losses[0] pml:ContrastiveLoss compares")
    one = _labels([0] * 8)
    assert single_scale_one_class_warnings(load_config(), one, SCALES)[0].endswith(
        "training on nothing; use data with two or more classes at fine")


def test_what_the_single_scale_warning_leaves_alone():
    assert single_scale_one_class_warnings(load_config(None, ["loss.kwargs.scale=1"]), TRAIN, SCALES) == []
    assert single_scale_one_class_warnings(load_config(None, ["loss.kwargs.scale=2", "loss.weight=0"]), TRAIN,
                                           SCALES) == []  # a term of weight 0 trains nothing anyway
    # a proxy loss compares each embedding with its class weights, not the batch with itself
    proxy = load_config(None, ["loss.name=ProxyAnchorLoss", "loss.kwargs.scale=2"])
    assert single_scale_one_class_warnings(proxy, TRAIN, SCALES) == []
    # multiscale terms: the multiscale warning's (one line, not two)
    multi = load_config(None, ["loss.multiscale=true"])
    assert single_scale_one_class_warnings(multi, TRAIN, SCALES) == [] and len(scale_notes(
        multi, TRAIN, None, {}, "fine/map@r", SCALES)) == 1
    three = load_config(None, ["data.sampler=three_scale", "data.batch_size=24", "data.m=4"])
    assert single_scale_one_class_warnings(three, _labels([0] * 8), SCALES) == []  # refused by check_batches


# --------------------------------------------------------------------------------------------------- finding 2


def test_a_monitored_scale_with_one_validation_class_is_warned_of():
    val = _labels([0, 0, 1, 1, 2, 2, 3, 3])  # fine: 4 classes, middle: 2, kingdom: 1
    line = monitor_single_class_warning(val, "kingdom/map@r", SCALES, "split 'val'")
    assert line is not None and "\n" not in line
    assert line.startswith("warning: key 'trainer.monitor': the validation data (split 'val', 8 images) has one "
                           "class at scale kingdom, so the monitored kingdom/map@r is the same in every round")
    assert line.endswith("monitor a scale with two or more validation classes (trainer.monitor=middle/map@r)")
    assert monitor_single_class_warning(val, "middle/map@r", SCALES) is None
    assert monitor_single_class_warning(val, "mean/map@r", SCALES) is None  # the other scales still vary
    assert monitor_single_class_warning(None, "kingdom/map@r", SCALES) is None  # no validation
    one = _labels([0, 1], [0, 0])
    # fine 0 and 1 share middle 0: every scale but fine has one class, the nearest finer scale that varies is fine
    assert "trainer.monitor=fine/recall@1" in monitor_single_class_warning(one, "kingdom/recall@1", SCALES)
    every = _labels([0, 0])
    assert "one class at every scale" in monitor_single_class_warning(every, "mean/map@r", SCALES)


def test_mean_rows_averaging_single_class_scales_in_are_noted():
    val = _labels([0, 0, 1, 1])  # middle 0 only, kingdom 0 only
    query, gallery = _labels([4, 5], [0, 0]), _labels([4, 6], [0, 1])  # test: kingdom 0 and 1 together
    note = mean_single_class_note({"validation": [val], "test": [query, gallery]}, SCALES)
    assert note is not None and "\n" not in note
    assert note.startswith("note: the mean rows average in scale(s) with a single class in the evaluated data: "
                           "middle (validation), kingdom (validation); ")
    assert mean_single_class_note({"test": [query, gallery]}, SCALES) is None
    assert mean_single_class_note({"test": [_labels([0, 1])]}, SCALES).startswith(
        "note: the mean rows average in scale(s) with a single class in the evaluated data: middle (test), "
        "kingdom (test);")
    assert mean_single_class_note({"test": [SimpleNamespace(labels=torch.zeros(3, 1))]}, ["fine"]) is None


def test_the_monitor_suggestions_paste_into_a_shell():
    names = ["twig a", "twig b", "kingdom"]
    val = _labels([0, 0, 1, 1, 2, 2, 3, 3])  # twig a: 4 classes, twig b: 2, kingdom: 1
    line = monitor_single_class_warning(val, "kingdom/map@r", names)
    assert line.endswith("('trainer.monitor=twig b/map@r')")
    singletons = _labels([0, 1, 2, 3], [0, 0, 1, 1])  # twig a: singletons only; kingdom: two images per class
    cfg = load_config(None, ["trainer.monitor=fine/map@r"])
    with pytest.raises(ConfigError) as info:
        check_validation_queries(cfg, singletons, "twig a/map@r", names)
    assert info.value.message.endswith("or monitor a coarser scale ('trainer.monitor=twig b/map@r')")
    # a name without a shell character is left as it was
    assert monitor_single_class_warning(val, "kingdom/map@r", SCALES).endswith("(trainer.monitor=middle/map@r)")


def test_the_mean_note_counts_the_per_scale_splits_by_their_scale():
    # DyML Vehicle / Animal: query_<s> and gallery_<s> carry the one label of scale s (column 0 of each)
    one = SimpleNamespace(labels=torch.tensor([[3], [3], [3]]))
    two = SimpleNamespace(labels=torch.tensor([[1], [2], [2]]))
    names = ["fine", "middle", "coarse"]
    tests = {"query_fine": two, "gallery_fine": two, "query_middle": two, "gallery_middle": two,
             "query_coarse": one, "gallery_coarse": one}
    cfg = load_config()
    lines = scale_notes(cfg, TRAIN, None, tests, "fine/map@r", names)
    assert lines == ["note: the mean rows average in scale(s) with a single class in the evaluated data: coarse "
                     "(test); there every image is relevant to every query, so each metric of that scale is 1.0 (or "
                     "constant) and lifts the mean; compare the scales' own rows"]
    # the pair together: a class in the query and another in the gallery are two classes
    other = SimpleNamespace(labels=torch.tensor([[4], [4]]))
    assert scale_notes(cfg, TRAIN, None, {**tests, "gallery_coarse": other}, "fine/map@r", names) == []
    # two classes at every scale: nothing said (was: all six counted together as the fine scale)
    assert scale_notes(cfg, TRAIN, None, {**tests, "query_coarse": two, "gallery_coarse": two}, "fine/map@r",
                       names) == []


def test_a_dry_run_of_a_dyml_per_scale_release_notes_the_one_class_coarse_scale(tmp_path, capsys):
    from dynametric.cli import main
    from tests.dyml.helpers import write_release

    root = write_release(tmp_path / "dyml", "vehicle")
    for part in ("query", "gallery"):  # the coarse benchmark: one class
        path = root / "bmk_coarse" / f"{part}.csv"
        path.write_text(re.sub(r", \d+$", ", 77", path.read_text(), flags=re.M))  # the header is glued on
    args = ["train", "--dry-run", "data.format=dyml-vehicle", f"data.root={root}", "data.image_size=16",
            "data.sampler=three_scale", "data.m=2", "data.batch_size=12", "data.val_split=null",
            "data.val_fraction=0.25", "model.backbone=simple_cnn", "model.embedding_dim=8",
            "model.backbone_kwargs={width: 4, depth: 2}", "method.name=dyml",
            "method.kwargs={variant: vehicle, query_in_gallery: contained, protocol: released-files}",
            "trainer.max_steps=1"]
    assert main(args) == 0
    said = capsys.readouterr()
    notes = [line for line in (said.out + said.err).splitlines() if line.startswith("note: the mean rows")]
    assert len(notes) == 1 and ": coarse (test); there every image" in notes[0]


def test_scale_notes_gathers_the_three_in_order():
    cfg = load_config(None, ["loss.multiscale=true"])
    val = _labels([0, 0, 1, 1])
    lines = scale_notes(cfg, TRAIN, val, {"test": _labels([4, 4, 5, 5])}, "kingdom/map@r", SCALES)
    assert [line.split(":", 2)[:2] for line in lines] == [
        ["warning", " key 'loss.multiscale'"], ["warning", " key 'trainer.monitor'"],
        ["note", " the mean rows average in scale(s) with a single class in the evaluated data"]]
    assert "kingdom (validation and test)" in lines[2]


# --------------------------------------------------------------------------------------------------- finding 3


def test_the_monitor_is_split_at_its_last_slash():
    assert split_monitor("genus/sub/map@r") == ("genus/sub", "map@r")
    assert split_monitor("fine/map@r") == ("fine", "map@r")
    assert split_monitor("map@r") == ("", "map@r")
    names = ["species", "genus/sub", "family"]
    assert resolve_monitor("coarsest/map@r", names) == "family/map@r"
    assert resolve_monitor("genus/sub/map@r", names) == "genus/sub/map@r"
    # the config's metric check: 'sub/map@r' was taken for the metric
    assert load_config(None, ["trainer.monitor=genus/sub/map@r"]).trainer.monitor == "genus/sub/map@r"
    with pytest.raises(ConfigError, match="monitor metric 'mapr' is not computed"):
        load_config(None, ["trainer.monitor=genus/sub/mapr"])


def test_the_preflight_checks_a_scale_with_a_slash():
    names = ["species", "genus/sub", "family"]
    val = SimpleNamespace(labels=torch.tensor([[0, 0, 0], [1, 1, 0]]), sequence_ids=None)  # genus/sub singletons
    with pytest.raises(ConfigError, match="no genus/sub class there has two images"):
        check_validation_queries(load_config(), val, "genus/sub/map@r", names)
    assert "trainer.monitor=species/map@r" in monitor_single_class_warning(
        SimpleNamespace(labels=torch.tensor([[0, 0, 0], [1, 0, 0]])), "genus/sub/map@r", names)


def test_the_report_and_the_run_read_a_monitor_with_a_slash_in_its_scale():
    from dynametric.pipeline.report import category_summary, run_section, validation_curves
    from dynametric.pipeline.run import _monitored

    rounds = [{"epoch": 0, "genus/sub": {"map@r": 0.25}}, {"epoch": 1, "genus/sub": {"map@r": 0.5}}]
    assert _monitored(rounds[1], "genus/sub/map@r") == 0.5
    section = html.unescape(run_section({"selected": {"checkpoint": "best.ckpt", "epoch": 1}}, "genus/sub/map@r",
                                        0, rounds))
    assert "selected on the validation split by val/genus/sub/map@r = 0.5000 (epoch 1's round)" in section
    assert validation_curves(rounds, ["species", "genus/sub"], "genus/sub/map@r") == {
        "genus/sub": [(0, 0.25), (1, 0.5)]}
    # the monitored metric gets its own column when it is not one of the table's (map@r, recall@1)
    by_category = {f"c{i}": {scale: {"map@r": i / 10, "r_precision": 1 - i / 10, "num_queries": 2}
                             for scale in ("species", "genus/sub")} for i in range(3)}
    table = "\n".join(category_summary(by_category, ["species", "genus/sub"], "genus/sub/r_precision", where="x"))
    assert "genus/sub r_precision" in table


def test_the_report_shows_the_run_notes():
    from dynametric.pipeline.report import run_section

    note = "note: the mean rows average in scale(s) with a single class in the evaluated data: kingdom (test); x"
    assert note in run_section({"notes": [note]}, "fine/map@r", 0)


# --------------------------------------------------------------------------------------------------- end to end


def _csv_data(root: Path, genus: str = "genus") -> Path:
    """species, genus, family, order, kingdom: 12 training species (4 images each), 4 test species of one order;
    kingdom has one class everywhere."""
    from PIL import Image

    rng = random.Random(0)
    rows = [("path", "split", "species", genus, "family", "order", "kingdom")]
    for split, species in (("train", range(12)), ("test", range(12, 16))):
        for sp in species:
            order = "o0" if split == "test" else f"o{sp // 4 % 2}"
            colour = (40 + 13 * sp, 200 - 11 * sp, 120 if sp % 2 else 30)
            for i in range(4):
                path = root / split / f"s{sp}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in colour)
                          ).save(path)
                rows.append((str(path.relative_to(root)), split, f"s{sp}", f"g{sp // 2}", f"f{sp // 4}", order,
                             "animalia"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root / "labels.csv"


RUN = ["data.format=csv", "data.image_size=16", "data.batch_size=16", "trainer.max_epochs=1",
       "trainer.progress_bar=false", "model.backbone=simple_cnn", "model.embedding_dim=16",
       "model.backbone_kwargs={width: 8, depth: 2}"]


def test_a_dry_run_and_a_run_say_the_single_class_scales(tmp_path, capsys):
    from dynametric.cli import main

    labels = _csv_data(tmp_path / "ds", genus="genus/sub")
    args = ["train", *RUN, f"data.root={labels}", "trainer.monitor=kingdom/map@r", "run.report=true"]
    assert main([*args, "--dry-run"]) == 0
    said = capsys.readouterr()
    dry = [line for line in (said.out + said.err).splitlines() if line.startswith(("warning:", "note: the mean"))]
    assert [line[:40] for line in dry] == ["warning: key 'loss.multiscale': the trai",
                                           "warning: key 'trainer.monitor': the vali",
                                           "note: the mean rows average in scale(s) "]
    assert "one class at kingdom (column 4)" in dry[0] and "'loss.scale_weights=[1, 1, 1, 1, 0]'" in dry[0]
    assert "one class at scale kingdom, so the monitored kingdom/map@r is the same in every round" in dry[1]
    assert "order (test), kingdom (validation and test)" in dry[2]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr()
    run = [line for line in (said.out + said.err).splitlines() if line in dry]
    assert run == dry  # the run says them as the dry run did
    assert json.loads((out / "run_info.json").read_text())["notes"] == dry
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "note: the mean rows average in scale(s) with a single class" in report
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["kingdom"]["map@r"] == 1.0  # the values are as they were: only said


def test_three_scale_trains_with_a_one_class_scale_given_weight_0(tmp_path, capsys):
    from dynametric.cli import main

    labels = _csv_data(tmp_path / "ds")  # kingdom (column 4): one class
    args = ["train", *RUN, f"data.root={labels}", "data.sampler=three_scale", "data.m=2", "data.batch_size=20",
            "loss.multiscale=true", "trainer.max_steps=2", "run.report=false"]
    assert main([*args, "loss.scale_weights=[1, 1, 1, 1, 1]", "--dry-run"]) == 2  # weight 1 there: refused
    assert "give that scale weight 0 ('loss.scale_weights=[1, 1, 1, 1, 0]')" in capsys.readouterr().err
    args.append("loss.scale_weights=[1, 1, 1, 1, 0]")
    assert main([*args, "--dry-run"]) == 0
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    assert (out / "last.ckpt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["kingdom"]["map@r"] == 1.0


def test_a_dry_run_and_a_run_say_a_single_scale_term_at_a_one_class_column(tmp_path, capsys):
    from dynametric.cli import main

    labels = _csv_data(tmp_path / "ds")
    args = ["train", *RUN, f"data.root={labels}", "loss.multiscale=false", "loss.kwargs.scale=4"]
    assert main([*args, "--dry-run"]) == 0
    said = capsys.readouterr()
    dry = [line for line in (said.out + said.err).splitlines() if line.startswith("warning:")]
    assert dry == ["warning: key 'loss.kwargs.scale': the training labels have one class at kingdom (column 4), so "
                   "loss TripletMarginLoss compares the batch's embeddings with each other at kingdom alone and finds "
                   "no negative pair in any batch, training on nothing; train it on a scale with two or more classes "
                   "(loss.kwargs.scale=3: order) or use data with two or more classes at kingdom"]
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert [line for line in (said.out + said.err).splitlines() if line.startswith("warning:")] == dry
    assert json.loads((out / "run_info.json").read_text())["notes"][0] == dry[0]


def test_a_scale_with_a_slash_can_be_monitored_end_to_end(tmp_path, capsys):
    from dynametric.cli import main

    labels = _csv_data(tmp_path / "ds", genus="genus/sub")
    args = ["train", *RUN, f"data.root={labels}", "trainer.monitor=genus/sub/map@r", "loss.multiscale=false"]
    if main([*args, "--dry-run"]) != 0:
        raise SystemExit(capsys.readouterr().err)
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["selected"]["monitor"] == "genus/sub/map@r" and info["selected"]["checkpoint"] == "best.ckpt"
