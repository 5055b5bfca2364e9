"""The range of a seed: every consumer of a seed in dynametric accepts ``0 .. 2**32 - 1`` (numpy's ``SeedSequence``
and its legacy seeding, which Lightning's ``seed_everything`` uses, and torch's ``manual_seed``), so a seed is
checked against that range where it is read (a config when it loads, the synthetic data's ``seed`` option)."""

from __future__ import annotations

import operator
from typing import Any

from dynametric.errors import ConfigError

SEED_MAX = 2**32 - 1
"""The largest seed (``4294967295``)."""


def check_seed(value: Any, key: str) -> int:
    """``value`` if it is an integer in ``[0, 2**32 - 1]`` (:data:`SEED_MAX`), else a one-line
    :class:`~dynametric.errors.ConfigError` naming ``key``: the one check of a seed."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # int, numpy integers
    except TypeError:
        number = None
    if number is None or not 0 <= number <= SEED_MAX:
        raise ConfigError(f"expected a seed, an integer in [0, {SEED_MAX}] (2**32 - 1, what numpy, torch and "
                          f"Lightning all accept), got {value!r}", key=key)
    return number
