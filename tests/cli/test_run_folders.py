"""Run folders tell what happened: the documented resume continues the run's own folder and ends exactly like the
uninterrupted run; ``last.ckpt`` is the last epoch; two fits at once get two folders."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from barp.cli import main
from tests.helpers.cli import run_args
from tests.helpers.tables import write_table

# barp fit that kills itself (SIGKILL: no handler, no cleanup) when an epoch starts after at least one epoch whose
# validation did not improve on the best: the documented resume case where Lightning's own last.ckpt lagged behind.
KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from barp.models.barp import BaRPModule
def on_train_epoch_start(self):
    best = self.trainer.checkpoint_callback.best_model_path
    if best and f"epoch={self.current_epoch - 1}" not in best and self.current_epoch >= 2:
        print(f"KILLED AT {self.current_epoch} BEST {os.path.basename(best)}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
BaRPModule.on_train_epoch_start = on_train_epoch_start
from barp.cli import main
main(sys.argv[1:])
"""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_killed_fit_resumed_as_documented_ends_like_the_uninterrupted_one(tmp_path):
    data = write_table(tmp_path / "data.csv", n=60, seed=3)
    extra = ["--trainer.max_epochs", "7", "--test_after_fit", "true", "--seed_everything", "1"]
    whole = main(["fit", *run_args(data, tmp_path / "whole", *extra)])
    whole_dir = Path(whole.trainer.log_dir)

    run = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLER, "fit", *run_args(data, run, *extra)], capture_output=True,
                            text=True, timeout=600, env=dict(os.environ))
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    killed_at = int(killed.stdout.split("KILLED AT ")[1].split()[0])
    versions = sorted(p.name for p in (run / "routerbench").iterdir())
    assert versions == ["version_0"]
    last = run / "routerbench" / "version_0" / "checkpoints" / "last.ckpt"
    # last.ckpt is the epoch before the kill, though validation did not improve there
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == killed_at - 1

    # the same command plus --ckpt_path last.ckpt
    resumed = main(["fit", *run_args(data, run, *extra), "--ckpt_path", str(last)])
    assert sorted(p.name for p in (run / "routerbench").iterdir()) == ["version_0"]  # no version_1
    assert Path(resumed.trainer.log_dir) == run / "routerbench" / "version_0"
    assert Path(resumed.trainer.checkpoint_callback.best_model_path).name == \
        Path(whole.trainer.checkpoint_callback.best_model_path).name  # the same tested epoch
    test = {k: float(v) for k, v in resumed.trainer.callback_metrics.items() if k.startswith("test/")}
    assert test and test == {k: float(v) for k, v in whole.trainer.callback_metrics.items() if k.startswith("test/")}
    # the first run's metrics are kept: the resumed metrics.csv holds the uninterrupted run's rows, in order
    assert _rows(run / "routerbench" / "version_0" / "metrics.csv") == _rows(whole_dir / "metrics.csv")
    # after the fit, last.ckpt is the final epoch, not the best one
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["epoch"] == 6 and f"epoch={final['epoch']}" not in resumed.trainer.checkpoint_callback.best_model_path


def test_two_runs_that_start_together_claim_two_version_folders(tmp_path):
    """Two fits into one save_dir each pick a version before either has written: with Lightning's choice both took
    version_0 (one crashed, the other's folder held both configs); barp's logger claims its folder as it picks."""
    from barp.loggers import CSVLogger

    first, second = CSVLogger(save_dir=str(tmp_path), name="run"), CSVLogger(save_dir=str(tmp_path), name="run")
    assert (first.version, second.version) == (0, 1)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["version_0", "version_1"]
    assert CSVLogger(save_dir=str(tmp_path), name="run", version=0).version == 0  # a named version is kept
