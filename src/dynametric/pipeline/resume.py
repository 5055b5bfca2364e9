"""The checks of ``train --resume`` (:func:`check_resume`) before anything is read or written: no other process
trains into the folder, its ``config.yaml`` is the config ``last.ckpt`` was saved with (keys a later dynametric added,
at their defaults, aside), as many processes as the checkpoint was trained by, a ``best.ckpt`` saved by this run
(:func:`check_run_checkpoint`), the weights fit the model (:func:`check_resume_weights`); what a resume reads of the
checkpoint (:class:`ResumedCheckpoint`); the component classes a run records and the note when a name resolves to
another class now (:func:`component_classes`, :func:`components_note`); and the resumed run taking over its
folder's ``config.yaml`` header (:func:`claim_resumed_run`). Used by :mod:`dynametric.pipeline.run`."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from dynametric.data.readers import printable_path
from dynametric.engine.checkpoint import load_checkpoint_file, trained_statistics
from dynametric.errors import ConfigError, DynametricError, InputError
from dynametric.pipeline.run_folder import (
    _HEADER,
    _RUN_FILES,
    PYTHON_FOLDER_KEY,
    _busy,
    _launched_worker,
    _resume_call,
    _run_header,
    _running_elsewhere,
    _start_call,
    check_run_lock,
    lock_holder,
)
from dynametric.utils.io import remove_stale_temps

if TYPE_CHECKING:
    from dynametric.config import Config


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _is_schema_default(key: str, value: Any) -> bool:
    """Whether ``value`` is the schema's default of the dotted ``key`` (never for a key that is not in the schema,
    lies in a free mapping or has no default)."""
    from dynametric.config import schema_default

    try:
        return bool(value == schema_default(key))
    except KeyError:
        return False


def _added_defaults(old: Any, new: Any, key: str = "") -> list[tuple[str, Any]] | None:
    """The keys (with their values) of the config ``new`` that the config ``old`` lacks and that hold the schema's
    default (:func:`~dynametric.config.schema_default`): keys a later dynametric added, when that is all that
    differs (both as :func:`~dynametric.config.config_to_dict` gives them, ``old`` as a checkpoint stored it).
    ``None`` when anything else differs: a changed value, a key ``new`` lacks, a new key with another value."""
    added: list[tuple[str, Any]] = []
    if isinstance(old, dict) and isinstance(new, dict):
        if not set(old) <= set(new):
            return None
        for name, value in new.items():
            sub = f"{key}.{name}" if key else str(name)
            if name not in old:
                if not _is_schema_default(sub, value):
                    return None
                added.append((sub, value))
                continue
            more = _added_defaults(old[name], value, sub)
            if more is None:
                return None
            added += more
        return added
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (was, now) in enumerate(zip(old, new)):
            more = _added_defaults(was, now, f"{key}[{i}]")
            if more is None:
                return None
            added += more
        return added
    return added if old == new else None


class ResumedCheckpoint(NamedTuple):
    """What :func:`check_resume` read from ``last.ckpt`` for the run: its weights as meta tensors (names and shapes)
    and the MLflow / W&B run it logged into (:func:`~dynametric.engine.loggers.logger_run`; ``None``: none)."""

    weights: dict[str, torch.Tensor]
    logger_run: dict[str, Any] | None
    components: dict[str, str] | None = None
    """What the run's named components resolved to when the checkpoint was saved (:func:`component_classes`;
    ``None``: a checkpoint of an earlier version)."""


def check_resume(cfg: Config, run_dir: Path, folder_key: str = "--resume",
                 note: Callable[[str], None] = print, *, processes: int | None = None) -> ResumedCheckpoint:
    """The checks of ``train --resume`` before anything is read or written: no other process of this machine is
    training into ``run_dir`` (its ``config.yaml`` header names the process that started or last resumed it); the
    run's ``config.yaml`` is not empty and ``cfg`` is the config ``last.ckpt`` was saved with (the config hash every
    checkpoint records; a checkpoint of an older version without one is accepted with a warning, and its weights are
    still checked against the model by :func:`check_resume_weights`), and, given ``processes`` (the run's world
    size here), that the checkpoint was trained by as many processes (a checkpoint of a version that did not record
    it is not checked): a step draws one batch for each process, so the recorded batch position and the global batch
    belong to that number (``trainer.devices: auto`` resumed on a machine with another GPU count continued with
    another one, silently); and that a ``best.ckpt`` in the folder, which the run tests when it ends, was saved by
    this run (:func:`check_run_checkpoint`: one copied from another run is refused). Returns the checkpoint's weights
    as meta tensors (names and shapes only) and the logger run it records (:class:`ResumedCheckpoint`): the
    checkpoint is read once."""
    from dynametric.config import config_to_dict

    _check_not_training(run_dir, folder_key)
    _check_config_not_empty(run_dir, folder_key)
    last = run_dir / "last.ckpt"
    ckpt = load_checkpoint_file(last)
    extra = _dynametric_record(ckpt)
    pin = _pin_recorded_statistics(cfg, ckpt)
    _check_process_count(cfg, extra, last, processes)
    checked = config_to_dict(cfg)  # the config last.ckpt is checked with, and best.ckpt's check (below)
    hashes = _check_trained_config(cfg, checked, extra, pin, run_dir, note, folder_key)
    _keep_predating_statistics(cfg, pin, last, note)
    resumed = _resumed_checkpoint(ckpt, extra, last)
    del ckpt  # last.ckpt's tensors freed before best.ckpt is read
    # the checkpoint the run tests (best.ckpt) must be this run's too, checked as last.ckpt was; beside a last.ckpt
    # of an older dynametric, which records no config hash, the run's config is not known (config.yaml is taken as
    # it is): its best.ckpt is checked against the run's checkpoints before the test (_select_checkpoint)
    if hashes is not None:
        check_run_checkpoint(run_dir / "best.ckpt", checked, hashes, run_dir, note)
    return resumed


def _check_not_training(run_dir: Path, folder_key: str) -> None:
    """A step of :func:`check_resume`: no other process of this host trains into ``run_dir`` (header, then lock)."""
    if _launched_worker():  # another rank of the run: rank 0 checks the folder
        return
    header = _run_header(run_dir)
    pid = None if header is None else _running_elsewhere(header, run_dir)
    if pid is None:
        pid = lock_holder(run_dir)
    if pid is not None:
        raise _busy(run_dir, pid, folder_key, True)
    check_run_lock(run_dir, folder_key, resume=True)


def _new_run_hint(config: Path, folder_key: str) -> str:
    """How a refused resume goes on, said after its reason (``config``: the run's ``config.yaml``), in the words of
    the caller ``folder_key`` names (the Python call's ``NEW``: another ``run_dir``)."""
    if folder_key == PYTHON_FOLDER_KEY:
        return f"restore it, or start a new run with {_start_call(config, None, folder_key)} (NEW: another run_dir)"
    return f"restore it, or start a new run with {_start_call(config, None, folder_key)}"


def _check_config_not_empty(run_dir: Path, folder_key: str) -> None:
    """A step of :func:`check_resume`: the run's ``config.yaml``, where readable, has a line that is no comment."""
    config = run_dir / "config.yaml"
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # read by the caller, or not there (a library caller's own config)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise InputError(f"is empty: it no longer holds the config the run was trained with (read as the defaults, "
                         f"it would resume {run_dir / 'last.ckpt'} with other settings); "
                         f"{_new_run_hint(config, folder_key)}", file=config)


def _dynametric_record(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What dynametric recorded in a checkpoint (its ``dynametric`` entry; ``{}`` where it has none)."""
    extra = checkpoint.get("dynametric")
    return extra if isinstance(extra, dict) else {}


def _pin_recorded_statistics(cfg: Config, ckpt: dict[str, Any]) -> tuple[list[float], list[float], bool] | None:
    """A step of :func:`check_resume`: the input statistics an earlier resume recorded are set in ``cfg``."""
    # the input statistics the checkpoint trained with, where config.yaml leaves them to the backbone: a resumed
    # older run keeps them (ImageNet's where the recorded config predates data.mean / data.std; an earlier resume
    # of such a run recorded them)
    pin = trained_statistics(cfg, ckpt)
    if pin is not None and not pin[2]:
        cfg.data.mean, cfg.data.std = pin[:2]  # recorded by an earlier resume: part of the config the hash covers
    return pin


def _check_process_count(cfg: Config, extra: dict[str, Any], last: Path, processes: int | None) -> None:
    """A step of :func:`check_resume`: ``last`` was trained by ``processes`` processes, where both are known."""
    trained_by = extra.get("processes")
    if processes is not None and isinstance(trained_by, int) and trained_by != processes:
        raise ConfigError(f"{last} was trained by {trained_by} process(es) and this machine would resume it with "
                          f"{processes} (trainer.devices={cfg.trainer.devices} x trainer.num_nodes="
                          f"{cfg.trainer.num_nodes}): a step draws one batch per process, so the run would go on with "
                          f"other batches from the recorded position; resume it where it gets {trained_by} (with "
                          "trainer.devices auto or -1, CUDA_VISIBLE_DEVICES chooses the GPUs), or start a new run",
                          key="trainer.devices")


def _check_trained_config(cfg: Config, checked: dict[str, Any], extra: dict[str, Any],
                          pin: tuple[list[float], list[float], bool] | None, run_dir: Path,
                          note: Callable[[str], None], folder_key: str) -> set[str] | None:
    """A step of :func:`check_resume`: ``cfg`` is ``last.ckpt``'s config but for keys added since; the run's hashes."""
    from dynametric.config import config_hash

    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    saved, now = extra.get("config_hash"), config_hash(cfg)
    if saved is None:
        note(f"warning: {last} records no config hash (written by an older dynametric): {config} cannot be checked "
            "against it; resuming with it as it is")
        return None
    if saved != now:
        stored = extra.get("config")
        added = _added_defaults(stored, checked) if isinstance(stored, dict) else None
        if not added:
            raise _config_changed(cfg, checked, stored, saved, now, run_dir, folder_key, pin)
        # only keys a later dynametric added, at their defaults: the run's own config, resumed (data.mean / data.std
        # of a run that predates them are not left at their defaults: the note below says what it resumes with)
        said = [(k, v) for k, v in added if not (pin is not None and pin[2] and k in ("data.mean", "data.std"))]
        if said:
            note(f"note: {config} lacks keys this dynametric added after {last} was saved; resuming with their "
                 "defaults: " + ", ".join(f"{k}={v!r}" for k, v in said))
    return {saved, now}


def _changes(stored: Any, new: dict[str, Any]) -> tuple[list[str], str]:
    """The keys a checkpoint's stored config and ``new`` differ in, and ``; changed: ...`` (none, ``""``: no dict)."""
    if not isinstance(stored, dict):
        return [], ""
    keys, text = _changed_keys(stored, new)
    return keys, f"; changed: {text}"


def _config_changed(cfg: Config, checked: dict[str, Any], stored: Any, saved: Any, now: str,
                    run_dir: Path, folder_key: str,
                    pin: tuple[list[float], list[float], bool] | None = None) -> InputError:
    """The one line of a resume refused because ``config.yaml`` is not the config ``last.ckpt`` was saved with."""
    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    keys, differ = _changes(stored, checked)
    if folder_key == PYTHON_FOLDER_KEY:  # the caller's cfg differs, not (or not only) config.yaml: named as such
        return _python_config_changed(cfg, stored, saved, now, keys, differ, run_dir, pin)
    if keys == ["imports"]:  # only the modules imported: no other training
        how = f"with dynametric --import MODULE train --resume {run_dir}"
        return InputError(f"changed only its 'imports' ({stored.get('imports') or []!r} in {last}, "
                          f"{cfg.imports!r} here), which resuming keeps as the run recorded them: restore them, "
                          f"and import another module for the resume {how}", file=config, key="imports")
    return InputError(f"no longer matches the checkpoint it was saved with ({last} was trained with config "
                      f"hash {saved}, this config hashes to {now}{differ}); {_new_run_hint(config, folder_key)}",
                      file=config)


def _python_config_changed(cfg: Config, stored: Any, saved: Any, now: str, keys: list[str], differ: str,
                           run_dir: Path, pin: tuple[list[float], list[float], bool] | None) -> InputError:
    """:func:`_config_changed` for a Python call (``run_training(cfg, run_dir, resume=True)``): keyed ``cfg``, the
    argument that differs, with how to resume with the trained config (``run_dir``'s ``config.yaml`` where it still
    holds it: :func:`_file_holds_trained_config`; else restored first) or start a new run with ``cfg``."""
    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    resume = _resume_call(run_dir, PYTHON_FOLDER_KEY)
    held = _file_holds_trained_config(config, stored, saved, pin)
    how = {"holds": f"which {config} holds: {resume}",
           "edited": f"which {config} no longer holds either (edited since {last} was saved): restore it, then "
                     f"{resume}",
           "unreadable": f"which {config} should hold, but it is missing or cannot be loaded: restore it, then "
                         f"{resume}"}.get(held, f"which {config} should hold (not checked here: that would import "
                                                f"the modules it lists, {held}): {resume}")
    if keys == ["imports"]:
        return InputError(f"changed only its imports ({stored.get('imports') or []!r} in {last}, {cfg.imports!r} "
                          f"here), which resuming keeps as the run recorded them: resume with the config the run was "
                          f"trained with, {how} (import another module with import MODULE before it)",
                          key="cfg.imports")
    return InputError(f"no longer matches the checkpoint the run was saved with ({last} was trained with config hash "
                      f"{saved}, cfg hashes to {now}{differ}); resume with the config the run was trained with, {how}; "
                      "or start a new run with this cfg: run_training(cfg, NEW) (NEW: another run_dir)", key="cfg")


def _file_holds_trained_config(config: Path, stored: Any, saved: Any,
                               pin: tuple[list[float], list[float], bool] | None) -> str:
    """Whether a run's ``config.yaml``, loaded as :func:`~dynametric.config.load_config` loads it (``3e-3`` and
    ``0.003`` alike), is the config its ``last.ckpt`` was trained with, as a resume of it would find (the same hash,
    with the input statistics an earlier resume recorded, ``pin``; or only keys a later dynametric added, at their
    defaults): ``holds``, ``edited``, or ``unreadable`` (missing, not a config). Never runs code to decide: where
    the file lists modules this process has not imported, loading it would import them, so it is not loaded and
    their names come back (the message says the file was not checked)."""
    import sys
    import warnings

    import yaml

    from dynametric.config import config_hash, config_to_dict, load_config

    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "unreadable"
    listed = raw.get("imports") if isinstance(raw, dict) else None
    new = [str(m) for m in listed if str(m) not in sys.modules] if isinstance(listed, list) else []
    if new:
        return ", ".join(new)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no module is imported here (above); a stale-module note is the load's
            file_cfg = load_config(config)
    except (DynametricError, OSError, ImportError, ValueError, TypeError):
        return "unreadable"
    if pin is not None and not pin[2]:
        file_cfg.data.mean, file_cfg.data.std = pin[:2]
    if config_hash(file_cfg) == saved:
        return "holds"
    return "holds" if isinstance(stored, dict) and _added_defaults(stored, config_to_dict(file_cfg)) else "edited"


def _keep_predating_statistics(cfg: Config, pin: tuple[list[float], list[float], bool] | None, last: Path,
                               note: Callable[[str], None]) -> None:
    """A step of :func:`check_resume`: a run older than ``data.mean`` / ``data.std`` resumes with ImageNet's."""
    if pin is not None and pin[2]:  # the recorded config predates the keys: checked without them
        cfg.data.mean, cfg.data.std = pin[:2]
        note(f"note: {last} was trained before the transforms followed the backbone's own input statistics: resuming "
            f"with the ImageNet mean and std it trained with (data.mean, data.std)")


def _resumed_checkpoint(ckpt: dict[str, Any], extra: dict[str, Any], last: Path) -> ResumedCheckpoint:
    """A step of :func:`check_resume`: ``last`` has a ``state_dict``; what the resume keeps of the checkpoint."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise InputError("checkpoint has no 'state_dict'", file=last, key="state_dict")
    record, components = extra.get("logger_run"), extra.get("components")
    return ResumedCheckpoint({k: torch.empty(v.shape, device="meta") if isinstance(v, torch.Tensor) else v
                              for k, v in state.items()}, record if isinstance(record, dict) else None,
                             components if isinstance(components, dict) else None)


def _no_note(message: str) -> None:
    """A ``note`` that says nothing: where :func:`check_run_checkpoint`'s warning about a checkpoint without a config
    hash was said already (:func:`_select_checkpoint`, after :func:`check_resume`) or goes without saying (a
    ``best.ckpt`` of an older dynametric beside a ``last.ckpt`` of one, said of it)."""


def _changed_keys(stored: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], str]:
    """The dotted keys that differ between a checkpoint's stored config and ``new`` (both as
    :func:`~dynametric.config.config_to_dict` gives them; a key only ``new`` has counts when it is not at the
    schema's default), and the first four in words (``key (old -> new)``)."""
    old, now = _flat(stored), _flat(new)
    keys = [k for k in sorted({*old, *now}) if (k in old) != (k in now) or old[k] != now[k]]
    keys = [k for k in keys if k in old or not _is_schema_default(k, now[k])]  # an added key: no edit
    text = ", ".join(f"{k} ({repr(old[k]) if k in old else 'absent'} -> {repr(now[k]) if k in now else 'absent'})"
                     for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return keys, text


def _same_run_config(stored: Any, run_config: dict[str, Any]) -> bool:
    """Whether a checkpoint's stored config is the run's ``run_config`` (both as
    :func:`~dynametric.config.config_to_dict` gives them) but for what a resume adds without changing the training:
    keys a later dynametric added, at their defaults (:func:`_added_defaults`), and the input statistics a resume
    of a checkpoint that predates ``data.mean`` / ``data.std`` records (ImageNet's, :func:`trained_statistics`)."""
    from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if not isinstance(stored, dict):
        return False
    if _added_defaults(stored, run_config) is not None:
        return True
    data, was = run_config.get("data"), stored.get("data")
    if isinstance(data, dict) and isinstance(was, dict) and "mean" not in was and "std" not in was \
            and data.get("mean") == list(IMAGENET_MEAN) and data.get("std") == list(IMAGENET_STD):
        return _added_defaults(stored, {**run_config, "data": {**data, "mean": None, "std": None}}) is not None
    return False


def check_run_checkpoint(path: Path, run_config: dict[str, Any], run_hashes: set[str], run_dir: Path,
                         note: Callable[[str], None], checkpoint: Mapping[str, Any] | None = None) -> None:
    """A checkpoint of the run folder that the run tests (``best.ckpt``) must have been saved by this run, as
    ``last.ckpt`` must (:func:`check_resume`): its recorded config hash one of ``run_hashes`` (the run's), or its
    stored config the run's ``run_config`` but for keys a later dynametric added at their defaults
    (:func:`_same_run_config`); else a one-line :class:`InputError` naming it (a ``best.ckpt`` copied from another
    run would be tested, and its metrics reported, as this run's best epoch). Nothing to check where ``path`` is
    not there; one that records no config hash (an older dynametric) is accepted with a warning. ``checkpoint``:
    its content where the caller read it already."""
    if checkpoint is None:
        if not path.is_file():
            return
        checkpoint = load_checkpoint_file(path)
    extra = _dynametric_record(checkpoint)
    recorded, stored = extra.get("config_hash"), extra.get("config")
    if recorded is None:
        note(f"warning: {path} records no config hash (written by an older dynametric): it cannot be checked to be "
             f"this run's; the run tests it as its best epoch")
        return
    if recorded in run_hashes or _same_run_config(stored, run_config):
        return
    differ = _changes(stored, run_config)[1]
    raise InputError(f"was not saved by this run (it records config hash {recorded}, the run {run_dir} "
                     f"{' or '.join(sorted(run_hashes)) or 'another'}{differ}): the run would test it as "
                     f"its best epoch and report its metrics as its own; put back the run's own {path.name}, or move "
                     "this one out of the run folder (the run then tests its final weights)", file=path)


def component_classes(cfg: Config, embedder: torch.nn.Module | None = None) -> dict[str, str]:
    """What each component the config names resolved to, ``{config key: "module.QualifiedName"}``: the entries of
    ``LOSSES`` / ``MINERS`` (every loss term and its miner), ``BATCH_SAMPLERS`` (``data.sampler``), the dataset
    format (``data.format``), the method (``method.name``) and the backbone's module class (of the built
    ``embedder`` when given, else the ``BACKBONES`` factory; a timm name then is not recorded). ``run_info.json``
    (``components``) and every checkpoint record it, so a name that user code registered over
    (``LOSSES["TripletMarginLoss"] = MyLoss``) shows, and a resume says when a name resolves to another class now
    (:func:`components_note`)."""
    from dynametric.data.registry import FORMATS, _synthetic_class
    from dynametric.data.samplers import BATCH_SAMPLERS
    from dynametric.losses import LOSSES
    from dynametric.methods import method_for
    from dynametric.miners import MINERS
    from dynametric.models.backbones import BACKBONES
    from dynametric.utils.registry import qualified_name

    out: dict[str, str] = {}
    for key, term, miner in cfg.loss_terms():
        if term.name in LOSSES:
            out[f"{key}.name"] = qualified_name(LOSSES[term.name])
        if miner is not None and miner.name in MINERS:
            out[f"{'miner' if key == 'loss' else f'{key}.miner'}.name"] = qualified_name(MINERS[miner.name])
    if cfg.data.sampler in BATCH_SAMPLERS:
        out["data.sampler"] = qualified_name(BATCH_SAMPLERS[cfg.data.sampler])
    body = getattr(getattr(embedder, "backbone", None), "body", None)
    if body is not None:
        out["model.backbone"] = qualified_name(type(body))
    elif cfg.model.backbone in BACKBONES:
        out["model.backbone"] = qualified_name(BACKBONES[cfg.model.backbone])
    fmt = FORMATS.get(cfg.data.format)
    if fmt is not None or cfg.data.format == "synthetic":
        out["data.format"] = qualified_name(fmt if fmt is not None else _synthetic_class())
    out["method.name"] = qualified_name(method_for(cfg))
    return out


def components_note(recorded: Mapping[str, Any] | None, now: Mapping[str, str], where: str) -> str | None:
    """One ``note:`` line when a component the run recorded (``recorded``, from ``where``) resolves to another
    class now (``now``): a registry entry replaced, or user code not imported; ``None`` when all agree or nothing
    was recorded (a run of an earlier version)."""
    if not recorded:
        return None
    changed = [f"{key} {recorded[key]} -> {now[key]}" for key in now if key in recorded and recorded[key] != now[key]]
    if not changed:
        return None
    return (f"note: the run was trained with other component classes than the config's names resolve to now "
            f"({where}): {'; '.join(changed)}; resuming with the classes of now (a registry entry replaced by user "
            "code, or the code that registered it not imported?)")


def check_resume_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], last: Path) -> None:
    """A one-line InputError naming ``last`` when its weights do not fit the model built from the run's config
    (Lightning's loading would raise a multi-line ``size mismatch`` RuntimeError); the wording of ``evaluate
    --checkpoint``."""
    from dynametric.engine.checkpoint import model_mismatch

    problem = model_mismatch(module, weights)
    if problem is not None:
        raise InputError(problem, file=last)


def claim_resumed_run(run_dir: Path, note: Callable[[str], None] = print) -> None:
    """A resumed run takes over its folder: the ``config.yaml`` header names this folder and this process (the
    check of a second ``--resume`` or ``--out`` while it trains), rewritten atomically with the rest of the file as
    it was, and the temporary files of atomic writes that a killed process of this run left behind are removed.
    Only in a folder whose ``config.yaml`` says dynametric train wrote it; a header naming another folder (the run
    folder was moved or copied since) is rewritten to name this one, and the output says so."""
    from dynametric.utils.io import atomic_write_text

    old = None if _launched_worker() else _run_header(run_dir, any_folder=True)
    if old is None:
        return
    config = run_dir / "config.yaml"
    rest = config.read_text(encoding="utf-8").split("\n", 1)[1]
    header = _HEADER.format(folder=printable_path(run_dir.resolve()), pid=os.getpid(), host=socket.gethostname())
    atomic_write_text(config, f"# {header}\n{rest}")
    if old["folder"] != printable_path(run_dir.resolve()):
        note(f"run folder {run_dir}: {config.name} named the run folder {old['folder']} (the folder was moved or "
            "copied); it now names this one")
    left = [entry for sub, names in _RUN_FILES.items()
            for entry in remove_stale_temps(run_dir / sub, names.__contains__)]
    if left:
        note(f"run folder {run_dir}: removed the temporary files a stopped process left "
            f"({', '.join(p.relative_to(run_dir).as_posix() for p in left)})")
