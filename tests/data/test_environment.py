"""The bandit-feedback guard: training reads only the outcomes of the arms it pulls."""

import lightning as L
import numpy as np
import torch

from barp.data.environment import BanditEnvironment
from barp.data.table import OutcomeTable
from tests.helpers.tables import make_table


def test_pull_reveals_only_chosen_cells():
    t = make_table(n=4, k=3)
    env = BanditEnvironment(t)
    fb = env.pull(torch.tensor([0, 3]), torch.tensor([2, 1]))
    assert torch.allclose(fb.score, torch.tensor([t.scores[0, 2], t.scores[3, 1]], dtype=torch.float32))
    assert torch.allclose(fb.cost, torch.tensor([t.costs[0, 2], t.costs[3, 1]], dtype=torch.float32))
    assert env.num_pulls == 2
    assert not any(isinstance(v, (np.ndarray, torch.Tensor, OutcomeTable)) and getattr(v, "ndim", 0) == 2
                   for v in vars(env).values())


def test_training_batches_carry_no_outcomes(tiny_datamodule):
    batch = next(iter(tiny_datamodule.train_dataloader()))
    assert set(batch) == {"emb", "row"}


def _train_steps(dm, module_seed=7, steps=5):
    from barp.models.barp import BaRPModule
    from barp.models.parts import Arms, Reward

    L.seed_everything(module_seed)
    module = BaRPModule(arms=Arms(dm.model_names, dm.task_names, dm.embed_dim), reward=Reward(tau=1e-3))
    module.env = dm.train_environment()
    opt = module.configure_optimizers()
    pulled = []
    original = module.env.pull

    def recording_pull(rows, arms):
        pulled.append((rows.clone(), arms.clone()))
        return original(rows, arms)

    module.env.pull = recording_pull
    losses = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randperm(len(dm.splits.train), generator=gen)[:32]
        batch = {"emb": torch.as_tensor(dm.embeddings(dm.splits.train[idx.numpy()])), "row": idx}
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, pulled, module


def test_unchosen_outcomes_cannot_influence_training(tiny_datamodule):
    """Poison every cell the policy did not pull with NaN: training must be bit-identical."""
    dm = tiny_datamodule
    losses, pulled, module = _train_steps(dm)
    table = dm.table
    train_rows = dm.splits.train
    keep = np.zeros((table.num_prompts, table.num_models), dtype=bool)
    for rows, arms in pulled:
        keep[train_rows[rows.numpy()], arms.numpy()] = True
    poisoned = OutcomeTable(table.prompt_ids, table.prompts, table.tasks, table.models,
                            np.where(keep, table.scores, 0.123), np.where(keep, table.costs, 9.9), "poisoned")
    # the table validator rejects NaN, so poison with other values; a leak would change the losses
    dm._table, dm_table = poisoned, table
    try:
        losses2, pulled2, module2 = _train_steps(dm)
    finally:
        dm._table = dm_table
    assert losses == losses2
    assert all(torch.equal(a[1], b[1]) for a, b in zip(pulled, pulled2))
    for p, q in zip(module.parameters(), module2.parameters()):
        assert torch.equal(p, q)
    # and the poison really was there: the two tables differ on unpulled cells
    assert not np.array_equal(poisoned.scores, table.scores)
