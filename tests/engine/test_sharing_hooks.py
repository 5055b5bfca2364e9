"""`dynametric train` with the alternating hooks (methods/sharing/alternating.py): `method.name:
sharing_alternating` (t* on its own class-balanced batch) and `method.name: mic` (surrogate labels, re-clustering on
schedule) on tiny synthetic data; which parameters each step moves; config errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.engine.checkpoint import load_checkpoint_file
from dynametric.errors import ConfigError
from dynametric.methods import plan_from_config
from dynametric.methods.sharing.alternating import AlternatingSharingModule
from dynametric.pipeline import build_components
from tests.metrics_csv import train_epoch_rows

ROOT = Path(__file__).resolve().parents[2]
ALT = ROOT / "configs" / "sharing" / "synthetic-alternating.yaml"
MIC = ROOT / "configs" / "mic" / "synthetic.yaml"
# 18 train fine classes x 4 images (72), 16x16 images, a 2-block CNN; 2 iterations per epoch
TINY = ["data.options={images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 1}}",
        "model.backbone_kwargs={width: 8, depth: 2}", "model.embedding_dim=8", "data.batch_size=16",
        "data.iterations_per_epoch=2", "data.eval_batch_size=64", "trainer.log_every_n_steps=1", "run.report=false"]
HEADS = ("class", "shared", "concat")


def _train(config: Path, out: Path, overrides: list[str]) -> tuple[dict, dict, dict]:
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress", *TINY, *overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / "run_info.json").read_text())
    return metrics, info, load_checkpoint_file(out / "last.ckpt")


class _Spy:
    """Records, after every optimizer step of the hook, which parameter groups received a non-zero gradient."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, set[str], torch.Tensor]] = []
        original = AlternatingSharingModule._step

        def step(module, images, labels, terms, where, batch_idx):
            out = original(module, images, labels, terms, where, batch_idx)
            moved = set()
            for name, p in module.named_parameters():
                if p.grad is not None and bool(p.grad.abs().sum() > 0):
                    moved.add("regressor" if "regressor" in name else name.split(".")[1] if "heads" not in name
                              else name.split(".")[2])
            self.calls.append((where, moved, labels.detach().cpu().clone()))
            return out

        monkeypatch.setattr(AlternatingSharingModule, "_step", step)


def test_sharing_alternating_runs_end_to_end_and_each_step_moves_its_parameters(tmp_path, monkeypatch, capsys):
    spy = _Spy(monkeypatch)
    capsys.readouterr()
    metrics, info, last = _train(ALT, tmp_path / "alt", ["trainer.max_epochs=2", "method.kwargs.p_aux=1.0"])
    printed = "".join(capsys.readouterr())
    # the end-of-run table says which of the two heads (or their concatenation) it shows
    assert "test metrics of head concat (every head: run_info.json test_by_head)\nscale " in printed
    assert set(metrics) == {"untrained", "validation", "test"} and len(metrics["validation"]) == 2
    assert set(info["test_by_head"]) == set(HEADS)
    for head in HEADS:
        assert 0.0 <= info["test_by_head"][head]["fine"]["recall@1"] <= 1.0
    # p_aux = 1: every iteration is a class step then a shared step, each its own optimizer step
    state = last["dynametric_sharing"]
    assert state["class_steps"] == 4 and state["shared_steps"] == 4 and info["global_step"] == 8
    assert [w for w, _, _ in spy.calls] == ["class", "shared"] * 4
    for where, moved, labels in spy.calls:
        if where == "class":  # class loss only (decorrelation rides on the shared step)
            assert {"class", "backbone"} <= moved and "shared" not in moved and "regressor" not in moved
        else:  # shared loss + rho * L_adv: shared head, R, and (reversed gradient) the class head
            assert {"shared", "backbone", "regressor", "class"} <= moved
            # its own class-balanced batch: 16 / m_shared = 4 classes x 4 images, true [B, 3] label rows
            assert labels.shape == (16, 3)
            _, counts = torch.unique(labels[:, 0], return_counts=True)
            assert counts.tolist() == [4, 4, 4, 4]


