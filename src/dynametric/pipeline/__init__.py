"""The run, above the method plug-ins: a config's method is resolved here (:func:`dynametric.methods.method_for`)
and its choices handed down to the engine, which never imports :mod:`dynametric.methods`.

* :func:`build_components`: the engine's builders with the method's training module (:mod:`.components`);
* :func:`protocol_from_config` / :func:`method_test_protocol`: the config's test protocol, the method's own first;
  :func:`evaluate_checkpoint`: a trained checkpoint under it (``dynametric evaluate --checkpoint``), with
  :func:`run_eval_options` the run's own evaluation options, both given the checkpoint's config read once by
  :func:`checkpoint_config` (:mod:`.protocols`);
* :func:`run_training` / :func:`dry_run`: a whole training run, ``dynametric train`` (:mod:`.run`; the dry run in
  :mod:`.dryrun`, the run folder in :mod:`.run_folder`, the resume checks in :mod:`.resume`).
"""

from dynametric.pipeline.components import build_components, module_factory
from dynametric.pipeline.protocols import (
    CheckpointConfig,
    checkpoint_config,
    evaluate_checkpoint,
    evaluate_dyml_checkpoint,
    method_test_protocol,
    protocol_from_config,
    run_eval_options,
)
from dynametric.pipeline.run import RunResult, default_run_dir, dry_run, quiet_lightning, run_training

__all__ = ["CheckpointConfig", "RunResult", "build_components", "checkpoint_config", "default_run_dir", "dry_run",
           "evaluate_checkpoint", "evaluate_dyml_checkpoint", "method_test_protocol", "module_factory",
           "protocol_from_config", "quiet_lightning", "run_eval_options", "run_training"]
