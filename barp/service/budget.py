"""The online budget controller: adapt w_c over a stream of requests so that spend tracks a budget per 1k queries.

The controller is projected dual (sub)gradient ascent on the budget constraint ``E[cost] <= B``. The cost weight
plays the role of the dual variable: after each served request with observed cost ``c``,

    w_c <- clip(w_c + step * (c / B - 1), w_min, w_max)

Spending above the budget raises the price of cost, spending below lowers it. Summed over a stream, the updates give
``w_c(t) - w_c(0) = step * (spent(t) - B t) / B`` while ``w_c`` stays inside its bounds, so a bounded ``w_c`` keeps the
overspend bounded: ``spent(t) - B t <= B (w_max - w_c(0)) / step``, whatever the order of the prompts. The error is
relative to the budget, so one ``step`` works for any price level; ``step`` trades the speed of the correction
against the jitter of ``w_c`` (one request at ``k`` times the budget moves it by ``step * (k - 1)``). Start it at the
calibrated w_c (``barp calibrate``) so that it only corrects for drift.

``max_move`` clips each update: no single row moves w_c by more than ``max_move`` (a row above
``1 + max_move / step`` times the budget counts as that much), so one absurd or hostile cost cannot pin w_c to a bound.
The clip trades the overspend bound above (clipped overspend is not corrected) for that robustness; ``max_move=None``
is the unclipped controller. :meth:`BudgetController.reset` forgets the served requests and restarts from a w_c.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from barp.data.table import MAX_COST_USD
from barp.errors import ConfigError, DataValidationError


def cost_problem(cost: object) -> str | None:
    """Why ``cost`` is not the cost of one request in USD (None when it is one): it must be a finite number in
    ``[0, MAX_COST_USD]``. No LLM call costs more than :data:`~barp.data.table.MAX_COST_USD`; a larger value is a unit
    mistake or junk, and one such cost would move the budget controller to its bound and dominate every estimate.
    The same rule holds for ``/feedback``, the request log, its replay at start-up and the controller."""
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        return f"{cost!r} is not a number (USD per request)"
    value = float(cost)
    if not math.isfinite(value) or not 0 <= value <= MAX_COST_USD:
        return f"{value!r} is not a finite cost in [0, {MAX_COST_USD:g}] USD per request (MAX_COST_USD)"
    return None


@dataclass
class BudgetController:
    """Tracks a budget in USD per 1000 queries by moving the cost weight after each observed cost.

    Args:
        budget_per_1k: Target spend in USD per 1000 queries (> 0).
        w_c: Starting cost weight, in [w_min, w_max] (e.g. the calibrated one).
        step: Change of w_c per request per unit of relative overspend (> 0).
        w_min: Lowest cost weight the controller may set.
        w_max: Highest cost weight the controller may set.
        max_move: Most one update may move w_c (> 0), or None: unclipped.
    """

    budget_per_1k: float
    w_c: float = 0.5
    step: float = 0.01
    w_min: float = 0.0
    w_max: float = 1.0
    max_move: float | None = None
    served: int = field(default=0, init=False)
    spent: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        checks = (
            ("budget_per_1k", self.budget_per_1k, lambda v: v > 0, "a number > 0 (USD per 1000 queries)"),
            ("step", self.step, lambda v: v > 0, "a number > 0"),
            ("w_min", self.w_min, lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("w_max", self.w_max, lambda v: self.w_min <= v <= 1, f"in [w_min={self.w_min!r}, 1]"),
            ("w_c", self.w_c, lambda v: self.w_min <= v <= self.w_max, f"in [{self.w_min!r}, {self.w_max!r}]"),
            ("max_move", 1.0 if self.max_move is None else self.max_move, lambda v: v > 0, "a number > 0 (or None)"),
        )
        for name, value, ok, what in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not ok(value):
                raise ConfigError(f"budget controller: {name} must be {what}, got {value!r}")
        self.w_c = float(self.w_c)

    @property
    def budget(self) -> float:
        """The budget per query in USD."""
        return self.budget_per_1k / 1000.0

    @property
    def spend_per_1k(self) -> float:
        """Spend so far in USD per 1000 queries (NaN before the first update)."""
        return 1000.0 * self.spent / self.served if self.served else float("nan")

    def update(self, cost: float) -> float:
        """Account for one served request's cost (USD) and return the new cost weight.

        Raises:
            DataValidationError: ``cost`` is not a finite number in ``[0, MAX_COST_USD]`` (the controller is left as
                it was).
        """
        problem = cost_problem(cost)
        if problem is not None:
            raise DataValidationError(f"budget controller: cost {problem}")
        cost = float(cost)
        self.served += 1
        self.spent += cost
        move = self.step * (cost / self.budget - 1.0)
        if self.max_move is not None:
            move = min(self.max_move, max(-self.max_move, move))
        self.w_c = min(self.w_max, max(self.w_min, self.w_c + move))
        return self.w_c

    def reset(self, w_c: float) -> None:
        """Forget every served request and restart from ``w_c`` (clipped to [w_min, w_max])."""
        if isinstance(w_c, bool) or not isinstance(w_c, (int, float)) or not math.isfinite(w_c):
            raise ConfigError(f"budget controller: reset w_c must be a number in [0, 1], got {w_c!r}")
        self.w_c = min(self.w_max, max(self.w_min, float(w_c)))
        self.served, self.spent = 0, 0.0

    def state(self) -> dict[str, float | None]:
        """What ``/health`` shows: the budget, the current w_c, requests and spend so far."""
        return {"budget_per_1k": self.budget_per_1k, "w_c": self.w_c, "served": self.served,
                "spend_per_1k": self.spend_per_1k if self.served else None, "step": self.step,
                "max_move": self.max_move, "w_min": self.w_min, "w_max": self.w_max}
