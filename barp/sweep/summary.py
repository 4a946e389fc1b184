"""``summary.json`` of a preference sweep: per method and split, AIQ, score at the best single model's cost, cost to
reach its score, and mean regret against the oracle."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from barp.metrics.aiq import aiq, cost_to_reach, mean_regret, score_at_cost
from barp.metrics.bootstrap import PerPrompt, bootstrap_aiq
from barp.metrics.evaluation import aiq_cost_range, aiq_defined

SINGLE_PREFIX = "single:"

DEFINITIONS = {
    "aiq": "RouterBench's AIQ: area under the method's non-decreasing convex hull of (cost, score) points over the "
           "split's cost_range, divided by the range's width; the hull is 0 below the method's cheapest point and "
           "flat beyond its best point",
    "cost_range": "[0, the most expensive single model's mean cost per query on the split] (USD): fixed by the "
                  "split's outcomes, so a method's AIQ does not depend on which other methods were swept",
    "best_single_model": "the single model with the highest mean score on the split (the cheaper one among ties)",
    "score_at_best_single_cost": "the method's hull score at the best single model's cost (null if the method's "
                                 "cheapest operating point costs more)",
    "cost_to_best_single_score": "least cost (USD per query) at which the method's hull reaches the best single "
                                 "model's score (null if it never does)",
    "aiq_defined": "false where every model has the same mean cost on the split (one price for all, or all free): "
                   "every frontier is then a vertical line, aiq is null, and tables rank by mean_reward instead",
    "mean_reward": "the method's reward averaged over the w_c grid (split means)",
    "mean_regret": "mean over the w_c grid of (oracle reward - method reward), split means",
    "score_over_prompts": "per w_c, the method's mean score over the split's prompts (barp's tables; larger tasks "
                          "weigh more)",
    "score_over_tasks": "per w_c, the mean over the split's tasks of each task's mean score (every task counts "
                        "once, as RouterDC, GraphRouter and EmbedLLM report their averages)",
    "aiq_ci": "95% percentile interval of the AIQ under a bootstrap over the split's test prompts (the same resample "
              "for every method, cost range recomputed per resample); test-prompt variation only, not training seeds",
    "aiq_diff_ci": "95% interval of (this method's AIQ - the reference's) under the same paired bootstrap; the "
                   "reference is meta.bootstrap_reference (the checkpoint's method)",
    "p_diff_positive": "share of bootstrap resamples in which this method's AIQ is above the reference's",
}


def _points(rows: list[dict], split: str) -> dict[str, dict[str, np.ndarray]]:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["split"] == split and r["task"] == "all":
            by_method[r["method"]].append(r)
    out = {}
    for method, rs in by_method.items():
        rs = sorted(rs, key=lambda r: r["w_c"])
        out[method] = {k: np.array([r[k] for r in rs], dtype=np.float64) for k in ("w_c", "score", "cost", "reward")}
    return out


def task_means(rows: list[dict], method: str, split: str, key: str = "score") -> dict[str, float]:
    """Per preference (``"0.5"``), the mean over the split's tasks of each task's mean ``key`` (every task counts
    once, as routing papers average their task columns), from the sweep's per-task rows."""
    by_w: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and r["split"] == split and r["task"] != "all":
            by_w[f"{float(r['w_c']):g}"].append(float(r[key]))
    return {w: float(np.mean(v)) for w, v in by_w.items()}


def _clean(x: float | None) -> float | None:
    return None if x is None else float(x)