def test_p_aux_zero_leaves_the_shared_head_untouched(tmp_path):
    cfg = load_config(ALT, [*TINY, "method.kwargs.p_aux=0.0"])
    comps = build_components(cfg, datasets=None)
    before = {k: v.clone() for k, v in comps.module.state_dict().items()}
    _, info, last = _train(ALT, tmp_path / "p0", ["trainer.max_epochs=1", "method.kwargs.p_aux=0.0"])
    after = last["state_dict"]
    assert last["dynametric_sharing"]["shared_steps"] == 0 and info["global_step"] == 2
    groups = {g: [k for k in before if g in k and "running" not in k and "num_batches" not in k]
              for g in ("heads.shared", "heads.class", "regressor", "backbone")}
    assert all(groups.values())
    # same seed -> same initial weights; no shared step ran, and the decorrelation rides on the shared step
    for k in groups["heads.shared"] + groups["regressor"]:
        assert torch.equal(after[k], before[k]), k
    for g in ("heads.class", "backbone"):
        assert any(not torch.equal(after[k], before[k]) for k in groups[g]), g


def test_mic_reclusters_on_schedule_inside_training(tmp_path, monkeypatch):
    spy = _Spy(monkeypatch)
    metrics, info, last = _train(MIC, tmp_path / "mic", [
        "trainer.max_epochs=5", "method.kwargs.recluster_every=2", "method.kwargs.p_aux=1.0"])
    assert set(info["test_by_head"]) == set(HEADS) and len(metrics["validation"]) == 5
    state = last["dynametric_sharing"]
    # initial clustering before epoch 0, shared-embedding re-clustering at the start of epochs 2 and 4
    assert state["clustering_history"] == [[0, "initial"], [2, "shared_embedding"], [4, "shared_embedding"]]
    surrogate = state["surrogate_labels"]
    assert surrogate.shape == (72,) and sorted(torch.unique(surrogate).tolist()) == list(range(12))
    shared_labels = [lab for w, _, lab in spy.calls if w == "shared"]
    assert len(shared_labels) == 10 and state["shared_steps"] == 10
    for lab in shared_labels:  # surrogate-labelled batches: 4 clusters x m_shared 4, labels are cluster ids
        assert lab.shape == (16, 1) and int(lab.max()) < 12
        assert sorted(torch.unique(lab, return_counts=True)[1].tolist()) == [4, 4, 4, 4]


def test_mic_run_records_its_clusterings_and_logs_the_step_counts(tmp_path):
    """run_info.json (and the report) record every clustering (the epochs the schedule implies, the clusters and
    their sizes) and the class / shared step counts; logs/metrics.csv has the step counts at every epoch end and the
    loss terms of both steps."""
    out = tmp_path / "mic"
    _, info, last = _train(MIC, out, ["trainer.max_epochs=3", "method.kwargs.recluster_every=2",
                                      "method.kwargs.p_aux=0.5", "run.report=true"])
    state = last["dynametric_sharing"]
    assert (info["class_steps"], info["shared_steps"]) == (state["class_steps"], state["shared_steps"])
    assert info["class_steps"] == 6 and 0 < info["shared_steps"] < 6
    assert info["class_steps"] + info["shared_steps"] == info["global_step"]
    clustering = info["clustering"]
    assert [(c["epoch"], c["source"]) for c in clustering] == [(0, "initial"), (2, "shared_embedding")]
    assert clustering == state["clustering_events"]
    rows = train_epoch_rows(out)
    assert [r["epoch"] for r in rows] == [0.0, 1.0, 2.0]
    for c in clustering:  # 72 training images in 12 clusters
        assert c["num_clusters"] == 12 and 1 <= c["clusters_used"] <= 12 and 1 <= c["min_size"] <= c["max_size"]
        before = rows[c["epoch"] - 1] if c["epoch"] else {"train/class_steps": 0.0, "train/shared_steps": 0.0}
        assert c["global_step"] == before["train/class_steps"] + before["train/shared_steps"]
    assert (rows[-1]["train/class_steps"], rows[-1]["train/shared_steps"]) == (info["class_steps"],
                                                                              info["shared_steps"])
    assert [r["train/class_steps"] for r in rows] == [2.0, 4.0, 6.0]
    assert {"train/MarginLoss@class", "train/shared", "train/adv", "train/shared_total"} <= set(rows[-1])
    assert "<h2>Training record</h2>" in (out / "report.html").read_text(encoding="utf-8")


