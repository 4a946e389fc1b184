"""The ``barp`` command: a LightningCLI (fit, validate, test, predict) wired to barp's modules."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

import barp
from barp.errors import BarpError


class BarpCLI(LightningCLI):
    """LightningCLI with barp's argument links and the ``--test_after_fit`` option."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="After fit, test the best checkpoint and print the results table.")
        for source, target in (("model_names", "model_names"), ("task_names", "task_names"),
                               ("embed_dim", "embed_dim")):
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.link_arguments("data.init_args.encoder", "model.init_args.encoder", apply_on="parse")

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit"):
            ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


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
    from barp.router_module import RouterModule

    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"barp {barp.__version__}")
        return None
    try:
        return BarpCLI(
            RouterModule,
            RoutingDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [ResultsTable(), PredictionWriter()]},
            auto_configure_optimizers=False,
        )
    except BarpError as err:
        print(f"barp: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
