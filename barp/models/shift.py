"""Distribution-shift-aware routing: know when a prompt is unlike the training prompts, and fall back.

A router extrapolates on a prompt unlike anything it was trained on, and often badly (the leave-one-family-out
results in docs/evaluation.md). :class:`ShiftGuard` measures how far a prompt is from the training prompts (its
*familiarity*: the mean cosine similarity to its ``neighbours`` nearest training prompts) and, below a threshold,
replaces the router's greedy choice with the *fallback*: the single model with the best mean reward at the
operator's preference, measured on the validation split (so it is what is known to work across the training
families, at that preference).

Everything is set from training and validation data, never from a test split:

- the threshold is the ``quantile`` of the familiarity of the validation prompts (unseen in training but in
  distribution), so the guard fires on that share of in-distribution prompts, and on far more of an unseen family;
- the fallback's per-model mean score and mean normalised cost ``min(c / tau, 1)`` are the validation split's,
  pooled with the learner's *exploration pulls* when it has them (``BaRPModule(explore=...)``): the share of
  training pulls drawn uniformly over the models is a randomised experiment on the training prompts, so each model's
  mean over them is an unbiased, bandit-feedback estimate of its mean over the training families, from many more
  prompts than the validation split holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from barp.errors import ConfigError
from barp.learning.neighbours import NeighbourIndex

if TYPE_CHECKING:
    from barp.models.protocols import RouterData

#: At most this many training prompts are kept as the reference set (a seeded sample of larger training splits).
MAX_REFERENCE = 8192


@dataclass
class ShiftGuard:
    """Familiarity of prompts to the training prompts, and the fallback model per preference.

    Attributes:
        reference: L2-normalised embeddings of (a sample of) the training prompts, shape (M, D).
        threshold: Familiarity below which a prompt gets the fallback.
        quality: Mean validation score of each model, shape (K,).
        cost: Mean validation normalised cost ``min(c / tau, 1)`` of each model, shape (K,).
        neighbours: Nearest training prompts the familiarity averages over.
        quantile: Share of validation prompts below the threshold (the knob it was set with).
        count: Validation prompts behind ``quality`` and ``cost``.
        pulls: Exploration pulls pooled into the fallback's estimates, shape (3, K): per model the number of pulls,
            their summed score and their summed normalised cost; None: validation only.
    """

    reference: torch.Tensor
    threshold: float
    quality: torch.Tensor
    cost: torch.Tensor
    neighbours: int
    quantile: float
    count: int = 0
    pulls: torch.Tensor | None = None

    @classmethod
    def build(cls, train_emb: torch.Tensor, val_emb: torch.Tensor, val_scores: torch.Tensor, val_costs: torch.Tensor,
              tau: float, quantile: float, neighbours: int = 10, seed: int = 0) -> ShiftGuard:
        """Set the guard from the training prompts and the validation split.

        Args:
            train_emb: Training prompt embeddings, shape (N, D).
            val_emb: Validation prompt embeddings, shape (V, D).
            val_scores: Every model's validation scores, shape (V, K).
            val_costs: Every model's validation costs (USD), shape (V, K).
            tau: Cost scale of the reward.
            quantile: Share of validation prompts the guard may fire on, in (0, 1).
            neighbours: Nearest training prompts the familiarity averages over.
            seed: Seed of the reference sample when there are more than :data:`MAX_REFERENCE` training prompts.

        Raises:
            ConfigError: No validation prompts, too few training prompts, or a knob out of range.
        """
        check_knobs(quantile, neighbours)
        if len(val_emb) == 0:
            raise ConfigError("model.guard: the shift guard is set on the validation split, which is "
                              "empty: give the data a val_fraction or a val_path")
        if len(train_emb) < neighbours:
            raise ConfigError(f"model.guard.neighbours={neighbours} exceeds the {len(train_emb)} training prompts")
        reference = train_emb.float()
        if len(reference) > MAX_REFERENCE:
            keep = np.random.default_rng(seed).choice(len(reference), MAX_REFERENCE, replace=False)
            reference = reference[torch.as_tensor(np.sort(keep))]
        reference = torch.nn.functional.normalize(reference, dim=-1)
        guard = cls(reference, 0.0, val_scores.double().mean(0).float(),
                    (val_costs.double() / tau).clamp(max=1.0).mean(0).float(), int(neighbours), float(quantile),
                    len(val_emb))
        guard.threshold = float(torch.quantile(guard.familiarity(val_emb).double(), quantile))
        return guard

    @classmethod
    def from_data(cls, data: RouterData, order: torch.Tensor | None, tau: float, quantile: float,
                  neighbours: int = 10) -> ShiftGuard:
        """:meth:`build` from set-up data's training prompts and validation split (never a test split); ``order``:
        the data column of each of the router's arms (None: the same order)."""
        val = data.splits.val
        scores, costs = torch.as_tensor(data.table.scores[val]), torch.as_tensor(data.table.costs[val])
        if order is not None:
            scores, costs = scores[:, order], costs[:, order]
        return cls.build(torch.as_tensor(data.train_embeddings()), torch.as_tensor(data.embeddings(val)), scores, costs,
                         tau, quantile, neighbours)

    def familiarity(self, emb: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of each prompt to its ``neighbours`` nearest reference prompts, shape (B,)."""
        # exact search: the reference is a sample of at most MAX_REFERENCE prompts, below the size where
        # barp.learning.neighbours switches to an approximate index, so the cost grows linearly in the prompts
        index = NeighbourIndex.build(self.reference.to(emb.device), "exact", normalise=False, option="model.guard")
        return index.search(emb, self.neighbours, chunk=2048)[0].mean(-1)

    def estimates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each model's mean score and mean normalised cost, shape (K,) each: the validation split's, pooled with
        the exploration pulls (``(count * val_mean + pulled sum) / (count + pulls)`` per model) when there are any."""
        if self.pulls is None or not float(self.pulls[0].sum()) > 0:
            return self.quality, self.cost
        pulls = self.pulls.double().cpu()
        total = self.count + pulls[0]
        quality = (self.count * self.quality.double() + pulls[1]) / total
        cost = (self.count * self.cost.double() + pulls[2]) / total
        return quality.float(), cost.float()

    def fallback(self, w: torch.Tensor) -> torch.Tensor:
        """The model with the best mean reward (:meth:`estimates`) at each preference ``w`` (B, 2), shape (B,)."""
        quality, cost = self.estimates()
        value = w[:, :1] * quality.to(w.device) - w[:, 1:] * cost.to(w.device)
        return value.argmax(dim=-1)

    def unfamiliar(self, emb: torch.Tensor) -> torch.Tensor:
        """Mask of the prompts whose familiarity is below the threshold, shape (B,)."""
        return self.familiarity(emb) < self.threshold

    def apply(self, action: torch.Tensor, emb: torch.Tensor, w: torch.Tensor,
              novel: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The router's greedy ``action`` with every unfamiliar prompt's replaced by the fallback; and the mask of
        the prompts that fell back (``novel``: that mask, when already computed for these prompts)."""
        novel = self.unfamiliar(emb) if novel is None else novel
        return torch.where(novel, self.fallback(w), action), novel

    def state(self) -> dict:
        """What a checkpoint stores (tensors and numbers only)."""
        return {"reference": self.reference.cpu(), "threshold": self.threshold, "quality": self.quality.cpu(),
                "cost": self.cost.cpu(), "neighbours": self.neighbours, "quantile": self.quantile, "count": self.count,
                "pulls": None if self.pulls is None else self.pulls.cpu().clone()}

    @classmethod
    def from_state(cls, state: dict) -> ShiftGuard:
        """The guard a checkpoint stored with :meth:`state`."""
        return cls(state["reference"], float(state["threshold"]), state["quality"], state["cost"],
                   int(state["neighbours"]), float(state["quantile"]), int(state.get("count", 0)), state.get("pulls"))


def check_knobs(quantile: float | None, neighbours: int) -> None:
    """Refuse a quantile outside (0, 1) or a neighbour count below 1, naming the option."""
    if quantile is not None and (isinstance(quantile, bool) or not 0 < quantile < 1):
        raise ConfigError(f"model.guard.quantile must be in (0, 1) (or model.guard null: no guard), got {quantile!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise ConfigError(f"model.guard.neighbours must be an integer >= 1, got {neighbours!r}")
