"""Host reads (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``, ...) per loss/miner step, counted on the CPU with
the Tensor methods wrapped: each one is a synchronisation when the tensors live on an accelerator. Plus the values
and gradients of the read-free code against the code before the change (commit ``BASE``, run in a subprocess), and
the checks of user-made index tuples that must still fire.

Run as a script (``python tests/losses/test_host_reads.py OUT``) it writes the oracle values of :func:`run_cases`
with whatever ``dynametric`` is importable."""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import traceback

import pytest
import torch

from dynametric.errors import InputError
from dynametric.losses import LOSSES
from dynametric.miners import MINERS
from dynametric.tuples import get_all_triplets_indices

#: The commit before the host reads were removed (the oracle of the value/gradient comparison).
BASE = "0ff5f0d"
READ_METHODS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy")


@contextlib.contextmanager
def count_reads():
    """Counts calls of :data:`READ_METHODS` on tensors made from ``dynametric`` code (``where``: file:line)."""
    where: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}

    def wrap(name):
        orig = originals[name]

        def counted(self, *args, **kwargs):
            frames = [f for f in traceback.extract_stack()[:-1] if f"dynametric{os.sep}" in f.filename
                      and f"tests{os.sep}" not in f.filename]
            if frames:
                where[f"{frames[-1].filename.rsplit('dynametric' + os.sep, 1)[-1]}:{frames[-1].lineno}"] += 1
            return orig(self, *args, **kwargs)
        return counted

    for name in READ_METHODS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield where
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


B, D, C = 96, 64, 16
LABELS = torch.arange(C).repeat_interleave(B // C)


def step(loss, miner=None, labels=LABELS, seed=0):
    torch.manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(labels.numel(), D), dim=1).requires_grad_(True)
    with count_reads() as where:
        value = loss(emb, labels, miner(emb, labels)) if miner is not None else loss(emb, labels)
        value.backward()
    return dict(where)


# (loss, loss kwargs, miner, most host reads per step on CPU tensors, what the remaining read is)
CASES = [
    ("ContrastiveLoss", {}, "MultiSimilarityMiner", 0, ""),
    ("ContrastiveLoss", {}, None, 0, ""),
    ("ContrastiveLoss", {}, "PairMarginMiner", 0, ""),
    ("TripletMarginLoss", {}, "BatchHardMiner", 0, ""),
    ("TripletMarginLoss", {}, "TripletMarginMiner", 1, "the number of triplets: the shape of the miner's output"),
    ("MultiSimilarityLoss", {}, "MultiSimilarityMiner", 0, ""),
    ("MultiSimilarityLoss", {}, None, 0, ""),
    ("CircleLoss", {}, None, 0, ""),
    ("GeneralizedLiftedStructureLoss", {}, None, 0, ""),
    ("MarginLoss", {"num_classes": C}, None, 1, "the label range of host (CPU) labels"),
    ("ProxyAnchorLoss", {"num_classes": C, "embedding_size": D}, None, 1, "the label range of host (CPU) labels"),
    ("ProxyNCALoss", {"num_classes": C, "embedding_size": D}, None, 1, "the label range of host (CPU) labels"),
]


@pytest.mark.parametrize(("loss", "kwargs", "miner", "most", "why"), CASES,
                         ids=[f"{c[0]}+{c[2]}" for c in CASES])
def test_host_reads_per_step_are_at_most_the_documented_ones(loss, kwargs, miner, most, why):
    torch.manual_seed(0)
    where = step(LOSSES[loss](**kwargs), MINERS[miner]() if miner else None)
    assert sum(where.values()) <= most, (where, why)


@pytest.mark.parametrize(("loss", "kwargs"), [("MarginLoss", {"num_classes": C}),
                                              ("ProxyAnchorLoss", {"num_classes": C, "embedding_size": D})])
def test_labels_on_an_accelerator_are_range_checked_at_the_first_call_only(monkeypatch, loss, kwargs):
    import dynametric.losses.base as base

    monkeypatch.setattr(base, "labels_on_host", lambda labels: False)  # as if the labels were on a GPU
    torch.manual_seed(0)
    obj = LOSSES[loss](**kwargs)
    assert sum(step(obj).values()) == 1  # the first call checks (one read)
    assert step(obj, seed=1) == {}  # later ones read nothing
    fresh = LOSSES[loss](**kwargs)
    with pytest.raises(InputError, match="labels"):  # a fresh object's first call still refuses bad labels
        step(fresh, labels=LABELS + 1)


