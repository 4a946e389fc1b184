"""The parts every router is configured from: what it routes between (linked from the data), the reward's cost scale,
where it is evaluated, how ``predict`` routes, and the shift guard; and BaRP's policy network and training settings.

Each part is a frozen dataclass: a YAML config or the command line sets it as a group
(``model.init_args.reward.tau``, ``model.init_args.evaluation.extra_w_c``, ``model.init_args.guard.quantile``).
Checkpoints save every part as a plain dict (:func:`plain`), so ``torch.load(weights_only=True)`` reads them; each
constructor takes the dataclass or such a dict (:func:`part`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch

from barp.data.parts import coerce
from barp.encoders import DEFAULT_ENCODER
from barp.errors import ConfigError
from barp.learning.policy import Head, PreferenceFeatures
from barp.learning.rl import check_w_c, exploration_probabilities
from barp.learning.strategies import Strategy


@dataclass(frozen=True)
class Arms:
    """What the router chooses between and for which prompts: linked from the data, never typed by a user.

    Args:
        model_names: Candidate model names, in the policy's order.
        task_names: Task families (ID and OOD).
        embed_dim: Prompt embedding size.
        encoder: The frozen encoder's name, recorded so a checkpoint knows how to embed new prompts.
    """

    model_names: list[str]
    task_names: list[str]
    embed_dim: int = 384
    encoder: str = DEFAULT_ENCODER


@dataclass(frozen=True)
class Reward:
    """The reward's cost scale: r = w_q q - w_c min(c / tau, 1).

    Args:
        tau: Cost scale (USD); None sets it to ``tau_percentile`` of the training costs at fit start.
        tau_percentile: Percentile of all (prompt, model) training costs used when ``tau`` is None.
    """

    tau: float | None = None
    tau_percentile: float = 95.0

    def checked(self) -> Reward:
        """This part, refused (ConfigError naming the option) where tau is not > 0 or the percentile not in (0, 100]."""
        if self.tau is not None and not self.tau > 0:
            raise ConfigError(f"model.reward.tau must be > 0 (USD), got {self.tau!r}")
        if not 0 < self.tau_percentile <= 100:
            raise ConfigError(f"model.reward.tau_percentile must be in (0, 100], got {self.tau_percentile!r}")
        return self


@dataclass(frozen=True)
class Evaluation:
    """The preferences validation and test evaluate at (w = (1 - w_c, w_c)).

    Args:
        w_c: Primary evaluation cost weight.
        extra_w_c: Further evaluation cost weights, logged under ``wc=<w_c>/``; None: [0.0, 0.9].
    """

    w_c: float = 0.5
    extra_w_c: list[float] | None = None

    def preferences(self) -> tuple[float, list[float]]:
        """The primary cost weight and the extra ones (without the primary), each checked to lie in [0, 1]."""
        extra = [0.0, 0.9] if self.extra_w_c is None else self.extra_w_c
        return (check_w_c(self.w_c, "model.evaluation.w_c"),
                [check_w_c(w, "model.evaluation.extra_w_c") for w in extra if w != self.w_c])


@dataclass(frozen=True)
class Predict:
    """How ``predict`` routes.

    Args:
        w_c: Cost weight used by ``predict``.
        temperature: ``predict`` explores: it samples each prompt's model from the policy at this softmax
            temperature (mixed with ``epsilon``-uniform) and writes the sampled model's probability as its
            ``propensity``, so the served requests can later be evaluated and trained on off-policy. None (the
            default) routes greedily.
        epsilon: Share of uniform exploration when ``predict`` explores (with ``temperature``, or alone at
            temperature 1).
    """

    w_c: float = 0.5
    temperature: float | None = None
    epsilon: float = 0.0

    def exploration(self) -> tuple[float, float] | None:
        """(temperature, epsilon) when ``predict`` samples instead of taking the argmax, checked; None: greedy."""
        if self.temperature is None and not self.epsilon:
            return None
        temperature = 1.0 if self.temperature is None else self.temperature
        try:
            exploration_probabilities(torch.zeros(1, 2), temperature, self.epsilon)
        except ConfigError as err:
            raise ConfigError(f"model.predict.temperature / model.predict.epsilon: {err}") from None
        return temperature, float(self.epsilon)


@dataclass(frozen=True)
class Guard:
    """The distribution-shift guard (:mod:`barp.models.shift`): greedy routing sends a prompt whose familiarity
    (mean cosine similarity to its ``neighbours`` nearest training prompts) is below this ``quantile`` of the
    validation prompts' to the model with the best mean reward at the preference (measured on the validation split,
    pooled with the router's unbiased training pulls). An evaluation-time option: it applies to a trained
    checkpoint too.

    Args:
        quantile: Familiarity quantile of the validation prompts below which the guard falls back.
        neighbours: Nearest training prompts the familiarity averages over.
    """

    quantile: float
    neighbours: int = 10


@dataclass(frozen=True)
class Policy:
    """BaRP's policy network pi(a | x, w) (:class:`~barp.learning.policy.BaRPPolicy`).

    Args:
        head: Decision head over [h(x); phi(w)]: ``mlp``, ``linear`` or ``bilinear``.
        hidden_dim: Hidden width of the MLP head.
        pref_dim: Width of the preference encoder phi.
        features: Inputs of phi: ``raw`` (w_q, w_c) (the paper) or ``log_ratio``, which adds log(w_c / w_q) so that
            the policy resolves small cost weights (see :class:`~barp.learning.policy.PreferenceEncoder`).
        dropout: Share of the prompt embedding's features zeroed (the rest rescaled) at each training step before
            the head; 0 (the default): none. A regulariser for small training sets (docs/method.md, "Does
            validation keep rising?").
    """

    head: Head = "mlp"
    hidden_dim: int = 256
    pref_dim: int = 64
    features: PreferenceFeatures = "raw"
    dropout: float = 0.0


@dataclass(frozen=True)
class Training:
    """BaRP's optimiser and sampling settings.

    Args:
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        beta: Entropy bonus coefficient at the start of training.
        beta_final: Entropy coefficient at the end of training (linear decay); None keeps ``beta``.
        samples_per_prompt: Pulls of each prompt per training step, each with its own preference and sampled model
            (1 = the paper). The ``LeaveOneOut`` baseline needs >= 2; lower ``data.batches.train_repeats`` to keep
            the pull budget.
        cost_power: Training preferences ``w_c = u ** cost_power``, u uniform (1 = the paper's uniform draw; > 1
            draws more small cost weights, where most of the cost range lies).
        explore: Share epsilon of training pulls drawn uniformly over the models instead of from the policy (ours;
            0 = the paper: every pull from the policy). The pulls fill the neighbour critic's memory: a policy that
            has settled stops pulling the models it dropped, so their estimates rest on a few, policy-selected
            prompts (docs/method.md, "Top-end quality"). Terms that use the pulled model's reward are
            importance-weighted by pi / ((1 - epsilon) pi + epsilon / K), so the gradient stays the policy's.
            Training from a log (``data.train_log``) pulls nothing, so it does not apply there (a warning says so).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 0.02
    beta_final: float | None = None
    samples_per_prompt: int = 1
    cost_power: float = 1.0
    explore: float = 0.0


def arms_from_data(datamodule: Any) -> Arms:
    """The :class:`Arms` of a data module (its models, task families, embedding size and encoder name): what
    ``barp fit`` links into ``model.init_args.arms``."""
    return Arms(list(datamodule.model_names), list(datamodule.task_names), int(datamodule.embed_dim),
                datamodule.encoder_spec.name)


#: The one reader of a part, for data and models alike: the dataclass itself, or built from its saved dict.
part = coerce


def make_plain(hparams: MutableMapping[str, Any], resolved: Mapping[str, Any]) -> None:
    """Turn saved hyperparameters into plain data in place: each part as ``resolved`` (with its defaults), every
    other value through :func:`plain`, so that ``torch.load(weights_only=True)`` reads every checkpoint."""
    for key in list(hparams):
        hparams[key] = plain(resolved.get(key, hparams[key]))
    for key, value in resolved.items():
        hparams[key] = plain(value)


def plain(value: Any) -> Any:
    """A part or strategy as plain data, as checkpoints save it: a dataclass as a dict of its fields, a strategy
    (:class:`~barp.learning.strategies.Strategy`) as ``{class_path, init_args}``; else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Strategy):
        return value.config()
    return value
