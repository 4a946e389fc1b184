"""Simulated traffic: turn a full-information outcome table into a served-request log under a logging policy.

For each request the simulator draws a model from the logging policy, pulls only that model's outcome from a
:class:`~barp.data.environment.BanditEnvironment` over the table (so the log never holds another model's outcome,
exactly as real traffic), and records the model's probability (propensity). Every row carries a ``note`` saying the
log is simulated, and from which table and policy. It stands in for real traffic in tests and experiments.

Logging policies: :func:`uniform_probabilities`, :func:`epsilon_greedy_probabilities` (around one named model) and
:func:`router_probabilities` (a trained router's softmax at a temperature, optionally mixed with epsilon-uniform).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from barp.data.environment import BanditEnvironment
from barp.data.sources.logs import SIMULATED, LoggedFeedback
from barp.data.table import OutcomeTable
from barp.errors import ConfigError
from barp.learning.rl import check_w_c

if TYPE_CHECKING:  # annotations only
    from barp.models.protocols import Router

#: A logging policy: (table rows, cost weight per row) -> probabilities over the table's models, shape (N, K).
PolicyFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_epsilon(epsilon: float) -> float:
    if not (isinstance(epsilon, (int, float)) and 0.0 <= epsilon <= 1.0):
        raise ConfigError(f"epsilon must be a number in [0, 1], got {epsilon!r}")
    return float(epsilon)


def uniform_probabilities(n: int, k: int) -> np.ndarray:
    """Every model with probability 1 / K, shape (n, K)."""
    return np.full((n, k), 1.0 / k)


def epsilon_greedy_probabilities(n: int, models: Sequence[str], model: str, epsilon: float) -> np.ndarray:
    """``model`` with probability ``1 - epsilon + epsilon / K``, every other model ``epsilon / K``; shape (n, K).

    Args:
        n: Number of requests.
        models: The candidate models.
        model: The model served by default (e.g. the cheapest).
        epsilon: Share of requests served by a uniformly drawn model; > 0 for every model to be logged.
    """
    models = list(models)
    if model not in models:
        raise ConfigError(f"epsilon-greedy logging: model {model!r} is not one of the table's models {models}")
    k = len(models)
    probs = np.full((n, k), _check_epsilon(epsilon) / k)
    probs[:, models.index(model)] += 1.0 - epsilon
    return probs


def router_probabilities(
    module: Router, embeddings: np.ndarray, w_c: np.ndarray, temperature: float = 1.0, epsilon: float = 0.0
) -> np.ndarray:
    """A trained router's policy: ``(1 - epsilon) softmax(route(x, w) / temperature) + epsilon / K``, shape (n, K).

    Args:
        module: A router with ``route(emb, w) -> logits`` (e.g. :class:`~barp.models.barp.BaRPModule`).
        embeddings: The prompts' frozen-encoder embeddings, shape (n, D) (computed by the caller, e.g. cached).
        w_c: Cost weight per request, shape (n,).
        temperature: Softmax temperature (> 0; 1 is the trained policy, lower is greedier).
        epsilon: Share mixed in uniformly, which keeps every propensity >= epsilon / K.
    """
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    epsilon = _check_epsilon(epsilon)
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    w_cost = torch.as_tensor(np.asarray(w_c, dtype=np.float32))
    if emb.dim() != 2 or len(emb) != len(w_cost):
        raise ValueError(f"router_probabilities needs (n, D) embeddings and n cost weights, got {tuple(emb.shape)} "
                         f"and {tuple(w_cost.shape)}")
    w = torch.stack([1.0 - w_cost, w_cost], dim=-1)
    with torch.inference_mode():
        logits = module.route(emb.to(module.device), w.to(module.device)).double().cpu()
    probs = torch.softmax(logits / temperature, dim=-1).numpy()
    return (1.0 - epsilon) * probs + epsilon / probs.shape[1]


def _served_preferences(w_c: float | Sequence[float] | None, n: int, rng: np.random.Generator) -> np.ndarray:
    if w_c is None:
        return rng.random(n)
    if isinstance(w_c, (int, float)):
        return np.full(n, check_w_c(w_c, "w_c"))
    values = np.asarray([check_w_c(v, "w_c") for v in w_c], dtype=np.float64)
    if len(values) != n:
        raise ConfigError(f"w_c: give one cost weight per request ({n}), got {len(values)}")
    return values


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One model per row from the rows of ``probs`` (inverse CDF; each row normalised)."""
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    u = rng.random(len(probs))[:, None]
    actions = np.minimum((u > cdf).sum(axis=1), probs.shape[1] - 1)
    zero = probs[np.arange(len(probs)), actions] <= 0  # u beyond a rounded-down cdf: the last model with mass
    if zero.any():
        last = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1)
        actions[zero] = last[zero]
    return actions


