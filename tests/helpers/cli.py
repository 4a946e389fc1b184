"""Command lines of small ``barp`` runs, and a small served checkpoint.

Each takes the tiny fake encoder (:mod:`tests.helpers.encoder`) unless ``real_encoder=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import ROUTERBENCH_RECIPE, SYNTHETIC_RECIPE
from tests.helpers.encoder import fake_encoder_args


def encoder_args(real_encoder: bool = False) -> list[str]:
    """No options for the real (default) encoder, else the fake encoder's."""
    return [] if real_encoder else fake_encoder_args()


def tiny_args(out: Path, *extra: str, real_encoder: bool = False) -> list[str]:
    """A 240-prompt built-in benchmark, 3 epochs, writing under ``out``."""
    return [
        "--config", SYNTHETIC_RECIPE, *encoder_args(real_encoder),
        "--data.init_args.synthetic.num_prompts", "240",
        "--trainer.max_epochs", "3",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        *extra,
    ]


def small_benchmark(real_encoder: bool = False) -> list[str]:
    """The data options of :func:`tiny_args` alone (for ``barp sweep``)."""
    return ["--config", SYNTHETIC_RECIPE, *encoder_args(real_encoder), "--data.init_args.synthetic.num_prompts", "240"]


def run_args(data: Path, out: Path, *extra: str, real_encoder: bool = False) -> list[str]:
    """The RouterBench recipe on a table file (:func:`tests.helpers.tables.write_table`), 2 epochs, under ``out``."""
    return ["--config", ROUTERBENCH_RECIPE, *encoder_args(real_encoder), "--data.init_args.source.path", str(data),
            "--data.init_args.split.ood_tasks", "[]",
            "--data.init_args.batches.batch_size", "8", "--model.init_args.critic.init_args.neighbours", "5",
            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
            "--trainer.logger.init_args.save_dir", str(out), *extra]


def tiny_checkpoint() -> str:
    """BaRP trained for one epoch on a 200-prompt built-in benchmark with the fake encoder (shared by the service and
    calibration tests through the session's cache folder, so it is trained once)."""
    from barp.cli import main

    root = Path(os.environ["BARP_CACHE"]) / "service-checkpoint"
    found = sorted(root.glob("**/checkpoints/best*.ckpt"))
    if found:
        return str(found[0])
    cli = main(["fit", "--config", SYNTHETIC_RECIPE, *fake_encoder_args(),
                "--data.init_args.synthetic.num_prompts", "200",
                "--data.init_args.encoder.max_length", "64",
                "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
                "--trainer.logger.init_args.save_dir", str(root), "--test_after_fit", "false"])
    return cli.trainer.checkpoint_callback.best_model_path


def served_models(ckpt, folder, prompts: list[str], w_c: float) -> list[str]:
    """The models ``barp serve`` (its service and app, in process) answers for ``prompts`` from a checkpoint."""
    from fastapi.testclient import TestClient

    from barp.service.app import create_app
    from barp.service.cli import build_service

    service = build_service(str(ckpt), str(folder))
    with TestClient(create_app(service)) as client:
        answer = client.post("/route", json={"prompts": prompts, "w_c": w_c})
    assert answer.status_code == 200, answer.text
    return [d["model"] for d in answer.json()["decisions"]]
