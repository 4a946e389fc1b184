"""Test setup: never touch the network; caches in a temporary folder shared by the session."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (measured 3x faster suites).
torch.set_num_threads(1)

from barp.data.parts import Batches, Split  # noqa: E402
from barp.data.table import OutcomeTable  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _barp_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("barp-cache"))
    os.environ["BARP_CACHE"] = path
    os.environ["WANDB_DIR"] = path
    return path


def make_table(n: int = 6, k: int = 3, seed: int = 0, source: str = "test.csv") -> OutcomeTable:
    """A small valid random table."""
    rng = np.random.default_rng(seed)
    return OutcomeTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"prompt number {i}" for i in range(n)],
        tasks=["a" if i % 2 else "b" for i in range(n)],
        models=[f"m{j}" for j in range(k)],
        scores=rng.random((n, k)),
        costs=rng.random((n, k)) * 1e-3,
        source=source,
    )


@pytest.fixture(scope="session")
def tiny_datamodule(_barp_cache):
    """A RoutingDataModule over a 60-prompt random table, embedded with the real encoder."""
    from barp.data.datamodule import RoutingDataModule

    dm = RoutingDataModule(split=Split(ood_tasks=[]), batches=Batches(batch_size=16))
    dm.use_table(make_table(n=60, k=4, seed=1))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture()
def served_models():
    """``served_models(ckpt, folder, prompts, w_c)``: the models ``barp serve`` (its service and app, in process)
    answers for ``prompts`` from a checkpoint."""
    return _served_models


def _served_models(ckpt, folder, prompts: list[str], w_c: float) -> list[str]:
    """The models ``barp serve`` (its service and app, in process) answers for ``prompts`` from a checkpoint."""
    from fastapi.testclient import TestClient

    from barp.service.app import create_app
    from barp.service.cli import build_service

    service = build_service(str(ckpt), str(folder))
    with TestClient(create_app(service)) as client:
        answer = client.post("/route", json={"prompts": prompts, "w_c": w_c})
    assert answer.status_code == 200, answer.text
    return [d["model"] for d in answer.json()["decisions"]]
