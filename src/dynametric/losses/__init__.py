"""Metric-learning losses under one contract (see :mod:`dynametric.losses.base`)."""

from dynametric.losses.base import IndicesTuple, MetricLoss, Miner

__all__ = ["IndicesTuple", "MetricLoss", "Miner"]
