"""Base LightningModule for routers: routing at a preference, and the Lightning hooks every router shares.

Evaluation runs through :mod:`barp.models.evaluation`, raw prompts through :mod:`barp.models.serving`; its
checkpoint records are written and read by :mod:`barp.models.checkpoints`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info

from barp.data.environment import Environment
from barp.encoders import EncoderSpec, SentenceEncoder, count_parameters
from barp.errors import ConfigError
from barp.learning.rl import check_w_c
from barp.models import checkpoints, evaluation, serving
from barp.models.compat import upgrade_checkpoint
from barp.models.parts import Arms, Evaluation, Guard, Predict, Reward, make_plain, part
from barp.models.protocols import RouterData
from barp.models.shift import ShiftGuard, check_knobs


class RouterModule(L.LightningModule):
    """A router over frozen prompt embeddings: routing at a preference, and the Lightning hooks routers share.

    The module owns its frozen encoder (:attr:`encoder`): never trained, never stored as weights, rebuilt on first
    use from the settings recorded from its training data (saved in every checkpoint); it embeds raw prompts for
    :class:`~barp.models.trained.TrainedRouter`. Metrics: :class:`~barp.models.evaluation.EvalMetrics`.

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

    tau: torch.Tensor  # buffers (registered in __init__)
    reference_models: torch.Tensor

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
        tau, tau_percentile = reward.checked().tau, reward.tau_percentile
        self.eval_w_c, self.extra_eval_w_c = evaluation.preferences()
        self.predict_w_c = check_w_c(predict.w_c, "model.predict.w_c")
        self.predict_exploration = predict.exploration()  # (temperature, epsilon) when predict samples
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
        self.env: Environment | None = None
        self.eval_metrics = self._build_metrics()
        self._column_order: torch.Tensor | None = None  # data column of each arm, when the orders differ
        self._data_record: dict | None = None  # what checkpoints record about the training data
        self._rng_state: dict | None = None  # a resumed fit's random generators, restored at train start
        self._trained = False  # set by a training step or a trained checkpoint; evaluation refuses otherwise
        self.encoder_settings = EncoderSpec(name=arms.encoder, dtype="float32").identity()  # the data's, once set up
        self.__dict__["_frozen_encoder"] = None  # not an nn.Module attribute: never in state_dict or the optimiser

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, then every part and strategy as plain data (:func:`~barp.models.parts.plain`), the parts as
        resolved (with their defaults), so that ``torch.load(weights_only=True)`` reads every checkpoint."""
        if frame is None and (current := inspect.currentframe()) is not None:
            frame = current.f_back
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        for saved in (self._hparams, self._hparams_initial):  # Lightning's (private) dicts of what it saves
            make_plain(cast(AttributeDict, saved), self.resolved_parts())

    @property
    def hparams(self) -> AttributeDict:
        """Lightning's saved hyperparameters: an ``AttributeDict`` once :meth:`save_hyperparameters` ran (Lightning
        types it as any mapping, without attribute access)."""
        return cast(AttributeDict, super().hparams)

    def optimizer(self) -> LightningOptimizer:
        """The one optimizer of a router optimising by hand (``automatic_optimization = False``)."""
        return cast(LightningOptimizer, self.optimizers())

    def resolved_parts(self) -> dict[str, Any]:
        """The module's parts as it uses them (subclasses add theirs): what its hyperparameters save."""
        return dict(self._parts)

    def _build_metrics(self) -> evaluation.EvalMetrics:
        return evaluation.EvalMetrics(self.model_names, self.task_names, self.eval_preferences)

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Scores over models (higher is better; BaRP returns logits), shape (B, K). Greedy routing takes argmax."""
        raise NotImplementedError  # each router implements it

    @property
    def eval_preferences(self) -> list[float]:
        """Primary preference first, then the extra ones."""
        return [self.eval_w_c, *self.extra_eval_w_c]

    @property
    def tau_value(self) -> float:
        """The resolved tau (USD)."""
        if math.isnan(value := float(self.tau)):
            raise RuntimeError("tau is not resolved yet: fit the model or load a checkpoint first")
        return value

    def router_data(self) -> RouterData | None:
        """The trainer's datamodule; None outside a Trainer, or for a Trainer given bare dataloaders."""
        trainer: Any = self.trainer if self._trainer is not None else None  # Lightning sets trainer.datamodule
        return None if trainer is None else trainer.datamodule

    def check_fit_inputs(self) -> None:
        """Read and check the files the fit will read beyond its data, before ``barp fit`` writes anything (the run
        folder, its config); raise a ``ConfigError`` naming the file, field and value. Default: none."""

    def setup(self, stage: str) -> None:
        """Attach the training environment and resolve tau, the reference models and the guard from the data."""
        if (dm := self.router_data()) is None:
            return
        if stage == "fit" and list(dm.model_names) != self.model_names:
            raise ConfigError(f"data models {dm.model_names} differ from the model's model_names {self.model_names}")
        order = checkpoints.model_order(self.model_names, list(dm.model_names), "the data")
        self._column_order = None if order is None else torch.as_tensor(order)
        env = dm.train_environment()
        self.encoder_settings = dm.encoder_spec.identity()
        if stage == "fit":
            self.env = env
            self._data_record = checkpoints.data_record(dm, self.model_names, self.task_names)
        if torch.isnan(self.tau):
            self.tau.fill_(env.cost_percentile(self.tau_percentile))
        if self.reference_models[0] < 0:
            mean_cost = torch.as_tensor(env.mean_cost_per_model())
            mean_cost = mean_cost if order is None else mean_cost[order]
            self.reference_models.copy_(torch.stack([mean_cost.argmin(), mean_cost.argmax()]))
        self.eval_split_names = dm.eval_splits
        if self.fallback_quantile is not None:
            self.guard = ShiftGuard.from_data(dm, self._column_order, self.tau_value, self.fallback_quantile,
                                              self.fallback_neighbours)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the training data (models, tasks, encoder, training prompts) and every random generator's state."""
        checkpoints.write_records(checkpoint, self._data_record, self.encoder_settings,
                                  None if self.guard is None else self._guard().state())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Read the records, check the checkpoint against the data (:func:`barp.models.checkpoints.load_records`)."""
        upgrade_checkpoint(checkpoint)  # written before the parts: the Trainer reads the file itself
        checkpoints.load_records(self, checkpoint)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._trained = True

    def _refuse_untrained(self) -> None:
        if not self._trained:
            raise ConfigError("the router has not been trained: pass --ckpt_path with a checkpoint written by "
                              "barp fit (or fit it first); an untrained policy's results mean nothing")

    def on_validation_start(self) -> None:
        if self._trainer is not None and str(getattr(self.trainer.state.fn, "value", "")) == "validate":
            self._refuse_untrained()

    on_test_start = on_predict_start = _refuse_untrained

    def on_fit_start(self) -> None:
        """Log trainable and frozen parameter counts; a resumed fit restores its random generators."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = count_parameters(self.encoder_name)
        rank_zero_info(f"barp: {trainable:,} trainable parameters; frozen encoder {frozen:,} parameters; "
                       f"tau = {self.tau_value:.3g} USD")
        for logger in self.loggers:
            logger.log_hyperparams({"params/trainable": trainable, "params/frozen": frozen, "tau": self.tau_value})
        if self._rng_state is not None:  # a resumed fit: the last hook before training draws (see restore_saved_rng)
            checkpoints.restore_rng(self._rng_state)
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
        if (pulls := self.fallback_pulls()) is not None:
            self.guard.pulls = pulls
        return self.guard

    def fallback_pulls(self) -> torch.Tensor | None:
        """Unbiased training pulls (per model: count, summed score, summed normalised cost; (3, K)) the guard's
        fallback pools with the validation split; None: the validation split alone (BaRP: its exploration pulls)."""
        return None

    @property
    def encoder(self) -> SentenceEncoder:
        """The frozen sentence encoder, built on first use from :attr:`encoder_settings` on the module's device."""
        return serving.frozen_encoder(self)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings of raw prompt texts with the module's frozen encoder, shape (N, D), on the module's device."""
        return serving.embed(self, prompts)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluation.evaluate_batch(self, batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        evaluation.evaluate_batch(self, batch, "test", dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        evaluation.log_results(self, "val")

    def on_test_epoch_end(self) -> None:
        evaluation.log_results(self, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Per prompt at ``predict_w_c``, greedy or exploring (:func:`barp.models.serving.predict`)."""
        return serving.predict(self, batch)
