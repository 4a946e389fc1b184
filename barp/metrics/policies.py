"""The oracle's choice, computed from the full outcome table (see :mod:`barp.metrics.evaluation` for every policy).

These are not routers (the oracle reads every outcome); they bound and anchor a router's numbers.
"""

from __future__ import annotations

import torch


def oracle_actions(rewards: torch.Tensor, costs: torch.Tensor, atol: float = 1e-9) -> torch.Tensor:
    """Per row, the model with the best true reward, the cheapest among ties.

    Args:
        rewards: True reward of every model, shape (B, K).
        costs: Cost of every model, shape (B, K).

    Returns:
        Model indices, shape (B,).
    """
    best = rewards.max(dim=-1, keepdim=True).values
    tied_costs = torch.where(rewards >= best - atol, costs, torch.full_like(costs, float("inf")))
    return tied_costs.argmin(dim=-1)
