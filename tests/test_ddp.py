"""Multi-process training: DDP with 2 gloo processes on CPU through the real CLI, in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_two_processes_train_and_test(tmp_path):
    args = [
        sys.executable, "-m", "barp", "fit",
        "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
        "--config", str(ROOT / "configs" / "trainer" / "ddp.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.num_prompts", "240",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    results = json.loads(next(tmp_path.rglob("test_results.json")).read_text())
    metrics = results["metrics"]
    assert metrics["test/id/oracle_reward"] >= metrics["test/id/reward"]
    # torchmetrics sums states across both processes: shares add to 1 over the whole split
    shares = [v for k, v in metrics.items() if k.startswith("test/id/share/")]
    assert abs(sum(shares) - 1.0) < 1e-4
    # both ranks trained on the same model: one checkpoint, written once
    ckpts = list(tmp_path.rglob("last.ckpt"))
    assert len(ckpts) == 1
    # The recipe's neighbour critic adds every process's pulls: in one epoch each process sees only its half of
    # the training prompts, yet the saved memory (rank 0's) has outcomes for every prompt.
    seen = torch.load(ckpts[0], map_location="cpu", weights_only=False)["neighbour_critic"]["seen"]
    assert bool(seen.any(dim=1).all()), f"{int((~seen.any(dim=1)).sum())} of {len(seen)} prompts never observed"
