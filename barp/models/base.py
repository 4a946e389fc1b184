"""Base LightningModule for routers: greedy evaluation at fixed preferences, reference policies, prediction.

Every trainable router (BaRP, and comparison methods) subclasses :class:`RouterModule` and implements
:meth:`RouterModule.route`. Evaluation is shared, so all routers are measured the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from barp.data.environment import BanditEnvironment
from barp.encoders import DEFAULT_ENCODER, SentenceEncoder, count_parameters
from barp.errors import ConfigError
from barp.learning.rl import (
    check_w_c,
    exploration_probabilities,
    preference_tensor,
    reward,
)
from barp.metrics.aiq import aiq
from barp.metrics.evaluation import (
    REFERENCES,
    SPLITS,
    aiq_cost_range,
    aiq_defined,
    chosen,
    metric_name,
    reference_outcome,
)
from barp.metrics.routing import ModelCostMetric, RoutingMetrics
from barp.models.checkpoints import (
    RECORD_KEY,
    RNG_KEY,
    capture_rng,
    check_encoder,
    check_same_training,
    check_unseen,
    data_record,
    model_order,
    restore_rng,
)
from barp.models.compat import upgrade_checkpoint
from barp.models.parts import Arms, Evaluation, Guard, Predict, Reward, part, plain
from barp.models.shift import ShiftGuard, check_knobs

#: Checkpoint key of the shift guard (:mod:`barp.models.shift`), when the module has one.
GUARD_KEY = "barp_shift_guard"
#: Checkpoint key of the frozen encoder's settings (name, max length, truncation side, dtype).
ENCODER_KEY = "barp_encoder"
#: The data options that decide how a prompt is embedded, and their defaults for checkpoints that lack one.
ENCODER_OPTIONS = {"encoder": DEFAULT_ENCODER, "max_length": 256, "truncation_side": "left", "encoder_dtype": "float32"}


@dataclass(frozen=True)
class Decision:
    """The routed model for one prompt, the policy's probability of it, and the probability that it was served.

    ``propensity`` is 1 for greedy routing (the argmax is always served); when exploring it is the probability of
    the served model under the exploring distribution, the value a served-request log records.
    """

    model: str
    probability: float
    propensity: float = 1.0


def encoder_settings(data_hparams: dict) -> dict:
    """The frozen encoder's settings in a datamodule's hyperparameters (defaults for the options it lacks)."""
    return {key: data_hparams.get(key, default) for key, default in ENCODER_OPTIONS.items()}


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list of strings; a bare string or a non-string item is refused."""
    if isinstance(prompts, (str, bytes)):
        raise ConfigError(f"prompts must be a list of prompt texts, got one {type(prompts).__name__} "
                          f"({prompts[:40]!r}): pass [prompt] to route one prompt")
    try:
        items = list(prompts)
    except TypeError:
        raise ConfigError(f"prompts must be a list of prompt texts, got {type(prompts).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"prompts[{i}] must be a string, got {type(item).__name__} ({item!r:.40})")
    return items


class RouterModule(L.LightningModule):
    """Shared evaluation for routers over frozen prompt embeddings, and routing of raw prompts.

    The module owns its frozen encoder: never trained, never in the optimiser and never stored as weights, it is
    rebuilt on first use (:attr:`encoder`) from the settings the module recorded from its training data (name, max
    length, truncation side, dtype; saved in every checkpoint). Training and evaluation read cached embeddings;
    :meth:`probabilities` and :meth:`decide` embed raw prompt text with it, so the Python API, ``barp ope`` and
    ``barp serve`` all route through the module.

    Metric names: ``{stage}/{split}/{metric}`` at the primary preference ``evaluation.w_c`` and
    ``{stage}/{split}/wc={w_c}/{metric}`` at each of ``evaluation.extra_w_c``; ``{stage}/{split}/reward_avg`` is the
    router's reward averaged over all evaluation preferences, ``{stage}/{split}/aiq`` the area under its cost-score
    hull over them (see :func:`barp.metrics.aiq.aiq`; only where the split's models differ in price,
    :func:`~barp.metrics.evaluation.aiq_defined`) and ``{stage}/{split}/selection`` the number the recipes select
    checkpoints on: the AIQ, or ``reward_avg`` where the AIQ is undefined; at test time also
    ``test/{split}/{reference}_{score|cost|reward}`` for the oracle, random routing (exact expectation),
    the cheapest and the most expensive single model (by mean training cost).

    Args:
        arms: The models, task families, embedding size and encoder name (:class:`~barp.models.parts.Arms`;
            linked from the data).
        reward: The reward's cost scale tau (:class:`~barp.models.parts.Reward`).
        evaluation: The evaluation preferences (:class:`~barp.models.parts.Evaluation`): the primary ``w_c`` and
            ``extra_w_c``.
        predict: How ``predict`` routes (:class:`~barp.models.parts.Predict`): greedily at ``w_c``, or exploring.
        guard: The distribution-shift guard (:class:`~barp.models.parts.Guard`); None: no guard.

    Each part may also be given as a dict of its fields (as checkpoints save it).
    """

    def __init__(
        self,
        arms: Arms,
        reward: Reward = Reward(),
        evaluation: Evaluation = Evaluation(),
        predict: Predict = Predict(),
        guard: Guard | None = None,
    ) -> None:
        super().__init__()
        arms = part(Arms, arms, "model.arms")
        reward = part(Reward, reward, "model.reward")
        evaluation = part(Evaluation, evaluation, "model.evaluation")
        predict = part(Predict, predict, "model.predict")
        guard = None if guard is None else part(Guard, guard, "model.guard")
        if len(arms.model_names) < 2:
            raise ConfigError(f"model.arms.model_names: need at least 2 models, got {arms.model_names}")
        tau, tau_percentile = reward.tau, reward.tau_percentile
        if tau is not None and not tau > 0:
            raise ConfigError(f"model.reward.tau must be > 0 (USD), got {tau!r}")
        if not 0 < tau_percentile <= 100:
            raise ConfigError(f"model.reward.tau_percentile must be in (0, 100], got {tau_percentile!r}")
        self.eval_w_c = check_w_c(evaluation.w_c, "model.evaluation.w_c")
        extra = [0.0, 0.9] if evaluation.extra_w_c is None else evaluation.extra_w_c
        self.extra_eval_w_c = [check_w_c(w, "model.evaluation.extra_w_c") for w in extra if w != evaluation.w_c]
        self.predict_w_c = check_w_c(predict.w_c, "model.predict.w_c")
        self.predict_exploration = None  # (temperature, epsilon) when predict samples instead of taking the argmax
        if predict.temperature is not None or predict.epsilon:
            temperature = 1.0 if predict.temperature is None else predict.temperature
            try:
                exploration_probabilities(torch.zeros(1, 2), temperature, predict.epsilon)
            except ConfigError as err:
                raise ConfigError(f"model.predict.temperature / model.predict.epsilon: {err}") from None
            self.predict_exploration = (temperature, float(predict.epsilon))
        fallback_quantile = None if guard is None else guard.quantile
        fallback_neighbours = Guard.neighbours if guard is None else guard.neighbours
        check_knobs(fallback_quantile, fallback_neighbours)
        self.fallback_quantile = fallback_quantile
        self.fallback_neighbours = fallback_neighbours
        self._parts = {"arms": arms, "reward": reward, "evaluation": evaluation, "predict": predict, "guard": guard}
        self.guard: ShiftGuard | None = None  # set at setup from the data, or restored from a checkpoint
        self.model_names = list(arms.model_names)
        self.embed_dim = int(arms.embed_dim)
        self.encoder_name = arms.encoder
        self.task_names = list(arms.task_names)
        self.tau_percentile = tau_percentile
        # Resolved at fit start and saved in checkpoints, so evaluation uses the tau training used.
        self.register_buffer("tau", torch.tensor(float(tau) if tau is not None else float("nan")))
        self.register_buffer("reference_models", torch.tensor([-1, -1], dtype=torch.long))
        self.env: BanditEnvironment | None = None
        self.eval_metrics = self._build_metrics()
        self._column_order: torch.Tensor | None = None  # data column of each arm, when the orders differ
        self._data_record: dict | None = None  # what checkpoints record about the training data
        self._rng_state: dict | None = None  # a resumed fit's random generators, restored at train start
        self._trained = False  # set by a training step or a trained checkpoint; evaluation refuses otherwise
        self.encoder_settings = {**ENCODER_OPTIONS, "encoder": arms.encoder}
        self.__dict__["_frozen_encoder"] = None  # not an nn.Module attribute: never in state_dict or the optimiser

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, then every part and strategy as plain data (:func:`~barp.models.parts.plain`), the parts as
        resolved (with their defaults), so that ``torch.load(weights_only=True)`` reads every checkpoint."""
        if frame is None:
            frame = inspect.currentframe().f_back
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        resolved = self.resolved_parts()
        for hp in (self._hparams, self._hparams_initial):
            for key in list(hp):
                hp[key] = plain(resolved[key] if key in resolved else hp[key])
            for key, value in resolved.items():
                hp[key] = plain(value)

    def resolved_parts(self) -> dict[str, Any]:
        """The module's parts as it uses them (subclasses add theirs): what its hyperparameters save."""
        return dict(self._parts)

    def _build_metrics(self) -> nn.ModuleDict:
        metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            for split in SPLITS:
                for w_c in self.eval_preferences:
                    for policy in ("router",) + REFERENCES:
                        metrics[self._metric_key(stage, split, w_c, policy)] = RoutingMetrics(
                            self.model_names, self.task_names
                        )
                metrics[f"{stage}_{split}_model_cost"] = ModelCostMetric(len(self.model_names))
        return metrics

    # ------------------------------------------------------------------ to implement
    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Scores over models (higher is better; BaRP returns logits), shape (B, K). Greedy routing takes argmax."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    @property
    def eval_preferences(self) -> list[float]:
        """Primary preference first, then the extra ones."""
        return [self.eval_w_c, *self.extra_eval_w_c]

    @staticmethod
    def _metric_key(stage: str, split: str, w_c: float, policy: str) -> str:
        return f"{stage}_{split}_{w_c:g}_{policy}".replace(".", "p")

    @property
    def tau_value(self) -> float:
        """The resolved tau (USD)."""
        value = float(self.tau)
        if value != value:
            raise RuntimeError("tau is not resolved yet: fit the model or load a checkpoint first")
        return value

    def setup(self, stage: str) -> None:
        """Attach the training environment and resolve tau and the reference models from the training split."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "train_environment"):
            return
        if stage == "fit" and list(dm.model_names) != self.model_names:
            raise ConfigError(f"data models {dm.model_names} differ from the model's model_names {self.model_names}")
        order = model_order(self.model_names, list(dm.model_names), "the data")
        self._column_order = None if order is None else torch.as_tensor(order)
        env = dm.train_environment()
        if hasattr(dm, "hparams"):
            self.encoder_settings = encoder_settings(dict(dm.hparams))
        if stage == "fit":
            self.env = env
            if hasattr(dm, "splits") and hasattr(dm, "hparams"):
                self._data_record = data_record(dm, self.model_names, self.task_names)
        if torch.isnan(self.tau):
            self.tau.fill_(env.cost_percentile(self.tau_percentile))
        if self.reference_models[0] < 0:
            mean_cost = torch.as_tensor(env.mean_cost_per_model())
            if order is not None:
                mean_cost = mean_cost[order]
            self.reference_models.copy_(torch.stack([mean_cost.argmin(), mean_cost.argmax()]))
        self.eval_split_names = dm.eval_splits
        if self.fallback_quantile is not None and hasattr(dm, "splits"):
            self.guard = self._build_guard(dm)

    def _build_guard(self, dm) -> ShiftGuard:
        """The shift guard from the data's training prompts and validation split (never a test split)."""
        val = dm.splits.val
        scores, costs = torch.as_tensor(dm.table.scores[val]), torch.as_tensor(dm.table.costs[val])
        if self._column_order is not None:
            scores, costs = scores[:, self._column_order], costs[:, self._column_order]
        return ShiftGuard.build(torch.as_tensor(dm.train_embeddings()), torch.as_tensor(dm.embeddings(val)),
                                scores, costs, self.tau_value, self.fallback_quantile, self.fallback_neighbours)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the training data (models, tasks, encoder, training prompts) and every random generator's state."""
        if self._data_record is not None:
            checkpoint[RECORD_KEY] = self._data_record
        checkpoint[ENCODER_KEY] = dict(self.encoder_settings)
        if self.guard is not None:
            checkpoint[GUARD_KEY] = self._guard().state()
        checkpoint[RNG_KEY] = capture_rng()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the checkpoint against the data it is applied to (models, encoder, split) before its weights load.

        Models in another order are mapped by name (with a warning) for evaluation; any other mismatch, a training
        prompt in an evaluated split, or a resumed fit on other training prompts stops with a ConfigError.
        """
        upgrade_checkpoint(checkpoint)  # written before the parts: the Trainer reads the file itself
        self._trained = int(checkpoint.get("global_step", 0)) > 0
        self._data_record = checkpoint.get(RECORD_KEY) or self._data_record
        saved = checkpoint.get(ENCODER_KEY) or encoder_settings(checkpoint.get("datamodule_hyper_parameters") or {})
        self.encoder_settings = {**ENCODER_OPTIONS, **saved}
        guard = checkpoint.get(GUARD_KEY)
        if guard is not None and self.fallback_quantile == guard["quantile"] \
                and self.fallback_neighbours == guard["neighbours"]:
            self.guard = ShiftGuard.from_state(guard)  # what the guard was at training; data at hand rebuild it
        trainer = self._trainer
        dm = trainer.datamodule if trainer is not None else None
        if dm is None or not hasattr(dm, "splits") or not hasattr(dm, "hparams"):
            return
        where = f"--ckpt_path {str(trainer.ckpt_path)!r}"
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        names = list(checkpoint["hyper_parameters"]["arms"]["model_names"])
        order = model_order(names, list(dm.model_names), where)
        if order is not None and fn == "fit":
            raise ConfigError(f"{where}: the checkpoint orders the models {names}, the data {dm.model_names}: "
                              "resume on data with the models in the checkpoint's order")
        check_encoder(checkpoint, dict(dm.hparams), where)
        if fn == "fit":
            check_same_training(checkpoint, dm, where)
            self._rng_state = checkpoint.get(RNG_KEY)
            if self._rng_state is not None:  # again at fit start (see on_fit_start), whichever comes last
                restore_rng(self._rng_state)
        elif fn in ("validate", "test"):
            splits = {"val": dm.splits.val} if fn == "validate" else {"test": dm.splits.test, "ood": dm.splits.ood}
            check_unseen(checkpoint, dm, splits, where)
        if order is not None:
            rank_zero_warn(f"barp: {where} orders the models {names}, the data {list(dm.model_names)}: "
                           "mapped by name")
            self.model_names = names
            self._column_order = torch.as_tensor(order)
            self.eval_metrics = self._build_metrics().to(self.device)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._trained = True

    def _refuse_untrained(self) -> None:
        if not self._trained:
            raise ConfigError("the router has not been trained: pass --ckpt_path with a checkpoint written by "
                              "barp fit (or fit it first); an untrained policy's results mean nothing")

    def on_validation_start(self) -> None:
        if self._trainer is not None and str(getattr(self.trainer.state.fn, "value", "")) == "validate":
            self._refuse_untrained()

    def on_test_start(self) -> None:
        self._refuse_untrained()

    def on_predict_start(self) -> None:
        self._refuse_untrained()

    def on_fit_start(self) -> None:
        """Log trainable and frozen parameter counts; a resumed fit restores its random generators."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = count_parameters(self.encoder_name)
        rank_zero_info(f"barp: {trainable:,} trainable parameters; frozen encoder {frozen:,} parameters; "
                       f"tau = {self.tau_value:.3g} USD")
        for logger in self.loggers:
            logger.log_hyperparams({"params/trainable": trainable, "params/frozen": frozen, "tau": self.tau_value})
        if self._rng_state is not None:
            # A resumed fit continues with the random generators of the moment its checkpoint was written. This is
            # the last hook before the training loop draws (its data loader's shuffling seed, then preferences and
            # actions); the checkpoint may also load after it (strategies that restore after setup).
            restore_rng(self._rng_state)
            self._rng_state = None

    def greedy(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor | None = None,
               novel: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy routing: the argmax of :meth:`route` (``scores``, when already computed), with the shift guard's
        fallback where it fires (``novel``: the guard's mask for these prompts, when already computed)."""
        action = (self.route(emb, w) if scores is None else scores).argmax(dim=-1)
        if self.fallback_quantile is not None:
            action = self._guard().apply(action, emb, w, novel)[0]
        return action

    def _guard(self) -> ShiftGuard:
        if self.guard is None:
            raise ConfigError("model.guard is set, but the shift guard has no data: route inside a "
                              "Trainer with the data, or load a checkpoint trained with the same guard settings")
        pulls = self.fallback_pulls()
        if pulls is not None:
            self.guard.pulls = pulls
        return self.guard

    def fallback_pulls(self) -> torch.Tensor | None:
        """Training outcomes the shift guard's fallback may pool with the validation split, shape (3, K): per model
        the number of pulls, their summed score and summed normalised cost, from pulls that did not depend on the
        policy (so unbiased). None (here): the validation split alone; :class:`~barp.models.barp.BaRPModule`
        returns its exploration pulls."""
        return None

    # ------------------------------------------------------------------ raw prompts
    @property
    def encoder(self) -> SentenceEncoder:
        """The frozen sentence encoder, built on first use from :attr:`encoder_settings` on the module's device."""
        built = self.__dict__.get("_frozen_encoder")  # (settings, device, encoder)
        settings, device = dict(self.encoder_settings), str(self.device)
        if built is None or built[:2] != (settings, device):
            encoder = SentenceEncoder(settings["encoder"], max_length=settings["max_length"],
                                      truncation_side=settings["truncation_side"], dtype=settings["encoder_dtype"],
                                      device=device)
            built = (settings, device, encoder)
            self.__dict__["_frozen_encoder"] = built
        return built[2]

    def attach_encoder(self, encoder: SentenceEncoder) -> None:
        """Use an already built frozen encoder (its settings must be the module's) instead of building one."""
        self.__dict__["_frozen_encoder"] = (dict(self.encoder_settings), str(self.device), encoder)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings of raw prompt texts with the module's frozen encoder, shape (N, D), on the module's device."""
        prompts = check_prompts(prompts)
        if not prompts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.as_tensor(self.encoder.encode(prompts), device=self.device)

    @torch.inference_mode()
    def route_prompts(self, prompts: Sequence[str], w_c: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt at preference ``(1 - w_c, w_c)``: the policy's distribution over models (N, K) and the greedy
        choice (N,) (:meth:`greedy`: the argmax, or the shift guard's fallback), from one embedding pass."""
        emb = self.embed(prompts)
        w = preference_tensor(check_w_c(w_c), len(emb), emb.device)
        if not len(emb):
            return torch.zeros(0, len(self.model_names)), torch.zeros(0, dtype=torch.long)
        logits = self.route(emb, w)
        return torch.softmax(logits, dim=-1), self.greedy(emb, w, logits)

    def probabilities(self, prompts: Sequence[str], w_c: float) -> torch.Tensor:
        """The policy's distribution over models per prompt at preference ``(1 - w_c, w_c)``, shape (N, K)."""
        return self.route_prompts(prompts, w_c)[0]

    def decide(self, prompts: Sequence[str], w_c: float = 0.5, temperature: float | None = None,
               epsilon: float = 0.0, seed: int | None = None) -> list[Decision]:
        """Route raw prompts at cost weight ``w_c``: greedily (the default), or exploring.

        Exploring (``temperature`` given, or ``epsilon > 0``) samples each prompt's model from
        ``(1 - epsilon) softmax(logits / temperature) + epsilon / K`` and reports the sampled model's probability
        under it as the decision's ``propensity``, so that the served requests can be evaluated and trained on
        off-policy (``barp ope``, ``data.train_log``).

        Args:
            prompts: Prompt texts (a list, even for one prompt).
            w_c: Cost weight in [0, 1] (quality weight is ``1 - w_c``).
            temperature: Softmax temperature of exploring routing (default 1 when only ``epsilon`` is given).
            epsilon: Share of uniform exploration in [0, 1].
            seed: Seed of the exploration draws (None: PyTorch's global generator).
        """
        if temperature is None and not epsilon:
            probs, idx = self.route_prompts(prompts, w_c)
            return [Decision(self.model_names[i], float(probs[r, i])) for r, i in enumerate(idx.tolist())]
        emb = self.embed(prompts)
        if not len(emb):
            return []
        with torch.inference_mode():
            logits = self.route(emb, preference_tensor(check_w_c(w_c), len(emb), emb.device))
        serving = exploration_probabilities(logits, 1.0 if temperature is None else temperature, epsilon)
        generator = None if seed is None else torch.Generator(device=serving.device).manual_seed(int(seed))
        chosen = torch.multinomial(serving, 1, generator=generator).squeeze(-1)
        policy = torch.softmax(logits, dim=-1)
        return [Decision(self.model_names[a], float(policy[i, a]), float(serving[i, a]))
                for i, a in enumerate(chosen.tolist())]

    # ------------------------------------------------------------------ evaluation
    def _split_name(self, stage: str, dataloader_idx: int) -> str:
        names = getattr(self, "eval_split_names", {}).get("test" if stage == "test" else "validate", ["id", "ood"])
        return names[dataloader_idx]

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int) -> None:
        split = self._split_name(stage, dataloader_idx)
        emb, task, scores, costs = batch["emb"], batch["task"], batch["scores"], batch["costs"]
        if self._column_order is not None:  # the data's columns in the router's arm order
            order = self._column_order.to(scores.device)
            scores, costs = scores[:, order], costs[:, order]
        self.eval_metrics[f"{stage}_{split}_model_cost"].update(costs)
        cheapest, most_expensive = (int(j) for j in self.reference_models)
        novel = None if self.fallback_quantile is None else self._guard().unfamiliar(emb)  # once per batch
        for w_c in self.eval_preferences:
            w = preference_tensor(w_c, len(emb), emb.device)
            rewards = reward(scores, costs, w, self.tau_value)
            outcomes = {"router": chosen(self.greedy(emb, w, novel=novel), scores, costs, rewards)}
            if stage == "test":
                outcomes.update({policy: reference_outcome(policy, scores, costs, rewards, cheapest, most_expensive)
                                 for policy in REFERENCES})
            for policy, o in outcomes.items():
                self.eval_metrics[self._metric_key(stage, split, w_c, policy)].update(
                    task, o.action, o.score, o.cost, o.reward)

    def _log_eval(self, stage: str) -> None:
        for split in SPLITS:
            router_rewards, points = [], []
            for w_c in self.eval_preferences:
                at = None if w_c == self.eval_w_c else w_c
                for policy in ("router",) + REFERENCES:
                    metric = self.eval_metrics[self._metric_key(stage, split, w_c, policy)]
                    if not metric.update_called:
                        continue
                    values = metric.compute()
                    if policy == "router":
                        logged = {metric_name(stage, split, k, at): v for k, v in values.items()}
                        router_rewards.append(values["reward"])
                        points.append((float(values["cost"]), float(values["score"])))
                    else:
                        logged = {metric_name(stage, split, k, at, policy): values[k]
                                  for k in ("score", "cost", "reward")}
                    self.log_dict(logged, add_dataloader_idx=False)
                    metric.reset()
            if router_rewards:
                # one number for the whole trade-off range
                reward_avg = torch.stack(router_rewards).mean()
                self.log(metric_name(stage, split, "reward_avg"), reward_avg, add_dataloader_idx=False)
                selection = float(reward_avg)
            model_cost = self.eval_metrics[f"{stage}_{split}_model_cost"]
            if len(points) >= 2 and model_cost.update_called:
                # the frontier's area over the split's cost range: selecting on it favours the checkpoint with the
                # best trade-offs over the whole cost range (see barp.metrics.evaluation.aiq_cost_range); where
                # every model costs the same it is 0 up to rounding, and is not logged (aiq_defined)
                model_costs = model_cost.compute().cpu().numpy()
                if aiq_defined(model_costs):
                    costs, scores = map(list, zip(*points))
                    selection = float(aiq(costs, scores, aiq_cost_range(model_costs)))
                    self.log(metric_name(stage, split, "aiq"), selection, add_dataloader_idx=False)
            if router_rewards:
                # what checkpoint selection watches (the recipes' monitor): AIQ where it is defined, else reward_avg
                self.log(metric_name(stage, split, "selection"), selection, add_dataloader_idx=False)
            model_cost.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Per prompt at ``predict.w_c``: the greedy choice and its probability (softmax of :meth:`route`); when
        exploring, a sampled choice, its policy probability and its ``propensity`` (probability of being served)."""
        w = preference_tensor(self.predict_w_c, len(batch["emb"]), batch["emb"].device)
        logits = self.route(batch["emb"], w)
        probs = torch.softmax(logits, dim=-1)
        out = {"row": batch["row"], "split": batch["split"], "w_c": self.predict_w_c}
        if self.predict_exploration is None:
            out["action"] = self.greedy(batch["emb"], w, logits)
            out["probability"] = probs.gather(-1, out["action"].unsqueeze(-1)).squeeze(-1)
            return out
        serving = exploration_probabilities(logits, *self.predict_exploration)
        action = torch.multinomial(serving, 1).squeeze(-1)
        out["action"] = action
        out["probability"] = probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        out["propensity"] = serving.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return out
