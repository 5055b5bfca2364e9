"""DyML (Sun et al., CVPR 2021): its test protocol (:mod:`dynametric.methods.dyml.protocol`: the per-scale or all-in-one
query -> gallery evaluation of the DyML benchmarks) chosen by ``method.name: dyml``; its losses are configured as
usual (``CSLLoss``, ``MultiScaleLoss``, the ``three_scale`` sampler)."""

from dynametric.methods.dyml.plugin import DyML

__all__ = ["DyML"]
