"""The calibration curve: expected cost per 1k queries, score and traffic share per model as functions of w_c.

For a grid of cost weights, a greedy router's choice on each calibration prompt gives per-prompt outcomes: from a
full-information split (the chosen model's score and cost in the table) or from a served-request log (the logged
outcome where the router would have chosen the logged model, weighted by 1 / propensity: self-normalised IPS).
Shares need no outcomes: they are the fraction of calibration prompts routed to each model. Intervals are
percentile bootstrap intervals over the calibration prompts (the same resamples for every w_c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from barp.metrics.bootstrap import bootstrap_statistic, percentile_interval, ratio_of_sums
from barp.models.evaluation import Greedy, evaluate
from barp.models.protocols import Router
from barp.ope.estimators import snips, snips_terms, target_logging_ratios


@dataclass(frozen=True)
class Curve:
    """Per grid point g: the estimate and its interval (columns low, high) of each quantity.

    Attributes:
        w_c: Cost weights, shape (G,).
        models: Model names (share columns).
        cost_per_1k: Expected USD per 1000 queries, shape (G,); ``cost_per_1k_ci`` shape (G, 2).
        score: Expected score, shape (G,); ``score_ci`` shape (G, 2).
        shares: Traffic share per model, shape (G, K); ``shares_ci`` shape (G, K, 2).
        best_single_model: The model with the highest mean score on the calibration data.
        best_single_score: Its mean score.
        n: Calibration prompts (log rows).
        source: What the curve was computed on, for messages.
        level: Coverage of the intervals.
    """

    w_c: np.ndarray
    models: list[str]
    cost_per_1k: np.ndarray
    cost_per_1k_ci: np.ndarray
    score: np.ndarray
    score_ci: np.ndarray
    shares: np.ndarray
    shares_ci: np.ndarray
    best_single_model: str
    best_single_score: float
    n: int
    source: str
    level: float

    def at(self, g: int) -> dict[str, Any]:
        """Grid point ``g`` as plain values: w_c, and [estimate, low, high] of cost, score and each share."""
        return {
            "w_c": float(self.w_c[g]),
            "cost_per_1k": [float(self.cost_per_1k[g]), *map(float, self.cost_per_1k_ci[g])],
            "score": [float(self.score[g]), *map(float, self.score_ci[g])],
            "shares": {m: [float(self.shares[g, j]), *map(float, self.shares_ci[g, j])]
                       for j, m in enumerate(self.models)},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (read back by :meth:`from_dict`)."""
        out: dict[str, Any] = {"models": self.models, "best_single_model": self.best_single_model,
                               "best_single_score": self.best_single_score, "n": self.n, "source": self.source,
                               "level": self.level}
        for name in ("w_c", "cost_per_1k", "cost_per_1k_ci", "score", "score_ci", "shares", "shares_ci"):
            out[name] = np.asarray(getattr(self, name)).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Curve:
        """The curve written by :meth:`to_dict`."""
        arrays = {k: np.asarray(data[k], dtype=np.float64)
                  for k in ("w_c", "cost_per_1k", "cost_per_1k_ci", "score", "score_ci", "shares", "shares_ci")}
        return cls(models=[str(m) for m in data["models"]], best_single_model=str(data["best_single_model"]),
                   best_single_score=float(data["best_single_score"]), n=int(data["n"]), source=str(data["source"]),
                   level=float(data["level"]), **arrays)


