"""Off-policy training from a served-request log (data.train_log): importance weights, bandit-only data, learning."""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import numpy as np
import pytest
import torch

from barp.data.datamodule import RoutingDataModule
from barp.data.environment import LoggedEnvironment
from barp.data.parts import Batches, Split
from barp.errors import ConfigError
from barp.learning.rl import clipped_self_normalised_weights, reinforce_loss
from barp.learning.strategies import BatchLinear, BatchMean, Neighbours, SelfNormalisedIS
from barp.models.barp import BaRPModule
from barp.models.parts import Arms, Evaluation, Reward, Training
from barp.ope.simulate import simulate
from tests.helpers.tables import routing_problem


def test_policy_gradient_weights_clip_then_self_normalise():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]))
    actions = torch.tensor([0, 1, 0])
    propensity = torch.tensor([0.5, 0.1, 0.05])
    raw = torch.tensor([1.0, 8.0, 18.0])
    weights = clipped_self_normalised_weights(logits, actions, propensity, None)
    np.testing.assert_allclose(weights, raw / raw.mean(), rtol=1e-6)
    clipped = torch.tensor([1.0, 8.0, 10.0])
    weights = clipped_self_normalised_weights(logits, actions, propensity, 10.0)
    np.testing.assert_allclose(weights, clipped / clipped.mean(), rtol=1e-6)


def test_importance_weighted_gradient_equals_the_on_policy_gradient_in_expectation():
    """Sum over logged actions a ~ mu of mu(a) * rho(a) (r_a - b) grad log pi(a) = grad of E_pi[r] (exactly)."""
    logits = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    rewards = torch.tensor([0.2, 0.9, 0.4])
    mu = torch.tensor([0.5, 0.3, 0.2])
    pi = torch.softmax(logits, -1).detach()[0]
    expected = torch.autograd.grad((torch.softmax(logits, -1)[0] * rewards).sum(), logits)[0]
    total = torch.zeros_like(logits)
    for a in range(3):
        rho = (pi[a] / mu[a]).reshape(1)
        loss = reinforce_loss(logits, torch.tensor([a]), rewards[a:a + 1], 0.1, beta=0.0, weights=rho).loss
        total -= mu[a] * torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(total, expected)


def _log_data(tmp_path, passes: int = 4, seed: int = 0):
    """The two-specialists problem, with a simulated uniform log of its training split as the training data."""
    dm = RoutingDataModule(split=Split(ood_tasks=[], val_fraction=0.1, test_fraction=0.3),
                           batches=Batches(batch_size=32, train_repeats=1))
    dm.use_table(routing_problem())
    log = simulate(dm.table.subset(dm.splits.train), "uniform", passes=passes, seed=seed)
    path = tmp_path / "log.parquet"
    log.write(path)
    logged = RoutingDataModule(train_log=str(path), split=Split(ood_tasks=[], val_fraction=0.1, test_fraction=0.3),
                               batches=Batches(batch_size=32, train_repeats=1))
    logged.use_table(dm.table)
    return logged, log


def test_a_log_answers_no_pulls_and_serves_exactly_its_rows(tmp_path):
    dm, log = _log_data(tmp_path, passes=2)
    env = dm.train_environment()
    assert isinstance(env, LoggedEnvironment) and env.num_rows == len(log)
    with pytest.raises(RuntimeError, match="answers no pulls"):
        env.pull(torch.tensor([0]), torch.tensor([1]))
    rows = torch.tensor([5, 0, 17])
    got = env.logged(rows)
    assert got.action.tolist() == log.actions[rows.numpy()].tolist()
    np.testing.assert_allclose(got.score.numpy(), log.score[rows.numpy()], rtol=1e-6)
    np.testing.assert_allclose(got.propensity.numpy(), 1 / 3, rtol=1e-6)
    assert [dm._log_prompts[i] for i in got.prompt.tolist()] == [log.prompts[i] for i in rows.tolist()]


def test_log_batches_gather_each_rows_prompt_embedding_from_a_memory_mapped_file(tmp_path):
    dm, log = _log_data(tmp_path, passes=3)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    table = loader.dataset.table
    assert isinstance(table, np.memmap) and table.shape == (len(dm._log_prompts), dm.embed_dim) < (len(log), 1)
    assert str(table.filename).endswith(".npy") and str(table.filename).startswith(str(dm._cache().folder))
    np.testing.assert_array_equal(table, dm.train_embeddings())
    seen = []
    for batch in loader:
        rows = batch["row"].numpy()
        np.testing.assert_array_equal(batch["emb"].numpy(), dm.train_embeddings()[dm._log_prompt_index[rows]])
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(len(log)))  # every log row once per epoch (train_repeats 1)


