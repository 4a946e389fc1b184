"""The BaRP LightningModule: a preference-conditioned softmax policy trained by REINFORCE under bandit feedback.

Each training step: draw a fresh preference w per pull (uniform on the simplex in the paper; ``cost_power``
skews it), sample a model a ~ pi(.|x, w), pull only that arm from the bandit environment (score q and cost c of
model a, nothing else), compute r = w_q q - w_c min(c / tau, 1), and minimise
-(r - b) log pi(a|x, w) - beta H(pi). With ``samples_per_prompt = k`` each prompt gets k such pulls per step.
With ``critic: Neighbours`` the policy instead follows a critic built from the pulled outcomes of each prompt's
nearest training prompts (:mod:`barp.learning.critic`, :func:`barp.learning.rl.critic_policy_loss`).

Trained from a log of served requests (``data.train_log``; :class:`~barp.data.environment.LoggedEnvironment`), the
step is off-policy: the logged model and its outcome replace the sampled pull, and the policy-gradient terms are
weighted by clipped, self-normalised importance weights pi(a|x, w) / mu(a|x)
(:class:`~barp.learning.strategies.SelfNormalisedIS`), with a fresh preference w per example (the logged score and
cost give the reward at any w). The critic's memory holds the mean logged outcome of each (prompt, model) the log
served, and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from barp.data.environment import Feedback, LoggedEnvironment
from barp.errors import ConfigError
from barp.learning.critic import NeighbourCritic
from barp.learning.memory import recall, summary
from barp.learning.neighbours import NeighbourIndex
from barp.learning.policy import BaRPPolicy
from barp.learning.rl import (
    check_cost_power,
    critic_policy_loss,
    exploration_probabilities,
    normalized_cost,
    reinforce_loss,
    reward,
    sample_preferences,
)
from barp.learning.strategies import Baseline, BatchMean, Neighbours, SelfNormalisedIS, from_config
from barp.models.base import RouterModule
from barp.models.parts import Arms, Evaluation, Guard, Policy, Predict, Reward, Training, part


def check_training(training: Training) -> Training:
    """Refuse training settings out of range, naming the option and the value."""
    for name in ("lr", "weight_decay", "beta", "beta_final"):
        value, low = getattr(training, name), (0 if name != "lr" else None)
        if value is None and name == "beta_final":
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value < float("inf")
        if not (ok and (value > 0 if low is None else value >= 0)):
            bound = "> 0" if low is None else ">= 0"
            raise ConfigError(f"model.training.{name} must be a finite number {bound}, got {value!r}")
    check_cost_power(training.cost_power, "model.training.cost_power")
    k = training.samples_per_prompt
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"model.training.samples_per_prompt must be an integer >= 1, got {k!r}")
    explore = training.explore
    if isinstance(explore, bool) or not (isinstance(explore, (int, float)) and 0 <= explore < 1):
        raise ConfigError(f"model.training.explore must be a number in [0, 1), got {explore!r}")
    return training


#: The repeat memory's buffers (``memory: true``): training embeddings, observed score, cost, pulled cells.
MEMORY_BUFFERS = ("memory_keys", "memory_score", "memory_cost", "memory_seen")


class BaRPModule(RouterModule):
    """BaRP: one policy pi(a | x, w) that serves every quality-cost trade-off w.

    Choices the paper leaves open (ours, all configurable): batch-mean baseline, Adam with lr 1e-3,
    entropy coefficient 0.02 decayed linearly to ``training.beta_final``, tau = 95th percentile of training costs.

    Args:
        arms, reward, evaluation, predict, guard: The parts of :class:`~barp.models.base.RouterModule`.
        policy: The policy network (:class:`~barp.models.parts.Policy`: head, widths, preference features).
        training: Optimiser, entropy bonus, pulls per prompt, preference draws and exploration
            (:class:`~barp.models.parts.Training`).
        baseline: The REINFORCE baseline (:class:`~barp.learning.strategies.Baseline`: ``BatchMean``, the default;
            ``BatchLinear``, ``MovingAverage``, ``LeaveOneOut`` or ``NoBaseline``); not used with a critic.
        critic: None (REINFORCE with ``baseline``; the paper) or :class:`~barp.learning.strategies.Neighbours`
            (ours): the policy follows a critic built from the outcomes pulled on each prompt's nearest training
            prompts.
        off_policy: How training from a log of served requests (``data.train_log``) weights the logged pulls
            (:class:`~barp.learning.strategies.SelfNormalisedIS`, whose docs say what it does with ``baseline``
            and ``training.explore``).
        memory: Route a prompt seen in training by its own pulled outcomes where they beat the policy's choice
            (:mod:`barp.learning.memory`; needs ``critic``, whose observations it keeps). Off by default: it changes
            only prompts that repeat training prompts, and checkpoints then hold the training embeddings.

    Each part may also be given as a dict of its fields, each strategy as ``{class_path, init_args}`` (as
    checkpoints save them).
    """

    baseline_value: torch.Tensor  # buffers
    explore_pulls: torch.Tensor
    memory_keys: torch.Tensor  # with memory: true
    memory_score: torch.Tensor
    memory_cost: torch.Tensor
    memory_seen: torch.Tensor

    def __init__(
        self,
        arms: Arms,
        reward: Reward = Reward(),
        evaluation: Evaluation = Evaluation(),
        predict: Predict = Predict(),
        guard: Guard | None = None,
        policy: Policy = Policy(),
        training: Training = Training(),
        baseline: Baseline = BatchMean(),
        critic: Neighbours | None = None,
        off_policy: SelfNormalisedIS = SelfNormalisedIS(),
        memory: bool = False,
    ) -> None:
        super().__init__(arms, reward, evaluation, predict, guard)
        policy = part(Policy, policy, "model.policy")
        training = part(Training, training, "model.training")
        # mypy refuses an abstract class for type[S] (python/mypy#4717); Baseline is only an isinstance check here
        self.baseline = from_config(baseline, Baseline, "model.baseline")  # type: ignore[type-abstract]
        self.critic_options = None if critic is None else from_config(critic, Neighbours, "model.critic")
        self.off_policy = from_config(off_policy, SelfNormalisedIS, "model.off_policy")
        self.policy_options, self.training_options = policy, check_training(training)
        self.save_hyperparameters()
        self.baseline.check(training.samples_per_prompt)
        try:
            self.policy = BaRPPolicy(self.embed_dim, len(self.model_names), policy.head, policy.hidden_dim,
                                     policy.pref_dim, policy.features, policy.dropout)
        except ValueError as err:
            raise ConfigError(f"model.policy: {err}") from None
        self.register_buffer("baseline_value", torch.tensor(float("nan")))
        # per model: number, summed score and summed normalised cost of the uniform exploration pulls (explore > 0)
        self.register_buffer("explore_pulls", torch.zeros(3, len(self.model_names), dtype=torch.float64))
        if not isinstance(memory, bool):
            raise ConfigError(f"model.memory must be true or false, got {memory!r}")
        if memory and critic is None:
            raise ConfigError("model.memory: true needs model.critic (the memory keeps the critic's observed "
                              "outcomes); set model.critic or model.memory: false")
        self.memory = memory
        if memory:  # sized at fit start (training prompts x models), or to a checkpoint's on loading
            k = len(self.model_names)
            self.register_buffer("memory_keys", torch.zeros(0, self.embed_dim))
            self.register_buffer("memory_score", torch.zeros(0, k))
            self.register_buffer("memory_cost", torch.zeros(0, k))
            self.register_buffer("memory_seen", torch.zeros(0, k, dtype=torch.bool))
        self._memory_index: tuple[tuple[int, int], NeighbourIndex] | None = None
        self._memory_stats: tuple[torch.Tensor, float] | None = None  # memory.summary, until the memory changes
        self._memory_stale = True
        self._total_steps: int | None = None
        self.critic: NeighbourCritic | None = None
        self._critic_state: dict | None = None  # a checkpoint's critic memory, until the critic is built
        self._train_keys: tuple[str, ...] = ()  # this epoch's training metrics: names, example-weighted sums
        self._train_sums: torch.Tensor | None = None
        self._train_count, self._train_beta = 0, 0.0

    def resolved_parts(self) -> dict[str, Any]:
        return {**super().resolved_parts(), "policy": self.policy_options, "training": self.training_options,
                "baseline": self.baseline, "critic": self.critic_options, "off_policy": self.off_policy}

    def setup(self, stage: str) -> None:
        """Also build the neighbour critic (when configured) from the training embeddings at fit start."""
        super().setup(stage)
        dm = self.router_data()
        if stage == "fit" and isinstance(self.env, LoggedEnvironment) and self.training_options.explore:
            rank_zero_warn(f"barp: model.training.explore={self.training_options.explore} does not apply to "
                           "training from a log (data.train_log): nothing is pulled; the log's propensities weight "
                           "the steps (SelfNormalisedIS)")
        options = self.critic_options
        if stage != "fit" or options is None or dm is None:
            return
        emb = torch.as_tensor(dm.train_embeddings(), dtype=torch.float32)
        self.critic = NeighbourCritic(emb, len(self.model_names), options.neighbours, options.prior,
                                      options.search)
        if self._critic_state is not None:
            self.critic.load_state_dict(self._critic_state)
            self._critic_state = None
        elif isinstance(self.env, LoggedEnvironment):
            self._observe_log(self.env)
        if self.memory:
            k = len(self.model_names)
            self.memory_keys = torch.nn.functional.normalize(emb, dim=-1).to(self.memory_keys.device)
            self.memory_score = torch.zeros(len(emb), k, device=self.memory_keys.device)
            self.memory_cost = torch.zeros(len(emb), k, device=self.memory_keys.device)
            self.memory_seen = torch.zeros(len(emb), k, dtype=torch.bool, device=self.memory_keys.device)
            self._sync_memory()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.critic is not None:
            checkpoint["neighbour_critic"] = self.critic.state_dict()
        if self.memory and self._sync_memory() and isinstance(checkpoint.get("state_dict"), dict):
            for name in MEMORY_BUFFERS:  # the state was collected before this hook
                checkpoint["state_dict"][name] = getattr(self, name).detach().clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A memory's buffers take the saved sizes (training prompts x models) before loading."""
        if self.memory:
            for name in MEMORY_BUFFERS:
                saved = state_dict.get(prefix + name)
                if isinstance(saved, torch.Tensor) and saved.shape != getattr(self, name).shape:
                    setattr(self, name, torch.empty(saved.shape, dtype=getattr(self, name).dtype,
                                                    device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._memory_stale = True

    def _sync_memory(self) -> bool:
        """Copy the critic's observed outcomes into the memory's buffers (True when there is a critic to copy)."""
        if not self.memory or self.critic is None or len(self.memory_keys) != len(self.critic.seen):
            return False
        self.memory_score.copy_(self.critic.score.to(self.memory_score))
        self.memory_cost.copy_(self.critic.cost.to(self.memory_cost))
        self.memory_seen.copy_(self.critic.seen.to(self.memory_seen.device))
        self._memory_stale = True
        return True

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._sync_memory()  # validation (and checkpoint selection) sees the pulls made so far

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._sync_memory()

    def greedy(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor | None = None,
               novel: torch.Tensor | None = None) -> torch.Tensor:
        """The policy's greedy choice (with the shift guard's fallback), then the repeat memory where enabled:
        a prompt seen in training goes to a model whose pulled outcome there beats the policy's choice
        (:mod:`barp.learning.memory`)."""
        action = super().greedy(emb, w, scores, novel)
        if not self.memory or len(self.memory_keys) == 0:
            return action
        if self._memory_stale:
            self._memory_stats = summary(self.memory_score, self.memory_cost, self.memory_seen)
            self._memory_stale = False
        return recall(action, emb.to(self.memory_keys.device), w.to(self.memory_keys.device), self._memory_keys(),
                      self.memory_score, self.memory_cost, self.memory_seen, self._memory_stats)[0].to(action.device)

    def _memory_keys(self) -> NeighbourIndex:
        """The memory's keys as a neighbour index, built once per set of keys."""
        tag = (self.memory_keys.data_ptr(), len(self.memory_keys))
        if self._memory_index is None or self._memory_index[0] != tag:
            self._memory_index = (tag, NeighbourIndex.build(self.memory_keys, option="model.memory",
                                                            normalise=False))
        return self._memory_index[1]

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
        hp = self.training_options
        if hp.beta_final is None or self._trainer is None:
            return hp.beta
        if self._total_steps is None:
            self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        total = self._total_steps
        frac = min(self.global_step / total, 1.0)
        return hp.beta + (hp.beta_final - hp.beta) * frac

    def _built_critic(self) -> NeighbourCritic | None:
        """The neighbour critic when one is configured (None: REINFORCE with the baseline)."""
        if self.critic_options is not None and self.critic is None:
            raise RuntimeError("BaRPModule(critic=...) needs a datamodule with train_embeddings() to train")
        return self.critic

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One REINFORCE step; the batch holds embeddings and row numbers, never outcomes."""
        if self.env is None:
            raise RuntimeError("BaRPModule needs a datamodule with train_environment() to train")
        emb, rows = batch["emb"], batch["row"]
        prompts = rows  # each prompt once (the critic's estimates are per prompt)
        k = self.training_options.samples_per_prompt
        if k > 1:  # k independent pulls of each prompt, each with its own preference and sampled model
            emb, rows = emb.repeat_interleave(k, dim=0), rows.repeat_interleave(k, dim=0)
        w = sample_preferences(len(emb), device=emb.device, cost_power=self.training_options.cost_power)
        logits = self.policy(emb, w)
        if isinstance(self.env, LoggedEnvironment):
            return self._off_policy_step(emb, rows, w, logits)
        actions, rho, uniform = self._sample_actions(logits)
        feedback = self.env.pull(rows, actions)
        critic = self._built_critic()
        self._observe(rows, actions, feedback, uniform)
        r = reward(feedback.score, feedback.cost, w, self.tau_value)
        beta = self.current_beta()
        if critic is not None:
            values = critic.values(prompts, w, repeats=k)
            assert self.critic_options is not None  # the critic is built from them
            terms = critic_policy_loss(logits, values, actions, r, self.critic_options.residual, beta, rho)
            b = r - terms.advantage  # the critic's value of the pulled model
        else:
            b = self.baseline(r, w, score=feedback.score, cost=feedback.cost, tau=self.tau_value,
                              samples_per_prompt=k, running=self.baseline_value)
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
        epsilon = self.training_options.explore
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
        if not self.training_options.explore or not float(self.explore_pulls[0].sum()) > 0:
            return None
        return self.explore_pulls

    def _off_policy_step(self, emb: torch.Tensor, rows: torch.Tensor, w: torch.Tensor,
                         logits: torch.Tensor) -> torch.Tensor:
        """One step on logged requests: importance-weighted policy gradient (or the critic's), fresh preferences."""
        if not isinstance(self.env, LoggedEnvironment):
            raise RuntimeError("BaRP: off-policy steps need a logged environment (data.train_log)")
        logged = self.env.logged(rows)
        r = reward(logged.score, logged.cost, w, self.tau_value)
        rho = self.off_policy.weights(logits, logged.action, logged.propensity)
        beta = self.current_beta()
        critic = self._built_critic()
        if critic is not None:
            values = critic.values(logged.prompt, w)
            assert self.critic_options is not None  # the critic is built from them
            terms = critic_policy_loss(logits, values, logged.action, r, self.critic_options.residual, beta, rho)
        else:
            b = self.off_policy.baseline(r, rho, self.baseline)
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
        assert self.critic is not None  # built just before (setup)
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
        hp = self.training_options
        return torch.optim.Adam(self.policy.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
