"""Checkpoints written before a change keep giving the same results.

``tests/fixtures/checkpoints/{barp,knn}_v0.ckpt`` were written by ``barp fit`` at commit ab4d080 (flat
hyperparameters, before the components refactor; optimiser state removed to keep them small) on the built-in
benchmark with 300 prompts and float32 embeddings; ``expected_v0.json`` holds what that code's ``barp test`` and
``TrainedRouter`` gave on them. Every later version must read them and give the same numbers.
"""

from __future__ import annotations

import json

import pytest
import torch

from barp.cli import main
from barp.models.trained import TrainedRouter
from tests.helpers import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "checkpoints"
EXPECTED = json.loads((FIXTURES / "expected_v0.json").read_text())
RECIPE = "configs/experiments/synthetic.yaml"
#: The data the fixtures were trained on, in today's options.
DATA = ["--data.init_args.synthetic.num_prompts", "300", "--data.init_args.encoder.dtype", "float32"]
MODEL_CONFIG = {"barp": [], "knn": ["--config", "configs/model/knn.yaml"]}


@pytest.mark.parametrize("router", ["barp", "knn"])
def test_old_checkpoint_routes_raw_prompts_as_before(router):
    loaded = TrainedRouter.from_checkpoint(FIXTURES / f"{router}_v0.ckpt")
    expected = EXPECTED[router]
    for w_c, probabilities in expected["probabilities"].items():
        got = loaded.probabilities(EXPECTED["prompts"], float(w_c))
        torch.testing.assert_close(got, torch.tensor(probabilities), atol=1e-5, rtol=1e-5)
        assert [d.model for d in loaded.route(EXPECTED["prompts"], float(w_c))] == expected["decisions"][w_c]


@pytest.mark.parametrize("router", ["barp", "knn"])
def test_old_checkpoint_tests_to_the_same_table(router, tmp_path):
    main(["test", "--config", RECIPE, *MODEL_CONFIG[router], *DATA,
          "--ckpt_path", str(FIXTURES / f"{router}_v0.ckpt"), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar", "false"])
    (results,) = tmp_path.rglob("test_results.json")
    got = json.loads(results.read_text())
    expected = EXPECTED[router]["test_results"]
    key = lambda row: (row["split"], row["w_c"], row["policy"])  # noqa: E731
    assert sorted(map(key, got["rows"])) == sorted(map(key, expected["rows"]))
    rows = {key(row): row for row in got["rows"]}
    for row in expected["rows"]:
        for field in ("score", "cost", "reward"):
            assert rows[key(row)][field] == pytest.approx(row[field], rel=1e-5, abs=1e-7), (key(row), field)
    for name, value in expected["metrics"].items():
        assert got["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_graphrouter_checkpoint_before_query_state_routes_as_before():
    """``graphrouter_v1.ckpt``: written by ``barp fit`` at commit b7a5157 (before ``query_state`` and ``task_link:
    auto``; ``expected_graphrouter_v1.json`` says how). It scored edges from the query's final state: it is read
    with ``query_state: final`` and its saved ``task_link``, and routes exactly as that code did."""
    expected = json.loads((FIXTURES / "expected_graphrouter_v1.json").read_text())
    loaded = TrainedRouter.from_checkpoint(FIXTURES / "graphrouter_v1.ckpt")
    assert loaded.module.hparams.query_state == "final" and loaded.module.task_link == "nearest"
    for w_c, probabilities in expected["probabilities"].items():
        got = loaded.probabilities(expected["prompts"], float(w_c))
        torch.testing.assert_close(got, torch.tensor(probabilities), atol=1e-5, rtol=1e-5)
        assert [d.model for d in loaded.route(expected["prompts"], float(w_c))] == expected["decisions"][w_c]
