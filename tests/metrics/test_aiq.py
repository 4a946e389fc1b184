"""Pareto metrics against hand-computed values: the non-decreasing hull, AIQ, matched cost/score, regret, summary."""

import numpy as np
import pytest

from barp.metrics.aiq import (
    aiq,
    cost_to_reach,
    mean_regret,
    nondecreasing_hull,
    score_at_cost,
)
from barp.sweep.summary import summarize

# (cost, score): (2.5, .3) and (3, .5) lie under the hull, (5, .8) is past the best point (4, .9)
COSTS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 2.5])
SCORES = np.array([0.2, 0.6, 0.5, 0.9, 0.8, 0.3])


def test_hull_keeps_upper_nondecreasing_vertices():
    hull = nondecreasing_hull(COSTS, SCORES)
    assert hull.tolist() == [[1.0, 0.2], [2.0, 0.6], [4.0, 0.9]]


def test_hull_drops_collinear_and_dominated_duplicates():
    hull = nondecreasing_hull(np.array([1.0, 2.0, 3.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.05]))
    assert hull.tolist() == [[1.0, 0.1], [3.0, 0.3]]


def test_aiq_by_hand():
    # [0,1]: 0 (below the cheapest point); [1,2]: (.2+.6)/2; [2,4]: 2*(.6+.9)/2; [4,6]: 2*.9 -> 3.7 / 6
    assert aiq(COSTS, SCORES, (0.0, 6.0)) == pytest.approx(3.7 / 6)
    # a sub-range starting inside a segment: [3, 4] -> (.75 + .9) / 2
    assert aiq(COSTS, SCORES, (3.0, 4.0)) == pytest.approx(0.825)
    # a single model is a step: 0 before its cost, its score after
    assert aiq(np.array([2.0]), np.array([0.5]), (0.0, 4.0)) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        aiq(COSTS, SCORES, (1.0, 1.0))


def test_score_at_cost_and_cost_to_reach_by_hand():
    assert score_at_cost(COSTS, SCORES, 3.0) == pytest.approx(0.75)
    assert score_at_cost(COSTS, SCORES, 10.0) == pytest.approx(0.9)
    assert score_at_cost(COSTS, SCORES, 0.5) is None
    assert cost_to_reach(COSTS, SCORES, 0.75) == pytest.approx(3.0)
    assert cost_to_reach(COSTS, SCORES, 0.6) == pytest.approx(2.0)
    assert cost_to_reach(COSTS, SCORES, 0.1) == pytest.approx(1.0)
    assert cost_to_reach(COSTS, SCORES, 0.95) is None


def test_mean_regret_by_hand():
    assert mean_regret(np.array([0.5, 0.4, 0.9]), np.array([0.3, 0.4, 0.6])) == pytest.approx((0.2 + 0 + 0.3) / 3)
    with pytest.raises(ValueError):
        mean_regret(np.array([1.0]), np.array([1.0, 2.0]))


def _row(method, w_c, score, cost, reward, split="id"):
    return {"method": method, "w_c": w_c, "split": split, "task": "all", "n": 10, "score": score, "cost": cost,
            "reward": reward}


def test_summary_by_hand():
    rows = [_row("single:a", w, 0.5, 1.0, 0.5 - w) for w in (0.0, 1.0)]
    rows += [_row("single:b", w, 0.8, 4.0, 0.8 - 2 * w) for w in (0.0, 1.0)]
    rows += [_row("router", 0.0, 0.9, 3.0, 0.7), _row("router", 1.0, 0.6, 2.0, 0.1)]
    rows += [_row("oracle", 0.0, 1.0, 2.0, 0.9), _row("oracle", 1.0, 0.7, 1.0, 0.4)]
    rows.append({**_row("router", 0.0, 0.0, 99.0, 0.0), "task": "math"})  # per-task rows are not operating points
    s = summarize(rows, {"tau": 1.0})
    assert s["splits"]["id"]["cost_range"] == [0.0, 4.0]
    assert s["splits"]["id"]["best_single_model"] == {"method": "single:b", "score": 0.8, "cost": 4.0}
    r = s["results"]["router"]["id"]
    # hull (2, .6) -> (3, .9), flat to 4: area (1 * .75 + 1 * .9) / 4
    assert r["aiq"] == pytest.approx((0.75 + 0.9) / 4)
    assert r["score_at_best_single_cost"] == pytest.approx(0.9)
    assert r["cost_to_best_single_score"] == pytest.approx(2.0 + (0.8 - 0.6) / 0.3)
    assert r["mean_regret"] == pytest.approx(((0.9 - 0.7) + (0.4 - 0.1)) / 2)
    assert s["results"]["oracle"]["id"]["mean_regret"] == 0.0
    assert s["results"]["single:a"]["id"]["cost_to_best_single_score"] is None
    assert s["meta"] == {"tau": 1.0} and "aiq" in s["definitions"]
