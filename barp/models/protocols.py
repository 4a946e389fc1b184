"""What a router reads from its data: the :class:`RouterData` protocol.

:class:`~barp.models.base.RouterModule`, its subclasses and the checkpoint checks (:mod:`barp.models.checkpoints`)
read the trainer's datamodule through this type only, never by probing which attributes it has.
:class:`~barp.data.datamodule.RoutingDataModule` implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from barp.data.environment import Environment
from barp.data.splits import Splits
from barp.data.table import OutcomeTable
from barp.encoders import EncoderSpec, SentenceEncoder


class RouterData(Protocol):
    """A set-up datamodule as a router sees it: the models and tasks, the training environment (pulled outcomes
    only), the evaluated splits' names, and, for the shift guard and the checkpoint record, the table, its splits
    and the embeddings."""

    hparams: Any  #: the data settings (the encoder's among them; what a checkpoint records)

    @property
    def model_names(self) -> list[str]: ...

    @property
    def task_names(self) -> list[str]: ...

    @property
    def encoder_spec(self) -> EncoderSpec: ...

    @property
    def eval_splits(self) -> dict[str, list[str]]: ...

    @property
    def splits(self) -> Splits: ...

    @property
    def table(self) -> OutcomeTable: ...

    def train_environment(self) -> Environment: ...

    def embeddings(self, rows: np.ndarray | None = None) -> np.ndarray: ...

    def train_embeddings(self) -> np.ndarray: ...


class Router(Protocol):
    """A router module as :mod:`barp.models.serving`, :mod:`barp.models.evaluation` and
    :mod:`barp.models.checkpoints` read and update it (:class:`~barp.models.base.RouterModule` implements it; those
    modules sit below the base class, so they name it by this type)."""

    model_names: list[str]
    embed_dim: int
    encoder_settings: dict
    predict_w_c: float
    predict_exploration: tuple[float, float] | None
    fallback_quantile: float | None
    fallback_neighbours: int
    guard: Any  #: the shift guard (:class:`~barp.models.shift.ShiftGuard`) or None
    eval_metrics: Any  #: :class:`~barp.models.evaluation.EvalMetrics`
    reference_models: torch.Tensor
    _column_order: torch.Tensor | None
    _data_record: dict | None
    _rng_state: dict | None
    _trained: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def trainer(self) -> Any: ...

    @property
    def encoder(self) -> SentenceEncoder: ...

    @property
    def eval_preferences(self) -> list[float]: ...

    @property
    def tau_value(self) -> float: ...

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor: ...

    def greedy(self, emb: torch.Tensor, w: torch.Tensor, scores: torch.Tensor | None = None,
               novel: torch.Tensor | None = None) -> torch.Tensor: ...

    def embed(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def router_data(self) -> RouterData | None: ...

    def _guard(self) -> Any: ...

    def _build_metrics(self) -> Any: ...

    def log_dict(self, *args: Any, **kwargs: Any) -> None: ...