@pytest.mark.parametrize(("loss", "kwargs"), [("MarginLoss", {"num_classes": C}),
                                              ("ProxyAnchorLoss", {"num_classes": C, "embedding_size": D})])
def test_host_labels_out_of_range_are_refused_at_every_call(loss, kwargs):
    obj = LOSSES[loss](**kwargs)
    step(obj)
    bad = LABELS.clone()
    bad[5] = C
    with pytest.raises(InputError, match=rf"\b{C}\b") as err:
        step(obj, labels=bad)
    assert "\n" not in str(err.value)


def test_a_user_tuple_is_still_range_checked_and_a_mined_one_after_an_inplace_edit_or_reordering():
    torch.manual_seed(0)
    emb = torch.randn(B, D)
    loss = LOSSES["TripletMarginLoss"]()
    mined = MINERS["TripletMarginMiner"](margin=1.0)(emb, LABELS)
    a, p, n = mined
    with count_reads() as where:
        loss(emb, LABELS, mined)
    assert "tuples.py" not in " ".join(where)  # the miner's own output: no range read
    with pytest.raises(InputError, match=r"outside \[0, 96\)"):
        loss(emb, LABELS, (a, p, n + B))
    n2 = n.clone()
    n[0] = B + 3  # in place: the miner's mark no longer holds
    with pytest.raises(InputError, match=r"entry 2 has indices outside \[0, 96\)"):
        loss(emb, LABELS, mined)
    n.copy_(n2)
    # a mined tuple given with a smaller batch than it was mined for is checked again
    with pytest.raises(InputError, match="outside"):
        loss(emb[:10], LABELS[:10], (a, p, n))


def test_a_user_pair_listed_as_positive_and_negative_is_still_refused():
    torch.manual_seed(0)
    emb = torch.randn(8, D)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    a1, p, a2, n = MINERS["MultiSimilarityMiner"](epsilon=10.0)(emb, labels)
    loss = LOSSES["MultiSimilarityLoss"]()
    loss(emb, labels, (a1, p, a2, n))
    with pytest.raises(InputError, match="both as positive and as negative"):
        loss(emb, labels, (a1, p, a1, p))  # reordered from the miner's own tensors: checked


