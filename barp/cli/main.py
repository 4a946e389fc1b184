"""The ``barp`` command: one LightningCLI with Lightning's subcommands (fit, validate, test, predict) and barp's own
(sweep, ope, calibrate, serve), all listed by ``barp --help``."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from barp import __version__
from barp.cli.config_files import check_config_files
from barp.errors import ConfigError, exit_on_user_error

#: The module's parts that say how a trained router is evaluated and applied: the command line's win over the
#: checkpoint's.
EVAL_TIME_OPTIONS = ("evaluation", "predict", "guard")
#: Subcommands that evaluate or apply a trained router: they need a checkpoint.
NEEDS_CHECKPOINT = ("validate", "test", "predict")


@dataclass(frozen=True)
class Command:
    """A barp subcommand that is not a Trainer method: its parser, the function that runs a parsed config, and help."""

    parser: Callable[[], ArgumentParser]
    run: Callable[..., object]
    help: str


def barp_commands() -> dict[str, Command]:
    """barp's own subcommands, in the order ``barp --help`` lists them."""
    from barp.ope.cli import ope_parser, run_ope
    from barp.service.cli import (
        calibrate_parser,
        run_calibrate,
        run_serve,
        serve_parser,
    )
    from barp.sweep.cli import run_sweep, sweep_parser

    return {
        "sweep": Command(sweep_parser, run_sweep, "Compare a trained router with the baselines and reference policies "
                         "over a preference grid on the ID and OOD test splits."),
        "ope": Command(ope_parser, lambda cfg, parser: run_ope(cfg), "Estimate a trained router's score, cost and "
                       "reward from a log of served requests (off-policy evaluation)."),
        "calibrate": Command(calibrate_parser, lambda cfg, parser: run_calibrate(cfg), "Cost, score and traffic "
                             "shares against w_c, and the w_c that meets a cost or quality target."),
        "serve": Command(serve_parser, lambda cfg, parser: run_serve(cfg), "Serve a trained router over HTTP, with "
                         "a crash-safe feedback log."),
    }


