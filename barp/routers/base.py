"""The one interface every routing method implements, so evaluation treats BaRP and the baselines alike.

A :class:`Router` maps a batch of prompt embeddings and preferences to one model index per prompt. Routers see the
prompt (its frozen embedding) and the preference only. Reference policies that need the true outcomes (the oracle)
say so with ``needs_outcomes = True`` and receive them through the explicit ``outcomes`` argument; evaluation passes
outcomes to no other router.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from barp.router_module import RouterModule


@dataclass(frozen=True)
class Outcomes:
    """The full outcome rows of a batch: every model's score and cost (shape (B, K) each).

    Only reference policies with ``needs_outcomes = True`` ever receive these.
    """

    scores: torch.Tensor
    costs: torch.Tensor


class Router(ABC):
    """A routing method: chooses one of K models per prompt at a given preference.

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


class ModuleRouter(Router):
    """Adapter: a trained :class:`~barp.router_module.RouterModule` (BaRP or a trainable baseline) as a Router.

    Greedy routing: the argmax of the module's :meth:`~barp.router_module.RouterModule.route` scores, in eval mode
    and without gradients.

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
        return self.module.route(emb.to(device), w.to(device)).argmax(dim=-1).cpu()

    @classmethod
    def from_checkpoint(cls, path: str, module_class: type[RouterModule], name: str) -> ModuleRouter:
        """Load a checkpoint written by ``barp fit`` (on CPU) and wrap it.

        Args:
            path: The ``.ckpt`` file.
            module_class: The RouterModule subclass that wrote it (e.g. BaRPModule).
            name: The method's name in result files.
        """
        module = module_class.load_from_checkpoint(path, map_location="cpu")
        return cls(module, name)


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
        module.optimizers().step()
