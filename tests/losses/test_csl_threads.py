"""``CSLLoss.terms`` from several threads at once: whether a batch has no anchor with a positive (``None``) must be
decided on that call's own skipped count. Before, ``terms`` read ``self.last_skipped_anchors``, which another
thread's call could have set in between: a batch without positives gave zeros (or one with positives gave None)."""

from __future__ import annotations

import threading

import torch

from dynametric.losses.csl import CSLLoss

WAIT_S = 60.0
PATHS = torch.tensor([[103, 9, 4], [100, 7, 3], [105, 10, 4], [101, 7, 3], [104, 9, 4], [102, 8, 3]])


def _batch(seed: int, fine_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(fine_rows), 6, generator=g, dtype=torch.float64), PATHS[fine_rows].clone()


def test_threaded_terms_use_their_own_skipped_count(monkeypatch):
    """A (a batch where no anchor has a positive: None) computes its terms, then waits until B (a batch with
    positives) has computed its own; each result equals the call's alone."""
    loss = CSLLoss(PATHS, 6, mode="pairs")
    none_batch = _batch(1, [0, 1, 2, 3, 4, 5])  # six distinct fine classes: no positive anywhere
    pos_batch = _batch(2, [0, 0, 1, 1, 2, 3])
    assert loss.terms(*none_batch) is None
    want = loss.terms(*pos_batch)
    assert want is not None and loss.last_skipped_anchors == 2

    b_done = threading.Event()
    real = loss._pair_terms

    def gated(*args, **kwargs):
        out = real(*args, **kwargs)
        if threading.current_thread().name == "A":
            assert b_done.wait(WAIT_S)  # B's call runs between A's terms and A's decision on them
        else:
            b_done.set()
        return out

    monkeypatch.setattr(loss, "_pair_terms", gated)
    got: dict[str, object] = {}
    errors: list[BaseException] = []

    def run(name: str, batch) -> None:
        try:
            got[name] = loss.terms(*batch)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            b_done.set()

    a = threading.Thread(target=run, args=("A", none_batch), name="A")
    b = threading.Thread(target=run, args=("B", pos_batch), name="B")
    a.start()
    b.start()
    a.join(WAIT_S)
    b.join(WAIT_S)
    assert not errors, errors
    assert got["A"] is None
    assert isinstance(got["B"], torch.Tensor) and torch.equal(got["B"].detach(), want.detach())


def test_many_threaded_terms_equal_sequential_ones():
    """The QA pattern: one loss, many calls from several threads, batches with and without positives."""
    from concurrent.futures import ThreadPoolExecutor

    loss = CSLLoss(PATHS, 6, mode="pairs")
    batches = [_batch(i, [0, 1, 2, 3, 4, 5] if i % 2 else [0, 0, 1, 2, 2, 5]) for i in range(60)]
    want = [loss.terms(*b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: loss.terms(*b), batches))
    for w, g in zip(want, got):
        assert (w is None and g is None) or (w is not None and g is not None and torch.equal(w, g))
