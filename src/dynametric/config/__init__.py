"""Typed run configuration: the schema (:mod:`dynametric.config.schema`) and its loader
(:mod:`dynametric.config.loader`: YAML files + dotted command-line overrides, validated section by section).

A :class:`Config` is read once, at the top (``dynametric train``, :func:`load_config`); the engine's builders
(:mod:`dynametric.engine.builders`) are the one place that turns it into components and runtime settings, and
everything below them receives those resolved objects, not the config.

``build_component`` and ``validate_components`` (the loss / miner factory) live in
:mod:`dynametric.engine.builders` (the configuration layer never imports the engine).
"""

from __future__ import annotations

from dynametric.config.loader import (
    apply_override,
    check_config,
    config_from_dict,
    config_hash,
    config_to_dict,
    config_to_yaml,
    errors_located,
    key_set,
    load_config,
    locate_error,
    parse_value,
    save_config,
)
from dynametric.config.schema import (
    MODEL_TRAINING_KEYS,
    PRECISIONS,
    Config,
    DataConfig,
    EvalConfig,
    ExtraLossConfig,
    LossConfig,
    MethodConfig,
    MinerConfig,
    ModelConfig,
    OptimConfig,
    ParamGroupConfig,
    RunConfig,
    SchedulerConfig,
    TrainerConfig,
    embedder_kwargs,
    schema_default,
    schema_keys,
)

__all__ = [
    "MODEL_TRAINING_KEYS", "PRECISIONS", "Config", "DataConfig", "EvalConfig", "ExtraLossConfig", "LossConfig",
    "MethodConfig", "MinerConfig", "ModelConfig", "OptimConfig", "ParamGroupConfig", "RunConfig", "SchedulerConfig",
    "TrainerConfig", "apply_override", "check_config", "config_from_dict", "config_hash", "config_to_dict",
    "config_to_yaml", "embedder_kwargs", "errors_located", "key_set", "load_config", "locate_error", "parse_value",
    "save_config", "schema_default", "schema_keys",
]
