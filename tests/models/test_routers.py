"""The router interface: every method's contract, learning the trade-off, bandit feedback only, full information
restricted to the train split, checkpoints."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.data.table import OutcomeTable
from barp.learning.rl import preference_tensor
from barp.models.baselines import (
    EpsilonGreedyRouter,
    KNNRouter,
    LinearTSRouter,
    LinUCBRouter,
    full_information_training_data,
)
from barp.models.parts import Arms, Reward
from barp.models.registry import METHOD_CLASSES, train_method
from barp.sweep.contenders import (
    ModuleContender,
    Oracle,
    Outcomes,
    RandomChoice,
    SingleModel,
    cheapest_and_most_expensive,
)
from tests.helpers.encoder import fake_encoder_spec
from tests.helpers.tables import structured_table

TAU = 1e-3
BANDITS = [LinUCBRouter, LinearTSRouter, EpsilonGreedyRouter]
# Small, fast settings for 42 training prompts (the shipped configs are for thousands).
TEST_ARGS = {"mlp": {"lr": 1e-2}, "mf": {"lr": 1e-2}, "linucb": {"pca_dim": 2},
             "linear_ts": {"pca_dim": 2, "v": 0.5}, "epsilon_greedy": {"pca_dim": 2, "epsilon": 0.3},
             "graphrouter": {"lr": 1e-2, "steps_per_batch": 4},
             "routerdc": {"lr": 1e-2, "batch_size": 16, "select_every": 10}}


@pytest.fixture(scope="module")
def dm(_barp_cache) -> RoutingDataModule:
    datamodule = RoutingDataModule(encoder=fake_encoder_spec(), split=Split(ood_tasks=[]),
                                   batches=Batches(batch_size=16))
    datamodule.use_table(structured_table())
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def trained(dm) -> dict[str, ModuleContender]:
    return {m: ModuleContender(train_method(m, dm, TAU, seed=0, max_epochs=5, init_args=TEST_ARGS.get(m)), m)
            for m in METHOD_CLASSES}


def _eval_batch(dm) -> tuple[torch.Tensor, Outcomes]:
    rows = dm.splits.test
    return (torch.as_tensor(dm.embeddings(rows)), Outcomes(torch.as_tensor(dm.table.scores[rows]).float(),
                                                             torch.as_tensor(dm.table.costs[rows]).float()))


def test_every_router_honours_the_interface(dm, trained):
    emb, outcomes = _eval_batch(dm)
    cheap, expensive = cheapest_and_most_expensive(dm.train_environment().mean_cost_per_model())
    routers = [*trained.values(), SingleModel(2), cheap, expensive, RandomChoice(3, seed=1), Oracle(TAU)]
    for router in routers:
        for w_c in (0.0, 0.3, 1.0):
            w = preference_tensor(w_c, len(emb))
            action = router.choose(emb, w, outcomes if router.needs_outcomes else None)
            assert action.shape == (len(emb),) and action.dtype == torch.long, router.name
            assert int(action.min()) >= 0 and int(action.max()) < 3, router.name
    assert [r.name for r in routers if r.needs_outcomes] == ["oracle"]
    assert (cheap.index, expensive.index) == (1, 0)
    with pytest.raises(ValueError):
        trained["knn"].choose(emb, preference_tensor(0.5, len(emb)), outcomes)  # a router never sees outcomes
    with pytest.raises(ValueError):
        Oracle(TAU).choose(emb, preference_tensor(0.5, len(emb)))


@pytest.mark.parametrize("method", list(METHOD_CLASSES))
def test_learned_routers_follow_the_preference(dm, trained, method):
    """Quality only: the good expensive model; cost only: the nearly free one (one model serves both)."""
    emb, _ = _eval_batch(dm)
    router = trained[method]
    at_quality = router.choose(emb, preference_tensor(0.0, len(emb)))
    at_cost = router.choose(emb, preference_tensor(1.0, len(emb)))
    assert (at_quality == 0).float().mean() >= 0.8, (method, at_quality)
    assert (at_cost == 1).float().mean() >= 0.8, (method, at_cost)


def test_random_router_is_seeded_and_oracle_takes_cheapest_tie():
    emb, w = torch.zeros(50, 4), preference_tensor(0.5, 50)
    assert torch.equal(RandomChoice(3, seed=7).choose(emb, w), RandomChoice(3, seed=7).choose(emb, w))
    assert not torch.equal(RandomChoice(3, seed=7).choose(emb, w), RandomChoice(3, seed=8).choose(emb, w))
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.2, 0.9, 0.9]])
    costs = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.5, 0.1]])
    # row 0: models 0 and 1 tie on reward and cost -> first; row 1 at w_c=0: 1 and 2 tie on score -> cheaper 2
    got = Oracle(1.0).choose(torch.zeros(2, 4), preference_tensor(0.0, 2), Outcomes(scores, costs))
    assert got.tolist() == [0, 2]


def _train_steps(cls, dm, steps: int = 8):
    L.seed_everything(3)
    module = cls(arms=Arms(dm.model_names, dm.task_names, dm.embeddings().shape[1]), reward=Reward(tau=TAU), pca_dim=8)
    module.env = dm.train_environment()
    module.fit_pca(torch.as_tensor(dm.embeddings(dm.splits.train)))
    pulled, original = [], module.env.pull

    def recording_pull(rows, arms):
        pulled.append((rows.clone(), arms.clone()))
        return original(rows, arms)

    module.env.pull = recording_pull
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randperm(len(dm.splits.train), generator=gen)[:16]
        module.training_step({"emb": torch.as_tensor(dm.embeddings(dm.splits.train[idx.numpy()])), "row": idx}, 0)
    return module, pulled


@pytest.mark.parametrize("cls", BANDITS, ids=lambda c: c.__name__)
@pytest.mark.filterwarnings("ignore:.*self.log.*")
def test_bandits_read_only_pulled_arms(dm, cls):
    """Poison every cell the bandit did not pull: its statistics and choices must be bit-identical."""
    module, pulled = _train_steps(cls, dm)
    table = dm.table
    keep = np.zeros(table.scores.shape, dtype=bool)
    for rows, arms in pulled:
        keep[dm.splits.train[rows.numpy()], arms.numpy()] = True
    assert not keep.all()
    poisoned = OutcomeTable(table.prompt_ids, table.prompts, table.tasks, table.models,
                            np.where(keep, table.scores, 0.987), np.where(keep, table.costs, 7.7), "poisoned")
    dm._table = poisoned
    try:
        module2, pulled2 = _train_steps(cls, dm)
    finally:
        dm._table = table
    assert all(torch.equal(a[1], b[1]) for a, b in zip(pulled, pulled2))
    assert torch.equal(module.A, module2.A) and torch.equal(module.b, module2.b)
    assert module.env.num_pulls == 8 * 16


def test_offline_routers_read_only_the_train_split(dm):
    table = dm.table
    data = full_information_training_data(dm)
    assert np.array_equal(data.scores.numpy(), table.scores[dm.splits.train].astype(np.float32))
    not_train = np.setdiff1d(np.arange(table.num_prompts), dm.splits.train)
    scores = np.array(table.scores)
    scores[not_train] = 0.123
    dm._table = OutcomeTable(table.prompt_ids, table.prompts, table.tasks, table.models, scores, table.costs, "x")
    try:
        poisoned = full_information_training_data(dm)
    finally:
        dm._table = table
    assert torch.equal(data.scores, poisoned.scores) and torch.equal(data.emb, poisoned.emb)


def test_knn_and_bandit_state_survive_a_checkpoint(dm, trained):
    emb, _ = _eval_batch(dm)
    w = preference_tensor(0.4, len(emb))
    for name in ("knn", "linucb"):
        module = trained[name].module
        fresh = type(module)(**module.hparams)
        fresh.load_state_dict(module.state_dict())
        assert torch.equal(fresh.route(emb, w), module.route(emb, w)), name
    assert isinstance(trained["knn"].module, KNNRouter) and len(trained["knn"].module.memory.keys) == 42