def greedy_choices(module: Router, embeddings: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The router's greedy choice per grid cost weight and prompt, shape (G, n), from the evaluation loop
    validation, test and ``barp sweep`` use (:func:`barp.models.evaluation.evaluate`).

    Args:
        module: A router module (:class:`~barp.models.base.RouterModule`).
        embeddings: Prompt embeddings, shape (n, D).
        grid: Cost weights, shape (G,).
    """
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32), device=module.device)
    out = np.empty((len(grid), len(emb)), dtype=np.int64)
    with torch.inference_mode():
        for g, point in enumerate(evaluate([Greedy(module)], emb, [float(w_c) for w_c in grid])):
            assert point.action is not None  # a greedy policy chooses one model per prompt
            out[g] = point.action.cpu().numpy()
    return out


def build_curve(grid: np.ndarray, choices: np.ndarray, weight: np.ndarray, score: np.ndarray, cost: np.ndarray,
                models: list[str], best: tuple[str, float], source: str, resamples: int = 1000, level: float = 0.95,
                seed: int = 0) -> Curve:
    """Curve from per-prompt values: ``sum_i weight * value / sum_i weight`` per grid point (SNIPS,
    :func:`barp.ope.estimators.snips_terms`), with percentile bootstrap intervals over the prompts.

    Args:
        grid: Cost weights (G,).
        choices: Chosen model per grid point and prompt (G, n).
        weight: Per grid point and prompt, the prompt's weight (1 on a full table; match / propensity on a log).
        score: The chosen (table) or logged (log) score per grid point and prompt (G, n).
        cost: Likewise the cost in USD (G, n).
        models: Model names.
        best: (name, mean score) of the best single model.
        source: What the values come from.
        resamples: Bootstrap resamples of the prompts.
        level: Interval coverage.
        seed: Bootstrap seed.
    """
    g, k, n = len(grid), len(models), choices.shape[1]
    num, den = snips_terms(np.concatenate([weight.T, weight.T], axis=1), np.concatenate([score.T, cost.T], axis=1))
    point, interval = ratio_of_sums(num, den, resamples, seed, level)
    ends = np.moveaxis(interval, 0, -1)  # (2G, 2): score, then cost, per grid point

    def shares(counts: np.ndarray) -> np.ndarray:  # (b, G, K): the share of the prompts routed to each model
        return np.stack([counts @ (choices == j).T for j in range(k)], axis=-1) / counts.sum(axis=1)[:, None, None]

    shares_ci = percentile_interval(bootstrap_statistic(shares, n, resamples, seed), level)  # the same resamples
    return Curve(w_c=np.asarray(grid, dtype=np.float64), models=list(models), cost_per_1k=1000.0 * point[g:],
                 cost_per_1k_ci=1000.0 * ends[g:], score=point[:g], score_ci=ends[:g],
                 shares=shares(np.ones((1, n)))[0], shares_ci=np.moveaxis(shares_ci, 0, -1),
                 best_single_model=best[0], best_single_score=float(best[1]), n=n, source=source, level=level)


def curve_from_table(grid: np.ndarray, choices: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                     models: list[str], source: str, **bootstrap: Any) -> Curve:
    """Curve on a full-information split: the chosen model's table score and cost per prompt.

    Args:
        grid: Cost weights (G,).
        choices: Greedy choices (G, n).
        scores: Table scores (n, K), columns in ``models`` order.
        costs: Table costs in USD (n, K).
        models: Model names.
        source: What the split is.
        **bootstrap: ``resamples``, ``level``, ``seed`` of :func:`build_curve`.
    """
    rows = np.arange(choices.shape[1])[None, :]
    means = scores.mean(axis=0)
    best = (models[int(means.argmax())], float(means.max()))
    return build_curve(grid, choices, np.ones(choices.shape), scores[rows, choices], costs[rows, choices], models,
                       best, source, **bootstrap)


def curve_from_log(grid: np.ndarray, choices: np.ndarray, actions: np.ndarray, propensity: np.ndarray,
                   score: np.ndarray, cost: np.ndarray, models: list[str], source: str, **bootstrap: Any) -> Curve:
    """Curve on a served-request log: self-normalised IPS of the greedy router's score and cost.

    Args:
        grid: Cost weights (G,).
        choices: Greedy choices on the logged prompts (G, n).
        actions: Logged model index per row (n,).
        propensity: Logged propensity per row (n,).
        score: Logged score per row (n,).
        cost: Logged cost per row (n,).
        models: Model names.
        source: The log.
        **bootstrap: ``resamples``, ``level``, ``seed`` of :func:`build_curve`.
    """
    k = len(models)
    weight = np.stack([target_logging_ratios(np.eye(k)[c], actions, propensity) for c in choices])  # (G, n)
    # the best single model by the same estimate: SNIPS of "always model j" (NaN where the log never served it)
    always = [target_logging_ratios(np.eye(k)[np.full(len(actions), j)], actions, propensity) for j in range(k)]
    per_model = snips(np.stack(always, axis=1), np.repeat(score[:, None], k, axis=1))
    j = int(np.nanargmax(per_model))
    tile = lambda v: np.broadcast_to(v, choices.shape)  # noqa: E731
    return build_curve(grid, choices, weight, tile(score), tile(cost), models, (models[j], float(per_model[j])), source,
                       **bootstrap)
