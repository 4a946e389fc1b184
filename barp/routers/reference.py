"""Reference policies behind the Router interface: each single model, cheapest, most expensive, random, oracle.

These anchor and bound a router's numbers. Only the oracle reads the true outcome rows (``needs_outcomes = True``);
it is an upper bound, not a router.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from barp.evaluation.reference import oracle_actions
from barp.rl import reward
from barp.routers.base import Outcomes, Router


class SingleModelRouter(Router):
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


def cheapest_and_most_expensive(mean_costs: np.ndarray) -> tuple[SingleModelRouter, SingleModelRouter]:
    """The ``cheapest`` and ``most_expensive`` single-model routers, by mean cost on the training split.

    Args:
        mean_costs: Mean cost per model over the training prompts (list prices are public), shape (K,).
    """
    costs = np.asarray(mean_costs)
    return (SingleModelRouter(int(costs.argmin()), "cheapest"),
            SingleModelRouter(int(costs.argmax()), "most_expensive"))


class RandomRouter(Router):
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


class OracleRouter(Router):
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
