"""A config's components with its method's training module: the method plug-in is resolved here, above
:mod:`dynametric.methods`, and handed to the engine's builders as the module constructor
(:func:`dynametric.engine.builders.assemble`), so the engine never asks the method registry."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dynametric.engine.builders import Components, Datasets, ModuleFactory, assemble
from dynametric.engine.module import MetricLearningModule
from dynametric.methods import method_for, plan_from_config
from dynametric.methods.sharing.alternating import AlternatingSharingModule

if TYPE_CHECKING:
    from dynametric.config import Config


def module_factory(cfg: Config) -> ModuleFactory:
    """The training module of ``cfg``'s method, validated (:func:`dynametric.methods.plan_from_config`): the standard
    :class:`MetricLearningModule`, or the alternating class / shared module with the method's plan bound."""
    plan = plan_from_config(cfg)  # the method plug-in (dynametric.methods) validates its keys, may ask for its module
    if plan is None:
        return MetricLearningModule
    return functools.partial(AlternatingSharingModule, plan=plan)


def build_components(cfg: Config, *, datasets: Datasets | None, num_scales: int | None = None,
                     progress_bar: bool | None = None) -> Components:
    """Embedder, loss terms, training module and trainer settings of ``cfg`` (the method's module), the weights
    drawn from ``trainer.seed`` without touching the caller's global RNG. Loss terms that the method trains on
    labels of its own (MIC's clusters) get their class count from the method
    (:meth:`dynametric.methods.Method.surrogate_classes`)."""
    method = method_for(cfg)
    settings = method.validate(cfg)
    method.check_data(cfg, settings, datasets)  # before the loss terms: their class counts may follow from it
    surrogate = method.surrogate_classes(cfg, settings)
    comps = assemble(cfg, datasets=datasets, make_module=module_factory(cfg), num_scales=num_scales,
                     progress_bar=progress_bar, surrogate=surrogate)
    method.check_model(cfg, settings, comps.embedder)
    return comps
