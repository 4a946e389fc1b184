"""Multi-process training: DDP with 2 gloo processes on CPU through the real CLI, in a subprocess."""

import json
import os
import re
import shutil
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
    # an empty embedding cache (with the session's remembered encoder dtype, so no probe runs): both processes embed
    cache = tmp_path / "cache"
    from barp.encoders import default_dtype_file

    if default_dtype_file().exists():
        (cache / "embeddings").mkdir(parents=True)
        shutil.copy(default_dtype_file(), cache / "embeddings" / default_dtype_file().name)
    env = dict(os.environ, OMP_NUM_THREADS="1", BARP_CACHE=str(cache))
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    shares = dict(re.findall(r"process (\d) of 2 embeds (\d+) of the \d+ uncached", proc.stderr + proc.stdout))
    assert set(shares) == {"0", "1"} and all(int(v) > 0 for v in shares.values()), shares
    assert not list(cache.rglob("shard-*-r*.npz"))  # the processes' parts are merged into ordinary shards
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