class BarpCLI(LightningCLI):
    """LightningCLI with barp's subcommands, argument links and the ``--test_after_fit`` option.

    barp's own subcommands (:func:`barp_commands`) are parsed by the same parser as fit/test, so ``barp --help``
    lists them; they build no Trainer and run their own function on their parsed section.
    """

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        self.barp_commands = barp_commands()
        self.barp_parsers: dict[str, ArgumentParser] = {}  # Lightning's own table holds its subcommands' parsers
        for name, command in self.barp_commands.items():
            sub = command.parser()
            self.barp_parsers[name] = sub
            parser._subcommands_action.add_subcommand(name, sub, help=command.help)

    def _is_barp_command(self) -> bool:
        return self.config.get("subcommand") in getattr(self, "barp_commands", {})

    def _set_seed(self) -> None:
        if not self._is_barp_command():
            super()._set_seed()

    def instantiate_classes(self) -> None:
        if self._is_barp_command():  # no Trainer, model or data: the command builds what it needs
            self.model = self.datamodule = None
            self.trainer = None  # type: ignore[assignment]  # LightningCLI types it as always built
            return
        super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        """Send every output of the run under ``trainer.default_root_dir``: barp's loggers without a ``save_dir``
        write there, and so do the checkpoints and result files that follow the logger's folder."""
        if self._is_barp_command() or not self.subcommand:
            return
        from barp.loggers import ROOTED_LOGGERS

        trainer = self.config[self.subcommand].trainer
        root = trainer.get("default_root_dir") or "."
        loggers = trainer.get("logger")
        loggers = [lg for lg in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(lg, "class_path")]
        for logger in loggers:
            if logger.class_path in ROOTED_LOGGERS and logger.init_args.get("save_dir") is None:
                logger.init_args.save_dir = str(root)
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        self._continues_run = bool(self.subcommand == "fit" and ckpt_path and loggers
                                   and self._resume_in_run_folder(Path(ckpt_path), loggers[0]))

    @staticmethod
    def _resume_in_run_folder(ckpt_path: Path, logger) -> bool:
        """A fit resumed from a checkpoint of its own run folder (``<save_dir>/<name>/version_<n>/checkpoints/``)
        continues that folder: the checkpoint callback keeps its record of the best checkpoint (Lightning drops it
        when the folder changes) and the metrics go on in the same ``metrics.csv``."""
        folder = ckpt_path.expanduser().resolve().parent
        found = re.fullmatch(r"version_(\d+)", folder.parent.name)
        init = logger.init_args
        if folder.name != "checkpoints" or found is None or not logger.class_path.endswith("CSVLogger") \
                or init.get("version") is not None:
            return False
        if folder.parent.parent != (Path(init.get("save_dir") or ".") / str(init.get("name"))).resolve():
            return False
        init.version = int(found.group(1))
        return True

    def before_fit(self) -> None:
        """The module's own input files are checked before anything is written; on a resume, the first logger
        continues the run's metrics after the checkpoint's epoch."""
        from barp.loggers import CSVLogger
        from barp.models.base import RouterModule

        if isinstance(self.model, RouterModule):
            self.model.check_fit_inputs()
        epoch = getattr(self, "_resumed_epoch", None)
        if epoch is not None and getattr(self, "_continues_run", False) and isinstance(self.trainer.logger, CSVLogger):
            self.trainer.logger.resume_after_epoch(epoch)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand in self.barp_commands:
            command, parser = self.barp_commands[subcommand], self.barp_parsers[subcommand]
            self.result = command.run(self.config[subcommand], parser)
            return
        super()._run_subcommand(subcommand)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint and print the results table.")
        # what the router chooses between (models, tasks, embedding size, encoder name) comes from the data, each
        # read once
        for field in ("model_names", "task_names", "embed_dim"):
            parser.link_arguments(f"data.{field}", f"model.init_args.arms.{field}", apply_on="instantiate")
        parser.link_arguments("data.encoder_spec", "model.init_args.arms.encoder", apply_on="instantiate",
                              compute_fn=lambda spec: spec.name)
        if "verbose" in {a.dest for a in parser._actions}:
            # barp prints its own compact table (ResultsTable); Lightning's would list hundreds of metrics
            parser.set_defaults(verbose=False)

    def _parse_ckpt_path(self) -> None:
        """Load the checkpoint's hyperparameters, but keep evaluation-time options from the command line/config.

        Lightning lets a checkpoint's hyperparameters override the command line. For the preferences a
        router is evaluated or served at, the operator's current choice must win: that is BaRP's point.
        """
        from barp.models.checkpoints import embed_like_checkpoint, load_checkpoint

        sub = self.config.get("subcommand")
        if self._is_barp_command():
            return  # each reads (and checks) its own checkpoint
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if sub in NEEDS_CHECKPOINT and not ckpt_path:
            raise ConfigError(f"barp {sub} needs --ckpt_path, a checkpoint written by barp fit: without one the "
                              "router is untrained and its results mean nothing")
        checkpoint = None
        if ckpt_path:
            # missing, folder, truncated, foreign or code-carrying: refused; old flat hyperparameters: upgraded
            checkpoint = load_checkpoint(ckpt_path)
            self._resumed_epoch = checkpoint.get("epoch") if sub == "fit" else None
            embed_like_checkpoint(self.config[sub].get("data"), checkpoint)
        if sub == "fit":
            self._check_training_budget(self.config[sub].get("trainer") or {})
        if checkpoint is not None:
            self._model_from_checkpoint(sub, checkpoint)

    def _model_from_checkpoint(self, sub: str, checkpoint: dict) -> None:
        """Build the model section from the checkpoint's own options (read in today's form), so that the module
        evaluated is the module trained; the evaluation-time options (:data:`EVAL_TIME_OPTIONS`) stay the command
        line's and config's, and ``arms`` stays linked from the data."""
        saved = dict(checkpoint.get("hyper_parameters") or {})
        class_path = saved.pop("_class_path", None) or self.config[sub]["model"]["class_path"]
        trained = {key: value for key, value in saved.items()
                   if not key.startswith("_") and key != "arms" and key not in EVAL_TIME_OPTIONS}
        if not trained and class_path == self.config[sub]["model"]["class_path"]:
            return
        given = self.config[sub]["model"].get("init_args") or {}
        operator = {key: given[key].as_dict() if isinstance(given[key], Namespace) else given[key]
                    for key in EVAL_TIME_OPTIONS if key in given}
        section = {"class_path": class_path, "init_args": {**trained, **operator}}
        try:
            self.config = self.parser.parse_object({sub: {"model": section}}, self.config)
        except SystemExit:
            sys.stderr.write(f"barp {sub}: the checkpoint's model options ({class_path}) do not parse as today's\n")
            raise

    @staticmethod
    def _check_training_budget(trainer: dict) -> None:
        """Refuse a fit that would take no training step (its results would be an untrained policy's)."""
        for key in ("max_epochs", "max_steps", "limit_train_batches"):
            value = trainer.get(key)
            if value is not None and not isinstance(value, bool) and value == 0:
                raise ConfigError(f"trainer.{key}={value!r} trains nothing: barp fit would report an untrained "
                                  "policy. Give it at least one training step.")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            checkpoints = self.trainer.checkpoint_callback
            ckpt = "best" if isinstance(checkpoints, ModelCheckpoint) and checkpoints.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)


