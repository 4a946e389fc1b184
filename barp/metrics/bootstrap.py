"""How sure is an AIQ? A paired bootstrap over the test prompts.

A split holds a few hundred prompts and scores are noisy (often 0/1), so two routers' AIQs can differ by chance.
Resampling the prompts with replacement, the SAME resample for every method (paired), and recomputing each method's
operating points, the split's common cost range and the AIQs gives, per method, a percentile interval for its AIQ and
for its difference to a reference method (BaRP in ``barp sweep``). Paired differences are much tighter than the
individual intervals, because the methods share the prompts' difficulty.

This is the variation over test prompts only: the training seed adds more (report several seeds for that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from barp.metrics.aiq import aiq


@dataclass(frozen=True)
class PerPrompt:
    """One method on one split: the chosen model's score and cost (USD) per preference and prompt, shape (G, n)."""

    score: np.ndarray
    cost: np.ndarray


def _interval(values: np.ndarray, level: float) -> list[float]:
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_aiq(methods: dict[str, PerPrompt], resamples: int, seed: int, reference: str | None = None,
                  level: float = 0.95, model_costs: np.ndarray | None = None) -> dict[str, dict]:
    """Percentile intervals of each method's AIQ, and of its AIQ minus the reference's, under a paired bootstrap.

    The cost range of each resample is [0, the most expensive model's mean cost on the resample] when
    ``model_costs`` is given, as for the point estimate (:func:`barp.metrics.evaluation.aiq_cost_range`); without
    it, [0, the highest mean cost of any of ``methods`` at any preference].

    Args:
        methods: Per method, its per-prompt choices on one split (all with the same n prompts, in the same order).
        resamples: Number of bootstrap resamples (>= 1).
        seed: Seed of the resampling (same seed and inputs: same intervals).
        reference: Method to compare every other one with (None: no differences).
        level: Coverage of the intervals.
        model_costs: Every model's cost on each of the n prompts, shape (n, K).

    Returns:
        ``{method: {"aiq_ci": [lo, hi]}}``, plus ``"aiq_diff_ci": [lo, hi]`` (method minus reference) and
        ``"p_diff_positive"`` (share of resamples where the method's AIQ is higher) for every non-reference method.
    """
    if resamples < 1:
        raise ValueError(f"bootstrap_aiq: resamples must be >= 1, got {resamples}")
    if reference is not None and reference not in methods:
        raise ValueError(f"bootstrap_aiq: reference {reference!r} is not among the methods {sorted(methods)}")
    sizes = {m.score.shape[1] for m in methods.values()} | {m.cost.shape[1] for m in methods.values()}
    if len(sizes) != 1:
        raise ValueError(f"bootstrap_aiq: every method needs the same prompts, got sizes {sorted(sizes)}")
    n = sizes.pop()
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    # Mean score and cost per (method, resample, preference): a mean of n picked columns = weights @ values.
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    weights = counts / n
    means = {name: (weights @ m.score.T, weights @ m.cost.T) for name, m in methods.items()}
    if model_costs is not None:  # common cost range per resample
        high = (weights @ np.asarray(model_costs, dtype=np.float64)).max(axis=1)
    else:
        high = np.max([c.max(axis=1) for _, c in means.values()], axis=0)
    values = {name: np.array([aiq(c[b], s[b], (0.0, high[b])) if high[b] > 0 else np.nan for b in range(resamples)])
              for name, (s, c) in means.items()}
    out = {name: {"aiq_ci": _interval(v, level)} for name, v in values.items()}
    if reference is not None:
        ref = values[reference]
        for name, v in values.items():
            if name != reference:
                out[name]["aiq_diff_ci"] = _interval(v - ref, level)
                out[name]["p_diff_positive"] = float(np.mean(v > ref))
    return out
