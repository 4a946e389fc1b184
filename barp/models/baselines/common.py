"""What the trainable baselines share: a step counter for methods that learn without gradients."""

from __future__ import annotations

import torch
from torch import nn

from barp.models.base import RouterModule


def step_counter() -> torch.optim.Optimizer:
    """A no-op optimizer for routers that learn without gradients (kNN, the linear bandits).

    Lightning counts training progress in optimizer steps (``global_step``), and ``ModelCheckpoint``,
    ``log_every_n_steps`` and ``max_steps`` all rely on it. Such a router returns this from
    ``configure_optimizers`` and calls :func:`count_step` once per training batch, so ``barp fit`` checkpoints and
    logs it exactly like BaRP. Its single dummy parameter is not part of the model.
    """
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)


def count_step(module: RouterModule) -> None:
    """Advance Lightning's step count by one (no-op outside a Trainer); see :func:`step_counter`."""
    if module._trainer is not None:
        module.optimizer().step()
