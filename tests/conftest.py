"""Test setup: never touch the network; caches in a temporary folder shared by the session; fixtures shared by
several test files (their helpers are in :mod:`tests.helpers`)."""

from __future__ import annotations

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (measured 3x faster suites).
torch.set_num_threads(1)

from barp.data.parts import Batches, Split  # noqa: E402
from tests.helpers.cli import served_models as _served_models  # noqa: E402
from tests.helpers.encoder import fake_encoder_spec  # noqa: E402
from tests.helpers.tables import make_table  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _barp_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    # one embedding cache for the whole run, shared by pytest-xdist's workers (the cache is safe for concurrent
    # writers), so a prompt set is embedded once, not once per worker
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    path = str(root / "barp-cache")
    os.makedirs(path, exist_ok=True)
    os.environ["BARP_CACHE"] = path
    os.environ["WANDB_DIR"] = path
    # where tests.helpers.encoder writes the fake encoder, the first time a test asks for it
    os.environ["BARP_TEST_ENCODER_DIR"] = str(tmp_path_factory.mktemp("fake-encoder"))
    return path


@pytest.fixture(scope="session")
def tiny_datamodule(_barp_cache):
    """A RoutingDataModule over a 60-prompt random table, embedded with the tiny fake encoder."""
    from barp.data.datamodule import RoutingDataModule

    dm = RoutingDataModule(encoder=fake_encoder_spec(), split=Split(ood_tasks=[]), batches=Batches(batch_size=16))
    dm.use_table(make_table(n=60, k=4, seed=1))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="session")
def table_checkpoint(tmp_path_factory):
    """``(table file, checkpoint, folder)``: BaRP fitted by ``barp fit`` (the RouterBench recipe, fake encoder) on a
    36-prompt table with models [big, mid, small]. Tests only read it."""
    from barp.cli import main
    from tests.helpers.cli import run_args
    from tests.helpers.tables import write_table

    out = tmp_path_factory.mktemp("ckpt")
    data = write_table(out / "data.csv")
    cli = main(["fit", *run_args(data, out / "run", "--test_after_fit", "false")])
    return data, Path(cli.trainer.checkpoint_callback.best_model_path), out


@pytest.fixture()
def served_models():
    """``served_models(ckpt, folder, prompts, w_c)``: the models ``barp serve`` (its service and app, in process)
    answers for ``prompts`` from a checkpoint."""
    return _served_models
