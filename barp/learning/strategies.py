"""BaRP's learning strategies as small classes, chosen in YAML by ``class_path`` (no strategy names to compare).

- the REINFORCE baseline b in -(r - b) log pi(a|x, w): :class:`BatchMean` (the default), :class:`BatchLinear`,
  :class:`MovingAverage`, :class:`LeaveOneOut`, :class:`NoBaseline`;
- the neighbour critic's settings (:class:`Neighbours`; ``critic: null`` is REINFORCE with the baseline);
- the off-policy estimator of training from a log of served requests (:class:`SelfNormalisedIS`).

    model:
      init_args:
        baseline:
          class_path: MovingAverage
          init_args: {momentum: 0.95}
        critic:
          class_path: Neighbours
          init_args: {neighbours: 40}

Checkpoints save a strategy as ``{"class_path": ..., "init_args": {...}}`` (:meth:`Strategy.config`) and rebuild it
with :func:`from_config`, which only builds the classes of this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

import torch

from barp.errors import ConfigError
from barp.learning.neighbours import check_method
from barp.learning.rl import (
    clipped_self_normalised_weights,
    leave_one_out_baseline,
    preference_fit_baseline,
)


def _number(value: Any, option: str, low: float, high: float = float("inf"), *, low_open: bool = False,
            high_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{option} must be a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def _integer(value: Any, option: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{option} must be an integer >= {low}, got {value!r}")
    return value


class Strategy:
    """A configurable strategy: its settings are its constructor's arguments, kept as same-named attributes."""

    def init_args(self) -> dict[str, Any]:
        """The constructor's arguments (what :meth:`config` saves)."""
        return {}

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}``: the strategy as plain data (YAML, checkpoints)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": self.init_args()}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.init_args() == self.init_args()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.init_args().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.init_args().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------- baselines
class Baseline(Strategy, ABC):
    """The REINFORCE baseline b of the policy-gradient term -(r - b) log pi(a|x, w).

    Off-policy training (from a log) does not call it: :class:`SelfNormalisedIS` uses the self-normalised mean
    reward instead, or 0 for a baseline whose :attr:`centres` is False (:class:`NoBaseline`).
    """

    #: Whether the baseline centres the rewards at all (off-policy training then uses the SNIPS mean).
    centres = True

    def check(self, samples_per_prompt: int) -> None:
        """Refuse settings the baseline cannot work with (default: none)."""

    @abstractmethod
    def __call__(self, rewards: torch.Tensor, w: torch.Tensor, *, score: torch.Tensor, cost: torch.Tensor,
                 tau: float, samples_per_prompt: int, running: torch.Tensor) -> torch.Tensor:
        """The baseline of each pull (shape (B,)) or of all (a scalar).

        Args:
            rewards: The pulls' rewards, shape (B,).
            w: Their preferences, shape (B, 2).
            score, cost: The pulled outcomes, shape (B,).
            tau: The reward's cost scale.
            samples_per_prompt: Consecutive pulls of the same prompt (``training.samples_per_prompt``).
            running: A scalar buffer the module keeps (and checkpoints) for baselines with a state; NaN at first.
        """


class BatchMean(Baseline):
    """The mean reward of the batch (the default)."""

    def __call__(self, rewards, w, *, score, cost, tau, samples_per_prompt, running):
        return rewards.mean()


class BatchLinear(Baseline):
    """Per pull, the batch's least-squares fit of reward on (w_q, w_c): the reward's scale depends on w, so this
    removes much more variance than the batch mean (:func:`~barp.learning.rl.preference_fit_baseline`)."""

    def __call__(self, rewards, w, *, score, cost, tau, samples_per_prompt, running):
        return preference_fit_baseline(rewards, w)


