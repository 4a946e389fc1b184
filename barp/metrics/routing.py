"""torchmetrics for routing: mean score, cost per query, reward, share of traffic per model, per task.

One :class:`RoutingMetrics` accumulates sums per task (so split means and per-task means come from the
same state) and pick counts per model; all states reduce by summation, so DDP evaluation is exact.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class RoutingMetrics(Metric):
    """Accumulates one policy's routing outcomes on one split at one preference.

    Args:
        model_names: Candidate models (for the traffic shares).
        task_names: Task families (for per-task means).
    """

    full_state_update = False
    higher_is_better = True
    # metric states (registered by add_state in __init__)
    score_sum: torch.Tensor
    cost_sum: torch.Tensor
    reward_sum: torch.Tensor
    count: torch.Tensor
    picks: torch.Tensor

    def __init__(self, model_names: list[str], task_names: list[str]) -> None:
        super().__init__()
        self.model_names = list(model_names)
        self.task_names = list(task_names)
        t, k = len(task_names), len(model_names)
        for name in ("score_sum", "cost_sum", "reward_sum", "count"):
            self.add_state(name, default=torch.zeros(t, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("picks", default=torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, task: torch.Tensor, action: torch.Tensor | None, score: torch.Tensor, cost: torch.Tensor,
               reward: torch.Tensor) -> None:
        """Add a batch: task index, chosen model index (None for a policy with no single choice, such as the
        exact expectation of random routing), and the chosen model's score, cost and reward (all (B,))."""
        t = task.long()
        self.score_sum.index_add_(0, t, score.double())
        self.cost_sum.index_add_(0, t, cost.double())
        self.reward_sum.index_add_(0, t, reward.double())
        self.count.index_add_(0, t, torch.ones_like(score, dtype=torch.float64))
        if action is not None:
            self.picks.index_add_(0, action.long(), torch.ones_like(score, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """Split means (``score``, ``cost``, ``reward``), ``share/<model>`` and ``task=<task>/<metric>`` (float32,
        for logging; :meth:`means` gives them in float64)."""
        return {k: v.float() for k, v in self.means().items()}

    def means(self) -> dict[str, torch.Tensor]:
        """The float64 values behind :meth:`compute`."""
        n = self.count.sum().clamp_min(1.0)
        out = {
            "score": self.score_sum.sum() / n,
            "cost": self.cost_sum.sum() / n,
            "reward": self.reward_sum.sum() / n,
        }
        for j, m in enumerate(self.model_names):
            out[f"share/{m}"] = self.picks[j] / n
        for i, task in enumerate(self.task_names):
            if self.count[i] > 0:
                for key in ("score", "cost", "reward"):
                    out[f"task={task}/{key}"] = getattr(self, f"{key}_sum")[i] / self.count[i]
        return out


class ModelCostMetric(Metric):
    """Mean cost per query of every candidate model on a split (the right end of the split's AIQ cost range)."""

    full_state_update = False
    # metric states (registered by add_state in __init__)
    cost_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, num_models: int) -> None:
        super().__init__()
        self.add_state("cost_sum", default=torch.zeros(num_models, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, costs: torch.Tensor) -> None:
        """Add a batch of all models' costs, shape (B, K)."""
        self.cost_sum += costs.double().sum(0)
        self.count += costs.shape[0]

    def compute(self) -> torch.Tensor:
        """Mean cost of each model, shape (K,)."""
        return self.cost_sum / self.count.clamp_min(1.0)