# ---------------------------------------------------------------------------------------- values and gradients
def run_cases() -> dict[str, torch.Tensor]:
    """Loss values and gradients (embeddings and loss parameters) of fixed random batches, empty mining included."""
    out: dict[str, torch.Tensor] = {}
    one_class = torch.zeros(12, dtype=torch.long)
    distinct = torch.arange(12)
    small = torch.arange(6).repeat_interleave(4)
    cases = [
        ("contrastive_ms", "ContrastiveLoss", {}, "MultiSimilarityMiner", {}, small),
        ("contrastive_ms_one_class", "ContrastiveLoss", {}, "MultiSimilarityMiner", {}, one_class),
        ("contrastive_all", "ContrastiveLoss", {}, None, {}, small),
        ("contrastive_no_positive", "ContrastiveLoss", {}, None, {}, distinct),
        ("contrastive_no_negative_loss", "ContrastiveLoss", {"neg_margin": 0.0}, None, {}, small),
        ("contrastive_one_item", "ContrastiveLoss", {}, None, {}, torch.tensor([3])),
        ("triplet_tm", "TripletMarginLoss", {}, "TripletMarginMiner", {}, small),
        ("triplet_tm_nothing_mined", "TripletMarginLoss", {}, "TripletMarginMiner", {"margin": -10.0}, small),
        ("triplet_bh", "TripletMarginLoss", {}, "BatchHardMiner", {}, small),
        ("triplet_pm_pairs", "TripletMarginLoss", {}, "PairMarginMiner", {}, small),
        ("ms_loss_ms", "MultiSimilarityLoss", {}, "MultiSimilarityMiner", {}, small),
        ("ms_loss_all", "MultiSimilarityLoss", {}, None, {}, small),
        ("ms_loss_one_class", "MultiSimilarityLoss", {}, None, {}, one_class),
        ("circle", "CircleLoss", {}, None, {}, small),
        ("circle_no_anchor", "CircleLoss", {}, None, {}, distinct),
        ("glifted", "GeneralizedLiftedStructureLoss", {}, None, {}, small),
        ("margin_classes", "MarginLoss", {"num_classes": 6, "learn_beta": True, "nu": 0.1}, None, {}, small),
        ("margin_classes_no_triplet", "MarginLoss", {"num_classes": 6, "learn_beta": True, "nu": 0.1}, None, {},
         one_class),
        ("margin_scalar_beta_no_triplet", "MarginLoss", {"learn_beta": True, "nu": 0.1}, None, {}, distinct),
        ("margin_dw", "MarginLoss", {"num_classes": 6}, "DistanceWeightedMiner", {}, small),
        ("margin_hinge_zero", "MarginLoss", {"margin": -5.0}, None, {}, small),
        ("proxy_anchor", "ProxyAnchorLoss", {"num_classes": 8, "embedding_size": 16}, None, {}, small),
        ("proxy_anchor_ms", "ProxyAnchorLoss", {"num_classes": 8, "embedding_size": 16}, "MultiSimilarityMiner", {},
         small),
        ("proxy_nca", "ProxyNCALoss", {"num_classes": 8, "embedding_size": 16}, None, {}, small),
    ]
    for key, loss_name, kwargs, miner_name, miner_kwargs, labels in cases:
        torch.manual_seed(7)
        loss = LOSSES[loss_name](**kwargs)
        miner = MINERS[miner_name](**miner_kwargs) if miner_name else None
        emb = torch.randn(labels.numel(), 16, dtype=torch.float64).requires_grad_(True)
        value = loss(emb, labels, miner(emb, labels)) if miner is not None else loss(emb, labels)
        value.backward()
        out[f"{key}/value"] = value.detach()
        out[f"{key}/grad"] = emb.grad.clone()
        for name, param in loss.named_parameters():
            out[f"{key}/grad/{name}"] = param.grad.clone() if param.grad is not None else torch.tensor(float("nan"))
    lab = torch.arange(10).repeat_interleave(3)
    for chunk in (1 << 23, 50, 7, 1):
        for i, t in enumerate(get_all_triplets_indices(lab, triplets_per_chunk=chunk)):
            out[f"triplets/{chunk}/{i}"] = t
    return out


def _oracle(tmp_path: pathlib.Path) -> dict[str, torch.Tensor]:
    root = pathlib.Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("the oracle needs the project's git history")
    archive = tmp_path / "old.tar"
    got = subprocess.run(["git", "-C", str(root), "archive", "-o", str(archive), BASE, "src/dynametric"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"commit {BASE} is not in this checkout: {got.stderr.strip()}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "old", filter="data")
    result = tmp_path / "old.pt"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "old" / "src")}
    subprocess.run([sys.executable, __file__, str(result)], check=True, env=env, cwd=tmp_path)
    return torch.load(result)


def test_values_and_gradients_equal_those_of_the_code_before(tmp_path):
    old = _oracle(tmp_path)
    new = run_cases()
    assert sorted(new) == sorted(old)
    for key, value in new.items():
        assert value.dtype == old[key].dtype and value.shape == old[key].shape, key
        assert torch.equal(value, old[key]) or torch.allclose(value, old[key], rtol=1e-12, atol=1e-15,
                                                              equal_nan=True), key
        assert not value.is_floating_point() or not bool(torch.isnan(value).any()) or "grad/" in key, key
    # the empty-mining cases: 0 with zero (not NaN) gradients
    for key in ("contrastive_ms_one_class", "triplet_tm_nothing_mined", "margin_classes_no_triplet",
                "circle_no_anchor", "margin_scalar_beta_no_triplet", "contrastive_one_item"):
        assert new[f"{key}/value"].item() == 0.0, key
        assert torch.equal(new[f"{key}/grad"], torch.zeros_like(new[f"{key}/grad"])), key
    assert new["margin_scalar_beta_no_triplet/grad/beta"].tolist() == [0.0]


if __name__ == "__main__":
    torch.save(run_cases(), sys.argv[1])
