"""Every loss moves the labels (and ref_labels) to the embeddings' device, as pytorch-metric-learning does.

Without a GPU here, the ``meta`` device stands in for an accelerator: torch refuses to mix a ``meta`` tensor with a
CPU one just as it refuses to mix a CUDA tensor with a CPU one, so labels left on the CPU would fail the same way.
The losses' own maths cannot run on ``meta`` (they read values), so the tests capture what ``forward`` hands to
``compute_loss``. A CUDA-only test compares the values with PML where a GPU is present.
"""

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.losses import build_loss

TUPLE_LOSSES = ["TripletMarginLoss", "ContrastiveLoss", "MultiSimilarityLoss", "CircleLoss", "MarginLoss",
                "NPairsLoss", "LiftedStructureLoss", "GeneralizedLiftedStructureLoss"]

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
FORMS = {"cpu tensor": LABELS, "numpy": LABELS.numpy(), "list": LABELS.tolist(),
         "[B, 2] cpu tensor": torch.stack([LABELS, LABELS // 2], 1)}


def _capture(loss):
    """Replace the loss's compute_loss by one that records its arguments and returns a meta zero."""
    seen = {}

    def compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels):
        seen.update(embeddings=embeddings, labels=labels, ref_emb=ref_emb, ref_labels=ref_labels)
        return embeddings.sum() * 0.0

    loss.compute_loss = compute_loss
    return seen


def test_meta_stands_in_for_an_accelerator():
    """The stand-in is a fair one: torch refuses to mix meta and CPU tensors."""
    with pytest.raises(RuntimeError, match="device"):
        torch.zeros(3, device="meta") == torch.zeros(3, dtype=torch.long)  # noqa: B015


@pytest.mark.parametrize("name", TUPLE_LOSSES)
@pytest.mark.parametrize("form", list(FORMS))
def test_labels_reach_compute_loss_on_the_embeddings_device(name, form):
    loss = build_loss(name)
    seen = _capture(loss)
    emb = torch.empty(6, 4, device="meta")
    loss(emb, FORMS[form])
    assert seen["labels"].device.type == "meta"
    assert seen["labels"].shape == (6,)
    assert seen["labels"].dtype == torch.long


@pytest.mark.parametrize("name", ["TripletMarginLoss", "ContrastiveLoss"])
def test_ref_labels_reach_compute_loss_on_the_embeddings_device(name):
    loss = build_loss(name)
    seen = _capture(loss)
    emb, ref = torch.empty(6, 4, device="meta"), torch.empty(5, 4, device="meta")
    loss(emb, LABELS, None, ref, np.array([0, 1, 2, 3, 4]))
    assert seen["labels"].device.type == "meta"
    assert seen["ref_labels"].device.type == "meta"
    assert seen["ref_labels"].shape == (5,)
    # the batch's own label object as ref_labels: still the very same (moved) object, PML's "no pair (i, i)" rule
    loss(emb, LABELS, None, emb[:, :].clone(), LABELS)
    assert seen["ref_labels"] is seen["labels"]
    assert seen["labels"].device.type == "meta"


def test_all_scale_losses_get_the_matrix_on_the_embeddings_device():
    loss = build_loss("MultiScaleLoss", base_losses_or_factory="TripletMarginLoss", num_scales=2)
    seen = _capture(loss)
    loss(torch.empty(6, 4, device="meta"), FORMS["[B, 2] cpu tensor"].numpy())
    assert seen["labels"].device.type == "meta"
    assert seen["labels"].shape == (6, 2)


def test_host_labels_moved_to_the_device_are_still_range_checked_on_the_host_at_every_call():
    """A proxy loss checks the labels the caller passed on the CPU at every call (a read of the CPU copy, no
    accelerator sync), also now that they are moved; reading the moved (meta) column would fail."""
    loss = build_loss("ProxyAnchorLoss", num_classes=2, embedding_size=4)
    emb = torch.empty(6, 4, device="meta")
    for _ in range(2):  # not only at the first call
        with pytest.raises(InputError, match="label 2 is out of range"):
            loss(emb, LABELS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", TUPLE_LOSSES)
def test_cuda_embeddings_with_host_labels_equal_device_labels(name):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from dynametric.miners import build_miner

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(32, 16, device="cuda", dtype=torch.float64), dim=1)
    y = torch.arange(32) % 4
    expected = build_loss(name)(emb, y.cuda()).item()
    if name == "TripletMarginLoss":  # PML moves host labels itself: the same value
        assert pml_losses.TripletMarginLoss()(emb, y).item() == pytest.approx(expected, rel=1e-9)
    for labels in (y, y.numpy(), y.tolist()):
        assert build_loss(name)(emb, labels).item() == pytest.approx(expected, rel=1e-9)
        mined = build_miner("TripletMarginMiner")(emb, labels)
        assert build_loss(name)(emb, labels, mined).item() == pytest.approx(
            build_loss(name)(emb, y.cuda(), mined).item(), rel=1e-9)