@pytest.mark.parametrize("learner", ["reinforce", "critic"])
def test_policy_learns_to_route_from_a_uniform_log(tmp_path, learner):
    """Same thresholds as the online learning test (tests/test_learning.py), from logged requests only."""
    L.seed_everything(0)
    dm, log = _log_data(tmp_path)
    options = {"critic": Neighbours(neighbours=10), "training": Training(lr=3e-3)} if learner == "critic" else {
        "baseline": BatchMean(), "training": Training(lr=3e-3, samples_per_prompt=2)}
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=2e-3),
                        evaluation=Evaluation(0.5, [0.0]), **options)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    if learner == "critic":  # its memory holds the mean logged outcome of exactly the logged (prompt, model) cells
        cells = {(p, a) for p, a in zip(dm._log_prompt_index.tolist(), log.actions.tolist())}
        assert {tuple(x) for x in module.critic.seen.nonzero().tolist()} == cells
        p, a = next(iter(cells))
        mask = (dm._log_prompt_index == p) & (log.actions == a)
        assert float(module.critic.score[p, a]) == pytest.approx(float(log.score[mask].mean()))
    trainer.test(module, datamodule=dm, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["test/id/reward"] > m["test/id/random_reward"] + 0.15
    assert m["test/id/reward"] > m["test/id/oracle_reward"] - 0.05
    assert m["test/id/share/big"] < 0.1
    assert m["test/id/wc=0/share/big"] > 0.8


def test_a_log_with_an_unknown_model_or_a_bad_clip_is_refused(tmp_path):
    dm, log = _log_data(tmp_path, passes=1)
    frame = log.to_frame()
    frame.loc[3, "model"] = "gpt-17"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    bad = RoutingDataModule(train_log=str(tmp_path / "bad.csv"), split=Split(ood_tasks=[]))
    bad.use_table(dm.table)
    with pytest.raises(Exception, match=r"bad\.csv: column 'model', row 3: unknown model 'gpt-17'"):
        bad.train_environment()
    with pytest.raises(ConfigError, match="model.off_policy.clip"):
        BaRPModule(arms=Arms(["a", "b"], ["t"], 4), off_policy=SelfNormalisedIS(clip=0.5))


def test_trained_router_explores_with_propensities():
    from barp.encoders import SentenceEncoder
    from barp.learning.rl import exploration_probabilities, preference_tensor
    from barp.models.trained import TrainedRouter

    L.seed_everything(0)
    module = BaRPModule(arms=Arms(["a", "b", "c"], ["t"], 384), reward=Reward(tau=1e-3))
    router = TrainedRouter(module, SentenceEncoder())
    prompts = [f"question number {i} about rivers" for i in range(40)]
    greedy = router.route(prompts, w_c=0.3)
    assert all(d.propensity == 1.0 for d in greedy)
    first = router.route(prompts, w_c=0.3, temperature=2.0, epsilon=0.3, seed=7)
    assert first == router.route(prompts, w_c=0.3, temperature=2.0, epsilon=0.3, seed=7)  # seeded
    emb = torch.as_tensor(router.encoder.encode(prompts))
    with torch.no_grad():
        logits = module.route(emb, preference_tensor(0.3, len(emb)))
    serving = exploration_probabilities(logits, 2.0, 0.3)
    for i, d in enumerate(first):
        j = module.model_names.index(d.model)
        assert d.propensity == pytest.approx(float(serving[i, j]), rel=1e-5)
        assert d.probability == pytest.approx(float(torch.softmax(logits, -1)[i, j]), rel=1e-5)
    uniform = router.route(prompts, w_c=0.3, epsilon=1.0, seed=1)
    assert all(d.propensity == pytest.approx(1 / 3) for d in uniform)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0, got 0"):
        router.route(prompts, temperature=0)


def test_explore_with_a_log_is_said_once_and_changes_nothing(tmp_path):
    """Off-policy training pulls nothing, so training.explore does not apply: one warning says so, and the steps are
    those of explore 0 (SelfNormalisedIS; its baseline is the SNIPS mean whichever Baseline is set but NoBaseline)."""
    dm, _ = _log_data(tmp_path, passes=1)
    losses = []
    for explore, baseline in ((0.0, BatchMean()), (0.3, BatchLinear())):
        L.seed_everything(0)
        module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=2e-3),
                            training=Training(explore=explore), baseline=baseline)
        trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
        with pytest.warns(UserWarning, match="explore=0.3 does not apply") if explore else nullcontext():
            trainer.fit(module, datamodule=dm)
        losses.append(float(trainer.callback_metrics["train/loss"]))
    assert losses[0] == losses[1]