def simulate_log(
    table: OutcomeTable,
    policy: PolicyFn,
    *,
    seed: int = 0,
    passes: int = 1,
    w_c: float | Sequence[float] | None = None,
    policy_name: str = "custom",
) -> LoggedFeedback:
    """Serve every prompt of ``table`` ``passes`` times under ``policy`` and log what a deployment would see.

    Args:
        table: A full-information table (built-in benchmark, RouterBench, the shared real set, ...).
        policy: The logging policy, ``(rows, w_c) -> (len(rows), K)`` probabilities over ``table.models``.
        seed: Seed of the served preferences (when drawn) and of the models drawn.
        passes: Requests per prompt (each pass draws fresh preferences and models); rows are ordered pass by pass.
        w_c: Cost weight each request is served at: one number, one per request (``passes * N``), or None to draw
            each uniformly on [0, 1].
        policy_name: How the ``note`` column names the policy.

    Returns:
        The log: one row per request, with only the served model's score and cost, its propensity, the served
        ``w_c``, the prompt id, a ``timestamp`` (the request's position) and a ``note`` saying it is simulated.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ConfigError(f"passes must be an integer >= 1, got {passes!r}")
    rng = np.random.default_rng(seed)
    rows = np.tile(np.arange(table.num_prompts), passes)
    served = _served_preferences(w_c, len(rows), rng)
    probs = np.asarray(policy(rows, served), dtype=np.float64)
    if probs.shape != (len(rows), table.num_models) or not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"the logging policy must give finite probabilities >= 0 of shape "
                         f"{(len(rows), table.num_models)}, got shape {probs.shape}")
    probs = probs / probs.sum(axis=1, keepdims=True)
    actions = _draw(probs, rng)
    feedback = BanditEnvironment(table).pull(torch.as_tensor(rows), torch.as_tensor(actions))  # chosen cells only
    return LoggedFeedback(
        prompts=[table.prompts[i] for i in rows],
        models=table.models,
        actions=actions,
        propensity=probs[np.arange(len(rows)), actions],
        score=feedback.score.double().numpy(),
        cost=feedback.cost.double().numpy(),
        w_c=served,
        prompt_ids=[table.prompt_ids[i] for i in rows],
        timestamps=[str(t) for t in range(len(rows))],
        notes=[f"{SIMULATED}: {policy_name} logging policy over {table.source} (seed {seed}), not real traffic"],
        source=f"simulated({table.source})",
    )


def simulate(
    table: OutcomeTable,
    policy: str = "uniform",
    *,
    model: str | None = None,
    epsilon: float = 0.1,
    module: Router | None = None,
    embeddings: np.ndarray | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    passes: int = 1,
    w_c: float | Sequence[float] | None = None,
) -> LoggedFeedback:
    """Simulate a log under a named logging policy (see :func:`simulate_log` for the rest).

    Args:
        table: The full-information table.
        policy: ``uniform``; ``epsilon_greedy`` (``model`` with probability ``1 - epsilon``, else uniform);
            ``router`` (``module``'s policy at ``temperature``, mixed with ``epsilon``-uniform; needs the prompts'
            ``embeddings``, one row per table row).
        model: The default model of ``epsilon_greedy``.
        epsilon: Exploration share of ``epsilon_greedy`` and ``router``.
        module: The trained router of ``router`` (its ``model_names`` are mapped to the table's models by name).
        embeddings: Embeddings of ``table.prompts`` for ``router``, shape (N, D).
        temperature: Softmax temperature of ``router``.
        seed: Seed of the simulation.
        passes: Requests per prompt.
        w_c: Served cost weights (see :func:`simulate_log`).
    """
    k = table.num_models
    if policy == "uniform":
        fn: PolicyFn = lambda rows, w: uniform_probabilities(len(rows), k)  # noqa: E731
        name = "uniform"
    elif policy == "epsilon_greedy":
        if model is None:
            raise ConfigError("epsilon_greedy logging needs model=... (the model served by default)")
        base = epsilon_greedy_probabilities(1, table.models, model, epsilon)
        fn = lambda rows, w: np.repeat(base, len(rows), axis=0)  # noqa: E731
        name = f"epsilon-greedy ({model}, epsilon {epsilon:g})"
    elif policy == "router":
        fn = _router_policy(table, module, embeddings, temperature, epsilon)
        name = f"router (temperature {temperature:g}, epsilon {epsilon:g})"
    else:
        raise ConfigError(f"unknown logging policy {policy!r}; choose uniform, epsilon_greedy or router")
    return simulate_log(table, fn, seed=seed, passes=passes, w_c=w_c, policy_name=name)


def _router_policy(table: OutcomeTable, module, embeddings, temperature: float, epsilon: float) -> PolicyFn:
    if module is None or embeddings is None:
        raise ConfigError("router logging needs module=... (a trained router) and embeddings=... of the table's "
                          "prompts")
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != table.num_prompts:
        raise ConfigError(f"embeddings must have one row per table prompt ({table.num_prompts}), "
                          f"got {embeddings.shape}")
    names = list(module.model_names)
    if sorted(names) != sorted(table.models):
        raise ConfigError(f"the router's models {names} differ from the table's {table.models}")
    order = [names.index(m) for m in table.models]  # table column j = router arm order[j]

    def fn(rows: np.ndarray, w: np.ndarray) -> np.ndarray:
        return router_probabilities(module, embeddings[rows], w, temperature, epsilon)[:, order]

    return fn
