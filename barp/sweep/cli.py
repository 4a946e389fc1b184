"""``barp sweep``: parse the same ``--config`` files as ``barp fit`` (their ``data``, ``model``, ``trainer`` and
``seed_everything`` sections) plus the sweep options, then run :func:`barp.sweep.harness.sweep`."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from barp.commands import function_parser
from barp.errors import exit_on_user_error
from barp.models.base import RouterModule
from barp.sweep.harness import sweep
from barp.sweep.summary import format_summary


def _module_class(model_section) -> type[RouterModule]:
    """The RouterModule class named by the config's ``model.class_path``; default BaRPModule."""
    from barp.models.registry import router_class

    return router_class(model_section.get("class_path") if model_section is not None else None)


def sweep_parser() -> ArgumentParser:
    """The ``barp sweep`` argument parser (help text comes from :func:`~barp.sweep.harness.sweep`'s docstring)."""
    from barp.data.datamodule import RoutingDataModule

    parser = function_parser(
        sweep, "barp sweep", "Evaluate a trained router (--ckpt_path) and the comparison methods over a preference "
        "grid on the ID and OOD test splits; write sweep.csv, summary.json and pareto.png into --output.",
        skip={"datamodule", "module_class", "wandb_logger", "seed", "max_epochs", "output"})
    parser.add_argument("--config", action=ActionConfigFile, help="Experiment config(s), as given to barp fit.")
    parser.add_argument("--seed_everything", type=int | bool | None, default=None,
                        help="From the experiment config: the default of --seed.")
    parser.add_argument("--test_after_fit", type=bool, default=False, help="Accepted from configs; unused.")
    parser.add_argument("--trainer", type=dict | None, default=None,
                        help="The experiment's trainer section: max_epochs (default of --max_epochs) and logger.")
    # The model section says which class wrote --ckpt_path; its data-linked options are not needed here.
    parser.add_subclass_arguments(RouterModule, "model", required=False, skip={"arms"})
    parser.add_subclass_arguments(RoutingDataModule, "data", required=True)
    parser.add_argument("--output", type=str | None, default=None,
                        help="Folder for sweep.csv, summary.json and pareto.png "
                             "(default: <trainer.default_root_dir>/sweep, else runs/sweep).")
    parser.add_argument("--seed", type=int | None, default=None,
                        help="Seed for training the comparison methods and the random router (default: "
                             "seed_everything of the config, else 0).")
    parser.add_argument("--max_epochs", type=int | None, default=None,
                        help="Training epochs of each trainable comparison method (default: the config's "
                             "trainer.max_epochs, else 40).")
    return parser


def run_sweep(cfg, parser: ArgumentParser) -> dict:
    """Run ``barp sweep`` from a parsed config (``cfg``, parsed by ``parser`` = :func:`sweep_parser`).

    Returns:
        The summary written to ``summary.json``.
    """
    trainer = cfg.trainer or {}
    seed = cfg.seed if cfg.seed is not None else (
        cfg.seed_everything if isinstance(cfg.seed_everything, int) and cfg.seed_everything is not True else 0)
    max_epochs = cfg.max_epochs if cfg.max_epochs is not None else int(trainer.get("max_epochs") or 40)
    output = cfg.output or str(Path(trainer.get("default_root_dir") or "runs") / "sweep")
    with exit_on_user_error("barp sweep"):
        model_class = _module_class(cfg.get("model"))
        cfg = cfg.clone()
        del cfg["model"]  # read for its class only; the checkpoint holds the trained module
        if cfg.ckpt_path is not None:
            from barp.models.checkpoints import embed_like_checkpoint, load_checkpoint

            embed_like_checkpoint(cfg.get("data"), load_checkpoint(cfg.ckpt_path))
        init = parser.instantiate_classes(cfg)
        summary = sweep(
            init.data, cfg.ckpt_path, output, methods=cfg.methods, w_c=cfg.w_c, seed=int(seed),
            max_epochs=max_epochs, method_configs=cfg.method_configs, module_class=model_class,
            wandb_logger=trainer.get("logger") if isinstance(trainer.get("logger"), dict) else None,
            progress=cfg.progress, bootstrap=cfg.bootstrap, overwrite=cfg.overwrite,
        )
    print("\n" + format_summary(summary) + f"\n\nwrote {output}/sweep.csv, summary.json, pareto.png", flush=True)
    return summary
