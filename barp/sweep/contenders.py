"""What ``barp sweep`` compares: every method behind one interface (:class:`Contender`), so evaluation treats BaRP,
the trained baselines and the reference policies alike.

A :class:`Contender` maps a batch of prompt embeddings and preferences to one model index per prompt. Routers see the
prompt (its frozen embedding) and the preference only. Reference policies that need the true outcomes (the oracle)
say so with ``needs_outcomes = True`` and receive them through the explicit ``outcomes`` argument; evaluation passes
outcomes to no other router.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch

from barp.learning.rl import preference_tensor, reward
from barp.metrics.evaluation import Outcome, chosen, reference_outcome
from barp.metrics.policies import oracle_actions
from barp.models.base import RouterModule
from barp.models.evaluation import Outcomes

__all__ = ["BestFixed", "Contender", "ModuleContender", "Oracle", "Outcomes", "RandomChoice", "SingleModel",
           "cheapest_and_most_expensive"]


class Contender(ABC):
    """A routing method: chooses one of K models per prompt at a given preference (a
    :class:`~barp.models.evaluation.Policy` of the one evaluation loop, :func:`barp.models.evaluation.evaluate`).

    Attributes:
        name: The method's name in result files (``sweep.csv``'s ``method`` column).
        needs_outcomes: True only for reference policies that read the true outcome rows (the oracle).
    """

    name: str
    needs_outcomes: ClassVar[bool] = False

    @abstractmethod
    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        """Choose a model per prompt.

        Args:
            emb: Prompt embeddings, shape (B, D).
            w: Preferences (w_q, w_c), shape (B, 2).
            outcomes: The true outcome rows; given only to routers with ``needs_outcomes = True``.

        Returns:
            Model indices in [0, K), shape (B,), dtype long.
        """

    def outcome(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor,
                rewards: torch.Tensor) -> Outcome:
        """What this method gets on each prompt (see :mod:`barp.metrics.evaluation`): its choice's outcome.

        Args:
            emb, w: As for :meth:`choose`.
            scores, costs, rewards: Every model's outcomes at ``w``, shape (B, K); passed to :meth:`choose` only
                when ``needs_outcomes``.
        """
        action = self.choose(emb, w, Outcomes(scores, costs) if self.needs_outcomes else None)
        try:
            return chosen(action, scores, costs, rewards)
        except ValueError as err:
            raise RuntimeError(f"{self.name}: choose() returned {err}") from None


class ModuleContender(Contender):
    """Adapter: a trained :class:`~barp.models.base.RouterModule` (BaRP or a trainable baseline) as a Contender.

    Greedy routing (:meth:`~barp.models.base.RouterModule.greedy`: the argmax of its scores, or the shift guard's
    fallback), in eval mode and without gradients.

    Args:
        module: The trained module.
        name: The method's name in result files.
    """

    def __init__(self, module: RouterModule, name: str) -> None:
        self.module = module.eval()
        self.name = name

    @torch.no_grad()
    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        if outcomes is not None:
            raise ValueError(f"{self.name}: a trained router must not receive the outcome rows")
        device = self.module.device
        return self.module.greedy(emb.to(device), w.to(device)).cpu()



# ---------------------------------------------------------------------- reference policies
class SingleModel(Contender):
    """Always the same model.

    Args:
        index: The model's column index.
        name: The method's name in result files (default ``single:<index>``).
    """

    def __init__(self, index: int, name: str | None = None) -> None:
        self.index = int(index)
        self.name = name or f"single:{index}"

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        return torch.full((len(emb),), self.index, dtype=torch.long)


def cheapest_and_most_expensive(mean_costs: np.ndarray) -> tuple[SingleModel, SingleModel]:
    """The ``cheapest`` and ``most_expensive`` single-model routers, by mean cost on the training split.

    Args:
        mean_costs: Mean cost per model over the training prompts (list prices are public), shape (K,).
    """
    costs = np.asarray(mean_costs)
    return (SingleModel(int(costs.argmin()), "cheapest"),
            SingleModel(int(costs.argmax()), "most_expensive"))


class BestFixed(Contender):
    """At each preference, the single model with the highest mean reward over the TRAINING rows, for every prompt.

    "The best single model chosen on training data": for the preference w = (w_q, w_c) it routes every prompt to
    ``argmax_k mean_i [w_q * score_ik - w_c * min(cost_ik / tau, 1)]`` over the training rows i (full training
    outcomes, like the other single-model references), the cheaper model (by mean training cost) among ties. It
    reads no test outcome: only the training rows given here, so ``needs_outcomes`` is False.

    Args:
        train_scores: Every model's score on each training row, shape (N, K).
        train_costs: Every model's cost (USD) on each training row, shape (N, K).
        tau: Cost scale of the reward (USD), the same tau the routers are evaluated with.
        name: The method's name in result files.
    """

    def __init__(self, train_scores, train_costs, tau: float, name: str = "best_fixed") -> None:
        self.scores = torch.as_tensor(np.asarray(train_scores), dtype=torch.float64)
        self.costs = torch.as_tensor(np.asarray(train_costs), dtype=torch.float64)
        if self.scores.ndim != 2 or self.scores.shape != self.costs.shape or not len(self.scores):
            raise ValueError(f"best_fixed: training scores and costs must be non-empty (N, K) arrays of one shape, "
                             f"got {tuple(self.scores.shape)} and {tuple(self.costs.shape)}")
        self.tau = float(tau)
        self.name = name
        self._mean_cost = self.costs.mean(dim=0)

    @classmethod
    def from_datamodule(cls, datamodule, tau: float, name: str = "best_fixed") -> BestFixed:
        """Built from a set-up datamodule's training split (``datamodule.splits.train``) only."""
        rows = np.asarray(datamodule.splits.train)
        return cls(datamodule.table.scores[rows], datamodule.table.costs[rows], tau, name)

    def mean_rewards(self, w_c: float) -> torch.Tensor:
        """Each model's mean training reward at ``w = (1 - w_c, w_c)``, shape (K,)."""
        w = preference_tensor(w_c, len(self.scores)).to(torch.float64)
        return reward(self.scores, self.costs, w, self.tau).mean(dim=0)

    def best_model(self, w_c: float) -> int:
        """The model chosen at ``w = (1 - w_c, w_c)``: the highest mean training reward, the cheapest among ties."""
        means = self.mean_rewards(w_c)
        tied = torch.nonzero(means >= means.max() - 1e-12).flatten()
        return int(tied[self._mean_cost[tied].argmin()])

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        if outcomes is not None:
            raise ValueError(f"{self.name}: chosen on training data; it must not receive the test outcome rows")
        w_c = w[:, 1].double()
        action = torch.empty(len(w), dtype=torch.long)
        for value in torch.unique(w_c):
            action[w_c == value] = self.best_model(float(value))
        return action


