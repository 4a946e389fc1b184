"""The bandit environment: a logged full-information table that reveals only the outcome of pulled arms.

Training code never receives the table. It gets a :class:`BanditEnvironment`, whose only way to read
outcomes is :meth:`BanditEnvironment.pull` (one model per prompt), and training batches that carry
embeddings and row numbers but no outcomes. The outcome arrays live in a closure, not in attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from barp.data.table import OutcomeTable


@dataclass(frozen=True)
class Feedback:
    """What one pull reveals: the chosen model's quality and cost per prompt (shape (B,) each)."""

    score: torch.Tensor
    cost: torch.Tensor


def _make_puller(scores: np.ndarray, costs: np.ndarray) -> Callable[[torch.Tensor, torch.Tensor], Feedback]:
    s = torch.as_tensor(np.array(scores, dtype=np.float32))
    c = torch.as_tensor(np.array(costs, dtype=np.float32))

    def pull(rows: torch.Tensor, arms: torch.Tensor) -> Feedback:
        r = rows.detach().long().cpu()
        a = arms.detach().long().cpu()
        if r.shape != a.shape or r.dim() != 1:
            raise ValueError(f"pull needs one arm per row: rows {tuple(r.shape)}, arms {tuple(a.shape)}")
        return Feedback(score=s[r, a].to(rows.device), cost=c[r, a].to(rows.device))

    return pull


class BanditEnvironment:
    """Simulates online routing on a logged table: pulling arm ``a`` on prompt ``i`` reveals (q_ia, c_ia) only.

    Args:
        table: The training table (rows are addressed by their position in it).
        model_costs_known: Per-model list prices are public, so :meth:`cost_percentile` may read all costs
            (used to set tau). Set False to forbid even that.
    """

    def __init__(self, table: OutcomeTable, model_costs_known: bool = True) -> None:
        self._pull = _make_puller(table.scores, table.costs)
        self._cost_values = np.array(table.costs, dtype=np.float64).ravel() if model_costs_known else None
        self.num_rows = table.num_prompts
        self.num_arms = table.num_models
        self.num_pulls = 0

    def pull(self, rows: torch.Tensor, arms: torch.Tensor) -> Feedback:
        """Reveal the score and cost of model ``arms[i]`` on prompt ``rows[i]``, for each i."""
        self.num_pulls += int(rows.numel())
        return self._pull(rows, arms)

    def mean_cost_per_model(self) -> np.ndarray:
        """Mean cost of each model over the training prompts (list prices are public), shape (K,)."""
        if self._cost_values is None:
            raise RuntimeError("this environment does not disclose costs")
        return self._cost_values.reshape(self.num_rows, self.num_arms).mean(axis=0)

    def cost_percentile(self, percentile: float) -> float:
        """A percentile of all per-query costs (list prices are known before any pull); used for tau."""
        if self._cost_values is None:
            raise RuntimeError("this environment does not disclose costs")
        return float(np.percentile(self._cost_values, percentile))
