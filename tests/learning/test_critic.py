"""The neighbour critic (bandit feedback only) and the policy loss that follows it."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from barp.data.datamodule import RoutingDataModule
from barp.data.parts import Batches, Split
from barp.errors import ConfigError
from barp.learning.critic import NeighbourCritic, nearest_neighbours
from barp.learning.rl import critic_policy_loss, reinforce_loss
from barp.learning.strategies import Neighbours
from barp.models.barp import BaRPModule
from barp.models.parts import Arms, Evaluation, Reward, Training
from tests.helpers.tables import routing_problem


def _angles(*degrees: float) -> torch.Tensor:
    rad = torch.tensor(degrees) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_nearest_neighbours_match_brute_force_and_never_include_the_prompt():
    emb = torch.randn(53, 8, generator=torch.Generator().manual_seed(0))
    nb = nearest_neighbours(emb, 5, chunk=7)  # several blocks, the last one partial
    x = torch.nn.functional.normalize(emb, dim=-1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    assert torch.equal(nb, sim.topk(5, dim=-1).indices)
    assert not (nb == torch.arange(53)[:, None]).any()
    with pytest.raises(ConfigError, match=r"critic.neighbours must be in \[1, 52\].*got 53"):
        nearest_neighbours(emb, 53)


def test_critic_estimates_by_hand():
    # Prompts on a circle at 0, 10, 25 and 90 degrees: nearest other prompt of 0 is 1, of 1 is 0, of 2 is 1, of 3 is 2.
    critic = NeighbourCritic(_angles(0, 10, 25, 90), num_models=2, neighbours=1, prior=1.0)
    assert critic.neighbours[:, 0].tolist() == [1, 0, 1, 2]
    critic.observe(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), torch.tensor([1.0, 0.0, 0.5]),
                   torch.tensor([0.2, 0.6, 0.4]))
    critic.observe(torch.tensor([1]), torch.tensor([0]), torch.tensor([0.0]), torch.tensor([0.9]))  # cell kept
    q, c = critic.estimates(torch.tensor([0, 2, 3]))
    # Global means: model 0 saw (1.0, 0.5) -> q 0.75, c 0.3; model 1 saw (0.0) -> q 0, c 0.6.
    # Prompt 0 (neighbour 1): model 0 (1.0 + 0.75) / 2, model 1 (0.0 + 0) / 2.
    # Prompt 2 (neighbour 1): the same. Prompt 3 (neighbour 2): model 0 (0.5 + 0.75) / 2, model 1 prior only.
    assert torch.allclose(q, torch.tensor([[0.875, 0.0], [0.875, 0.0], [0.625, 0.0]], dtype=q.dtype))
    assert torch.allclose(c, torch.tensor([[0.25, 0.6], [0.25, 0.6], [0.35, 0.6]], dtype=c.dtype))
    values = critic.values(torch.tensor([3]), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(values, torch.tensor([[0.5 * 0.625 - 0.5 * 0.35, -0.3]]))
    # A prompt's own outcome reaches its own estimate only through the model's global mean (the prior).
    critic.observe(torch.tensor([3]), torch.tensor([1]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert float(critic.estimates(torch.tensor([3]))[0][0, 1]) == pytest.approx(0.5)  # prior at (0 + 1) / 2


def test_critic_loss_terms():
    logits = torch.tensor([[0.3, -0.2, 0.1], [0.0, 1.0, -1.0]], requires_grad=True)
    values = torch.tensor([[0.5, 0.1, 0.2], [0.0, 0.3, 0.9]])
    actions, rewards = torch.tensor([2, 0]), torch.tensor([1.0, -0.5])
    # residual 0: exactly minus the expected critic value under the policy, whatever was pulled
    direct = critic_policy_loss(logits, values, actions, rewards, residual_weight=0.0, beta=0.0)
    expected = -(torch.softmax(logits, -1) * values).sum(-1).mean()
    assert direct.loss.item() == pytest.approx(expected.item())
    assert direct.advantage.tolist() == pytest.approx([1.0 - 0.2, -0.5 - 0.0])
    # values 0 and residual 1: plain REINFORCE without a baseline
    plain = critic_policy_loss(logits, torch.zeros(2, 3), actions, rewards, residual_weight=1.0, beta=0.1)
    ref = reinforce_loss(logits, actions, rewards, 0.0, beta=0.1)
    assert plain.loss.item() == pytest.approx(ref.loss.item())
    # the critic's values are constants
    v = values.clone().requires_grad_(True)
    critic_policy_loss(logits, v, actions, rewards, 1.0, 0.0).loss.backward()
    assert v.grad is None


def test_doubly_robust_gradient_is_unbiased_for_a_wrong_critic():
    """With residual 1 the expected gradient equals the exact one, even when the critic is off."""
    torch.manual_seed(0)
    true = torch.tensor([0.2, 0.9, 0.4])
    wrong = torch.tensor([[0.8, 0.1, 0.3]])
    logits = torch.tensor([[0.1, -0.3, 0.5]], requires_grad=True)
    exact = torch.autograd.grad(-(torch.softmax(logits, -1) * true).sum(), logits)[0]
    n = 40_000
    big = logits.detach().expand(n, 3).clone().requires_grad_(True)
    actions = torch.distributions.Categorical(logits=big.detach()).sample()
    loss = critic_policy_loss(big, wrong.expand(n, 3), actions, true[actions], residual_weight=1.0, beta=0.0).loss
    estimate = torch.autograd.grad(loss, big)[0].sum(0, keepdim=True)  # loss is a batch mean
    assert torch.allclose(estimate, exact, atol=6e-3)
    biased = critic_policy_loss(big, wrong.expand(n, 3), actions, true[actions], residual_weight=0.0, beta=0.0).loss
    assert not torch.allclose(torch.autograd.grad(biased, big)[0].sum(0, keepdim=True), exact, atol=0.05)


def _module_and_data(**kwargs):
    dm = RoutingDataModule(split=Split(ood_tasks=[], val_fraction=0.1, test_fraction=0.3),
                           batches=Batches(batch_size=8, train_repeats=1))
    dm.use_table(routing_problem())
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=2e-3),
                        evaluation=Evaluation(0.5, [0.0]), **kwargs)
    return dm, module


def test_critic_memory_holds_exactly_the_pulled_cells_and_survives_a_checkpoint(tmp_path):
    L.seed_everything(0)
    dm, module = _module_and_data(critic=Neighbours(neighbours=10), training=Training(samples_per_prompt=4, lr=3e-3))
    pulled: set[tuple[int, int]] = set()

    class Spy(L.Callback):
        def on_train_start(self, trainer, pl_module):
            env_pull = pl_module.env.pull

            def pull(rows, arms):
                pulled.update(zip(rows.tolist(), arms.tolist()))
                return env_pull(rows, arms)

            pl_module.env.pull = pull

    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[Spy()], limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    seen = {tuple(x) for x in module.critic.seen.nonzero().tolist()}
    assert seen == pulled and len(pulled) < module.critic.seen.numel()  # bandit feedback: not every cell
    table = dm.table.subset(dm.splits.train)
    for r, a in list(pulled)[:50]:
        assert module.critic.score[r, a] == pytest.approx(float(table.scores[r, a]))

    ckpt = tmp_path / "critic.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["neighbour_critic"]
    assert torch.equal(saved["seen"], module.critic.seen)
    served = BaRPModule.load_from_checkpoint(ckpt)  # routing needs only the policy
    logits = served.route(torch.zeros(1, dm.embed_dim), torch.tensor([[1.0, 0.0]]))
    assert served.critic is None and logits.shape == (1, 3)

    resumed_counts = []

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module):
            resumed_counts.append(int(pl_module.critic.seen.sum()))

    _, fresh = _module_and_data(critic=Neighbours(neighbours=10), training=Training(samples_per_prompt=4, lr=3e-3))
    resume = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                       enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[Check()], limit_val_batches=0)
    resume.fit(fresh, datamodule=dm, ckpt_path=ckpt)
    assert resumed_counts == [len(pulled)]


@pytest.mark.parametrize("option, value", [("neighbours", 0), ("prior", -1.0), ("residual", float("nan"))])
def test_bad_critic_options_are_named(option, value):
    with pytest.raises(ConfigError, match=f"model.critic.{option}.*{value}"):
        _module_and_data(critic={"class_path": "Neighbours", "init_args": {option: value}})
