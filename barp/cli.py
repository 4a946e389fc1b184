"""The ``barp`` command: a LightningCLI (fit, validate, test, predict) wired to barp's modules."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from barp import __version__
from barp.errors import ConfigError, exit_on_user_error


EVAL_TIME_OPTIONS = ("eval_w_c", "extra_eval_w_c", "predict_w_c", "predict_temperature", "predict_epsilon")
#: Subcommands that evaluate or apply a trained router: they need a checkpoint.
NEEDS_CHECKPOINT = ("validate", "test", "predict")


def check_config_files(argv: list[str]) -> None:
    """Parse every ``--config`` file named in ``argv`` as YAML first, so that a syntax error names its file.

    Args:
        argv: Command-line arguments.

    Raises:
        ConfigError: A config file is not valid YAML (the message names the file, line and column).
    """
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"--config {path}: not valid YAML{at}: {problem}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--config {path}: cannot be read as text ({type(err).__name__})") from None


class BarpCLI(LightningCLI):
    """LightningCLI with barp's argument links and the ``--test_after_fit`` option."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint and print the results table.")
        for source, target in (("model_names", "model_names"), ("task_names", "task_names"),
                               ("embed_dim", "embed_dim")):
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.link_arguments("data.init_args.encoder", "model.init_args.encoder", apply_on="parse")
        if "verbose" in {a.dest for a in parser._actions}:
            # barp prints its own compact table (ResultsTable); Lightning's would list hundreds of metrics
            parser.set_defaults(verbose=False)

    def _parse_ckpt_path(self) -> None:
        """Load the checkpoint's hyperparameters, but keep evaluation-time options from the command line/config.

        Lightning lets a checkpoint's hyperparameters override the command line. For the preferences a
        router is evaluated or served at, the operator's current choice must win: that is BaRP's point.
        """
        from barp.checkpoints import load_checkpoint

        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if sub in NEEDS_CHECKPOINT and not ckpt_path:
            raise ConfigError(f"barp {sub} needs --ckpt_path, a checkpoint written by barp fit: without one the "
                              "router is untrained and its results mean nothing")
        if ckpt_path:
            load_checkpoint(ckpt_path)  # missing, folder, truncated, foreign or code-carrying: one clear error
        if sub == "fit":
            self._check_training_budget(self.config[sub].get("trainer") or {})
        init = self.config[sub]["model"].get("init_args") if sub else None
        kept = {k: init[k] for k in EVAL_TIME_OPTIONS if init is not None and k in init}
        super()._parse_ckpt_path()
        if kept:
            for key, value in kept.items():
                self.config[sub]["model"]["init_args"][key] = value

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
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False)


def main(args: list[str] | None = None) -> BarpCLI | None:
    """Run the barp command line.

    Args:
        args: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The CLI object (its ``trainer``, ``model`` and ``datamodule`` are available to callers and tests).
    """
    import barp.loggers  # noqa: F401 - registers barp's logger classes for bare names in configs
    from barp.callbacks import PredictionWriter, ResultsTable
    from barp.data.datamodule import RoutingDataModule
    from barp.module import BaRPModule  # noqa: F401 - registers BaRPModule for bare class names
    import barp.routers  # noqa: F401 - registers the comparison methods for bare class names
    from barp.router_module import RouterModule

    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"barp {__version__}")
        return None
    if argv[:1] == ["sweep"]:
        from barp.evaluation.sweep_cli import run_sweep_cli

        run_sweep_cli(argv[1:])
        return None
    if argv[:1] == ["ope"]:
        from barp.ope.cli import run_ope_cli

        run_ope_cli(argv[1:])
        return None
    if argv[:1] in (["serve"], ["calibrate"]):
        from barp.service.cli import run_calibrate_cli, run_serve_cli

        (run_serve_cli if argv[0] == "serve" else run_calibrate_cli)(argv[1:])
        return None
    with exit_on_user_error("barp"):
        check_config_files(argv)
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


def run() -> int:
    """Console-script entry point (``barp``): runs :func:`main` and returns the exit status."""
    main()
    return 0
