"""The routing service behind the HTTP layer: preferences, greedy or exploring choices, decisions and feedback.

It holds one :class:`~barp.models.trained.TrainedRouter` (encoder and policy loaded once), the request log
(:class:`~barp.service.feedback_log.FeedbackLog`), an optional calibration curve (targets in dollars or shares) and an
optional :class:`~barp.service.budget.BudgetController`. A request's preference is, in this order: its own ``w_c``;
its own target, resolved on the calibration curve; else the service default: the budget controller's current w_c,
the calibrated w_c, or the configured ``w_c``.

Exploring routing samples the served model from the policy at a temperature, mixed with epsilon-uniform,
``p = (1 - epsilon) softmax(logits / T) + epsilon / K``, through the router's one exploring sampler
(:func:`barp.models.serving.sample_exploring`) with a generator seeded per request (the seed is returned and logged,
so a decision can be replayed); the logged propensity is ``p`` of the served model. Greedy routing serves the
argmax, with propensity 1 (a deterministic policy).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from barp.data.table import MAX_COST_USD
from barp.errors import ConfigError, DataValidationError
from barp.service.budget import BudgetController
from barp.service.calibrate import Target, choose
from barp.service.curve import Curve
from barp.service.feedback_log import FeedbackLog

#: Lowest exploring temperature: below it the tempered softmax is the argmax (and 1 / T overflows near 1e-308).
MIN_TEMPERATURE = 1e-3
#: Highest exploring temperature.
MAX_TEMPERATURE = 100.0


class RequestTimeout(Exception):
    """A request ran past the server's time limit; nothing of it was recorded."""