def summarize(rows: list[dict], meta: dict | None = None,
              per_prompt: dict[tuple[str, str], PerPrompt] | None = None, resamples: int = 1000, seed: int = 0,
              reference: str | None = None, model_costs: dict[str, np.ndarray] | None = None) -> dict:
    """Build the summary from sweep rows (``method, w_c, split, task, n, score, cost, reward``).

    Args:
        rows: The sweep rows; the ``task == "all"`` rows are used.
        meta: Extra fields to record (tau, grid, seed, checkpoint, ...).
        per_prompt: Per (split, method), the per-prompt choices behind the rows (in the rows' w_c order); when given,
            each entry gets bootstrap intervals (:func:`barp.metrics.bootstrap.bootstrap_aiq`).
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.
        reference: Method the paired AIQ differences are taken against.
        model_costs: Per split, every model's cost on every test prompt, shape (N, K): the AIQ cost range is
            [0, the most expensive model's mean cost] (:func:`barp.metrics.evaluation.aiq_cost_range`). None: the
            most expensive of the ``single:`` methods' mean costs in ``rows``.

    Returns:
        ``{"definitions", "meta", "splits": {split: {cost_range, best_single_model}}, "results": {method: {split:
        {aiq, score_at_best_single_cost, cost_to_best_single_score, mean_regret}}}}``.
    """
    splits = list(dict.fromkeys(r["split"] for r in rows))
    summary: dict = {"definitions": DEFINITIONS, "meta": dict(meta or {}), "splits": {}, "results": {}}
    if per_prompt is not None:
        summary["meta"]["bootstrap_reference"] = reference
    for split in splits:
        pts = _points(rows, split)
        singles = {m: p for m, p in pts.items() if m.startswith(SINGLE_PREFIX)}
        if model_costs is not None:
            mean_costs = model_costs[split].mean(axis=0)
        elif singles:
            mean_costs = np.array([p["cost"].mean() for p in singles.values()])
        else:
            raise ValueError(f"summarize: split {split!r} needs model_costs or single-model rows for its AIQ range")
        cost_range, defined = aiq_cost_range(mean_costs), aiq_defined(mean_costs)
        best: dict[str, Any] | None = None  # the best single model: its name, mean score and mean cost
        if singles:
            name = min(singles, key=lambda m: (-singles[m]["score"].mean(), singles[m]["cost"].mean()))
            best = {"method": name, "score": float(singles[name]["score"].mean()),
                    "cost": float(singles[name]["cost"].mean())}
        summary["splits"][split] = {"cost_range": list(cost_range), "aiq_defined": defined,
                                    "best_single_model": best}
        oracle = pts.get("oracle")
        for method, p in pts.items():
            entry = {"aiq": aiq(p["cost"], p["score"], cost_range) if defined else None,
                     "mean_reward": float(np.mean(p["reward"])), "score_at_best_single_cost": None,
                     "cost_to_best_single_score": None, "mean_regret": None,
                     "score_over_prompts": {f"{w:g}": float(v) for w, v in zip(p["w_c"], p["score"])},
                     "score_over_tasks": task_means(rows, method, split)}
            if best is not None:
                entry["score_at_best_single_cost"] = _clean(score_at_cost(p["cost"], p["score"], best["cost"]))
                entry["cost_to_best_single_score"] = _clean(cost_to_reach(p["cost"], p["score"], best["score"]))
            if oracle is not None:
                matched = np.isin(p["w_c"], oracle["w_c"])
                o = {w: r for w, r in zip(oracle["w_c"], oracle["reward"])}
                entry["mean_regret"] = mean_regret(np.array([o[w] for w in p["w_c"][matched]]), p["reward"][matched])
            summary["results"].setdefault(method, {})[split] = entry
        if per_prompt is not None and defined:
            chosen = {m: per_prompt[(split, m)] for m in pts}  # AIQ does not depend on the points' order
            # the same range as the point estimate: the split's models, else the single-model methods' costs
            costs = model_costs[split] if model_costs is not None else np.stack(
                [chosen[m].cost[0] for m in singles], axis=1)
            for method, extra in bootstrap_aiq(chosen, resamples, seed, reference, model_costs=costs).items():
                summary["results"][method][split].update(extra)
    return summary


def format_summary(summary: dict) -> str:
    """A Markdown table per method (rows) and split: AIQ with its bootstrap interval, the paired AIQ difference to the
    reference method with its interval (when the sweep bootstrapped), and mean regret."""
    splits = list(summary["splits"])
    ref = summary["meta"].get("bootstrap_reference")
    diff = ref is not None and any("aiq_diff_ci" in e for m in summary["results"].values() for e in m.values())
    # where every model costs the same, AIQ is undefined (aiq_defined): the column is the mean reward instead
    key = {s: "aiq" if summary["splits"][s].get("aiq_defined", True) else "mean_reward" for s in splits}
    label = {"aiq": "AIQ", "mean_reward": "mean reward (AIQ undefined: one price)"}
    cols = [f"{label[key[s]]} {s}" + (f" | {s}: minus {ref}" if diff else "") + f" | regret {s}" for s in splits]
    lines = ["| method | " + " | ".join(cols) + " |", "|" + "---|" * (1 + (3 if diff else 2) * len(splits))]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    def interval(ci: list[float] | None, signed: bool = False) -> str:
        return "" if ci is None else " [" + ", ".join(f"{v:+.3f}" if signed else f"{v:.3f}" for v in ci) + "]"

    first = splits[0]
    order = sorted(summary["results"], key=lambda m: -(summary["results"][m].get(first, {}).get(key[first]) or 0))
    for method in order:
        cells = []
        for s in splits:
            e = summary["results"][method].get(s, {})
            cells.append(fmt(e.get(key[s])) + interval(e.get("aiq_ci")))
            if diff:
                base = summary["results"].get(ref, {}).get(s, {}).get(key[s])
                d = None if method == ref or e.get(key[s]) is None or base is None else e[key[s]] - base
                cells.append("-" if d is None else f"{d:+.4f}" + interval(e.get("aiq_diff_ci"), signed=True))
            cells.append(fmt(e.get("mean_regret")))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
