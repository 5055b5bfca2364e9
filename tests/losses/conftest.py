"""Loss/miner tests run on tiny tensors: every test here uses one torch thread (see ``one_torch_thread``)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
