"""The one evaluation engine, used by validation, test and ``barp sweep`` alike.

- :func:`chosen` and :func:`reference_outcome`: what a policy gets on a batch of prompts at one preference (a
  router's greedy choice, or a reference policy computed from the full outcome rows);
- :class:`~barp.metrics.routing.RoutingMetrics` accumulates those outcomes per task (split and per-task means);
- :func:`aiq_cost_range`: the cost range every AIQ on a split integrates over, fixed by the data alone;
- :func:`aiq_defined`: whether that range gives AIQ a meaning (the split's models differ in price);
- :func:`metric_name`: the one place logged metric names are made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from barp.metrics.policies import oracle_actions

#: Reference policies reported beside every router: the oracle (an upper bound that reads every outcome), random
#: routing (its exact expectation), and the cheapest and the most expensive single model (by mean training cost).
REFERENCES = ("oracle", "random", "cheapest", "most_expensive")
#: Evaluation splits: held-in task families (``id``) and held-out ones (``ood``).
SPLITS = ("id", "ood")


@dataclass(frozen=True)
class Outcome:
    """A policy's outcome on each prompt of a batch, shape (B,) each.

    ``action`` is the chosen model per prompt, or None for a policy with no single choice (random routing's exact
    expectation). ``score``, ``cost`` and ``reward`` are the chosen model's (or their expectation).
    """

    action: torch.Tensor | None
    score: torch.Tensor
    cost: torch.Tensor
    reward: torch.Tensor


def chosen(action: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor, rewards: torch.Tensor) -> Outcome:
    """The outcome of choosing model ``action[i]`` for prompt i.

    Args:
        action: Model index per prompt, shape (B,).
        scores: Every model's score, shape (B, K).
        costs: Every model's cost, shape (B, K).
        rewards: Every model's reward at the preference, shape (B, K).

    Raises:
        ValueError: ``action`` has another shape than (B,) or an index outside [0, K).
    """
    n, k = scores.shape
    action = action.long().to(scores.device)
    if action.shape != (n,) or (n and (int(action.min()) < 0 or int(action.max()) >= k)):
        raise ValueError(f"invalid model indices: shape {tuple(action.shape)}, expected ({n},) in [0, {k})")
    rows = torch.arange(n, device=scores.device)
    return Outcome(action, scores[rows, action], costs[rows, action], rewards[rows, action])


def reference_outcome(policy: str, scores: torch.Tensor, costs: torch.Tensor, rewards: torch.Tensor,
                      cheapest: int | None = None, most_expensive: int | None = None) -> Outcome:
    """A reference policy's outcome, computed from the full outcome rows.

    Args:
        policy: One of :data:`REFERENCES`.
        scores, costs, rewards: Every model's outcomes, shape (B, K) each.
        cheapest, most_expensive: Model indices of the cheapest and the most expensive single model (by mean
            training cost); needed for those two policies.
    """
    if policy == "oracle":
        return chosen(oracle_actions(rewards, costs), scores, costs, rewards)
    if policy == "random":
        return Outcome(None, scores.mean(dim=-1), costs.mean(dim=-1), rewards.mean(dim=-1))
    if policy in ("cheapest", "most_expensive"):
        j = cheapest if policy == "cheapest" else most_expensive
        if j is None:
            raise ValueError(f"reference_outcome: {policy!r} needs its model index")
        return chosen(torch.full((len(scores),), int(j), dtype=torch.long), scores, costs, rewards)
    raise ValueError(f"reference_outcome: unknown policy {policy!r}; expected one of {REFERENCES}")


def aiq_cost_range(model_mean_costs: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The cost range (USD per query) every AIQ on a split integrates over: [0, the most expensive single model's
    mean cost on the split].

    It depends on the split's outcomes only, so a router's AIQ does not change with which other methods are
    evaluated beside it. An operating point that costs more lies beyond the range (the hull is flat there).

    Args:
        model_mean_costs: Every model's mean cost on the split, shape (K,).
    """
    return 0.0, float(np.max(np.asarray(model_mean_costs, dtype=np.float64)))


def aiq_defined(model_mean_costs: np.ndarray | torch.Tensor) -> bool:
    """Whether AIQ measures anything on a split: its models' mean costs must differ.

    Where every model costs the same (one price for all, or all free), every router's operating points lie at that
    one cost, its frontier is a vertical line and the area over [0, that cost] is 0 up to rounding; AIQ would
    rank routers by noise. Checkpoint selection, the results table and ``barp sweep`` then use the mean reward
    over the evaluation preferences instead.

    Args:
        model_mean_costs: Every model's mean cost on the split, shape (K,).
    """
    costs = np.asarray(model_mean_costs, dtype=np.float64).reshape(-1)
    high, low = float(np.max(costs)), float(np.min(costs))
    if len(costs) < 2:  # one known model (a sweep of one single-model method): its cost alone sets the range
        return high > 0
    return high > 0 and high - low > 1e-6 * high


def metric_name(stage: str, split: str, metric: str, w_c: float | None = None, policy: str | None = None) -> str:
    """A logged metric's name: ``{stage}/{split}/[wc={w_c}/][{policy}_]{metric}``.

    Args:
        stage: ``val`` or ``test``.
        split: ``id`` or ``ood``.
        metric: ``score``, ``cost``, ``reward``, ``aiq``, ``reward_avg``, ``share/<model>``, ``task=<task>/score``...
        w_c: The preference, for metrics at a preference other than the primary one (None: the primary one, or a
            metric over all preferences).
        policy: A reference policy (None: the router itself).
    """
    prefix = f"{stage}/{split}/" + ("" if w_c is None else f"wc={w_c:g}/")
    return prefix + ("" if policy is None else f"{policy}_") + metric
