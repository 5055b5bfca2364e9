"""``collect_stats`` support shared by losses and miners (pytorch-metric-learning's recordable statistics)."""

from __future__ import annotations

from typing import Any


class RecordsStats:
    """Mixin: :meth:`record` stores statistics (``num_pairs``, ``num_triplets``, ...) as attributes when
    ``collect_stats`` is on."""

    collect_stats: bool = False

    def record(self, **stats: Any) -> None:
        """Store ``stats`` as attributes when ``collect_stats`` is on."""
        if self.collect_stats:
            for name, value in stats.items():
                setattr(self, name, value)
