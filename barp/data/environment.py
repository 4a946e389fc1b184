"""The bandit environment: a logged full-information table that reveals only the outcome of pulled arms.

Training code never receives the table. It gets a :class:`BanditEnvironment`, whose only way to read
outcomes is :meth:`BanditEnvironment.pull` (one model per prompt), and training batches that carry
embeddings and row numbers but no outcomes. The outcome arrays live in a closure, not in attributes.
:class:`LoggedEnvironment` serves off-policy training from a log of served requests instead: it holds only what
the log holds (one model's outcome per request, with its propensity) and answers no pulls. Both are an
:class:`Environment`, the one type training code receives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from barp.data.table import OutcomeTable
from barp.errors import ConfigError


@dataclass(frozen=True)
class Feedback:
    """What one pull reveals: the chosen model's quality and cost per prompt (shape (B,) each)."""

    score: torch.Tensor
    cost: torch.Tensor


def _make_puller(scores: np.ndarray, costs: np.ndarray) -> Callable[[torch.Tensor, torch.Tensor], Feedback]:
    s = torch.as_tensor(np.array(scores, dtype=np.float32))
    c = torch.as_tensor(np.array(costs, dtype=np.float32))
    on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {s.device: (s, c)}  # copied once per device

    def pull(rows: torch.Tensor, arms: torch.Tensor) -> Feedback:
        if rows.shape != arms.shape or rows.dim() != 1:
            raise ValueError(f"pull needs one arm per row: rows {tuple(rows.shape)}, arms {tuple(arms.shape)}")
        device = rows.device
        if device not in on_device:
            on_device[device] = (s.to(device), c.to(device))
        scores_d, costs_d = on_device[device]
        r, a = rows.detach().long(), arms.detach().long().to(device)
        return Feedback(score=scores_d[r, a], cost=costs_d[r, a])

    return pull


class Environment(ABC):
    """What training learns from: ``num_rows`` training rows (batches' ``row``) over ``num_arms`` models, answering
    pulls (or refusing them) and disclosing costs as list prices would (for tau and the reference models)."""

    num_rows: int
    num_arms: int

    @abstractmethod
    def pull(self, rows: torch.Tensor, arms: torch.Tensor) -> Feedback:
        """Reveal the score and cost of model ``arms[i]`` on row ``rows[i]``, for each i (or refuse)."""

    @abstractmethod
    def mean_cost_per_model(self) -> np.ndarray:
        """Mean cost of each model, shape (K,)."""

    @abstractmethod
    def cost_percentile(self, percentile: float) -> float:
        """A percentile of the per-query costs (used for tau)."""


class BanditEnvironment(Environment):
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


@dataclass(frozen=True)
class LoggedBatch:
    """Served requests of a log, as training sees them: per row the prompt, the model that answered, the
    probability the logging policy gave it, and that model's score and cost (shape (B,) each)."""

    prompt: torch.Tensor
    action: torch.Tensor
    propensity: torch.Tensor
    score: torch.Tensor
    cost: torch.Tensor


class LoggedEnvironment(Environment):
    """Off-policy training data: a log of served requests, each revealing only the model that answered.

    It answers no pulls (:meth:`pull` raises): a learner trained on it never sees another model's outcome than
    the one the logging policy served. Training batches' ``row`` is the log row.

    Args:
        actions: Served model index per log row, shape (R,).
        propensity: The logging policy's probability of that model, in (0, 1], shape (R,).
        score: Its score, shape (R,).
        cost: Its cost in USD, shape (R,).
        prompt_index: Index of each row's prompt among the log's distinct prompts, shape (R,).
        models: The model names (the policy's order).
    """

    def __init__(self, actions, propensity, score, cost, prompt_index, models: list[str]) -> None:
        self._action = torch.as_tensor(np.array(actions), dtype=torch.long)
        self._propensity = torch.as_tensor(np.array(propensity, dtype=np.float32))
        self._score = torch.as_tensor(np.array(score, dtype=np.float32))
        self._cost = torch.as_tensor(np.array(cost, dtype=np.float32))
        self._prompt = torch.as_tensor(np.array(prompt_index), dtype=torch.long)
        self.models = list(models)
        self.num_rows = len(self._action)
        self.num_prompts = int(self._prompt.max()) + 1 if self.num_rows else 0
        self.num_arms = len(self.models)
        self._on_device: tuple[torch.Tensor, ...] | None = None

    def logged(self, rows: torch.Tensor) -> LoggedBatch:
        """The logged requests ``rows`` (log row numbers), on ``rows``' device."""
        device = rows.device
        if self._on_device is None or self._on_device[0].device != device:  # the log's columns, copied once
            self._on_device = tuple(t.to(device) for t in (self._prompt, self._action, self._propensity,
                                                           self._score, self._cost))
        r = rows.detach().long()
        return LoggedBatch(*(t[r] for t in self._on_device))

    def pull(self, rows: torch.Tensor, arms: torch.Tensor) -> Feedback:
        """Always refused: a log holds only the served model's outcome of each request."""
        raise RuntimeError("a served-request log answers no pulls: train with an off-policy learner")

    def cells(self) -> LoggedBatch:
        """Every logged request (for a critic's memory)."""
        return LoggedBatch(self._prompt, self._action, self._propensity, self._score, self._cost)

    def mean_cost_per_model(self) -> np.ndarray:
        """Mean logged cost of each model, shape (K,); every model must have been served at least once."""
        cost, action = self._cost.double().numpy(), self._action.numpy()
        counts = np.bincount(action, minlength=self.num_arms)
        if (counts == 0).any():
            missing = [m for m, c in zip(self.models, counts) if c == 0]
            raise ConfigError(f"data.train_log: models {missing} never answered a logged request, so their cost "
                              "is unknown; log with exploration (e.g. a uniform or epsilon-greedy policy)")
        return np.bincount(action, weights=cost, minlength=self.num_arms) / counts

    def cost_percentile(self, percentile: float) -> float:
        """A percentile of the logged costs (used for tau)."""
        return float(np.percentile(self._cost.double().numpy(), percentile))
