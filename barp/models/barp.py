"""The BaRP LightningModule: a preference-conditioned softmax policy trained by REINFORCE under bandit feedback.

Each training step: draw a fresh preference w per pull (uniform on the simplex in the paper; ``cost_power``
skews it), sample a model a ~ pi(.|x, w), pull only that arm from the bandit environment (score q and cost c of
model a, nothing else), compute r = w_q q - w_c min(c / tau, 1), and minimise
-(r - b) log pi(a|x, w) - beta H(pi). With ``samples_per_prompt = k`` each prompt gets k such pulls per step.
With ``critic="neighbours"`` the policy instead follows a critic built from the pulled outcomes of each prompt's
nearest training prompts (:mod:`barp.learning.critic`, :func:`barp.learning.rl.critic_policy_loss`).

Trained from a log of served requests (``data.train_log``; :class:`~barp.data.environment.LoggedEnvironment`), the
step is off-policy: the logged model and its outcome replace the sampled pull, and the policy-gradient terms are
weighted by :func:`barp.learning.rl.clipped_self_normalised_weights` (pi(a|x, w) / mu(a|x), clipped, self-normalised),
with a fresh preference w per example (the logged score and cost give
the reward at any w). The critic's memory holds the mean logged outcome of each (prompt, model) the log served, and
nothing else.
"""

from __future__ import annotations

from typing import Literal

import torch

from barp.data.environment import Feedback, LoggedEnvironment
from barp.errors import ConfigError
from barp.learning.critic import NeighbourCritic
from barp.learning.policy import BaRPPolicy, Head, PreferenceFeatures
from barp.learning.rl import (
    check_cost_power,
    clipped_self_normalised_weights,
    critic_policy_loss,
    exploration_probabilities,
    leave_one_out_baseline,
    normalized_cost,
    preference_fit_baseline,
    reinforce_loss,
    reward,
    sample_preferences,
)
from barp.models.base import RouterModule


