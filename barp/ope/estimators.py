"""Off-policy estimators of a target router's mean score, cost and reward from a served-request log.

For a log of n requests (prompt x_i, served model a_i with logging probability p_i, its score q_i and cost c_i) and
a target policy given as per-row probabilities pi(a | x_i, w) (greedy targets are one-hot), with importance weights
``w_i = pi(a_i | x_i, w) / p_i`` (optionally clipped at M) and y_i the quantity (q_i, c_i or the reward
``(1 - w_c) q_i - w_c min(c_i / tau, 1)``):

- IPS: ``mean_i w_i y_i``. Unbiased when the logging policy gives every model the target picks a probability > 0
  and the propensities are right; its variance grows with the weights.
- SNIPS (self-normalised): ``sum_i w_i y_i / sum_i w_i``. Slightly biased (consistent), far less variable, and
  immune to a constant shift of y.
- DR (doubly robust): ``mean_i [sum_a pi(a | x_i) m(x_i, a) + w_i (y_i - m(x_i, a_i))]`` with m a reward model
  fitted on the log: per model, ridge regression of score, cost and normalised cost on the prompt embedding,
  its penalty chosen by leave-one-out, **cross-fitted**: the log is cut into folds (rows of one prompt together) and
  a row's m comes from the fit on the other folds, so it never saw that row. Unbiased if either the propensities or
  m are right; low variance where m is good.

Each estimate has a percentile bootstrap interval (log rows resampled with replacement, the same resamples for
every estimator; the cross-fitted m is held fixed) and the effective sample size ``(sum w)^2 / sum w^2``.

A point estimate outside the range every policy's mean lies in (score in [0, 1], cost >= 0, reward in
``[-w_c, 1 - w_c]``) is impossible: it is kept as computed (not clipped), and a warning says so and why (too few
rows, extreme importance weights); see :func:`possible_range`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from barp.errors import ConfigError
from barp.learning.rl import check_w_c
from barp.metrics.bootstrap import ratio_of_sums

if TYPE_CHECKING:  # annotations only: barp.data.sources imports pandas, which every barp command would then load
    from barp.data.sources.logs import LoggedFeedback

ESTIMATORS: tuple[Literal["ips", "snips", "dr"], ...] = ("ips", "snips", "dr")
QUANTITIES = ("score", "cost", "reward")
#: Ridge penalties tried per model and target (leave-one-out picks one); embeddings are unit vectors.
RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


# ---------------------------------------------------------------------- weights
def target_logging_ratios(
    target: np.ndarray, actions: np.ndarray, propensity: np.ndarray, clip: float | None = None
) -> np.ndarray:
    """The importance weights of IPS, SNIPS and DR: ``pi(a_i | x_i) / p_i`` per logged row (the target's probability
    of the logged model over the logging policy's), optionally clipped at ``clip``; not normalised.

    Args:
        target: Target policy probabilities per row, shape (n, K).
        actions: Logged model index per row, shape (n,).
        propensity: Logging probability of the logged model per row, shape (n,), in (0, 1].
        clip: Upper bound M of the weights (None: no clipping). Clipping lowers variance and biases IPS and DR
            towards zero (SNIPS towards the logging policy).
    """
    w = target[np.arange(len(actions)), actions] / propensity
    if clip is not None:
        w = np.minimum(w, clip)
    return w


def snips_terms(weights: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SNIPS (self-normalised IPS) ``sum_i w_i y_i / sum_i w_i`` as the numerator and denominator terms of a ratio of
    sums (:func:`barp.metrics.bootstrap.ratio_of_sums` gives the estimate and its interval).

    Args:
        weights: Importance weights per row, shape (n,), or per row and column, shape (n, C).
        values: The quantities per row, shape (n, C).

    Returns:
        ``(w_ic y_ic, w_ic)``, both of shape (n, C).
    """
    weights = np.asarray(weights, dtype=np.float64)
    weights = np.broadcast_to(weights[:, None] if weights.ndim == 1 else weights, values.shape)
    return weights * values, weights.copy()


def snips(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The SNIPS estimate ``sum_i w_i y_i / sum_i w_i`` per column (NaN where every weight is 0); the arguments are
    those of :func:`snips_terms`."""
    num, den = snips_terms(weights, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num.sum(axis=0) / den.sum(axis=0)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when every weight is 0)."""
    weights = np.asarray(weights, dtype=np.float64)
    total, squares = weights.sum(), np.square(weights).sum()
    return float(total * total / squares) if squares > 0 else 0.0


# ---------------------------------------------------------------------- reward model
def _ridge_fit(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Ridge of each column of ``y`` on ``x`` with an unpenalised intercept; penalty per column by leave-one-out.

    Returns:
        ``(coef (D, T), intercept (T,))``.
    """
    m = len(x)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    if m < 3:
        return np.zeros((x.shape[1], y.shape[1])), y_mean
    xc, yc = x - x_mean, y - y_mean
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    best_err = np.full(y.shape[1], np.inf)
    coef = np.zeros((x.shape[1], y.shape[1]))
    for alpha in alphas:
        shrink = s**2 / (s**2 + alpha)
        fitted = u @ (shrink[:, None] * uty)
        leverage = np.minimum((u**2) @ shrink + 1.0 / m, 1.0 - 1e-9)
        err = np.square((yc - fitted) / (1.0 - leverage[:, None])).sum(axis=0)
        better = err < best_err
        if better.any():
            best_err[better] = err[better]
            coef[:, better] = vt.T @ ((s / (s**2 + alpha))[:, None] * uty[:, better])
    return coef, y_mean - x_mean @ coef


def fold_of_rows(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold index per row: groups (e.g. prompt texts) shuffled with ``seed`` and dealt round-robin to folds."""
    texts = [str(g) for g in groups]
    names = sorted(set(texts))  # the order np.unique gives, without a fixed-width copy of every text (a long
    index = {name: i for i, name in enumerate(names)}  # prompt x a million rows would take gigabytes)
    inverse = np.fromiter((index[t] for t in texts), dtype=np.int64, count=len(texts))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_group = np.empty(len(names), dtype=np.int64)
    fold_of_group[order] = np.arange(len(names)) % folds
    return fold_of_group[inverse]


def cross_fit_predictions(
    features: np.ndarray | None,
    actions: np.ndarray,
    targets: np.ndarray,
    num_models: int,
    fold: np.ndarray,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> np.ndarray:
    """Every model's predicted targets on every row, each row predicted by fits that never saw its fold.

    Per fold f and model a, a ridge regression (:data:`RIDGE_ALPHAS`, chosen by leave-one-out) of ``targets`` on
    ``features`` over the rows outside f that were served by a predicts the rows in f. Without features (None) the
    model is the per-model mean. A model with no row outside f is predicted by the mean over all models there.

    Args:
        features: Per-row features (the prompt embedding), shape (n, D), or None.
        actions: Served model per row, shape (n,).
        targets: Observed targets per row, shape (n, T).
        num_models: K.
        fold: Fold index per row (>= 2 distinct folds).
        alphas: Ridge penalties to choose from.

    Returns:
        Predictions of shape (n, K, T).
    """
    n = len(actions)
    x = np.zeros((n, 1)) if features is None else np.asarray(features, dtype=np.float64)
    if len(x) != n:
        raise ValueError(f"features have {len(x)} rows, the log {n}")
    out = np.zeros((n, num_models, targets.shape[1]))
    for f in np.unique(fold):
        test, train = fold == f, fold != f
        if not train.any():
            raise ConfigError("cross-fitting needs at least 2 folds with rows (the log holds too few prompts)")
        fallback = targets[train].mean(axis=0)
        for a in range(num_models):
            rows = train & (actions == a)
            if not rows.any():
                out[test, a] = fallback
                continue
            coef, intercept = _ridge_fit(x[rows], targets[rows], alphas)
            out[test, a] = x[test] @ coef + intercept
    return out


# ---------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class Estimate:
    """One estimate of one quantity of the target policy at one preference.

    Args:
        w_c: The evaluation cost weight.
        estimator: ``ips``, ``snips`` or ``dr``.
        quantity: ``score``, ``cost`` (USD) or ``reward``.
        estimate: The point estimate.
        ci_low: Lower end of the bootstrap interval.
        ci_high: Upper end.
        ess: Effective sample size of the importance weights.
        n_rows: Log rows used.
        weight_mean: Mean importance weight (about 1 when the logging policy covers the target and the propensities
            are right, without clipping).
        clipped_rows: Rows whose weight was clipped.
        warning: Overlap problems found (empty when none).
    """

    w_c: float
    estimator: str
    quantity: str
    estimate: float
    ci_low: float
    ci_high: float
    ess: float
    n_rows: int
    weight_mean: float
    clipped_rows: int
    warning: str


def overlap_warnings(
    log: LoggedFeedback, target: np.ndarray, weights: np.ndarray, clip: float | None, min_ess: float
) -> list[str]:
    """Plain-language overlap problems of a target policy on a log (an empty list when none is found).

    Checks: models the target chooses that the log never served; an effective sample size below ``min_ess``; one
    row carrying more than 10% of the total weight (a tiny logged propensity); a mean weight far from 1 (more than 4
    standard errors, without clipping), which means wrong propensities or models the logging policy never serves.
    """
    problems = []
    mass = target.mean(axis=0)
    unseen = [(log.models[a], mass[a]) for a in np.flatnonzero(log.model_counts() == 0) if mass[a] > 0.01]
    if unseen:
        names = ", ".join(f"{m} ({share:.0%})" for m, share in unseen)
        problems.append(f"the target chooses models the log never served: {names}; IPS and SNIPS cannot see them, "
                        "DR relies on its reward model there")
    ess = effective_sample_size(weights)
    if ess < min_ess:
        problems.append(f"effective sample size {ess:.1f} of {len(weights)} rows is below {min_ess:g}: few logged "
                        "requests took the target's choices; intervals are wide and may undercover")
    total = weights.sum()
    if total > 0 and weights.max() / total > 0.1 and len(weights) >= 20:
        i = int(np.argmax(weights))
        problems.append(f"row {i} carries {weights[i] / total:.0%} of the total importance weight (logged "
                        f"propensity {log.propensity[i]:.3g}); consider clipping")
    se = weights.std() / np.sqrt(len(weights))
    if clip is None and abs(weights.mean() - 1.0) > max(4 * se, 0.02):
        problems.append(f"mean importance weight {weights.mean():.3f} is far from 1: the propensities may be wrong, "
                        "or the logging policy rarely serves models the target chooses")
    return problems


def _check_target(target: np.ndarray, log: LoggedFeedback, w_c: float) -> np.ndarray:
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (log.num_rows, log.num_models):
        raise ValueError(f"target probabilities at w_c={w_c:g}: expected shape {(log.num_rows, log.num_models)}, "
                         f"got {target.shape}")
    if not np.isfinite(target).all() or (target < 0).any() or not np.allclose(target.sum(axis=1), 1.0, atol=1e-5):
        raise ValueError(f"target probabilities at w_c={w_c:g} must be finite, >= 0 and sum to 1 per row")
    return target


def possible_range(quantity: str, w_c: float) -> tuple[float, float]:
    """The range every policy's mean ``quantity`` lies in at cost weight ``w_c``.

    Scores are in [0, 1] and costs >= 0 per request, and the reward ``(1 - w_c) q - w_c min(c / tau, 1)`` is in
    ``[-w_c, 1 - w_c]``, so a mean outside these bounds cannot be any policy's.
    """
    if quantity == "score":
        return 0.0, 1.0
    if quantity == "reward":
        return -float(w_c), 1.0 - float(w_c)
    return 0.0, float("inf")


def is_impossible(estimate: Estimate, tolerance: float = 1e-9) -> bool:
    """Whether the point estimate lies outside :func:`possible_range` (beyond rounding)."""
    low, high = possible_range(estimate.quantity, estimate.w_c)
    return bool(estimate.estimate < low - tolerance or estimate.estimate > high + tolerance)


def _impossible_message(name: str, quantity: str, value: float, pref: float, weights: np.ndarray) -> str:
    low, high = possible_range(quantity, pref)
    bounds = f"[{low:g}, {high:g}]" if np.isfinite(high) else f">= {low:g}"
    return (f"IMPOSSIBLE {name} {quantity} estimate {value:.4g} at w_c={pref:g}: every policy's mean {quantity} is "
            f"{bounds}; too few rows or extreme importance weights ({len(weights)} rows, effective sample size "
            f"{effective_sample_size(weights):.1f}, largest weight {weights.max():.3g}) make it meaningless: do not "
            "use it (it is not clipped)")


def check_options(estimators: Sequence[str], clip: float | None, bootstrap: int, level: float, folds: int) -> None:
    """Refuse bad estimation options (see :func:`estimate_policy`) with one :class:`ConfigError` each."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ConfigError(f"estimators: {unknown or 'none given'}; choose among {list(ESTIMATORS)}")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ConfigError(f"clip must be a number > 0 (the largest importance weight kept) or None, got {clip!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 1:
        raise ConfigError(f"bootstrap must be an integer >= 1 (resamples), got {bootstrap!r}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2 (cross-fitting), got {folds!r}")


def estimate_policy(
    log: LoggedFeedback,
    target: Mapping[float, np.ndarray] | Callable[[float], np.ndarray],
    w_c: Sequence[float],
    tau: float,
    features: np.ndarray | None = None,
    *,
    estimators: Sequence[str] = ESTIMATORS,
    clip: float | None = None,
    bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    folds: int = 2,
    min_ess: float = 50.0,
) -> list[Estimate]:
    """Estimate a target policy's mean score, cost and reward at each preference from a log.

    Args:
        log: The served-request log (its models in the target's arm order).
        target: The target's probabilities per log row at a cost weight, shape (n, K): a mapping w_c -> array, or a
            function of w_c.
        w_c: Evaluation cost weights (w = (1 - w_c, w_c)).
        tau: Cost scale of the reward (USD; the router's tau).
        features: Per-row features of the DR reward model (the prompt embeddings), shape (n, D); None: per-model
            means.
        estimators: Any of ``ips``, ``snips``, ``dr``.
        clip: Largest importance weight kept (None: no clipping).
        bootstrap: Bootstrap resamples of the log rows.
        level: Coverage of the intervals.
        seed: Seed of the folds and of the resampling.
        folds: Cross-fitting folds of the DR reward model (>= 2).
        min_ess: Warn below this effective sample size.

    Returns:
        One :class:`Estimate` per (w_c, estimator, quantity), in that order. Each overlap problem is also issued
        once per preference as a ``UserWarning``, and so is each impossible estimate (:func:`is_impossible`; kept
        as computed, its ``warning`` starts with ``IMPOSSIBLE``).
    """
    check_options(estimators, clip, bootstrap, level, folds)
    if not tau > 0:
        raise ConfigError(f"tau must be > 0 (USD), got {tau!r}")
    norm_cost = np.minimum(log.cost / tau, 1.0)
    observed = np.stack([log.score, log.cost, norm_cost], axis=1)
    predicted = None
    if "dr" in estimators:
        fold = fold_of_rows(log.prompts, folds, seed)
        predicted = cross_fit_predictions(features, log.actions, observed, log.num_models, fold)
    results: list[Estimate] = []
    for pref in w_c:
        pref = check_w_c(pref, "w_c")
        probs = _check_target(target[pref] if isinstance(target, Mapping) else target(pref), log, pref)
        results.extend(_estimates_at(log, probs, pref, observed, predicted, estimators, clip, bootstrap, level,
                                     seed, min_ess))
    return results


def _estimates_at(log, probs, pref, observed, predicted, estimators, clip, bootstrap, level, seed, min_ess):
    """The estimates at one preference (see :func:`estimate_policy`)."""
    raw = target_logging_ratios(probs, log.actions, log.propensity)
    weights = raw if clip is None else np.minimum(raw, clip)
    mix = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([1.0 - pref, 0.0, -pref])
    y = observed @ np.stack(mix, axis=1)  # (n, 3): score, cost, reward
    ones = np.ones((len(y), 3))
    terms = {"ips": (weights[:, None] * y, ones), "snips": snips_terms(weights, y)}
    if predicted is not None:
        m = predicted @ np.stack(mix, axis=1)  # (n, K, 3)
        direct = np.einsum("nk,nkq->nq", probs, m)
        m_logged = m[np.arange(len(y)), log.actions]
        terms["dr"] = (direct + weights[:, None] * (y - m_logged), ones)
    problems = overlap_warnings(log, probs, weights, clip, min_ess)
    if problems:
        warnings.warn(f"{log.source}: at w_c={pref:g}: " + "; ".join(problems), UserWarning, stacklevel=3)
    common = dict(w_c=pref, ess=effective_sample_size(weights), n_rows=len(y), weight_mean=float(weights.mean()),
                  clipped_rows=int((raw > clip).sum()) if clip is not None else 0, warning="; ".join(problems))
    names = [e for e in ESTIMATORS if e in estimators]
    num = np.concatenate([terms[e][0] for e in names], axis=1)
    den = np.concatenate([terms[e][1] for e in names], axis=1)
    point, (low, high) = ratio_of_sums(num, den, bootstrap, seed, level)
    out = []
    for e_i, name in enumerate(names):
        for q_i, quantity in enumerate(QUANTITIES):
            c = 3 * e_i + q_i
            estimate = Estimate(estimator=name, quantity=quantity, estimate=float(point[c]), ci_low=float(low[c]),
                                ci_high=float(high[c]), **common)
            if is_impossible(estimate):
                message = _impossible_message(name, quantity, estimate.estimate, pref, weights)
                warnings.warn(f"{log.source}: {message}", UserWarning, stacklevel=3)
                estimate = replace(estimate, warning="; ".join(filter(None, [message, estimate.warning])))
            out.append(estimate)
    return out
