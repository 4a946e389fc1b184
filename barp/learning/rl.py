"""Pure functions of BaRP's learning rule: preferences, the reward, and the REINFORCE loss.

Reward (paper): ``r = w_q * q - w_c * min(c / tau, 1)``.
Loss (paper): ``-(r - b) * log pi(a | x, w) - beta * H(pi(. | x, w))``, averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from barp.errors import ConfigError


def check_w_c(w_c: float, option: str = "w_c") -> float:
    """Validate a cost weight: a finite number in [0, 1] (then ``w = (1 - w_c, w_c)`` lies on the simplex).

    Args:
        w_c: The cost weight.
        option: The option name to show in the error.

    Returns:
        ``w_c`` as a float.
    """
    try:
        value = float(w_c)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: preference weight must be a number in [0, 1], got {w_c!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{option}: preference weight must be in [0, 1] (w_q = 1 - w_c), got {w_c!r}")
    return value


def preference_tensor(w_c: float, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of ``n`` identical preferences ``(1 - w_c, w_c)``, shape (n, 2)."""
    w_c = check_w_c(w_c)
    return torch.tensor([1.0 - w_c, w_c], device=device).expand(n, 2).contiguous()


def check_cost_power(cost_power: float, option: str = "cost_power") -> float:
    """Validate the preference-sampling power: a finite number > 0."""
    if not (isinstance(cost_power, (int, float)) and math.isfinite(cost_power) and cost_power > 0):
        raise ConfigError(f"{option} must be a finite number > 0, got {cost_power!r}")
    return float(cost_power)


def sample_preferences(
    n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu", cost_power: float = 1.0
) -> torch.Tensor:
    """Draw ``n`` training preferences on the 1-simplex, shape (n, 2): ``w_c = u ** cost_power``, u ~ U(0, 1).

    ``cost_power = 1`` is the paper's uniform draw. A power p > 1 puts more draws at small w_c (for p = 2,
    P(w_c < 0.05) = 0.22 instead of 0.05): with costs spanning two orders of magnitude, most of the points where
    the best model changes, and most of the cost range, lie at small w_c (ours; an option).

    Args:
        n: Number of preferences.
        generator: Random generator.
        device: Device of the result.
        cost_power: The power p (> 0).
    """
    w_q = 1.0 - torch.rand(n, generator=generator, device=device) ** check_cost_power(cost_power)
    return torch.stack([w_q, 1.0 - w_q], dim=-1)


def normalized_cost(cost: torch.Tensor, tau: float) -> torch.Tensor:
    """The reward's cost term ``min(c / tau, 1)`` (tau > 0, USD); costs above tau count as 1."""
    if not tau > 0:
        raise ConfigError(f"tau must be > 0, got {tau!r}")
    return torch.clamp(cost / tau, max=1.0)


def reward(score: torch.Tensor, cost: torch.Tensor, w: torch.Tensor, tau: float) -> torch.Tensor:
    """BaRP's reward ``w_q * q - w_c * min(c / tau, 1)``.

    Broadcasts: ``score`` and ``cost`` of shape (B,) with ``w`` of shape (B, 2), or of shape (B, K) for all
    models at once (then ``w`` is unsqueezed).

    Args:
        score: Quality in [0, 1].
        cost: Cost in USD (>= 0).
        w: Preferences (w_q, w_c).
        tau: Cost scale (> 0); costs above tau count as 1.
    """
    w_q, w_c = w[:, 0], w[:, 1]
    if score.dim() == 2:
        w_q, w_c = w_q.unsqueeze(-1), w_c.unsqueeze(-1)
    return w_q * score - w_c * normalized_cost(cost, tau)