def test_sharing_alternating_records_its_step_counts(tmp_path):
    _, info, last = _train(ALT, tmp_path / "alt", ["trainer.max_epochs=1", "method.kwargs.p_aux=1.0"])
    assert (info["class_steps"], info["shared_steps"]) == (2, 2) and "clustering" not in info


def test_hook_config_errors():
    base = load_config(MIC, TINY)
    assert plan_from_config(base).mic.num_clusters == 12
    for override, key in [("method.kwargs.combination=summed", "method.kwargs.combination"),
                          ("optim.grad_clip=1.0", "optim.grad_clip"),
                          ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
                          ("method.kwargs.p_aux=1.5", "method.kwargs.p_aux")]:
        with pytest.raises(ConfigError) as err:
            plan_from_config(load_config(MIC, [*TINY, override]))
        assert err.value.key == key, override
    with pytest.raises(ConfigError) as err:
        plan_from_config(load_config(ALT, [*TINY, "method.kwargs.typo=1"]))
    assert err.value.key == "method.kwargs.typo"
    with pytest.raises(ConfigError) as err:
        build_components(load_config(ALT, [*TINY, "method.name=nonsense"]), datasets=None)
    assert err.value.key == "method.name"
    with pytest.raises(ConfigError) as err:  # a step on no known head
        build_components(load_config(ALT, [*TINY, "method.kwargs.shared_head=klass"]), datasets=None)
    assert err.value.key == "method.kwargs.shared_head"
    assert err.value.message == "unknown head 'klass'; expected one of the model's heads ['class', 'shared']"


class _Crash(RuntimeError):
    pass


def test_mic_resume_after_crash_matches_straight_run(tmp_path, monkeypatch):
    """Crash in epoch 2 (a re-clustering epoch), resume from the mid-epoch last.ckpt (every optimizer step): same
    weights, surrogate labels, clustering history and step counts as the straight run (the hook's RNG, labels and
    history are checkpointed; the re-clustering is not repeated on resume)."""
    args = ["trainer.max_epochs=4", "method.kwargs.recluster_every=2", "method.kwargs.p_aux=0.5",
            "trainer.checkpoint_every_n_steps=1"]
    _, _, straight = _train(MIC, tmp_path / "straight", args)
    original = AlternatingSharingModule.training_step

    def crashing(module, batch, batch_idx):
        if module.current_epoch == 2 and batch_idx == 1:
            raise _Crash("killed")
        return original(module, batch, batch_idx)

    monkeypatch.setattr(AlternatingSharingModule, "training_step", crashing)
    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        main(["train", "--config", str(MIC), "--out", str(run), "--no-progress", *TINY, *args])
    assert load_checkpoint_file(run / "last.ckpt")["dynametric_sharing"]["clustering_history"] == [
        [0, "initial"], [2, "shared_embedding"]]
    monkeypatch.setattr(AlternatingSharingModule, "training_step", original)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = load_checkpoint_file(run / "last.ckpt")
    a, b = straight["dynametric_sharing"], resumed["dynametric_sharing"]
    assert a["clustering_history"] == b["clustering_history"] == [[0, "initial"], [2, "shared_embedding"]]
    assert a["clustering_events"] == b["clustering_events"]
    assert torch.equal(a["surrogate_labels"], b["surrogate_labels"])
    assert (a["class_steps"], a["shared_steps"]) == (b["class_steps"], b["shared_steps"])
    assert 0 < a["shared_steps"] < a["class_steps"] == 8
    for k, v in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_unaugmented_view_matches_a_carved_training_set():
    from dynametric.data.splits import LabelledSubset
    from dynametric.engine.builders import build_datasets
    from dynametric.methods.sharing.alternating import unaugmented_view

    cfg = load_config(MIC, [*TINY, "data.val_split=null", "data.val_fraction=0.25"])
    datasets = build_datasets(cfg, with_test=False)
    assert isinstance(datasets.train, LabelledSubset)
    view = unaugmented_view(cfg)(datasets.train)
    assert len(view) == len(datasets.train) < 72 and torch.equal(view.labels, datasets.train.labels)
    for i in (0, len(view) - 1):
        assert torch.equal(view[i][0], datasets.train[i][0])  # synthetic: to_tensor in both views


