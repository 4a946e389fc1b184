"""Pareto metrics of a preference sweep: RouterBench's AIQ, score at matched cost, cost to match, regret.

A router swept over preferences gives (cost, score) operating points. Mixing two operating points at random
reaches any point on the segment between them, so what a router can achieve is the upper convex hull of its
points; RouterBench makes it non-decreasing (paying more never has to lower quality: keep the best point's score
beyond it). Below its cheapest point a router achieves nothing, so the curve is 0 there (as in RouterBench's code,
whose area starts at the router's cheapest point).
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def nondecreasing_hull(costs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The vertices (cost, score) of the non-decreasing upper convex hull of the points, sorted by cost.

    Args:
        costs: Cost of each operating point, shape (n,).
        scores: Score of each operating point, shape (n,).

    Returns:
        Array of shape (m, 2): the upper concave envelope from the cheapest point up to the best-scoring one.
    """
    pts = np.column_stack([np.asarray(costs, dtype=np.float64), np.asarray(scores, dtype=np.float64)])
    if len(pts) == 0:
        raise ValueError("nondecreasing_hull: no points")
    pts = pts[np.lexsort((-pts[:, 1], pts[:, 0]))]  # by cost, best score first among equal costs
    pts = pts[np.concatenate([[True], np.diff(pts[:, 0]) > 0])]
    hull: list[np.ndarray] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            lhs, rhs = (x2 - x1) * (p[1] - y1), (y2 - y1) * (p[0] - x1)
            if lhs - rhs >= -1e-9 * (abs(lhs) + abs(rhs)):  # not a right turn (collinear too): drop the middle
                hull.pop()
            else:
                break
        hull.append(p)
    out = np.array(hull)
    return out[: int(np.argmax(out[:, 1])) + 1]


def hull_value(hull: np.ndarray, cost: float) -> float:
    """The hull's score at ``cost``: 0 below its cheapest point, flat beyond its best point."""
    if cost < hull[0, 0]:
        return 0.0
    return float(np.interp(cost, hull[:, 0], hull[:, 1]))


def aiq(costs: np.ndarray, scores: np.ndarray, cost_range: tuple[float, float]) -> float:
    """RouterBench's AIQ: the area under the non-decreasing convex hull over ``cost_range``, divided by its width.

    Args:
        costs: Cost of each operating point (e.g. one per preference), shape (n,).
        scores: Score of each operating point, shape (n,).
        cost_range: The common (low, high) cost range all compared routers are integrated over.

    Returns:
        The mean achievable score over the range (in score units, so in [0, 1] for scores in [0, 1]).
    """
    lo, hi = map(float, cost_range)
    if not hi > lo:
        raise ValueError(f"aiq: cost range must have high > low, got {cost_range}")
    hull = nondecreasing_hull(costs, scores)
    xs = np.unique(np.concatenate([[lo, hi], hull[:, 0][(hull[:, 0] > lo) & (hull[:, 0] < hi)]]))
    area = 0.0
    for a, b in zip(xs[:-1], xs[1:]):
        if b <= hull[0, 0]:
            continue  # left of the cheapest point: the curve is 0
        area += 0.5 * (b - a) * (hull_value(hull, a) + hull_value(hull, b))
    return area / (hi - lo)


def score_at_cost(costs: np.ndarray, scores: np.ndarray, cost: float) -> float | None:
    """The hull's score at ``cost``, or None if the router's cheapest operating point costs more.

    Args:
        costs: Cost of each operating point, shape (n,).
        scores: Score of each operating point, shape (n,).
        cost: The cost budget (e.g. the best single model's cost).
    """
    hull = nondecreasing_hull(costs, scores)
    return None if cost < hull[0, 0] - _EPS else hull_value(hull, max(cost, hull[0, 0]))


def cost_to_reach(costs: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The least cost at which the hull reaches ``target`` score, or None if it never does.

    Args:
        costs: Cost of each operating point, shape (n,).
        scores: Score of each operating point, shape (n,).
        target: The score to reach (e.g. the best single model's score).
    """
    hull = nondecreasing_hull(costs, scores)
    above = np.nonzero(hull[:, 1] >= target - _EPS)[0]
    if len(above) == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(hull[0, 0])
    (x1, y1), (x2, y2) = hull[i - 1], hull[i]
    return float(x1 + (target - y1) * (x2 - x1) / (y2 - y1))


def mean_regret(oracle_rewards: np.ndarray, rewards: np.ndarray) -> float:
    """Mean of (oracle reward - router reward) over matched operating points (e.g. the preference grid).

    Args:
        oracle_rewards: The oracle's mean reward at each preference, shape (n,).
        rewards: The router's mean reward at the same preferences, shape (n,).
    """
    o, r = np.asarray(oracle_rewards, dtype=np.float64), np.asarray(rewards, dtype=np.float64)
    if o.shape != r.shape:
        raise ValueError(f"mean_regret: shapes differ, {o.shape} vs {r.shape}")
    return float(np.mean(o - r))
