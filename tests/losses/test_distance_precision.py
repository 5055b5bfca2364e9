"""Euclidean distance matrices above 25 rows are exact on the CPU (``dynametric.distances.euclidean_matrix``).

``torch.cdist`` switches to the matrix product ``|x|^2 + |y|^2 - 2 <x, y>`` above 25 rows, where a distance much
smaller than the norms is rounding noise: the same pair got another distance depending on the batch size, equal
rows were up to ~1e-3 (normalised) or ~0.1 (norm ~100) apart, and a loss that counts its non-zero terms
(``ContrastiveLoss`` with a reference set that is a copy of the batch) was 9-13 % low. Every value here is compared
with a float64 computation from the differences (``compute_mode="donot_use_mm_for_euclid_dist"``).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dynametric.distances import LpDistance, SquaredL2Distance, euclidean_matrix
from dynametric.losses import ContrastiveLoss
from tests.benchmarks.loader import load_benchmark


def _count_cdist_modes(monkeypatch) -> list:
    """``torch.cdist`` replaced by a spy: the list it returns gets each call's ``compute_mode``."""
    calls: list = []
    real = torch.cdist

    def spy(a, b, *args, **kwargs):
        calls.append(kwargs.get("compute_mode"))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", spy)
    return calls


def exact64(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.cdist(q.double(), r.double(), compute_mode="donot_use_mm_for_euclid_dist")


def big_rows(n: int, d: int = 128, seed: int = 0) -> torch.Tensor:
    """``n`` float32 rows of norm ~115 in random directions (no common offset), row 1 0.02 from row 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * (115 / d**0.5)
    step = torch.randn(d, generator=g)
    x[1] = x[0] + 0.02 * step / step.norm()
    return x


@pytest.mark.parametrize("n", [26, 32, 64, 200])  # 26, 32: cdist's exact kernel; 64, 200: the product, repaired
def test_a_pair_002_apart_among_unnormalised_rows_keeps_its_distance(n):
    x = big_rows(n)
    want = exact64(x, x)
    assert 0.019 < float(want[0, 1]) < 0.021
    got = LpDistance(normalize_embeddings=False)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[0, 1].double(), want[0, 1], rtol=1e-3, atol=0)  # the mm path gave 0 or 0.06
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=0)  # every pair, the diagonal exactly 0
    # the same pair gets the same distance whatever the batch around it (8 rows: cdist's exact kernel)
    torch.testing.assert_close(got[0, 1], LpDistance(normalize_embeddings=False)(x[:8])[0, 1], rtol=1e-4, atol=0)
    # the squared variant and power, and a reference set of another size
    sq = SquaredL2Distance(normalize_embeddings=False)(x)
    torch.testing.assert_close(sq[0, 1].double(), want[0, 1] ** 2, rtol=2e-3, atol=0)
    cubed = LpDistance(power=3, normalize_embeddings=False)(x[2:], x[:5])
    torch.testing.assert_close(cubed.double(), exact64(x[2:], x[:5]) ** 3, rtol=3e-3, atol=0)


def test_a_copy_as_reference_set_is_exact_with_a_reference_of_another_size():
    x = big_rows(300)
    ref = torch.cat([x[5:12].clone(), x[:1] + 1e-3])  # 8 rows: 7 copies of rows 5..11, one 1e-3 from row 0
    got = LpDistance(normalize_embeddings=False)(x, ref)
    want = exact64(x, ref)
    assert got.shape == (300, 8)
    assert torch.equal(got[5:12, :7].diagonal(), torch.zeros(7))
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_the_self_distance_diagonal_is_exactly_zero(normalize):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, generator=g) * (1 if normalize else 30)
    dist = LpDistance(normalize_embeddings=normalize)
    assert torch.equal(dist(x).diagonal(), torch.zeros(64))  # ref=None (the mm path: up to ~7e-4 normalised)
    assert torch.equal(dist(x, x.clone()).diagonal(), torch.zeros(64))  # an equal copy
    nx = F.normalize(x) if normalize else x
    torch.testing.assert_close(dist(x).double(), exact64(nx, nx), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [24, 26, 64, 160])  # up to 64 (of 32): the exact kernel; 160: the product, repaired
def test_contrastive_loss_with_a_copy_of_the_batch_as_reference_equals_float64(n):
    """The documented case (losses.md: equal copies are another reference set, item i a positive of item i at
    distance 0): before, B = 24 was exact (cdist's exact kernel) and B = 26 / 64 were 9-13 % low."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(n, 32, generator=g)
    labels = torch.arange(n) // 4
    loss = ContrastiveLoss()
    ref64 = loss(emb.double(), labels, ref_emb=emb.double().clone(), ref_labels=labels.clone())
    e = emb.clone().requires_grad_(True)
    r = emb.clone().requires_grad_(True)
    value = loss(e, labels, ref_emb=r, ref_labels=labels.clone())
    torch.testing.assert_close(value.double(), ref64, rtol=1e-5, atol=0)
    value.backward()
    e64 = emb.double().requires_grad_(True)
    r64 = emb.double().clone().requires_grad_(True)
    loss(e64, labels, ref_emb=r64, ref_labels=labels.clone()).backward()
    assert torch.isfinite(e.grad).all() and torch.isfinite(r.grad).all()  # no NaN at distance 0
    torch.testing.assert_close(e.grad.double(), e64.grad, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(r.grad.double(), r64.grad, rtol=1e-3, atol=1e-6)


def test_duplicated_rows_inside_a_batch_equal_float64():
    loss = ContrastiveLoss()
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(128, 32, generator=g)
    emb[64:] = emb[:64]  # every row twice (the mm path: ~4 % off for the contrastive loss)
    labels = torch.arange(128) % 64 // 2
    torch.testing.assert_close(loss(emb, labels).double(), loss(emb.double(), labels), rtol=1e-5, atol=0)


def test_gradient_at_distance_zero_is_finite_and_that_of_the_exact_kernel():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100, 32, generator=g, dtype=torch.float64)
    x[7] = x[3]
    weights = torch.rand(100, 100, generator=g, dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    (euclidean_matrix(a, a) * weights).sum().backward()
    b = x.clone().requires_grad_(True)
    (torch.cdist(b, b, compute_mode="donot_use_mm_for_euclid_dist") * weights).sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_rows_all_equal_give_zeros_and_a_zero_gradient():
    x = torch.full((100, 32), 3.0, requires_grad=True)  # every pair near, rows 0 after centring: the product is 0
    mat = LpDistance(normalize_embeddings=False)(x)
    assert torch.equal(mat, torch.zeros(100, 100))
    mat.sum().backward()
    assert torch.equal(x.grad, torch.zeros(100, 32))


def test_a_collapsed_batch_keeps_the_product_and_never_takes_the_exact_kernel(monkeypatch):
    """32 copies of each of 32 rows (31 near pairs a row): recomputing them (or the exact kernel for the whole matrix,
    as the first version did) cost 8-12x the product; more than 4 near pairs a row on average keep the centred
    product's values (the diagonal still 0), computed once."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(32, 64, generator=g).repeat(32, 1)
    calls = _count_cdist_modes(monkeypatch)
    got = euclidean_matrix(x, x)
    monkeypatch.undo()
    assert calls == ["use_mm_for_euclid_dist"]
    product = euclidean_matrix(x, x, recompute_near=False)
    assert torch.equal(got.diagonal(), torch.zeros(1024))
    off = ~torch.eye(1024, dtype=torch.bool)
    assert torch.equal(got[off], product[off])
    assert (got.double() - exact64(x, x)).abs().max() < 1e-2  # the product's rounding on rows of norm ~8


def test_a_non_finite_row_is_nan_from_itself_as_with_the_exact_kernel():
    """The diagonal was set to 0 for every row: a row holding inf or NaN came out 0 from itself (the exact kernel
    gives NaN); the other rows' own distances stay 0."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(200, 64, generator=g)
    x[0, 0] = float("inf")
    x[5, 3] = float("nan")
    got = euclidean_matrix(x, x)
    assert torch.isnan(got[0, 0]) and torch.isnan(got[5, 5])
    assert torch.equal(got.diagonal()[torch.tensor([i not in (0, 5) for i in range(200)])], torch.zeros(198))


def test_a_common_offset_costs_no_precision_and_no_recomputation(monkeypatch):
    """Rows 1e3 from the origin, 1 apart from each other: centred first, so no pair is near (no gathered rows,
    no fallback) and the distances keep float32's relative precision."""
    g = torch.Generator().manual_seed(4)
    x = 1000 + torch.randn(100, 64, generator=g)
    calls = _count_cdist_modes(monkeypatch)
    got = euclidean_matrix(x, x[:60] + 0)  # not the same object: no diagonal shortcut
    assert calls == ["use_mm_for_euclid_dist"]
    monkeypatch.undo()
    torch.testing.assert_close(got.double(), exact64(x, x[:60]), rtol=1e-4, atol=1e-5)


def test_the_centred_product_alone_what_a_gpu_gets():
    """``recompute_near=False`` (the default off the CPU): the centred product. Rows far from the origin keep
    float32's precision relative to their spread (uncentred: errors of the order of the distances themselves);
    equal rows are not exactly 0 apart, but within ~1e-3 of the centred norms."""
    g = torch.Generator().manual_seed(6)
    x = 1000 + torch.randn(128, 32, generator=g)
    want = exact64(x, x.clone())
    uncentred = (torch.cdist(x, x.clone()).double() - want).abs().max()
    got = euclidean_matrix(x, x.clone(), recompute_near=False)
    err = (got.double() - want).abs().max()
    assert uncentred > 1 and err < 1e-3 * float((x - x.mean(0)).norm(dim=1).max())
    # and recompute_near=True gives the CPU's exact values wherever it is asked for
    assert torch.equal(euclidean_matrix(x, x.clone(), recompute_near=True), euclidean_matrix(x, x.clone()))


@pytest.mark.parametrize("recompute_near", [None, False])
def test_a_row_far_off_or_nan_does_not_move_the_centre(recompute_near, monkeypatch):
    """One row of norm ~1e6, one NaN row and one inf row among unnormalised rows 100 from the origin: every other
    pair keeps float32's precision (a mean as the centre would carry the far row into every row, and make every
    distance NaN), and only the NaN and inf rows' own distances are non-finite, as with cdist."""
    g = torch.Generator().manual_seed(7)
    x = 100 + torch.randn(100, 64, generator=g)
    x[3] = 1e6 * torch.randn(64, generator=g)
    x[5] = float("nan")
    x[9, 0] = float("inf")
    x[40] = x[20]  # a near pair to find despite the far row and the NaN columns
    calls = _count_cdist_modes(monkeypatch)
    got = euclidean_matrix(x, x.clone(), recompute_near=recompute_near)
    monkeypatch.undo()
    assert calls == ["use_mm_for_euclid_dist"]  # no fallback to the exact kernel for the whole matrix
    if recompute_near is None:
        assert got[20, 40] == 0 and got[40, 20] == 0
    bad = torch.zeros(100, dtype=torch.bool)
    bad[[5, 9]] = True
    assert torch.isfinite(got[~bad][:, ~bad]).all() and not torch.isfinite(got[5]).any()
    keep = torch.ones(100, dtype=torch.bool)
    keep[[3, 5, 9]] = False
    want = exact64(x[keep], x[keep])
    err = (got[keep][:, keep].double() - want).abs().max()
    assert err < (0 if recompute_near is None else 0.05) + 1e-4 * float(want.max())


def test_up_to_25_rows_or_small_matrices_cdist_exact_kernel():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(25, 8, generator=g)
    r = torch.randn(25, 8, generator=g)
    assert torch.equal(LpDistance()(x, r), torch.cdist(F.normalize(x), F.normalize(r)))  # unchanged
    x = torch.randn(32, 256, generator=g)  # 32 * 32 * 256 = 2^18
    exact = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    assert torch.equal(LpDistance(normalize_embeddings=False)(x), exact)


def test_off_the_cpu_no_host_read(monkeypatch):
    """On an accelerator the near pairs are not looked for (that needs their count on the host): the centred
    product only. Checked on the meta device, where a host read cannot happen."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.nonzero called off the CPU")

    monkeypatch.setattr(torch, "nonzero", refuse)
    q = torch.randn(100, 64, device="meta")
    assert LpDistance()(q).shape == (100, 100) and LpDistance()(q, q[:60]).shape == (100, 60)


def test_the_benchmark_script_runs(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert load_benchmark("distance_precision").main(
        ["--batch-sizes", "40", "--dims", "256", "--repeats", "1", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| what | batch | dim | cdist mm ms | cdist exact ms | LpDistance ms |" in text
    data = json.loads(out.read_text())
    assert [r["what"] for r in data["rows"]] == ["distance", "ContrastiveLoss", "TripletMarginLoss"]
    errs = {e["kind"]: e for e in data["errors"]}
    assert list(errs) == ["normalised", "norm ~115", "offset 1000"]
    assert errs["normalised"]["LpDistance_contrastive_rel_err"] < 1e-5
    assert errs["normalised"]["mm_contrastive_rel_err"] > 1e-3  # the product path's rounding, which it shows
    assert all(e["LpDistance_max_abs_err"] < 1e-3 * 115 * 1e-3 for e in errs.values())
    assert errs["offset 1000"]["mm_max_abs_err"] > 1 > 0.05 > errs["offset 1000"]["centred_max_abs_err"]
