"""The paired bootstrap of AIQ over test prompts (``barp sweep``'s intervals)."""

from __future__ import annotations

import numpy as np
import pytest

from barp.metrics.aiq import aiq
from barp.metrics.bootstrap import PerPrompt, bootstrap_aiq
from barp.sweep.summary import format_summary, summarize


def _constant_cost(scores: np.ndarray, cost: float) -> PerPrompt:
    """One operating point (a single preference) with the same cost on every prompt."""
    return PerPrompt(scores[None, :].astype(np.float64), np.full((1, len(scores)), cost))


def test_interval_width_matches_the_analytic_standard_error():
    # Cost range is [0, 2] in every resample (costs are constant), so a's AIQ = mean score * (2 - 1) / 2
    # and its standard error is 0.5 * sqrt(p (1 - p) / n).
    rng = np.random.default_rng(0)
    n = 400
    a = rng.integers(0, 2, n).astype(float)
    methods = {"a": _constant_cost(a, 1.0), "b": _constant_cost(rng.integers(0, 2, n).astype(float), 2.0)}
    out = bootstrap_aiq(methods, resamples=4000, seed=1)
    lo, hi = out["a"]["aiq_ci"]
    p = a.mean()
    expected = 2 * 1.96 * 0.5 * np.sqrt(p * (1 - p) / n)
    assert hi - lo == pytest.approx(expected, rel=0.12)
    assert lo < aiq(np.array([1.0]), np.array([p]), (0.0, 2.0)) < hi


def test_paired_differences_are_zero_for_a_copy_and_negative_for_a_dominated_method():
    rng = np.random.default_rng(3)
    n, g = 300, 4
    score = np.repeat(rng.integers(0, 2, (1, n)), g, axis=0).astype(float)  # a prompt is easy or hard for all w
    cost = rng.uniform(0.5, 2.0, (g, n)) * np.arange(1, g + 1)[:, None]
    worse = score.copy()
    worse[:, rng.random(n) < 0.1] = 0.0  # also fails on 10% of the prompts, same cost
    methods = {"ref": PerPrompt(score, cost), "copy": PerPrompt(score.copy(), cost.copy()),
               "worse": PerPrompt(worse, cost)}
    out = bootstrap_aiq(methods, resamples=500, seed=0, reference="ref")
    assert "aiq_diff_ci" not in out["ref"]
    assert out["copy"]["aiq_diff_ci"] == [0.0, 0.0] and out["copy"]["p_diff_positive"] == 0.0
    assert out["worse"]["aiq_diff_ci"][1] < 0 and out["worse"]["p_diff_positive"] == 0.0
    # The paired interval of the difference is narrower than either method's own interval.
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(out["worse"]["aiq_diff_ci"]) < 0.6 * width(out["worse"]["aiq_ci"])


def test_seeded_and_reproducible():
    rng = np.random.default_rng(5)
    methods = {m: PerPrompt(rng.random((3, 50)), rng.random((3, 50))) for m in ("x", "y")}
    first = bootstrap_aiq(methods, 200, seed=7, reference="x")
    assert bootstrap_aiq(methods, 200, seed=7, reference="x") == first
    assert bootstrap_aiq(methods, 200, seed=8, reference="x") != first


def test_bad_arguments_are_named():
    good = PerPrompt(np.ones((2, 10)), np.ones((2, 10)))
    with pytest.raises(ValueError, match="resamples must be >= 1, got 0"):
        bootstrap_aiq({"a": good}, 0, seed=0)
    with pytest.raises(ValueError, match="reference 'z'"):
        bootstrap_aiq({"a": good}, 10, seed=0, reference="z")
    with pytest.raises(ValueError, match=r"same prompts, got sizes \[9, 10\]"):
        bootstrap_aiq({"a": good, "b": PerPrompt(np.ones((2, 9)), np.ones((2, 9)))}, 10, seed=0)


def test_summary_and_table_carry_the_intervals():
    rng = np.random.default_rng(2)
    n = 80
    per_prompt, rows = {}, []
    for name, level, cost in (("single:a", 0.5, 1.5), ("router", 0.7, 1.0), ("oracle", 0.9, 2.0)):
        s = (rng.random((2, n)) < level).astype(float)
        c = np.full((2, n), cost)
        per_prompt[("id", name)] = PerPrompt(s, c)
        rows += [{"method": name, "w_c": w, "split": "id", "task": "all", "n": n, "score": s[i].mean(),
                  "cost": c[i].mean(), "reward": s[i].mean() - w * cost} for i, w in enumerate((0.0, 1.0))]
    summary = summarize(rows, {"tau": 1.0}, per_prompt, resamples=300, seed=0, reference="router")
    assert summary["meta"]["bootstrap_reference"] == "router"
    router, single = summary["results"]["router"]["id"], summary["results"]["single:a"]["id"]
    assert router["aiq_ci"][0] <= router["aiq"] <= router["aiq_ci"][1]
    assert "aiq_diff_ci" not in router and single["aiq_diff_ci"][1] < 0
    table = format_summary(summary)
    assert "id: minus router" in table.splitlines()[0]
    line = next(x for x in table.splitlines() if x.startswith("| single:a |"))
    assert f"{single['aiq'] - router['aiq']:+.4f} [{single['aiq_diff_ci'][0]:+.3f}" in line
    plain = summarize(rows, {"tau": 1.0})  # without per-prompt choices: no intervals, no difference column
    assert "aiq_ci" not in plain["results"]["router"]["id"] and "minus" not in format_summary(plain)
