"""Suite-wide settings.

Under pytest-xdist (``-n 2`` on a 2-core CI machine) every worker would otherwise use all cores for torch's
intra-op pool, and the oversubscription makes small-tensor tests many times slower. One thread per worker.
"""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
