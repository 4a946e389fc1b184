"""Percentile bootstrap intervals, barp's one implementation, and how sure an AIQ is.

The resampling (:func:`resample_counts`, :func:`bootstrap_statistic`), the percentile interval
(:func:`percentile_interval`) and the intervals of ratios of sums (:func:`ratio_of_sums`: means, IPS, SNIPS, DR) serve
``barp sweep`` (AIQ, below), ``barp ope`` (:mod:`barp.ope.estimators`) and ``barp calibrate``
(:mod:`barp.service.curve`).

How sure is an AIQ? A paired bootstrap over the test prompts.

A split holds a few hundred prompts and scores are noisy (often 0/1), so two routers' AIQs can differ by chance.
Resampling the prompts with replacement, the SAME resample for every method (paired), and recomputing each method's
operating points, the split's common cost range and the AIQs gives, per method, a percentile interval for its AIQ and
for its difference to a reference method (BaRP in ``barp sweep``). Paired differences are much tighter than the
individual intervals, because the methods share the prompts' difficulty.

This is the variation over test prompts only: the training seed adds more (report several seeds for that).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from barp.metrics.aiq import aiq


@dataclass(frozen=True)
class PerPrompt:
    """One method on one split: the chosen model's score and cost (USD) per preference and prompt, shape (G, n)."""

    score: np.ndarray
    cost: np.ndarray


#: Most (resample, row) cells of counts held at once: bounds memory on large inputs (the draws do not depend on it).
MAX_CELLS = 4_000_000


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each of ``n`` rows is drawn in each bootstrap resample (``n`` draws with replacement).

    Yields float arrays of shape (b, n), b resamples at a time (at most :data:`MAX_CELLS` cells); row r of the whole
    sequence is the r-th resample of one seeded stream, whatever b is (same ``seed``, same resamples).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_CELLS // max(n, 1))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        flat = np.repeat(np.arange(b) * n, n) + rng.integers(0, n, size=b * n)
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def bootstrap_statistic(statistic: Callable[[np.ndarray], np.ndarray], n: int, resamples: int,
                        seed: int) -> np.ndarray:
    """A statistic of ``n`` rows on each of ``resamples`` bootstrap resamples, stacked along axis 0.

    Args:
        statistic: Maps row counts of shape (b, n) (:func:`resample_counts`) to values of shape (b, ...).
        n: Rows.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling.
    """
    return np.concatenate([statistic(counts) for counts in resample_counts(n, resamples, seed)])


def percentile_interval(samples: np.ndarray, level: float, omit_nan: bool = True) -> np.ndarray:
    """Lower and upper ends of the central ``level`` percentile interval over axis 0, shape (2, ...).

    Args:
        samples: Bootstrap values, resamples along axis 0.
        level: Coverage in (0, 1).
        omit_nan: Ignore NaN resamples (an end is NaN only where every resample is); False: any NaN gives NaN.
    """
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    if not omit_nan:
        return np.quantile(samples, quantiles, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (e.g. no overlap at all)
        return np.nanquantile(samples, quantiles, axis=0)


def ratio_of_sums(num: np.ndarray, den: np.ndarray, resamples: int, seed: int,
                  level: float) -> tuple[np.ndarray, np.ndarray]:
    """``sum_i num_i / sum_i den_i`` per column, and its percentile bootstrap interval over the rows i.

    A mean (den 1), IPS (num ``w y``, den 1), SNIPS (num ``w y``, den ``w``) and DR are such ratios; the columns of
    one call share their resamples.

    Args:
        num: Numerator terms, shape (n, C).
        den: Denominator terms, shape (n, C).
        resamples: Bootstrap resamples of the rows.
        seed: Seed of the resampling.
        level: Coverage of the intervals.

    Returns:
        ``(estimate (C,), interval (2, C))``; a resample whose denominator is 0 is left out of the interval.
    """
    def ratios(counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (counts @ num) / (counts @ den)

    with np.errstate(invalid="ignore", divide="ignore"):
        point = num.sum(axis=0) / den.sum(axis=0)
    return point, percentile_interval(bootstrap_statistic(ratios, len(num), resamples, seed), level)


def _interval(values: np.ndarray, level: float) -> list[float]:
    return [float(end) for end in percentile_interval(values, level, omit_nan=False)]


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
    # Mean score and cost per (method, resample, preference): a mean of n picked columns = weights @ values.
    weights = bootstrap_statistic(lambda counts: counts / n, n, resamples, seed)
    means = {name: (weights @ m.score.T, weights @ m.cost.T) for name, m in methods.items()}
    if model_costs is not None:  # common cost range per resample
        high = (weights @ np.asarray(model_costs, dtype=np.float64)).max(axis=1)
    else:
        high = np.max([c.max(axis=1) for _, c in means.values()], axis=0)
    values = {name: np.array([aiq(c[b], s[b], (0.0, high[b])) if high[b] > 0 else np.nan for b in range(resamples)])
              for name, (s, c) in means.items()}
    out: dict[str, dict[str, list[float] | float]] = {name: {"aiq_ci": _interval(v, level)}
                                                      for name, v in values.items()}
    if reference is not None:
        ref = values[reference]
        for name, v in values.items():
            if name != reference:
                out[name]["aiq_diff_ci"] = _interval(v - ref, level)
                out[name]["p_diff_positive"] = float(np.mean(v > ref))
    return out
