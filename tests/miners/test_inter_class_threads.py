"""``InterClassTripletMiner``'s totals from several threads at once: every call is counted. Before, ``+=`` on the
counters from two threads could lose one call's update (both read the old total, each wrote its own sum)."""

from __future__ import annotations

import threading

import torch

from dynametric.miners import InterClassTripletMiner

WAIT_S = 60.0
OVERLAP_S = 1.0  # how long a read of the total waits for the other thread's read


class _GatedMiner(InterClassTripletMiner):
    """A miner whose ``total_anchors`` read waits (at most ``OVERLAP_S``) until the other thread reads it too: where
    nothing keeps two updates apart, both read the same old total and one update is lost, every time."""

    def __init__(self, *args, **kwargs) -> None:
        self._readers = 0
        self._both_read = threading.Event()
        self._gate_lock = threading.Lock()
        self._gated = False
        super().__init__(*args, **kwargs)

    @property
    def total_anchors(self) -> int:  # type: ignore[override]
        value = self._total  # read before waiting: the other thread's update, if any, comes after
        if self._gated:
            with self._gate_lock:
                self._readers += 1
                if self._readers >= 2:
                    self._both_read.set()
            self._both_read.wait(OVERLAP_S)
        return value

    @total_anchors.setter
    def total_anchors(self, value: int) -> None:
        self._total = value


def test_concurrent_calls_lose_no_count():
    miner = _GatedMiner(variant="standard", seed=0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 8, generator=g), torch.arange(n) % 4) for n in (12, 20)]
    miner._gated = True
    errors: list[BaseException] = []

    def run(emb: torch.Tensor, labels: torch.Tensor) -> None:
        try:
            miner(emb, labels)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=b) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    miner._gated = False
    assert not errors, errors
    assert miner.total_anchors == 12 + 20
    assert miner.total_skipped == 0  # four classes in each batch: every anchor has a negative and a third class