def exploration_probabilities(logits: torch.Tensor, temperature: float = 1.0, epsilon: float = 0.0) -> torch.Tensor:
    """The serving distribution of an exploring router: ``(1 - epsilon) softmax(logits / T) + epsilon / K``.

    Sampling from it (rather than taking the argmax) gives every model a known, positive probability, which is
    what a log needs so that other policies can be evaluated and trained on it (the probability of the served
    model is its propensity).

    Args:
        logits: Policy logits, shape (B, K).
        temperature: Softmax temperature T > 0 (1: the policy as trained; larger: flatter).
        epsilon: Share of uniform exploration in [0, 1].

    Raises:
        ConfigError: ``temperature`` is not a finite number > 0, or ``epsilon`` is outside [0, 1].
    """
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(epsilon, bool) or not (isinstance(epsilon, (int, float)) and 0 <= epsilon <= 1):
        raise ConfigError(f"epsilon must be a number in [0, 1], got {epsilon!r}")
    probs = torch.softmax(logits / temperature, dim=-1)
    return (1 - epsilon) * probs + epsilon / logits.shape[-1]


def clipped_self_normalised_weights(logits: torch.Tensor, actions: torch.Tensor, propensity: torch.Tensor,
                                    clip: float | None) -> torch.Tensor:
    """The off-policy gradient's weights of logged actions: clipped, then self-normalised over the batch, shape (B,),
    detached (the per-row ratios of off-policy evaluation are :func:`barp.ope.estimators.target_logging_ratios`).

    ``rho_i = min(pi(a_i|x_i, w_i) / mu_i, clip)``, divided by the batch mean of rho so that they average 1
    (self-normalised: a little bias, much less variance than plain inverse propensity weights).

    Args:
        logits: The learner's policy logits, shape (B, K).
        actions: Logged (served) model indices, shape (B,).
        propensity: The logging policy's probability of each logged action, in (0, 1], shape (B,).
        clip: Upper bound of a single weight before normalisation; None: no clipping.
    """
    probs = torch.softmax(logits.detach(), dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    rho = probs / propensity.to(probs.dtype)
    if clip is not None:
        rho = rho.clamp(max=clip)
    return rho / rho.mean().clamp(min=1e-12)


def preference_fit_baseline(rewards: torch.Tensor, w: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Per-example baseline ``b_i = theta . w_i`` with theta the batch's ridge least-squares fit of rewards on w.

    Since ``r = w_q q - w_c c'`` is linear in w for fixed outcomes, ``E[r | w]`` is close to linear in w;
    subtracting this fit removes the variance that comes from the preference rather than from the action.

    Args:
        rewards: Rewards, shape (B,).
        w: Preferences (w_q, w_c), shape (B, 2).
        ridge: Ridge term for a stable solve on tiny batches.

    Returns:
        Baselines of shape (B,) (no gradient).
    """
    w = w.detach().to(rewards.dtype)
    gram = w.T @ w + ridge * torch.eye(2, dtype=w.dtype, device=w.device)
    theta = torch.linalg.solve(gram, w.T @ rewards.detach())
    return w @ theta


def leave_one_out_baseline(
    score: torch.Tensor, cost: torch.Tensor, w: torch.Tensor, tau: float, group_size: int
) -> torch.Tensor:
    """Per-pull baseline from the other pulls of the same prompt, rescored at this pull's preference (ours).

    The batch holds ``group_size`` consecutive pulls of each prompt, each with its own preference ``w_i`` and
    sampled model. Because the reward is linear in w for a fixed outcome, the outcome ``(q_j, c_j)`` of pull j
    has a reward at *any* preference; pull i's baseline is the mean of ``r(q_j, c_j; w_i)`` over the other
    pulls j != i of its prompt. It uses only outcomes the learner observed, and it does not depend on pull i's
    own action, so the gradient stays unbiased (REINFORCE leave-one-out, Kool et al. 2019, extended across
    preferences). It removes the variance that comes from how hard the prompt is, which a batch-wide baseline
    leaves in.

    Args:
        score: Observed scores, shape (B * group_size,), grouped by prompt.
        cost: Observed costs, same shape.
        w: Preferences of the pulls, shape (B * group_size, 2).
        tau: Cost scale.
        group_size: Pulls per prompt (>= 2).

    Returns:
        Baselines of shape (B * group_size,) (no gradient).
    """
    if group_size < 2:
        raise ConfigError(f"the leave-one-out baseline needs >= 2 pulls per prompt, got {group_size!r}")
    if score.numel() % group_size:
        raise ValueError(f"{score.numel()} pulls do not split into groups of {group_size}")
    q = score.detach().reshape(-1, group_size)
    c = normalized_cost(cost.detach(), tau).reshape(-1, group_size)
    others_q = (q.sum(-1, keepdim=True) - q) / (group_size - 1)
    others_c = (c.sum(-1, keepdim=True) - c) / (group_size - 1)
    w = w.detach().reshape(-1, group_size, 2)
    return (w[..., 0] * others_q - w[..., 1] * others_c).reshape(-1)


@dataclass
class ReinforceTerms:
    """The REINFORCE loss and the quantities worth logging."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    entropy: torch.Tensor
    advantage: torch.Tensor


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy (nats) of ``softmax(logits)``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def reinforce_loss(
    logits: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor | float, beta: float,
    weights: torch.Tensor | None = None,
) -> ReinforceTerms:
    """REINFORCE with a baseline and an entropy bonus, averaged over the batch.

    Args:
        logits: Policy logits, shape (B, K).
        actions: Sampled model indices, shape (B,).
        rewards: Observed rewards of the sampled models, shape (B,).
        baseline: Baseline b (a scalar or shape (B,)); treated as a constant.
        beta: Entropy coefficient.
        weights: Importance weights pi(a|x,w) / mu(a|x) of actions drawn by another (logging) policy mu, shape
            (B,), treated as constants; None for on-policy samples.

    Returns:
        :class:`ReinforceTerms` with ``loss = mean(-rho (r - b) log pi(a)) - beta * mean(H)`` (rho = 1 on-policy).
    """
    logp = torch.log_softmax(logits, dim=-1)
    logp_a = logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    advantage = (rewards - torch.as_tensor(baseline, dtype=rewards.dtype, device=rewards.device)).detach()
    if weights is not None:
        advantage = advantage * weights.detach()
    policy_loss = -(advantage * logp_a).mean()
    ent = entropy(logits).mean()
    return ReinforceTerms(loss=policy_loss - beta * ent, policy_loss=policy_loss, entropy=ent, advantage=advantage)


def critic_policy_loss(
    logits: torch.Tensor, values: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
    residual_weight: float, beta: float, weights: torch.Tensor | None = None,
) -> ReinforceTerms:
    """Policy loss with a critic's per-model value estimates (ours; :mod:`barp.learning.critic`), batch-averaged.

    ``loss = -sum_a pi(a) Q_hat(a) - residual_weight * (r - Q_hat(a_pulled)) log pi(a_pulled) - beta * H``.
    The first term is the exact expectation over models of the critic's values (no sampling noise); the second
    corrects it with the pulled model's observed reward. With ``residual_weight = 1`` the gradient is unbiased for
    any critic (a doubly robust estimator with Q_hat as a per-model baseline); with 0 the policy learns only from the
    critic's smoothed estimates.

    Args:
        logits: Policy logits, shape (B, K).
        values: Critic values Q_hat_w(x, a), shape (B, K); treated as constants.
        actions: Pulled model indices, shape (B,).
        rewards: Observed rewards of the pulled models, shape (B,).
        residual_weight: Weight of the observed-reward correction (>= 0).
        beta: Entropy coefficient.
        weights: Importance weights of actions drawn by a logging policy (off-policy), shape (B,); they multiply
            the correction term (the first term needs none: it sums over every model). None: on-policy.

    Returns:
        :class:`ReinforceTerms`; ``advantage`` is the correction ``r - Q_hat(a_pulled)``.
    """
    values = values.detach()
    logp = torch.log_softmax(logits, dim=-1)
    a = actions.long().unsqueeze(-1)
    direct = -(logp.exp() * values).sum(-1).mean()
    advantage = (rewards - values.gather(-1, a).squeeze(-1)).detach()
    weighted = advantage if weights is None else advantage * weights.detach()
    policy_loss = direct - residual_weight * (weighted * logp.gather(-1, a).squeeze(-1)).mean()
    ent = entropy(logits).mean()
    return ReinforceTerms(loss=policy_loss - beta * ent, policy_loss=policy_loss, entropy=ent, advantage=advantage)