class RandomChoice(Contender):
    """A uniformly random model per prompt, seeded: the same inputs give the same choices on every call.

    Args:
        num_models: Number of candidate models K.
        seed: Seed of the draws (a fresh generator per call, so results do not depend on call order).
        name: The method's name in result files.
    """

    def __init__(self, num_models: int, seed: int = 0, name: str = "random") -> None:
        self.num_models = int(num_models)
        self.seed = int(seed)
        self.name = name

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(self.num_models, (len(emb),), generator=gen)

    def outcome(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor,
                rewards: torch.Tensor) -> Outcome:
        """The exact expectation of random routing (as validation and test report it), not one seeded draw."""
        return reference_outcome("random", scores, costs, rewards)


class Oracle(Contender):
    """Per prompt, the model with the best TRUE reward at the given preference, the cheapest among ties.

    Reads the full outcome rows, so it is an upper bound on every router's reward, not a router.

    Args:
        tau: Cost scale of the reward (USD), the same tau the routers are evaluated with.
        name: The method's name in result files.
    """

    needs_outcomes: ClassVar[bool] = True

    def __init__(self, tau: float, name: str = "oracle") -> None:
        self.tau = float(tau)
        self.name = name

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        if outcomes is None:
            raise ValueError("the oracle needs the outcome rows (outcomes=Outcomes(scores, costs))")
        rewards = reward(outcomes.scores, outcomes.costs, w, self.tau)
        return oracle_actions(rewards, outcomes.costs)
