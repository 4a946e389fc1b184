"""Offline routers trained with FULL information (every model's outcome on every training prompt), as in the
paper's and RouterBench's comparisons: a kNN router and an MLP router.

Each predicts every model's score q_hat and cost c_hat from the prompt embedding and routes to
``argmax_k w_q * q_hat_k - w_c * min(c_hat_k / tau, 1)``, so one trained model serves every preference (like
RouterBench's willingness-to-pay sweep). They are compared with BaRP, which only ever sees the pulled arm.

Full-information access path: :func:`full_information_training_data` is the one place where a trainable router
reads outcome cells it did not pull. It returns the datamodule's table restricted to the TRAIN split (never val,
test or OOD rows), aligned with the ``row`` field of training batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from barp.errors import ConfigError
from barp.learning.neighbours import NeighbourIndex, check_method
from barp.learning.rl import reward
from barp.models.base import RouterModule
from barp.models.baselines.common import count_step, step_counter


@dataclass(frozen=True)
class FullInformationData:
    """The training split with every model's outcome: embeddings (N, D), scores (N, K), costs (N, K) in USD.

    Row ``i`` is the training batches' ``row == i``.
    """

    emb: torch.Tensor
    scores: torch.Tensor
    costs: torch.Tensor


def full_information_training_data(datamodule) -> FullInformationData:
    """FULL-INFORMATION access for offline routers: the datamodule's table restricted to the train split.

    Args:
        datamodule: A set-up :class:`~barp.data.datamodule.RoutingDataModule`.
    """
    rows = datamodule.splits.train
    table = datamodule.table.subset(rows)
    return FullInformationData(
        emb=torch.as_tensor(datamodule.embeddings(rows), dtype=torch.float32),
        scores=torch.as_tensor(table.scores, dtype=torch.float32),
        costs=torch.as_tensor(table.costs, dtype=torch.float32),
    )


class OfflineRouterModule(RouterModule):
    """Base of the full-information routers: predict (q_hat, c_hat) per model, route by the predicted reward.

    Subclasses implement :meth:`predict_outcomes` and may override :meth:`fit_full_information`.

    Args:
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, **parts) -> None:
        super().__init__(**parts)
        self.train_data: FullInformationData | None = None

    def setup(self, stage: str) -> None:
        """Resolve tau and references (base class), then read the training split with full information."""
        super().setup(stage)
        dm = self.router_data()
        if stage == "fit" and dm is not None:
            self.train_data = full_information_training_data(dm)
            self.fit_full_information(self.train_data)

    def fit_full_information(self, data: FullInformationData) -> None:
        """Hook called once at fit start with the full-information training data (default: nothing)."""

    def predict_outcomes(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted score in [0, 1] and cost in USD of every model, each of shape (B, K)."""
        raise NotImplementedError

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Predicted reward ``w_q q_hat - w_c min(c_hat / tau, 1)`` of every model, shape (B, K)."""
        q_hat, c_hat = self.predict_outcomes(emb)
        return reward(q_hat, c_hat, w, self.tau_value)

    def _targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_data is None:
            raise RuntimeError(f"{type(self).__name__} needs a datamodule (full-information training data)")
        rows = batch["row"].long().cpu()
        return self.train_data.scores[rows].to(self.device), self.train_data.costs[rows].to(self.device)


class _Memory(nn.Module):
    """The kNN router's stored training set; buffers take the checkpoint's size when loaded."""

    keys: torch.Tensor  # buffers
    scores: torch.Tensor
    costs: torch.Tensor

    def __init__(self, embed_dim: int, num_models: int) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, embed_dim))
        self.register_buffer("scores", torch.zeros(0, num_models))
        self.register_buffer("costs", torch.zeros(0, num_models))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("keys", "scores", "costs"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class KNNRouter(OfflineRouterModule):
    """kNN router (RouterBench, Hu et al. 2024): q_hat and c_hat are the means over the k training prompts most
    similar to the prompt (cosine similarity of embeddings). Nothing to optimise: "training" stores the training
    split, read with full information.

    Args:
        k: Number of neighbours (RouterBench's default 40).
        search: How the neighbours are found (:mod:`barp.learning.neighbours`): ``auto`` (exact below 20,000
            training prompts, an approximate IVF index above), ``exact`` or ``approximate``.
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, k: int = 40, search: str = "auto", **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if k < 1:
            raise ConfigError(f"model.k must be >= 1, got {k!r}")
        check_method(search, "model.search")
        self._index: NeighbourIndex | None = None  # built on the first prediction after the memory is set
        self.automatic_optimization = False
        self.memory = _Memory(self.embed_dim, len(self.model_names))

    def fit_full_information(self, data: FullInformationData) -> None:
        self.memory.keys = F.normalize(data.emb, dim=-1).to(self.device)
        self.memory.scores = data.scores.to(self.device)
        self.memory.costs = data.costs.to(self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Nothing to learn per batch (the memory is stored at fit start); only counts the step."""
        count_step(self)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return step_counter()

    def predict_outcomes(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.memory.keys) == 0:
            raise RuntimeError("KNNRouter: empty memory; fit it or load a checkpoint first")
        if self._index is None or self._index.keys is not self.memory.keys:  # the memory's keys are normalised
            self._index = NeighbourIndex.build(self.memory.keys, self.hparams.search, option="model.search",
                                               normalise=False)
        _, idx = self._index.search(emb, min(self.hparams.k, len(self.memory.keys)))
        return self.memory.scores[idx].mean(dim=1), self.memory.costs[idx].mean(dim=1)


class MLPRouter(OfflineRouterModule):
    """MLP router (RouterBench's MLP predictor, with a cost head): one network maps the embedding to every model's
    score logit (binary cross-entropy against the score in [0, 1]) and cost in units of tau (squared error), trained
    with full information on the training split.

    Args:
        hidden_dim: Width of the two hidden layers.
        dropout: Dropout after each hidden layer.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        cost_weight: Weight of the cost loss against the score loss.
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, hidden_dim: int = 256, dropout: float = 0.1, lr: float = 1e-3, weight_decay: float = 1e-4,
                 cost_weight: float = 1.0, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if lr <= 0 or not 0 <= dropout < 1:
            raise ConfigError(f"model.lr must be > 0 and model.dropout in [0, 1), got {lr!r}, {dropout!r}")
        k = len(self.model_names)
        self.net = nn.Sequential(
            nn.Linear(self.embed_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, 2 * k),
        )

    def _raw(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score_logit, cost_raw = self.net(emb).chunk(2, dim=-1)
        return score_logit, F.softplus(cost_raw)

    def predict_outcomes(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score_logit, cost_units = self._raw(emb)
        return torch.sigmoid(score_logit), cost_units * self.tau_value

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One full-information regression step on the batch's training rows."""
        scores, costs = self._targets(batch)
        score_logit, cost_units = self._raw(batch["emb"])
        score_loss = F.binary_cross_entropy_with_logits(score_logit, scores)
        cost_loss = F.mse_loss(cost_units, costs / self.tau_value)
        loss = score_loss + self.hparams.cost_weight * cost_loss
        self.log_dict({"train/loss": loss, "train/score_loss": score_loss, "train/cost_loss": cost_loss},
                      on_step=False, on_epoch=True, batch_size=len(scores))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
