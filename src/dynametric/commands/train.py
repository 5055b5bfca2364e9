"""``dynametric train``: train an embedding, select it on validation, test it at every scale, write a report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynametric.commands import is_terminal, path_arg, write_stdout
from dynametric.errors import ConfigError

if TYPE_CHECKING:
    from dynametric.config import Config

#: The run ``dynametric train`` performs without ``--config`` (a packaged YAML file; overrides apply on top).
DEFAULT_RUN_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default_run.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train an embedding model (default: the synthetic hierarchy, a few minutes on CPU)",
        description="Train, validate on class-disjoint held-out classes, test the best checkpoint at every "
                    "scale, and write a run folder (config.yaml, last/best.ckpt, metrics.json, report.html).")
    p.add_argument("--config", type=path_arg, default=None,
                   help="YAML config (default: the packaged default run, dynametric/configs/default_run.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, before, between or after the options, e.g. trainer.max_epochs=3 "
                        "loss.name=MultiSimilarityLoss (a word an option takes as its value stays its value: "
                        "--out a=b is the folder a=b)")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted override, as the other commands take them (repeatable; same as a positional "
                        "KEY=VALUE)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, build model/losses/miners/optimizer, print the resolved config")
    p.add_argument("--resume", type=path_arg, default=None, metavar="RUN_DIR",
                   help="continue an interrupted run exactly from RUN_DIR/last.ckpt (uses RUN_DIR/config.yaml)")
    p.add_argument("--out", type=path_arg, default=None, metavar="DIR",
                   help="run folder (default: <run.output_dir>/<run.name or timestamp-hash>)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on/off (default: the config's trainer.progress_bar)")
    p.set_defaults(func=run, intermixed="overrides")  # KEY=VALUE words anywhere among the options (cli.parse_args)


def run(args: argparse.Namespace) -> int:
    from dynametric.config import load_config
    from dynametric.config.schema import anchor_paths
    from dynametric.utils.io import check_name_lengths

    args.overrides = [*args.overrides, *args.set_overrides]  # positional first, then --set, in the order given
    _refuse_non_utf8_folder(args)

    if args.resume is not None:
        if args.config is not None or args.overrides or args.out is not None:
            raise ConfigError("--resume continues a run with its saved config.yaml; drop --config, --out and "
                              "overrides", key="--resume")
        check_name_lengths(args.resume, "--resume")
        cfg_path = args.resume / "config.yaml"
        if not cfg_path.is_file():
            raise ConfigError(f"{cfg_path} not found: is {args.resume} a dynametric run folder?", key="--resume")
        cfg = load_config(cfg_path)
    else:
        for i, item in enumerate(args.overrides):
            if "=" not in item:
                before = args.overrides[i - 1] if i else None
                # `loss.kwargs={margin: 0.1}` or `trainer.max_epochs= 3` unquoted: the shell split it at the space
                hint = (f"; if it is the rest of {before!r}, the shell split that override at a space: quote the "
                        f"whole of it, '{before} {item}'" if before is not None and "=" in before else "")
                raise ConfigError(f"expected KEY=VALUE, got {item!r}{hint}", key=item)
        cfg = load_config(args.config if args.config is not None else DEFAULT_RUN_CONFIG, args.overrides)
        # the modules of dynametric --import MODULE join the run's imports (recorded in its config.yaml), so the run
        # folder is self-contained: evaluate --checkpoint, embed, export, train --resume import them from it
        extra = [m for m in dict.fromkeys(getattr(args, "plugin_imports", None) or []) if m not in cfg.imports]
        cfg.imports = [*cfg.imports, *extra]
        # a relative data.root / model.pretrained_path is recorded absolute: the later commands read the run's
        # config.yaml from wherever they run, and read the files this run read
        anchor_paths(cfg)
    cfg = rank_0_config(cfg)
    from dynametric.config import errors_located
    from dynametric.pipeline.run import default_run_dir, dry_run, quiet_lightning, run_training
    from dynametric.pipeline.run_folder import remove_if_empty, reserve_default_run_dir

    quiet_lightning()

    # a config error found while building or running names the file and line (or <command line>) of its key
    with errors_located(cfg):
        folder_key = "--resume" if args.resume is not None else "--out" if args.out is not None else \
            "run.name" if cfg.run.name else "run.output_dir"
        if args.dry_run:  # the folder a new run would write, checked as the run checks it (a timestamped one is new)
            new_dir = None if args.resume is not None else args.out or (default_run_dir(cfg) if cfg.run.name else None)
            if new_dir is not None:
                check_name_lengths(new_dir, folder_key)
            dry_run(cfg, log=result_line, note=note_line, run_dir=new_dir, folder_key=folder_key)
            return 0
        reserved = False
        if args.resume is not None or args.out is not None:
            run_dir = args.resume if args.resume is not None else args.out
        else:  # a default name by the clock is reserved (created empty): two jobs started in one second get two
            run_dir, reserved = reserve_default_run_dir(cfg)
        check_name_lengths(run_dir, folder_key)  # the folder named, not the first file written in it
        try:
            run_training(cfg, run_dir, resume=args.resume is not None, progress=progress_choice(args.progress),
                         folder_key=folder_key, log=result_line, note=note_line)
        except BaseException:
            if reserved:  # the run stopped before it wrote anything: the empty folder it reserved goes
                remove_if_empty(Path(run_dir))
            raise
    return 0


def _refuse_non_utf8_folder(args: argparse.Namespace) -> None:
    """One error line, before any work, for a run folder (``--out``, ``--resume``) whose name is not UTF-8 text
    (``--out $'run\\xe9'`` in a UTF-8 locale: bytes Python holds as surrogate escapes). A run writes its folder's
    name into UTF-8 files (``config.yaml``'s first line, ``report.html``), which such a name cannot be; the run
    stopped with a ``UnicodeEncodeError`` traceback (the report's after the training)."""
    from dynametric.data.readers import non_utf8_name, printable_path

    for key, folder in (("--out", args.out), ("--resume", args.resume)):
        if folder is not None and non_utf8_name(folder) is not None:
            raise ConfigError(f"run folder {printable_path(folder)}: its name is not UTF-8 text, which the run writes "
                             "into config.yaml and report.html; give a UTF-8 name", key=key)


#: The environment variable in which the ``dynametric train`` process of global rank 0 publishes its pid and its
#: resolved config (JSON): the processes Lightning's script launcher starts from it for the other ranks inherit it.
CONFIG_ENV = "DYNAMETRIC_RUN_CONFIG"


def _published() -> dict[str, Any] | None:
    """What this process's parent published in :data:`CONFIG_ENV` (``None`` where the parent published nothing: a
    value inherited from further up, e.g. a shell, is not this run's)."""
    try:
        data = json.loads(os.environ.get(CONFIG_ENV, ""))
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("pid") == os.getppid() else None


def started_by_rank_0() -> bool:
    """Whether this process is another rank's, started by Lightning's script launcher from the ``dynametric train``
    process of rank 0 (its parent, which published :data:`CONFIG_ENV`). Such a process shares rank 0's terminal
    and stops on the same errors and signals: the CLI prints none of its ``error:`` / ``interrupted`` lines. A
    process that torchrun, srun or jsrun started, or one on another node, says them (its output may be the only
    place they are seen)."""
    if _published() is None:
        return False
    from dynametric.pipeline.run_folder import _launched_worker

    return bool(_launched_worker())


def rank_0_config(cfg: Config) -> Config:
    """The config this process trains: in a process started by rank 0 (:func:`started_by_rank_0`), rank 0's
    resolved config, published in :data:`CONFIG_ENV`; elsewhere ``cfg``, which a process of rank 0 publishes for the
    ranks it starts later (a side effect on ``os.environ``, as
    :func:`dynametric.pipeline.run_folder.default_run_dir`'s).

    Rank 0 starts the other ranks when it reaches its first Lightning call, possibly minutes after it read the
    ``--config`` file: they read the file again and, where it had been edited in between, trained another config
    than rank 0, silently. A launcher that starts every process itself (torchrun, srun) publishes nothing: each of
    its processes reads the file."""
    from dynametric.config import config_from_dict, config_to_dict
    from dynametric.pipeline.run_folder import _launched_worker

    published = _published()
    if published is not None and _launched_worker():
        return config_from_dict(published["config"])
    if not _launched_worker():
        os.environ[CONFIG_ENV] = json.dumps({"pid": os.getpid(), "config": config_to_dict(cfg)}, allow_nan=True)
    return cfg


def result_line(line: str) -> None:
    """A line of what a run does and gives (what is being done, the results table, the files written): stdout."""
    write_stdout(f"{line}\n")  # a full disk says it was standard output


def note_line(line: str) -> None:
    """A note or warning of a run (``note:``, ``warning:``, what was done to the run folder): stderr, so that
    ``train > out.txt`` keeps the results alone."""
    print(line, file=sys.stderr, flush=True)


def progress_choice(flag: bool | None) -> bool | None:
    """``--progress`` / ``--no-progress`` as given; without either, the config's ``trainer.progress_bar`` where
    stderr (where the bars are drawn) is a terminal, and no bars where it is a file or a pipe (a log would fill
    with every redraw), as tqdm's ``disable=None`` and pip decide."""
    if flag is not None:
        return flag
    return None if is_terminal(sys.stderr) else False
