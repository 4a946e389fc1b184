"""A neighbour critic built from bandit feedback only (ours; ``BaRPModule(critic=Neighbours())``).

Why: a training prompt is pulled many times over training, so plain REINFORCE ends up fitting that prompt's own
outcomes, noise included (a 0/1 score says little about the next, similar prompt). The critic instead estimates each
model's score and cost on a prompt from what was OBSERVED on its nearest training prompts:

- a memory holds every (training prompt, model) outcome the learner has pulled so far, and nothing else; each cell
  counts once, since the table holds one outcome per cell;
- the neighbours are the ``k`` training prompts with the most similar embeddings (cosine), never the prompt itself,
  fixed at the start of training from the embeddings alone (exact search below 20,000 training prompts, an IVF index
  above: :mod:`barp.learning.neighbours`, option ``search``);
- ``q_hat(x, a)`` = (sum of the neighbours' observed scores of model a + ``prior`` * model a's mean observed score
  over all prompts) / (number of those observations + ``prior``), and likewise ``c_hat`` for the normalised cost
  ``min(c / tau, 1)``; the prior keeps a model that no neighbour has tried at its global mean;
- since the reward is linear in the preference, ``Q_hat_w(x, a) = w_q * q_hat - w_c * c_hat`` at any w.

The policy then follows :func:`barp.learning.rl.critic_policy_loss`. Only the policy is used to route: the critic exists
during training only, and its memory is saved in checkpoints under ``"neighbour_critic"`` so a resumed fit continues.
"""

from __future__ import annotations

import torch

from barp.errors import ConfigError
from barp.learning.neighbours import NeighbourIndex


def nearest_neighbours(emb: torch.Tensor, k: int, chunk: int = 2048, search: str = "auto") -> torch.Tensor:
    """Indices of each row's ``k`` most cosine-similar other rows, shape (N, k), most similar first.

    Args:
        emb: Embeddings, shape (N, D).
        k: Neighbours per row (1 <= k < N).
        chunk: Rows per block of the exact similarity matrix (memory is chunk x N).
        search: ``auto`` (exact below :data:`barp.learning.neighbours.EXACT_BELOW` prompts, else an IVF index),
            ``exact`` or ``approximate`` (:class:`barp.learning.neighbours.NeighbourIndex`).
    """
    n = len(emb)
    if not 1 <= k < n:
        raise ConfigError(f"model.critic.neighbours must be in [1, {n - 1}] (training prompts - 1), got {k!r}")
    index = NeighbourIndex.build(emb, search, option="model.critic.search")
    return index.search(emb, k, exclude_self=True, chunk=chunk)[1].cpu()


class NeighbourCritic:
    """Per-model score and normalised-cost estimates of a training prompt from its neighbours' pulled outcomes.

    Args:
        embeddings: Training prompts' embeddings (N, D); row i is the training batches' ``row == i``.
        num_models: Number of models K.
        neighbours: Neighbours per prompt.
        prior: Pseudo-observations at each model's global observed mean (>= 0).
        search: How the neighbours are found: ``auto``, ``exact`` or ``approximate`` (:func:`nearest_neighbours`).
    """

    def __init__(self, embeddings: torch.Tensor, num_models: int, neighbours: int, prior: float,
                 search: str = "auto") -> None:
        self.neighbours = nearest_neighbours(embeddings, neighbours, search=search)
        self.prior = float(prior)
        n = len(embeddings)
        self.score = torch.zeros(n, num_models, dtype=torch.float64)
        self.cost = torch.zeros(n, num_models, dtype=torch.float64)
        self.seen = torch.zeros(n, num_models, dtype=torch.bool)

    def _on(self, device: torch.device) -> None:
        """Keep the memory and the neighbour lists on ``device`` (the training batches'), moved once."""
        if self.seen.device != device:
            self.neighbours, self.score, self.cost, self.seen = (
                t.to(device) for t in (self.neighbours, self.score, self.cost, self.seen))

    def observe(self, rows: torch.Tensor, actions: torch.Tensor, score: torch.Tensor, cost_norm: torch.Tensor) -> None:
        """Record pulled outcomes: prompt ``rows[i]`` got model ``actions[i]`` with ``score[i]``, ``cost_norm[i]``.

        ``cost_norm`` is ``min(cost / tau, 1)``. A cell already in memory keeps its first outcome. Tensor ops on
        ``rows``' device only (no host round trip): a cell in memory is written back with its own value.
        """
        self._on(rows.device)
        r, a = rows.detach().long(), actions.detach().long().to(rows.device)
        old = self.seen[r, a]
        self.score.index_put_((r, a), torch.where(old, self.score[r, a], score.detach().to(self.score)))
        self.cost.index_put_((r, a), torch.where(old, self.cost[r, a], cost_norm.detach().to(self.cost)))
        self.seen.index_put_((r, a), torch.ones_like(old))

    def estimates(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_hat, c_hat)`` of every model for the prompts ``rows``, each (B, K), float64 on ``rows``' device."""
        self._on(rows.device)
        seen = self.seen.double()
        total = seen.sum(0)
        global_q = self.score.sum(0) / total.clamp(min=1)
        global_c = self.cost.sum(0) / total.clamp(min=1)
        nb = self.neighbours[rows.detach().long()]  # (B, k)
        count = seen[nb].sum(1) + self.prior
        if self.prior == 0:  # no neighbour has tried the model and no prior: nothing to estimate from (0 / 1)
            count = count.clamp(min=1)
        q_hat = (self.score[nb].sum(1) + self.prior * global_q) / count
        c_hat = (self.cost[nb].sum(1) + self.prior * global_c) / count
        return q_hat, c_hat

    def values(self, rows: torch.Tensor, w: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """``Q_hat_w(x, a) = w_q q_hat - w_c c_hat`` for every model, shape (B, K), on ``w``'s device and dtype.

        With ``repeats = k``, ``rows`` are the distinct prompts of a batch whose ``w`` holds k consecutive
        preferences per prompt (``repeat_interleave``): the estimates are computed once per prompt.
        """
        q_hat, c_hat = self.estimates(rows.to(w.device))
        q_hat, c_hat = q_hat.to(w.dtype), c_hat.to(w.dtype)
        if repeats > 1:
            q_hat, c_hat = q_hat.repeat_interleave(repeats, dim=0), c_hat.repeat_interleave(repeats, dim=0)
        return w[:, :1] * q_hat - w[:, 1:] * c_hat

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The memory (for checkpoints); the neighbour lists are recomputed from the embeddings."""
        return {"score": self.score.cpu().clone(), "cost": self.cost.cpu().clone(), "seen": self.seen.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a memory saved by :meth:`state_dict` (same training split)."""
        if tuple(state["seen"].shape) != tuple(self.seen.shape):
            raise ConfigError(f"checkpoint's neighbour critic covers {tuple(state['seen'].shape)} (prompts, models), "
                              f"the training data {tuple(self.seen.shape)}: resume on the data it was trained on")
        device = self.seen.device
        self.score = state["score"].to(device, torch.float64)
        self.cost = state["cost"].to(device, torch.float64)
        self.seen = state["seen"].to(device, torch.bool)