class BaRPModule(RouterModule):
    """BaRP: one policy pi(a | x, w) that serves every quality-cost trade-off w.

    Choices the paper leaves open (ours, all configurable): batch-mean baseline, Adam with lr 1e-3,
    entropy coefficient 0.02 decayed linearly to ``beta_final``, tau = 95th percentile of training costs.

    Args:
        head: Decision head over [h(x); phi(w)]: ``mlp``, ``linear`` or ``bilinear``.
        hidden_dim: Hidden width of the MLP head.
        pref_dim: Width of the preference encoder phi.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        beta: Entropy bonus coefficient at the start of training.
        beta_final: Entropy coefficient at the end of training (linear decay); None keeps ``beta``.
        baseline: ``batch_mean`` (mean reward of the batch; the default), ``batch_linear`` (per example, the
            batch's least-squares fit of reward on (w_q, w_c): the reward's scale depends on w, so this removes
            much more variance), ``moving_average`` (exponential average of batch means across steps),
            ``leave_one_out`` (ours: mean reward of the prompt's other pulls in the step, rescored at this pull's
            preference; needs ``samples_per_prompt >= 2``) or ``none``.
        baseline_momentum: Momentum of the moving-average baseline.
        samples_per_prompt: Pulls of each prompt per training step, each with its own preference and sampled model
            (1 = the paper). ``leave_one_out`` needs >= 2; lower ``data.train_repeats`` to keep the pull budget.
        cost_power: Training preferences ``w_c = u ** cost_power``, u uniform (1 = the paper's uniform draw; > 1
            draws more small cost weights, where most of the cost range lies).
        preference_features: Inputs of phi: ``raw`` (w_q, w_c) (the paper) or ``log_ratio``, which adds
            log(w_c / w_q) so that the policy resolves small cost weights
            (see :class:`~barp.learning.policy.PreferenceEncoder`).
        critic: ``none`` (REINFORCE with ``baseline``; the paper) or ``neighbours`` (ours): the policy follows a
            critic that estimates every model's score and cost on a prompt from the outcomes pulled on its
            ``critic_neighbours`` nearest training prompts (:mod:`barp.learning.critic`), so it does not fit each
            prompt's own noisy outcomes. With a critic, ``baseline`` is not used (the critic's value of the pulled
            model is the baseline of the correction term).
        critic_neighbours: Neighbours per training prompt.
        critic_prior: Pseudo-observations at each model's global mean in the critic's estimates.
        critic_residual: Weight of the observed-reward correction (:func:`~barp.learning.rl.critic_policy_loss`):
            0 learns from the critic's estimates only, 1 is unbiased (doubly robust).
        explore: Share epsilon of training pulls drawn uniformly over the models instead of from the policy (ours;
            0 = the paper: every pull from the policy). The pulls fill the neighbour critic's memory: a policy that
            has settled stops pulling the models it dropped, so their estimates rest on a few, policy-selected
            prompts (docs/method.md, "Top-end quality"). Terms that use the pulled model's reward are
            importance-weighted by pi / ((1 - epsilon) pi + epsilon / K), so the gradient stays the policy's.
        importance_clip: Off-policy training only (``data.train_log``): upper bound of an importance weight
            pi(a|x, w) / mu(a|x) before self-normalisation; None does not clip.
        **kwargs: Evaluation and linking options of :class:`~barp.models.base.RouterModule`.
    """

    def __init__(
        self,
        head: Head = "mlp",
        hidden_dim: int = 256,
        pref_dim: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        beta: float = 0.02,
        beta_final: float | None = None,
        baseline: Literal["batch_mean", "batch_linear", "moving_average", "leave_one_out", "none"] = "batch_mean",
        baseline_momentum: float = 0.9,
        samples_per_prompt: int = 1,
        cost_power: float = 1.0,
        preference_features: PreferenceFeatures = "raw",
        critic: Literal["none", "neighbours"] = "none",
        critic_neighbours: int = 40,
        critic_prior: float = 1.0,
        critic_residual: float = 0.0,
        explore: float = 0.0,
        importance_clip: float | None = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if not (isinstance(lr, (int, float)) and 0 < lr < float("inf")):
            raise ConfigError(f"model.lr must be a finite number > 0, got {lr!r}")
        if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < float("inf")):
            raise ConfigError(f"model.weight_decay must be a finite number >= 0, got {weight_decay!r}")
        for name, value in (("beta", beta), ("beta_final", beta_final)):
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ConfigError(f"model.{name} must be a finite number >= 0, got {value!r}")
        check_cost_power(cost_power, "model.cost_power")
        if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
            raise ConfigError(f"model.samples_per_prompt must be an integer >= 1, got {samples_per_prompt!r}")
        if baseline == "leave_one_out" and samples_per_prompt < 2:
            raise ConfigError(
                f"model.baseline=leave_one_out needs model.samples_per_prompt >= 2, got {samples_per_prompt!r}"
            )
        if isinstance(critic_neighbours, bool) or not isinstance(critic_neighbours, int) or critic_neighbours < 1:
            raise ConfigError(f"model.critic_neighbours must be an integer >= 1, got {critic_neighbours!r}")
        if not (isinstance(critic_prior, (int, float)) and 0 <= critic_prior < float("inf")):
            raise ConfigError(f"model.critic_prior must be a finite number >= 0, got {critic_prior!r}")
        if not (isinstance(critic_residual, (int, float)) and 0 <= critic_residual < float("inf")):
            raise ConfigError(f"model.critic_residual must be a finite number >= 0, got {critic_residual!r}")
        if isinstance(explore, bool) or not (isinstance(explore, (int, float)) and 0 <= explore < 1):
            raise ConfigError(f"model.explore must be a number in [0, 1), got {explore!r}")
        if importance_clip is not None and not (isinstance(importance_clip, (int, float))
                                                 and 1 <= importance_clip < float("inf")):
            raise ConfigError(f"model.importance_clip must be a finite number >= 1 or null, got {importance_clip!r}")
        if not 0 <= baseline_momentum < 1:
            raise ConfigError(f"model.baseline_momentum must be in [0, 1), got {baseline_momentum!r}")
        self.policy = BaRPPolicy(self.embed_dim, len(self.model_names), head, hidden_dim, pref_dim, preference_features)
        self.register_buffer("baseline_value", torch.tensor(float("nan")))
        # per model: number, summed score and summed normalised cost of the uniform exploration pulls (explore > 0)
        self.register_buffer("explore_pulls", torch.zeros(3, len(self.model_names), dtype=torch.float64))
        self._total_steps: int | None = None
        self.critic: NeighbourCritic | None = None
        self._critic_state: dict | None = None  # a checkpoint's critic memory, until the critic is built
        self._train_keys: tuple[str, ...] = ()  # this epoch's training metrics: names, example-weighted sums
        self._train_sums: torch.Tensor | None = None
        self._train_count, self._train_beta = 0, 0.0

    def setup(self, stage: str) -> None:
        """Also build the neighbour critic (when configured) from the training embeddings at fit start."""
        super().setup(stage)
        dm = self.router_data()
        if stage != "fit" or self.hparams.critic == "none" or dm is None:
            return
        emb = torch.as_tensor(dm.train_embeddings(), dtype=torch.float32)
        self.critic = NeighbourCritic(emb, len(self.model_names), self.hparams.critic_neighbours,
                                      self.hparams.critic_prior)
        if self._critic_state is not None:
            self.critic.load_state_dict(self._critic_state)
            self._critic_state = None
        elif isinstance(self.env, LoggedEnvironment):
            self._observe_log(self.env)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.critic is not None:
            checkpoint["neighbour_critic"] = self.critic.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        weights = checkpoint.get("state_dict")
        if isinstance(weights, dict) and "explore_pulls" not in weights:  # written before explore existed
            weights["explore_pulls"] = torch.zeros_like(self.explore_pulls)
        state = checkpoint.get("neighbour_critic")
        if state is None:
            return
        if self.critic is not None:
            self.critic.load_state_dict(state)
        else:
            self._critic_state = state

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Policy logits (B, K)."""
        return self.policy(emb, w)

    def current_beta(self) -> float:
        """Entropy coefficient at the current step (linear decay from beta to beta_final)."""
        hp = self.hparams
        if hp.beta_final is None or self._trainer is None:
            return hp.beta
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        total = self._total_steps
        frac = min(self.global_step / total, 1.0)
        return hp.beta + (hp.beta_final - hp.beta) * frac

    def _baseline(self, rewards: torch.Tensor, w: torch.Tensor, feedback: Feedback) -> torch.Tensor:
        kind = self.hparams.baseline
        if kind == "leave_one_out":
            return leave_one_out_baseline(
                feedback.score, feedback.cost, w, self.tau_value, self.hparams.samples_per_prompt
            )
        if kind == "none":
            return torch.zeros((), device=rewards.device)
        if kind == "batch_mean":
            return rewards.mean()
        if kind == "batch_linear":
            return preference_fit_baseline(rewards, w)
        mean = rewards.mean().detach()
        if torch.isnan(self.baseline_value):
            self.baseline_value.copy_(mean)
        b = self.baseline_value.clone()
        m = self.hparams.baseline_momentum
        self.baseline_value.copy_(m * self.baseline_value + (1 - m) * mean)
        return b

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One REINFORCE step; the batch holds embeddings and row numbers, never outcomes."""
        if self.env is None:
            raise RuntimeError("BaRPModule needs a datamodule with train_environment() to train")
        emb, rows = batch["emb"], batch["row"]
        prompts = rows  # each prompt once (the critic's estimates are per prompt)
        k = self.hparams.samples_per_prompt
        if k > 1:  # k independent pulls of each prompt, each with its own preference and sampled model
            emb, rows = emb.repeat_interleave(k, dim=0), rows.repeat_interleave(k, dim=0)
        w = sample_preferences(len(emb), device=emb.device, cost_power=self.hparams.cost_power)
        logits = self.policy(emb, w)
        if isinstance(self.env, LoggedEnvironment):
            return self._off_policy_step(emb, rows, w, logits)
        actions, rho, uniform = self._sample_actions(logits)
        feedback = self.env.pull(rows, actions)
        if self.hparams.critic != "none" and self.critic is None:
            raise RuntimeError("BaRPModule(critic=...) needs a datamodule with train_embeddings() to train")
        self._observe(rows, actions, feedback, uniform)
        r = reward(feedback.score, feedback.cost, w, self.tau_value)
        beta = self.current_beta()
        if self.hparams.critic != "none":
            values = self.critic.values(prompts, w, repeats=k)
            terms = critic_policy_loss(logits, values, actions, r, self.hparams.critic_residual, beta, rho)
            b = r - terms.advantage  # the critic's value of the pulled model
        else:
            b = self._baseline(r, w, feedback)
            terms = reinforce_loss(logits, actions, r, b, beta, rho)
        self._accumulate(
            {"train/loss": terms.loss, "train/policy_loss": terms.policy_loss, "train/entropy": terms.entropy,
             "train/reward": r.mean(), "train/score": feedback.score.mean(), "train/cost": feedback.cost.mean(),
             "train/baseline": torch.as_tensor(b, dtype=r.dtype).mean()}, beta, len(emb),
        )
        return terms.loss

    def _sample_actions(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The pulled models: from the policy, or with ``explore`` = epsilon > 0 each pull with probability epsilon
        uniform over the models instead (so from mu = (1 - epsilon) pi + epsilon / K); then the importance weights
        pi(a) / mu(a) and the mask of the uniform pulls (both None on-policy)."""
        epsilon = self.hparams.explore
        if not epsilon:
            return torch.distributions.Categorical(logits=logits).sample(), None, None
        logits = logits.detach()
        uniform = torch.rand(len(logits), device=logits.device) < epsilon
        actions = torch.where(uniform, torch.randint_like(uniform, logits.shape[-1], dtype=torch.long),
                              torch.distributions.Categorical(logits=logits).sample())
        mu = exploration_probabilities(logits, 1.0, epsilon)
        rho = (torch.softmax(logits, dim=-1) / mu).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return actions, rho, uniform

    def fallback_pulls(self) -> torch.Tensor | None:
        """The uniform exploration pulls (``explore`` > 0) so far, shape (3, K): per model their number, summed score
        and summed normalised cost; None before any (the shift guard's fallback then uses validation alone)."""
        if not self.hparams.explore or not float(self.explore_pulls[0].sum()) > 0:
            return None
        return self.explore_pulls

    def _off_policy_step(self, emb: torch.Tensor, rows: torch.Tensor, w: torch.Tensor,
                         logits: torch.Tensor) -> torch.Tensor:
        """One step on logged requests: importance-weighted policy gradient (or the critic's), fresh preferences."""
        logged = self.env.logged(rows)
        r = reward(logged.score, logged.cost, w, self.tau_value)
        rho = clipped_self_normalised_weights(logits, logged.action, logged.propensity, self.hparams.importance_clip)
        beta = self.current_beta()
        if self.hparams.critic != "none":
            if self.critic is None:
                raise RuntimeError("BaRPModule(critic=...) needs a datamodule with train_embeddings() to train")
            values = self.critic.values(logged.prompt, w)
            terms = critic_policy_loss(logits, values, logged.action, r, self.hparams.critic_residual, beta, rho)
        else:
            b = (rho * r).sum() / rho.sum() if self.hparams.baseline != "none" else torch.zeros((), device=r.device)
            terms = reinforce_loss(logits, logged.action, r, b, beta, rho)
        self._accumulate(
            {"train/loss": terms.loss, "train/policy_loss": terms.policy_loss, "train/entropy": terms.entropy,
             "train/logged_reward": r.mean(), "train/max_weight": rho.max()}, beta, len(emb),
        )
        return terms.loss

    # ------------------------------------------------------------------ training metrics
    def _accumulate(self, values: dict[str, torch.Tensor], beta: float, n: int) -> None:
        """Add this step's training metrics, weighted by its ``n`` examples, to the epoch's sums on the device.

        The metrics are logged once per epoch (:meth:`on_train_epoch_end`) as the example-weighted means that
        ``self.log(..., on_epoch=True, batch_size=n)`` would give. Calling ``self.log_dict`` every step cost Lightning
        about half of each training step (its result collection walks every logged value per call); nothing here
        reads a value back to the host, so a step on an accelerator does not wait on it.
        """
        step = torch.stack([v.detach().reshape(()).to(torch.float64) for v in values.values()]) * n
        if self._train_sums is None or self._train_keys != tuple(values):
            self._train_keys, self._train_sums = tuple(values), torch.zeros_like(step)
            self._train_count, self._train_beta = 0, 0.0
        self._train_sums += step
        self._train_count += n
        self._train_beta += beta * n

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._train_sums, self._train_count, self._train_beta = None, 0, 0.0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's example-weighted means of the training metrics (one host read per epoch)."""
        super().on_train_epoch_end()
        if self._train_sums is None or self._train_count == 0:
            return
        means = (self._train_sums / self._train_count).float()
        metrics = dict(zip(self._train_keys, means.unbind()))
        metrics["train/beta"] = torch.tensor(self._train_beta / self._train_count, dtype=torch.float32)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
        self._train_sums = None

    def _observe_log(self, env: LoggedEnvironment) -> None:
        """Fill the critic's memory with the mean logged outcome of every (prompt, model) the log served."""
        cells = env.cells()
        key = cells.prompt * env.num_arms + cells.action
        unique, inverse = torch.unique(key, return_inverse=True)

        def cell_mean(values: torch.Tensor) -> torch.Tensor:
            sums = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, values.double())
            return sums / torch.bincount(inverse, minlength=len(unique)).double()

        cost_norm = normalized_cost(cells.cost, self.tau_value)
        self.critic.observe(unique // env.num_arms, unique % env.num_arms, cell_mean(cells.score),
                            cell_mean(cost_norm))

    def _observe(self, rows: torch.Tensor, actions: torch.Tensor, feedback: Feedback,
                 uniform: torch.Tensor | None) -> None:
        """Add this step's pulls to the critic's memory and its uniform pulls (``uniform``: their mask; None without
        ``explore``) to :attr:`explore_pulls`; under DDP every process adds every process's, from one gather."""
        if self.critic is None and uniform is None:
            return
        cost_norm = normalized_cost(feedback.cost, self.tau_value)
        parts = (rows, actions, feedback.score, cost_norm) + (() if uniform is None else (uniform,))
        if self.trainer.world_size > 1:
            parts = tuple(x.reshape(-1) for x in self.all_gather(tuple(p.to(self.device) for p in parts)))
        if self.critic is not None:
            self.critic.observe(*parts[:4])
        if uniform is not None:
            _, actions, score, cost_norm, uniform = (p.to(self.explore_pulls.device) for p in parts)
            keep = uniform.bool()
            a = actions[keep].long()
            self.explore_pulls[0].index_add_(0, a, torch.ones_like(a, dtype=self.explore_pulls.dtype))
            self.explore_pulls[1].index_add_(0, a, score[keep].to(self.explore_pulls.dtype))
            self.explore_pulls[2].index_add_(0, a, cost_norm[keep].to(self.explore_pulls.dtype))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.policy.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
