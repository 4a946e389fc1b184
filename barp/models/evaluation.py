"""The one evaluation loop: policies routed over a grid of preferences, shared by ``barp test``/``validate`` (the
router module's evaluation steps), ``barp sweep`` (:mod:`barp.sweep.harness`) and ``barp calibrate``
(:mod:`barp.service.curve`).

:func:`evaluate` routes every policy at every cost weight of a grid and gives, per (policy, w_c), the chosen model
per prompt and, where every model's outcome is known (a full-information split), the policy's outcome
(:mod:`barp.metrics.evaluation`). :class:`EvalMetrics` accumulates a router module's outcomes per stage, split,
preference and policy and turns them into the logged metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast

import numpy as np
import torch
from torch import nn

from barp.learning.rl import preference_tensor, reward
from barp.metrics.aiq import aiq
from barp.metrics.evaluation import (
    REFERENCES,
    SPLITS,
    Outcome,
    aiq_cost_range,
    aiq_defined,
    chosen,
    metric_name,
    reference_outcome,
)
from barp.metrics.routing import ModelCostMetric, RoutingMetrics
from barp.models.protocols import Router


@dataclass(frozen=True)
class Outcomes:
    """The full outcome rows of a batch: every model's score and cost (shape (B, K) each).

    Only policies with ``needs_outcomes = True`` (the oracle) ever receive these.
    """

    scores: torch.Tensor
    costs: torch.Tensor


class Policy(Protocol):
    """What the loop evaluates (``barp sweep``'s :class:`~barp.sweep.contenders.Contender` is one): a name, a
    choice of model per prompt at a preference, and the outcome of that choice on full outcome rows."""

    name: str

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor: ...

    def outcome(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor,
                rewards: torch.Tensor) -> Outcome: ...


class Greedy:
    """A router module's greedy routing (:meth:`~barp.models.base.RouterModule.greedy`) as a :class:`Policy`.

    Args:
        module: The router.
        name: The policy's name (``router`` in the module's own metrics).
        novel: The shift guard's mask for the evaluated prompts, when already computed.
    """

    needs_outcomes: ClassVar[bool] = False

    def __init__(self, module: Router, name: str = "router", novel: torch.Tensor | None = None) -> None:
        self.module, self.name, self.novel = module, name, novel

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        return self.module.greedy(emb, w, novel=self.novel)

    def outcome(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor,
                rewards: torch.Tensor) -> Outcome:
        return chosen(self.choose(emb, w), scores, costs, rewards)


class Reference:
    """A reference policy of :data:`~barp.metrics.evaluation.REFERENCES`, computed from the full outcome rows.

    Args:
        name: One of :data:`~barp.metrics.evaluation.REFERENCES`.
        cheapest, most_expensive: Model indices of the cheapest and the most expensive single model.
    """

    needs_outcomes: ClassVar[bool] = True

    def __init__(self, name: str, cheapest: int, most_expensive: int) -> None:
        self.name, self.cheapest, self.most_expensive = name, cheapest, most_expensive

    def choose(self, emb: torch.Tensor, w: torch.Tensor, outcomes: Outcomes | None = None) -> torch.Tensor:
        raise ValueError(f"{self.name}: a reference policy is evaluated on full outcome rows only")

    def outcome(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor, costs: torch.Tensor,
                rewards: torch.Tensor) -> Outcome:
        return reference_outcome(self.name, scores, costs, rewards, self.cheapest, self.most_expensive)


@dataclass(frozen=True)
class Point:
    """One policy at one preference on the evaluated prompts.

    Attributes:
        policy: The policy's name.
        w_c: The cost weight.
        action: The chosen model per prompt (B,); None for a policy with no single choice (random's expectation).
        outcome: The policy's outcome; None where the full outcome rows are unknown (a served-request log).
    """

    policy: str
    w_c: float
    action: torch.Tensor | None
    outcome: Outcome | None


def evaluate(policies: Sequence[Policy], emb: torch.Tensor, grid: Sequence[float], tau: float | None = None,
             scores: torch.Tensor | None = None, costs: torch.Tensor | None = None) -> Iterator[Point]:
    """Route every policy at every cost weight of ``grid`` (``w = (1 - w_c, w_c)``), preference by preference.

    Args:
        policies: The policies, evaluated in this order at each preference.
        emb: Prompt embeddings, shape (B, D).
        grid: Cost weights.
        tau: Cost scale of the reward (with ``scores`` and ``costs``).
        scores, costs: Every model's score and cost per prompt, shape (B, K); None: choices only.
    """
    for w_c in grid:
        w = preference_tensor(w_c, len(emb), emb.device)
        if scores is None:
            for policy in policies:
                yield Point(policy.name, w_c, policy.choose(emb, w), None)
            continue
        if costs is None or tau is None:
            raise ValueError("evaluate: scores need their costs and tau")
        rewards = reward(scores, costs, w, tau)
        for policy in policies:
            o = policy.outcome(emb, w, scores, costs, rewards)
            yield Point(policy.name, w_c, o.action, o)


class EvalMetrics(nn.ModuleDict):
    """A router module's evaluation state: one :class:`~barp.metrics.routing.RoutingMetrics` per stage, split,
    preference and policy (the router and the references), and every model's mean cost per stage and split.

    Metric names: ``{stage}/{split}/{metric}`` at the primary preference ``eval_w_c`` and
    ``{stage}/{split}/wc={w_c}/{metric}`` at each of ``extra_eval_w_c``; ``{stage}/{split}/reward_avg`` is the
    router's reward averaged over all evaluation preferences, ``{stage}/{split}/aiq`` the area under its cost-score
    hull over them (see :func:`barp.metrics.aiq.aiq`; only where the split's models differ in price,
    :func:`~barp.metrics.evaluation.aiq_defined`) and ``{stage}/{split}/selection`` the number the recipes select
    checkpoints on: the AIQ, or ``reward_avg`` where the AIQ is undefined; at test time also
    ``test/{split}/{reference}_{score|cost|reward}`` for the oracle, random routing (exact expectation),
    the cheapest and the most expensive single model (by mean training cost).

    Args:
        model_names, task_names: The router's models and tasks.
        preferences: Evaluation cost weights, the primary one first.
    """

    def __init__(self, model_names: list[str], task_names: list[str], preferences: list[float]) -> None:
        super().__init__()
        self.preferences = list(preferences)
        for stage in ("val", "test"):
            for split in SPLITS:
                for w_c in self.preferences:
                    for policy in ("router",) + REFERENCES:
                        self[self.key(stage, split, w_c, policy)] = RoutingMetrics(model_names, task_names)
                self[f"{stage}_{split}_model_cost"] = ModelCostMetric(len(model_names))

    @staticmethod
    def key(stage: str, split: str, w_c: float, policy: str) -> str:
        return f"{stage}_{split}_{w_c:g}_{policy}".replace(".", "p")

    def routing(self, stage: str, split: str, w_c: float, policy: str) -> RoutingMetrics:
        """A policy's metrics on a split at a preference."""
        return cast(RoutingMetrics, self[self.key(stage, split, w_c, policy)])

    def model_cost(self, stage: str, split: str) -> ModelCostMetric:
        """Every model's mean cost on a split."""
        return cast(ModelCostMetric, self[f"{stage}_{split}_model_cost"])

    def add(self, stage: str, split: str, task: torch.Tensor, costs: torch.Tensor, points: Iterator[Point]) -> None:
        """Add a batch: every model's costs (B, K) and each policy's outcome at each preference."""
        self.model_cost(stage, split).update(costs)
        for p in points:
            o = p.outcome
            if o is None:
                raise ValueError("EvalMetrics.add: the points need their outcomes (evaluate with scores and costs)")
            self.routing(stage, split, p.w_c, p.policy).update(task, o.action, o.score, o.cost, o.reward)

    def results(self, stage: str) -> Iterator[dict[str, torch.Tensor | float]]:
        """The stage's metrics (see :class:`~barp.models.base.RouterModule`), in groups to log, resetting the state.

        Per split: the router's metrics and the references' ``score``, ``cost`` and ``reward`` at each preference
        (``wc=<w_c>/`` but at the primary one), ``reward_avg`` over the preferences, the ``aiq`` where the split's
        models differ in price, and ``selection``: the AIQ, or ``reward_avg`` where the AIQ is undefined.
        """
        for split in SPLITS:
            router_rewards, points = [], []
            for w_c in self.preferences:
                at = None if w_c == self.preferences[0] else w_c
                for policy in ("router",) + REFERENCES:
                    metric = self.routing(stage, split, w_c, policy)
                    if not metric.update_called:
                        continue
                    values = metric.compute()
                    if policy == "router":
                        yield {metric_name(stage, split, k, at): v for k, v in values.items()}
                        router_rewards.append(values["reward"])
                        points.append((float(values["cost"]), float(values["score"])))
                    else:
                        yield {metric_name(stage, split, k, at, policy): values[k] for k in ("score", "cost", "reward")}
                    metric.reset()
            if router_rewards:
                # one number for the whole trade-off range
                reward_avg = torch.stack(router_rewards).mean()
                yield {metric_name(stage, split, "reward_avg"): reward_avg}
                selection = float(reward_avg)
            model_cost = self.model_cost(stage, split)
            if len(points) >= 2 and model_cost.update_called:
                # the frontier's area over the split's cost range: selecting on it favours the checkpoint with the
                # best trade-offs over the whole cost range (see barp.metrics.evaluation.aiq_cost_range); where
                # every model costs the same it is 0 up to rounding, and is not logged (aiq_defined)
                model_costs = model_cost.compute().cpu().numpy()
                if aiq_defined(model_costs):
                    costs, scores = (np.asarray(v, dtype=float) for v in zip(*points))
                    selection = float(aiq(costs, scores, aiq_cost_range(model_costs)))
                    yield {metric_name(stage, split, "aiq"): selection}
            if router_rewards:
                # what checkpoint selection watches (the recipes' monitor): AIQ where it is defined, else reward_avg
                yield {metric_name(stage, split, "selection"): selection}
            model_cost.reset()


def references(models: torch.Tensor) -> list[Reference]:
    """The reference policies of a router module (``models``: its cheapest and most expensive model indices)."""
    cheapest, most_expensive = (int(j) for j in models)
    return [Reference(policy, cheapest, most_expensive) for policy in REFERENCES]


def evaluate_batch(module: Router, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int) -> None:
    """A router module's validation or test step: its greedy routing (and, at test, the reference policies) at
    each evaluation preference, added to its :class:`EvalMetrics`."""
    names = getattr(module, "eval_split_names", {}).get("test" if stage == "test" else "validate", ["id", "ood"])
    emb, scores, costs = batch["emb"], batch["scores"], batch["costs"]
    if module._column_order is not None:  # the data's columns in the router's arm order
        order = module._column_order.to(scores.device)
        scores, costs = scores[:, order], costs[:, order]
    novel = None if module.fallback_quantile is None else module._guard().unfamiliar(emb)  # once per batch
    policies = [Greedy(module, "router", novel)] + (references(module.reference_models) if stage == "test" else [])
    module.eval_metrics.add(stage, names[dataloader_idx], batch["task"], costs,
                            evaluate(policies, emb, module.eval_preferences, module.tau_value, scores, costs))


def log_results(module: Router, stage: str) -> None:
    """A router module's validation or test epoch end: log :meth:`EvalMetrics.results`."""
    for logged in module.eval_metrics.results(stage):
        module.log_dict(logged, add_dataloader_idx=False)
