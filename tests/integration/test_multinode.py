"""Several machines: two "nodes" of one process each (Lightning's multi-node DDP, gloo, ``num_nodes=2``) on this
machine, each a ``barp fit`` subprocess with its own embedding cache (local disks), against one process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.cli import tiny_args

#: Variables by which Lightning would take the run for a SLURM or torchrun job (the test's machine may be in one).
LAUNCHER_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                 "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_env(node: int, port: int, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_"))}
    env.update(OMP_NUM_THREADS="1", BARP_CACHE=str(cache), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               NODE_RANK=str(node))
    return env


def shards(cache: Path) -> dict[str, np.ndarray]:
    """Every file of a cache's embedding folder: shard name -> vectors (setting.json -> empty)."""
    (folder,) = (cache / "embeddings").iterdir()
    return {p.name: np.load(p)["vectors"] if p.suffix == ".npz" else np.zeros(0) for p in folder.iterdir()}


@pytest.mark.parametrize("launcher", ["lightning", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_two_nodes_of_one_process_give_the_single_process_result(tmp_path, monkeypatch, launcher):
    """``lightning``: each node runs ``barp fit`` with MASTER_ADDR, MASTER_PORT and NODE_RANK set, and Lightning
    starts its process; ``torchrun`` (slow: the same run, another launcher): torchrun starts it."""
    port = free_port()
    procs, logs = [], []
    for node in (0, 1):
        launch = [sys.executable, "-m"]
        if launcher == "torchrun":
            launch += ["torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                       "--master-addr", "127.0.0.1", "--master-port", str(port), "-m"]
        args = [*launch, "barp", "fit", *tiny_args(tmp_path / f"node{node}"),
                "--config", str(ROOT / "configs" / "trainer" / "multinode.yaml"),
                "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1"]
        logs.append(tmp_path / f"node{node}.log")
        with open(logs[-1], "w") as out:
            procs.append(subprocess.Popen(args, cwd=tmp_path, env=node_env(node, port, tmp_path / f"cache{node}"),
                                          stdout=out, stderr=subprocess.STDOUT))
    try:
        from barp.cli import main  # the single-process run's imports, while the nodes start and wait for each other

        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = [log.read_text() for log in logs]
    assert "distributed_backend=gloo" in text[0]
    for node in (0, 1):
        assert codes[node] == 0, f"node {node}:\n{text[node][-3000:]}"
        assert f"GLOBAL_RANK: {node}, MEMBER: {node + 1}/2" in text[node]  # one process group across both nodes
        # the embedding is shared across the nodes: each embeds half of the 240 prompts, none twice
        assert re.search(rf"process {node} of 2 embeds 120 of the 240 uncached prompts", text[node]), text[node][-3000:]
    # Each node's own cache holds every prompt (rank 1's half came over the wire), in the same shards, no parts left
    caches = [shards(tmp_path / f"cache{node}") for node in (0, 1)]
    assert caches[0].keys() == caches[1].keys() and not any("-r" in n or ".writer" in n for n in caches[0])
    assert all(np.array_equal(caches[0][n], caches[1][n]) for n in caches[0])
    # Rank 0 (node 0) alone writes the run's files. In its one epoch each node trained on half the training prompts,
    # yet the neighbour critic's memory (rank 0's) has outcomes for every prompt: node 1's pulls came over the wire
    assert not (tmp_path / "node1").exists()
    (results,) = (tmp_path / "node0").rglob("test_results.json")
    (best,) = (tmp_path / "node0").rglob("best-*.ckpt")
    seen = torch.load(best, map_location="cpu", weights_only=False)["neighbour_critic"]["seen"]
    assert bool(seen.any(dim=1).all()), f"{int((~seen.any(dim=1)).sum())} of {len(seen)} prompts never observed"

    # One process (in this one), a fresh cache: it embeds the same vectors and tests the two nodes' best checkpoint
    # to the same metrics that the two nodes (each testing half of every split) reported
    monkeypatch.setenv("BARP_CACHE", str(tmp_path / "single-cache"))
    main(["test", *tiny_args(tmp_path / "single"), "--ckpt_path", str(best)])
    single = shards(tmp_path / "single-cache")
    assert single.keys() == caches[0].keys()
    assert all(np.allclose(single[n], caches[0][n], atol=1e-5) for n in single)
    (single_results,) = (tmp_path / "single").rglob("test_results.json")
    two_nodes, one = (json.loads(p.read_text())["metrics"] for p in (results, single_results))
    assert two_nodes.keys() == one.keys() and any(k.startswith("test/id/share/") for k in one)
    for key in one:
        assert abs(two_nodes[key] - one[key]) <= 1e-5 * max(1.0, abs(one[key])), (key, two_nodes[key], one[key])
