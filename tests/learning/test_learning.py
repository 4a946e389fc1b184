"""Seeded learning test: on a small problem, BaRP's greedy policy beats random clearly and nears the oracle."""

import lightning as L
import pytest

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.learning.strategies import BatchLinear, BatchMean, LeaveOneOut, Neighbours
from barp.models.barp import BaRPModule
from barp.models.parts import Arms, Evaluation, Reward, Training
from tests.helpers.tables import routing_problem

BASELINES = {"batch_mean": BatchMean, "batch_linear": BatchLinear, "leave_one_out": LeaveOneOut}

@pytest.mark.parametrize("baseline", ["batch_mean", "batch_linear", "leave_one_out", "neighbour_critic"])
def test_greedy_policy_learns_to_route(tmp_path, baseline):
    L.seed_everything(0)
    k = 1 if baseline in ("batch_mean", "batch_linear") else 4  # same pulls per prompt and per step in every case
    dm = RoutingDataModule(split=Split(ood_tasks=[], val_fraction=0.1, test_fraction=0.3),
                           batches=Batches(batch_size=32 // k, train_repeats=8 // k))
    dm.use_table(routing_problem())
    learner = {"critic": Neighbours(neighbours=10)} if baseline == "neighbour_critic" else {
        "baseline": BASELINES[baseline]()}
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=2e-3),
                        evaluation=Evaluation(0.5, [0.0]), training=Training(lr=3e-3, samples_per_prompt=k), **learner)
    trainer = L.Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # w_c = 0.5: the cheap specialist is right; random wastes half the quality and pays for 'big'.
    assert m["test/id/reward"] > m["test/id/random_reward"] + 0.15
    assert m["test/id/reward"] > m["test/id/oracle_reward"] - 0.05
    assert m["test/id/share/big"] < 0.1
    if baseline == "batch_mean":
        return  # the batch-mean baseline does not learn the w_c = 0 switch in this budget (see batch_linear)
    # w_c = 0: quality only; 'big' is best, so the same policy must switch to it.
    assert m["test/id/wc=0/reward"] > m["test/id/wc=0/oracle_reward"] - 0.05
    assert m["test/id/wc=0/share/big"] > 0.8