def main(args: list[str] | None = None) -> BarpCLI | None:
    """Run the barp command line.

    Args:
        args: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The CLI object (its ``trainer``, ``model`` and ``datamodule`` are available to callers and tests).
    """
    import barp.loggers  # noqa: F401 - registers barp's logger classes for bare names in configs
    import barp.models.baselines  # noqa: F401 - registers the comparison methods for bare class names
    from barp.cli.callbacks import PredictionWriter, ResultsTable
    from barp.data.datamodule import RoutingDataModule
    from barp.models.barp import BaRPModule  # noqa: F401 - registers BaRPModule for bare class names
    from barp.models.base import RouterModule

    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"barp {__version__}")
        return None
    with exit_on_user_error("barp"), warnings.catch_warnings():
        # a tool or test passes ``args`` while its own command line is in sys.argv: that is intended here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        check_config_files(argv)
        check_non_finite(argv)
        return BarpCLI(
            RouterModule,
            RoutingDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=None if args is None else argv,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [ResultsTable(), PredictionWriter()]},
            auto_configure_optimizers=False,
        )


NON_FINITE = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)


def check_non_finite(argv: list[str]) -> None:
    """Refuse ``nan`` / ``inf`` given to an option on the command line, naming the option (the parser's own message,
    "Expected a float, got nan", does not say that the number is refused for not being finite)."""
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        if not eq:
            option, value = arg, (argv[i + 1] if i + 1 < len(argv) else "")
        if option.startswith("--") and option != "--config" and NON_FINITE.fullmatch(value.strip()):
            raise ConfigError(f"{option} {value.strip()!r}: not a finite number; every number barp takes must be "
                              "finite (NaN and infinity are refused)")


def fit_checkpoint(args: list[str], fallback: str) -> str:
    """Run ``barp fit`` with ``args`` and return its best checkpoint (else its last; else one saved at ``fallback``).

    For tools that chain a fit into other commands (``tools/paper_tables.py``, ``tools/leave_one_out.py``).
    """
    cli = main(["fit", *args])
    assert cli is not None  # only --version returns no CLI
    callback = cli.trainer.checkpoint_callback
    ckpt = (callback.best_model_path or callback.last_model_path) if isinstance(callback, ModelCheckpoint) else ""
    if not ckpt:
        ckpt = fallback
        cli.trainer.save_checkpoint(ckpt)
    return str(ckpt)


def run() -> int:
    """Console-script entry point (``barp``): runs :func:`main` and returns the exit status."""
    main()
    return 0