class MovingAverage(Baseline):
    """An exponential average of the batch mean rewards across steps.

    Args:
        momentum: Weight of the previous average, in [0, 1).
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = _number(momentum, "model.baseline.momentum", 0.0, 1.0)

    def init_args(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def __call__(self, rewards, w, *, score, cost, tau, samples_per_prompt, running):
        mean = rewards.mean().detach()
        if torch.isnan(running):
            running.copy_(mean)
        b = running.clone()
        running.copy_(self.momentum * running + (1 - self.momentum) * mean)
        return b


class LeaveOneOut(Baseline):
    """Ours: the mean reward of the prompt's other pulls in the step, rescored at this pull's preference; needs
    ``training.samples_per_prompt >= 2`` (:func:`~barp.learning.rl.leave_one_out_baseline`)."""

    def check(self, samples_per_prompt: int) -> None:
        if samples_per_prompt < 2:
            raise ConfigError(f"model.baseline LeaveOneOut needs model.training.samples_per_prompt >= 2, "
                              f"got {samples_per_prompt!r}")

    def __call__(self, rewards, w, *, score, cost, tau, samples_per_prompt, running):
        return leave_one_out_baseline(score, cost, w, tau, samples_per_prompt)


class NoBaseline(Baseline):
    """No baseline (b = 0), on-policy and off-policy."""

    centres = False

    def __call__(self, rewards, w, *, score, cost, tau, samples_per_prompt, running):
        return torch.zeros((), device=rewards.device)


# ---------------------------------------------------------------------------------------------- the critic
class Neighbours(Strategy):
    """The neighbour critic (ours; :mod:`barp.learning.critic`): the policy follows a critic that estimates every
    model's score and cost on a prompt from the outcomes pulled on its ``neighbours`` nearest training prompts, so it
    does not fit each prompt's own noisy outcomes. With a critic the baseline is not used (the critic's value of the
    pulled model is the baseline of the correction term).

    Args:
        neighbours: Neighbours per training prompt.
        prior: Pseudo-observations at each model's global mean in the critic's estimates.
        residual: Weight of the observed-reward correction (:func:`~barp.learning.rl.critic_policy_loss`): 0 learns
            from the critic's estimates only, 1 is unbiased (doubly robust).
        search: How the neighbours are found (:mod:`barp.learning.neighbours`): ``auto`` (exact below 20,000
            training prompts, an approximate IVF index above), ``exact`` or ``approximate``. Checkpoints written
            before the option existed load with ``auto``.
    """

    def __init__(self, neighbours: int = 40, prior: float = 1.0, residual: float = 0.0, search: str = "auto") -> None:
        self.neighbours = _integer(neighbours, "model.critic.neighbours", 1)
        self.prior = _number(prior, "model.critic.prior", 0.0)
        self.residual = _number(residual, "model.critic.residual", 0.0)
        self.search = check_method(search, "model.critic.search")

    def init_args(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "prior": self.prior, "residual": self.residual, "search": self.search}


# ---------------------------------------------------------------------------------------------- off-policy
class SelfNormalisedIS(Strategy):
    """The off-policy estimator of training from a log of served requests (``data.train_log``).

    The logged model and its outcome replace the sampled pull; the policy-gradient terms are weighted by clipped,
    self-normalised importance weights pi(a|x, w) / mu(a|x) (:meth:`weights`).

    What it does with the learner's other settings (on purpose, and the same as before these were classes):

    - the REINFORCE baseline is the self-normalised (SNIPS) mean reward of the batch, sum(rho r) / sum(rho),
      whichever :class:`Baseline` is configured; only :class:`NoBaseline` (b = 0) is kept as it is;
    - ``training.explore`` does not apply: nothing is pulled, the log's own propensities weight the terms
      (BaRP warns once when it is set).

    Args:
        clip: Upper bound of an importance weight before self-normalisation, >= 1; None does not clip.
    """

    def __init__(self, clip: float | None = 10.0) -> None:
        if clip is not None:
            clip = _number(clip, "model.off_policy.clip", 1.0)
        self.clip = clip

    def init_args(self) -> dict[str, Any]:
        return {"clip": self.clip}

    def weights(self, logits: torch.Tensor, actions: torch.Tensor, propensity: torch.Tensor) -> torch.Tensor:
        """Self-normalised, clipped importance weights of the logged actions, shape (B,), detached."""
        return clipped_self_normalised_weights(logits, actions, propensity, self.clip)

    @staticmethod
    def baseline(rewards: torch.Tensor, rho: torch.Tensor, baseline: Baseline) -> torch.Tensor:
        """The off-policy REINFORCE baseline: the SNIPS mean reward, or 0 for a baseline that does not centre."""
        if not baseline.centres:
            return torch.zeros((), device=rewards.device)
        return (rho * rewards).sum() / rho.sum()


#: The classes :func:`from_config` builds (by class name or full path), and nothing else.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.__name__: cls
    for cls in (BatchMean, BatchLinear, MovingAverage, LeaveOneOut, NoBaseline, Neighbours, SelfNormalisedIS)
}


S = TypeVar("S", bound=Strategy)


def from_config(value: Any, kind: type[S], option: str) -> S:
    """``value`` as a strategy of type ``kind``: an instance is kept; a ``{class_path, init_args}`` dict (a
    checkpoint's) is built, for the classes of this module only (a checkpoint never makes barp import code).

    Raises:
        ConfigError: Another type, an unknown class, a class of another kind or bad settings.
    """
    if isinstance(value, kind):
        return value
    if isinstance(value, dict) and set(value) <= {"class_path", "init_args"} and "class_path" in value:
        path = str(value["class_path"])
        module, _, name = path.rpartition(".")
        cls = STRATEGIES.get(name)
        if cls is None or module not in ("", __name__) or not issubclass(cls, kind):
            known = sorted(n for n, c in STRATEGIES.items() if issubclass(c, kind))
            raise ConfigError(f"{option}: class_path {path!r} is not a {kind.__name__}; expected one of {known}")
        args = value.get("init_args") or {}
        try:
            return cls(**args)
        except TypeError as err:
            raise ConfigError(f"{option}: {err}") from None
    raise ConfigError(f"{option} must be a {kind.__name__} (class_path and init_args), got {value!r:.80}")