@dataclass(frozen=True)
class Explore:
    """Exploring routing: sample from ``(1 - epsilon) softmax(logits / temperature) + epsilon / K``.

    Raises:
        ConfigError: ``temperature`` outside [MIN_TEMPERATURE, MAX_TEMPERATURE] or ``epsilon`` outside [0, 1].
    """

    temperature: float = 1.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high in (("temperature", MIN_TEMPERATURE, MAX_TEMPERATURE), ("epsilon", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise ConfigError(f"field 'explore.{name}': must be a number in [{low:g}, {high:g}], got {value!r}")


def now() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RoutingService:
    """Routes prompts and logs feedback for one trained router.

    Args:
        router: The trained router (a :class:`~barp.models.trained.TrainedRouter`).
        log: The request log.
        w_c: Default cost weight when a request gives no preference (and no budget controller runs).
        curve: Calibration curve for targets (``barp calibrate``); None: requests cannot give targets.
        controller: Budget controller; requests without a preference are then served at its w_c, and the feedback
            of those requests updates it (replayed from the log on restart, after the last reset).
        max_cost_usd: Most USD one feedback may report (a larger cost is refused); None: ``MAX_COST_USD``.
    """

    def __init__(self, router, log: FeedbackLog, w_c: float = 0.5, curve: Curve | None = None,
                 controller: BudgetController | None = None, max_cost_usd: float | None = None) -> None:
        self.router = router
        self.log = log
        self.default_w_c = float(w_c)
        self.curve = curve
        self.controller = controller
        self.max_cost_usd = MAX_COST_USD if max_cost_usd is None else float(max_cost_usd)
        self._feedback_lock = threading.Lock()  # log order = controller order (a restart replays the log)
        if curve is not None and list(curve.models) != list(router.models):
            raise ConfigError(f"--calibration: the curve's models {curve.models} are not the checkpoint's "
                              f"{router.models}: calibrate this checkpoint")
        replay = log.replay_costs()
        if controller is not None:
            marker = log.reset_marker
            if marker is not None:
                controller.reset(marker["w_c"])
            for preference, cost in replay:
                if preference == "budget":
                    controller.update(cost)

    @property
    def models(self) -> list[str]:
        """The router's models."""
        return self.router.models

    def resolve(self, w_c: float | None, target: Target | None) -> tuple[float, str]:
        """The cost weight of a request and where it came from (``w_c``, ``target``, ``budget`` or ``default``)."""
        if w_c is not None:
            return float(w_c), "w_c"
        if target is not None:
            if self.curve is None:
                raise ConfigError("target: this server has no calibration curve; start barp serve with "
                                  "--calibration calibration.json (from barp calibrate) or give w_c")
            return float(self.curve.w_c[choose(self.curve, target)]), "target"
        if self.controller is not None:
            return self.controller.w_c, "budget"
        return self.default_w_c, "default"

    def route(self, prompts: Sequence[str], w_c: float | None = None, target: Target | None = None,
              explore: Explore | None = None, seed: int | None = None,
              prompt_ids: Sequence[str] | None = None, deadline: float | None = None,
              key_id: str | None = None, origin: str = "barp serve") -> dict[str, Any]:
        """Route a batch, persist the decisions (one fsync'd write), and return them.

        Args:
            deadline: ``time.monotonic()`` after which the decisions are not recorded (:class:`RequestTimeout`).
            key_id: Public id of the API key that asked (recorded as ``route_key_id``).
            origin: Who routed, recorded at the start of each decision's ``note`` (e.g. ``barp litellm``).

        Returns:
            ``{"w_c", "preference", "mode", "seed", "decisions": [{"decision_id", "model", "probability",
            "policy_probability"}]}``; ``probability`` is the propensity logged for the served model.
        """
        pref, source = self.resolve(w_c, target)
        rows = np.arange(len(prompts))
        if explore is None:
            probs, greedy = self.router.route_prompts(list(prompts), pref)
            chosen = greedy.cpu().numpy()
            policy = probs.double().numpy()[rows, chosen]
            propensity, mode, note = np.ones(len(rows)), "greedy", f"{origin}: greedy"
        else:
            seed = secrets.randbits(63) if seed is None else int(seed)
            try:
                served = self.router.route(list(prompts), pref, explore.temperature, explore.epsilon, seed)
            except ConfigError as err:
                raise ConfigError(f"field 'explore': {err}; use a temperature >= 0.01") from None
            chosen = np.array([self.models.index(d.model) for d in served], dtype=np.int64)
            policy = np.array([d.probability for d in served])
            propensity, mode = np.array([d.propensity for d in served]), "explore"
            note = f"{origin}: explore temperature={explore.temperature:g} epsilon={explore.epsilon:g}"
        if deadline is not None and time.monotonic() > deadline:
            raise RequestTimeout("routing")
        stamp, models, when = now(), self.models, time.time()
        decisions = []
        for i in range(len(rows)):
            decision_id = uuid.uuid4().hex
            decisions.append({"decision_id": decision_id, "prompt": prompts[i], "model": models[chosen[i]],
                              "propensity": float(propensity[i]), "w_c": pref, "preference": source,
                              "timestamp": stamp, "prompt_id": prompt_ids[i] if prompt_ids else decision_id,
                              "note": note, "seed": seed if explore is not None else None, "time": when,
                              "route_key_id": key_id})
        self.log.record_decisions(decisions)
        return {"w_c": pref, "preference": source, "mode": mode, "seed": seed if explore is not None else None,
                "decisions": [{"decision_id": d["decision_id"], "model": d["model"], "probability": d["propensity"],
                               "policy_probability": float(policy[i])} for i, d in enumerate(decisions)]}

    def feedback(self, decision_id: str, score: float, cost: float, key_id: str | None = None) -> dict[str, Any]:
        """Append a decision's outcome to the log (fsync'd) and update the budget controller if it served it.

        Raises:
            DataValidationError: The cost is above this server's bound (nothing is written).
        """
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and cost > self.max_cost_usd:
            raise DataValidationError(f"field 'cost': {cost!r} USD is over this server's bound of "
                                      f"{self.max_cost_usd:g} USD per request (--max_cost_usd)")
        with self._feedback_lock:
            row = self.log.record_feedback(decision_id, score, cost, now(), key_id=key_id)
            if self.controller is not None and row.get("preference") == "budget":
                self.controller.update(cost)
        return {"logged": True, "rows": self.log.num_rows, "w_c": row["w_c"]}

    def reset_budget(self, w_c: float | None = None, key_id: str | None = None) -> dict[str, Any]:
        """Restart the budget controller from ``w_c`` (default: the server's default w_c), recorded in the log
        folder so that a restart replays only the rows logged after the reset.

        Raises:
            ConfigError: The server runs no budget controller.
        """
        if self.controller is None:
            raise ConfigError("this server runs no budget controller (start barp serve with --budget_per_1k)")
        start = self.default_w_c if w_c is None else float(w_c)
        with self._feedback_lock:
            self.log.record_budget_reset(start, key_id=key_id)
            self.controller.reset(start)
        return {"reset": True, "budget": self.controller.state(), "after_rows": self.log.num_rows}

    def health(self) -> dict[str, Any]:
        """Liveness and counters: models, logged rows, pending decisions, the default preference."""
        out: dict[str, Any] = {"status": "ok", "models": len(self.models), "logged_rows": self.log.num_rows,
                               "pending_decisions": self.log.num_pending, "default_w_c": self.default_w_c,
                               "calibrated": self.curve is not None}
        if self.controller is not None:
            out["budget"] = self.controller.state()
        return out
