"""Suite-wide settings.

Under pytest-xdist (``-n 2`` on a 2-core CI machine) every worker would otherwise use all cores for torch's
intra-op pool, and the oversubscription makes small-tensor tests many times slower. One thread per worker.
"""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test, restored afterwards: for tiny tensors, intra-op threads only add OpenMP
    barrier stalls on the shared 2-core machine. Directories of tiny-tensor tests use it through an autouse hook."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
