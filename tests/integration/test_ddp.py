"""Multi-process training: DDP with 2 gloo processes on CPU through the real CLI, in a subprocess."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.encoder import fake_encoder_args


def test_ddp_two_processes_train_and_test(tmp_path):
    args = [
        sys.executable, "-m", "barp", "fit",
        "--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
        "--config", str(ROOT / "configs" / "trainer" / "ddp.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.synthetic.num_prompts", "240", *fake_encoder_args(),  # DDP's mechanics, not learning
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    cache = tmp_path / "cache"  # an empty embedding cache: both processes embed (float32: no dtype probe runs)
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


def test_evaluation_splits_are_sharded_without_padding(tiny_datamodule, monkeypatch):
    """Under 5 processes each evaluation row is evaluated exactly once (Lightning's sampler would repeat rows to make
    the split divide evenly, and every mean over it would count them twice)."""
    import numpy as np

    from barp.errors import ConfigError

    dm = tiny_datamodule
    assert len(dm.splits.val) % 5 and len(dm.splits.test) % 5  # sizes that 5 processes do not divide
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 5)
    for loader_of, split in ((lambda: dm.val_dataloader(), dm.splits.val), (lambda: dm.test_dataloader()[0],
                                                                             dm.splits.test)):
        rows = []
        for rank in range(5):
            monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, r=rank, **k: r)
            loader = loader_of()
            rows += [int(r) for batch in loader for r in batch["row"]]
        assert sorted(rows) == sorted(int(r) for r in split)  # every row once, none twice
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: len(dm.splits.val) + 1)
    with pytest.raises(ConfigError, match="fewer than the"):
        dm.val_dataloader()
    assert np.asarray(dm.splits.val).size > 0


@pytest.mark.slow
def test_ddp_three_processes_test_the_whole_split_once(tmp_path):
    """--trainer.devices 3 on CPU: the test metrics are those of one process (the oracle is exact)."""
    common = ["--config", str(ROOT / "configs" / "experiments" / "synthetic.yaml"),
              "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
              "--trainer.enable_progress_bar", "false", "--data.init_args.synthetic.num_prompts", "230"]
    results = {}
    for devices in ("1", "3"):
        out = tmp_path / devices
        args = [sys.executable, "-m", "barp", "fit", *common, "--trainer.devices", devices,
                "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out)]
        if devices != "1":
            args += ["--trainer.strategy", "ddp"]
        proc = subprocess.run(args, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(next(out.rglob("test_results.json")).read_text())["metrics"]
    for key in ("test/id/oracle_reward", "test/id/random_reward", "test/ood/oracle_score", "test/id/cheapest_cost"):
        assert abs(results["3"][key] - results["1"][key]) < 1e-6, key
