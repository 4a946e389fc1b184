"""What a router reads from its data: the :class:`RouterData` protocol.

:class:`~barp.models.base.RouterModule`, its subclasses and the checkpoint checks (:mod:`barp.models.checkpoints`)
read the trainer's datamodule through this type only, never by probing which attributes it has.
:class:`~barp.data.datamodule.RoutingDataModule` implements it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from barp.data.environment import Environment
from barp.data.splits import Splits
from barp.data.table import OutcomeTable
from barp.encoders import EncoderSpec


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
