"""Replay a checkpoint's test split through the online budget controller, beside the fixed calibrated w_c.

    python tools/replay_budget.py --ckpt_path best.ckpt --budget_per_1k 0.5 --steps "[0.002, 0.005, 0.01, 0.02]"

The fixed w_c is calibrated on the validation split for the budget (``barp calibrate``'s choice). The controller
starts at that w_c and, on each of ``--orders`` random orders of the test prompts, serves each prompt greedily at its
current w_c (rounded to a grid of 1001 values), observes the served model's cost from the table and updates.
Prints, per controller step and for the fixed w_c, the stream's spend per 1k queries, its overshoot of the budget
(spend / budget - 1; negative: under budget), the worst running overshoot after the first ``--burn_in`` queries,
and the mean score; mean and standard deviation over the orders.
"""

from __future__ import annotations

import numpy as np
from jsonargparse import CLI

from barp.service.budget import BudgetController
from barp.service.calibrate import Target, checkpoint_split, choose
from barp.service.curve import curve_from_table, greedy_choices

GRID = 1001


def replay(choices: np.ndarray, scores: np.ndarray, costs: np.ndarray, order: np.ndarray, budget_per_1k: float,
           w_c: float, step: float, burn_in: int) -> dict[str, float]:
    """One stream through a controller: spend per 1k, overshoot, worst running overshoot after burn-in, score."""
    ctl = BudgetController(budget_per_1k, w_c=w_c, step=step)
    spent, worst, total_score = 0.0, -np.inf, 0.0
    for t, i in enumerate(order, start=1):
        a = choices[int(round(ctl.w_c * (GRID - 1))), i]
        spent += costs[i, a]
        total_score += scores[i, a]
        ctl.update(costs[i, a])
        if t >= burn_in:
            worst = max(worst, 1000 * spent / t / budget_per_1k - 1)
    spend = 1000 * spent / len(order)
    return {"spend_per_1k": spend, "overshoot": spend / budget_per_1k - 1, "worst_running": worst,
            "score": total_score / len(order), "final_w_c": ctl.w_c}


def main(ckpt_path: str, budget_per_1k: float, steps: list[float] | None = None, orders: int = 20, seed: int = 0,
         split: str = "test", burn_in: int = 100) -> dict:
    """Replay the test split through the budget controller and report overshoot and score.

    Args:
        ckpt_path: Checkpoint written by barp fit (run from the folder it was trained in: data paths are relative).
        budget_per_1k: Budget in USD per 1000 queries.
        steps: Controller steps to compare (default [0.002, 0.005, 0.01, 0.02]).
        orders: Random orders of the split to replay.
        seed: Seed of the orders.
        split: The split to replay.
        burn_in: Queries before the running overshoot is tracked.
    """
    from barp.models.trained import TrainedRouter

    steps = [0.002, 0.005, 0.01, 0.02] if steps is None else steps
    router = TrainedRouter.from_checkpoint(ckpt_path)
    grid = np.linspace(0, 1, 101)
    emb, scores, costs, source = checkpoint_split(ckpt_path, "val", router)
    val = curve_from_table(grid, greedy_choices(router.module, emb, grid), scores, costs, router.models, "val")
    fixed = float(grid[choose(val, Target(cost_per_1k=budget_per_1k))])
    emb, scores, costs, _ = checkpoint_split(ckpt_path, split, router)
    choices = greedy_choices(router.module, emb, np.linspace(0, 1, GRID))
    rng = np.random.default_rng(seed)
    streams = [rng.permutation(len(emb)) for _ in range(orders)]
    rows = {"fixed calibrated w_c": [replay(choices, scores, costs, o, budget_per_1k, fixed, 1e-12, burn_in)
                                     for o in streams]}
    for step in steps:
        rows[f"controller step {step:g}"] = [replay(choices, scores, costs, o, budget_per_1k, fixed, step, burn_in)
                                             for o in streams]
    print(f"{source}: {split} split, {len(emb)} prompts, {orders} random orders; budget ${budget_per_1k:g} per 1k "
          f"queries; w_c calibrated on val: {fixed:g}")
    print(f"{'policy':<26} {'spend/1k':>18} {'overshoot':>17} {'worst running':>15} {'score':>16}")
    out = {}
    for name, results in rows.items():
        get = lambda k, results=results: np.array([r[k] for r in results])  # noqa: E731
        out[name] = {k: (float(get(k).mean()), float(get(k).std())) for k in results[0]}
        s, o, w, q = (out[name][k] for k in ("spend_per_1k", "overshoot", "worst_running", "score"))
        print(f"{name:<26} {s[0]:>9.4f} ± {s[1]:<6.4f} {o[0]:>+8.1%} ± {o[1]:<5.1%} {w[0]:>+8.1%} ± {w[1]:<4.0%}"
              f" {q[0]:>7.4f} ± {q[1]:.4f}")
    return out


if __name__ == "__main__":
    CLI(main, as_positional=False)