@pytest.mark.parametrize("config", [ALT, MIC], ids=["sharing_alternating", "mic"])
def test_alternating_methods_train_under_bf16_true(tmp_path, monkeypatch, config):
    """Under ``trainer.precision: bf16-true`` (bfloat16 weights) the images the module loads itself (the shared
    step's batch, MIC's clustering features at the start of epoch 0 and the re-clustering embeddings of epoch 1) are
    converted as the loader's batches are: bfloat16, so the run trains, with finite losses and weights."""
    seen: list[tuple[str, torch.dtype]] = []
    original = AlternatingSharingModule._images

    def images(module, indices, dataset=None):
        out = original(module, indices, dataset)
        seen.append(("clustering" if dataset is not None else "shared", out.dtype))
        return out

    monkeypatch.setattr(AlternatingSharingModule, "_images", images)
    out = tmp_path / "run"
    _, info, last = _train(config, out, ["trainer.precision=bf16-true", "trainer.max_epochs=2",
                                         "method.kwargs.p_aux=1.0", "method.kwargs.recluster_every=1"]
                           if config == MIC else ["trainer.precision=bf16-true", "trainer.max_epochs=2",
                                                  "method.kwargs.p_aux=1.0"])
    assert info["class_steps"] == 4 and info["shared_steps"] == 4
    kinds = {kind for kind, _ in seen}
    assert kinds == ({"shared", "clustering"} if config == MIC else {"shared"})
    assert {dtype for _, dtype in seen} == {torch.bfloat16}
    if config == MIC:  # the initial clustering and the re-clustering on the shared embedding both ran
        assert last["dynametric_sharing"]["clustering_history"] == [[0, "initial"], [1, "shared_embedding"]]
    rows = train_epoch_rows(out)
    assert len(rows) == 2 and all(math.isfinite(r["train/loss_epoch"]) for r in rows)
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())


def _poison_adv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``adv`` term gets a finite value (+0) with a NaN gradient (d sqrt(|h - h|) at 0), as PML's
    TupletMarginLoss had under bf16 autocast."""
    import dynametric.methods.sharing.alternating as alternating
    from dynametric.engine.objective import select_head

    original = alternating.compute_objective

    def poisoned(outputs, labels, terms, **kwargs):
        total, values = original(outputs, labels, terms, **kwargs)
        if any(t.name == "adv" for t in terms):
            h = select_head(outputs, "shared")
            total = total + (h - h.detach()).abs().sum().sqrt()
        return total, values

    monkeypatch.setattr(alternating, "compute_objective", poisoned)


def test_a_nonfinite_gradient_of_a_finite_loss_stops_the_run_naming_step_term_and_parameter(tmp_path, monkeypatch,
                                                                                           capsys):
    _poison_adv(monkeypatch)
    out = tmp_path / "alt"
    code = main(["train", "--config", str(ALT), "--out", str(out), "--no-progress", *TINY, "trainer.max_epochs=1",
                 "method.kwargs.p_aux=1.0"])
    err = capsys.readouterr().err
    assert code != 0
    assert re.search(r"non-finite gradient at shared step, global step 1 \(epoch 0, batch 0\), from term 'adv', "
                     r"first in parameter embedder\.\S+ \(\d+ of \d+ parameters\) \(loss \{'shared': ", err), err
    assert not (out / "last.ckpt").exists()  # nothing saved after the bad step


def test_a_nonfinite_gradient_is_skipped_under_nonfinite_skip(tmp_path, monkeypatch, caplog):
    _poison_adv(monkeypatch)
    with caplog.at_level("WARNING", logger="dynametric.engine"):
        _, info, last = _train(ALT, tmp_path / "alt", ["trainer.max_epochs=1", "method.kwargs.p_aux=1.0",
                                                       "trainer.nonfinite=skip"])
    # both shared steps skipped (no update), both class steps taken; the weights stay finite
    assert (info["class_steps"], info["shared_steps"], info["skipped_nonfinite_steps"]) == (2, 0, 2)
    assert all(bool(torch.isfinite(v).all()) for v in last["state_dict"].values() if v.is_floating_point())
    assert sum("non-finite gradient at shared step" in r.getMessage() and "from term 'adv'" in r.getMessage()
               for r in caplog.records) == 2
