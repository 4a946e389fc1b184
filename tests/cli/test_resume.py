"""Exact resume: a fit killed (SIGKILL, in a subprocess) after a checkpoint and resumed from ``last.ckpt`` ends with the
same weights and metrics as the uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from barp.cli import main
from tests.helpers.cli import run_args
from tests.helpers.tables import write_table

KILL_AT_EPOCH = 1
# Runs barp fit, killing itself (SIGKILL: no handler, no cleanup) when epoch KILL_AT_EPOCH starts, i.e. right after
# the checkpoint of the epoch before was written.
KILLER = f"""
import os, signal, sys
import torch
torch.set_num_threads(1)
from barp.models.barp import BaRPModule
def on_train_epoch_start(self):
    if self.current_epoch == {KILL_AT_EPOCH}:
        os.kill(os.getpid(), signal.SIGKILL)
BaRPModule.on_train_epoch_start = on_train_epoch_start
from barp.cli import main
main(sys.argv[1:])
"""


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-identical state dicts (NaN where the other has NaN: an unused baseline buffer)."""
    return a.keys() == b.keys() and all(
        torch.equal(x, y) or (x.is_floating_point() and torch.equal(x.isnan(), y.isnan())
                              and torch.equal(x.nan_to_num(), y.nan_to_num()))
        for x, y in ((a[k], b[k]) for k in a))


def _fit(tiny_datamodule, root: Path, epochs: int, ckpt_path: str | None = None, seed: int = 0):
    from barp.learning.strategies import Neighbours
    from barp.models.barp import BaRPModule
    from barp.models.parts import Arms, Evaluation, Training

    dm = tiny_datamodule
    L.seed_everything(seed)
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), critic=Neighbours(neighbours=5),
                        training=Training(samples_per_prompt=2, beta_final=0.0), evaluation=Evaluation(extra_w_c=[0.0]))
    every = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}")
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[every], default_root_dir=root, deterministic=True)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, module.state_dict()


def test_resume_restores_every_random_generator(tiny_datamodule, tmp_path):
    """Resumed in another process state (other seed, generators moved on), a fit ends exactly as the whole one."""
    metrics, weights = _fit(tiny_datamodule, tmp_path / "whole", epochs=3)
    torch.rand(1000)  # move the generators on, as a new process would differ
    resumed, resumed_weights = _fit(tiny_datamodule, tmp_path / "resumed", epochs=3,
                                    ckpt_path=str(tmp_path / "whole" / "epoch=0.ckpt"), seed=123)
    assert resumed == metrics and _same(resumed_weights, weights)


def _final(cli) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    return metrics, {k: v.clone() for k, v in cli.model.state_dict().items()}


@pytest.mark.slow
def test_killed_and_resumed_fit_ends_exactly_like_the_uninterrupted_one(tmp_path):
    data = write_table(tmp_path / "data.csv", n=30, seed=5)
    epochs = ["--trainer.max_epochs", "4", "--test_after_fit", "false"]
    whole = _final(main(["fit", *run_args(data, tmp_path / "whole", *epochs)]))

    killed = subprocess.run([sys.executable, "-c", KILLER, "fit", *run_args(data, tmp_path / "killed", *epochs)],
                            capture_output=True, text=True, timeout=300, env={**os.environ})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = next((tmp_path / "killed").rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == KILL_AT_EPOCH - 1

    resumed = _final(main(["fit", *run_args(data, tmp_path / "resumed", *epochs), "--ckpt_path", str(last)]))
    assert resumed[0] == whole[0]  # every final train/val metric, exactly
    assert _same(resumed[1], whole[1])
