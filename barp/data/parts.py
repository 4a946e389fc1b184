"""The parts a :class:`~barp.data.datamodule.RoutingDataModule` is configured from, one dataclass per concern.

``data.init_args.source.path``, ``data.init_args.split.ood_tasks``, ``data.init_args.batches.batch_size``, ...:
each part is a YAML/CLI group. The data module saves each part as a plain dict (:func:`as_record`), so checkpoints
load with ``torch.load(weights_only=True)``, and accepts a part or its dict (:func:`coerce`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from barp.data.sources.assemble import LoadOptions
from barp.data.sources.layouts import Format
from barp.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from _typeshed import DataclassInstance

Part = TypeVar("Part", bound="DataclassInstance")  # one of the part dataclasses below


@dataclass(frozen=True)
class Source:
    """The outcome files and how to read them.

    Args:
        path: Data file (or glob, comma-separated files, ``hf://...`` file, ``datasets`` folder or
            ``hf-dataset://OWNER/NAME@REVISION#SPLIT``). With ``test_path`` (or ``val_path``) these are the
            training rows.
        val_path: A published validation split to keep as it is; without it validation is cut from ``path``'s rows
            by ``split.val_fraction``.
        test_path: A published test split, likewise: its rows are exactly the ID test split (those of an
            ``split.ood_tasks`` family go to the OOD test instead); ``split.test_fraction`` is then not used. Same
            forms as ``path``, read with the same options.
        format: File format; ``auto`` detects it from the content.
        prices: Price table (model -> USD per 1M input/output tokens) for record files without costs.
        task_map: Extra mapping from a file's task/eval names (exact or prefix) to task families.
        default_task: Family for RouterBench eval names no rule maps, and for rows without a task.
        task_column: Column (records: key) holding each row's task family in generic tables and score records,
            e.g. ``cluster_id`` for LLMRouter's files.
        on_missing: Rows with missing score cells in a file: ``drop`` them (with one warning) or ``error``.
        trust_pickle: Load a pickle whose SHA-256 is not a pinned official file (pickles can run code).
    """

    path: str
    val_path: str | None = None
    test_path: str | None = None
    format: Format = "auto"
    prices: str | dict | None = None
    task_map: dict[str, str] | None = None
    default_task: str = "other"
    task_column: str = "task"
    on_missing: Literal["drop", "error"] = "drop"
    trust_pickle: bool = False

    def load_options(self) -> LoadOptions:
        """How each file's content becomes a table (the options every reader takes)."""
        return LoadOptions(on_missing=self.on_missing, task_map=self.task_map, default_task=self.default_task,
                           prices=self.prices, task_column=self.task_column)

    def files(self) -> list[tuple[str, str]]:
        """``(role, path)`` of each file: ``pool`` (the training rows), then ``val`` and ``test`` when given."""
        return [(role, p) for role, p in (("pool", self.path), ("val", self.val_path), ("test", self.test_path))
                if p]


@dataclass(frozen=True)
class Split:
    """How the table's rows are split.

    Args:
        ood_tasks: Task families held out of training and evaluated as the out-of-distribution test split; None
            holds out the built-in benchmark's default families (none for a file).
        val_fraction: Share of each in-distribution task used for validation (default 0.1; refused with
            ``source.val_path``).
        test_fraction: Share of each in-distribution task used for the ID test (default 0.2; refused with
            ``source.test_path``).
        seed: Seed of the split.
    """

    ood_tasks: list[str] | None = None
    val_fraction: float | None = None
    test_fraction: float | None = None
    seed: int = 42


@dataclass(frozen=True)
class Synthetic:
    """The built-in SYNTHETIC RouterBench-shaped benchmark (used when there is no ``source``).

    Args:
        num_prompts: Its number of prompts.
        seed: Its seed.
    """

    num_prompts: int = 3000
    seed: int = 0


@dataclass(frozen=True)
class Batches:
    """How batches are served.

    Args:
        batch_size: Training batch size (per device).
        eval_batch_size: Batch size for validation, test and predict.
        train_repeats: Passes over the training prompts per epoch (each with fresh preferences and actions).
        num_workers: DataLoader workers (the data are in memory; 0 is usually fastest).
    """

    batch_size: int = 256
    eval_batch_size: int = 1024
    train_repeats: int = 1
    num_workers: int = 0


def coerce(cls: type[Part], value: Part | Mapping[str, Any], option: str) -> Part:
    """``value`` as a ``cls``: the part itself, or built from its dict (a saved hyperparameter or a config).

    Raises:
        ConfigError: ``value`` is neither, or its dict names an unknown or misses a required field of ``option``.
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{option}: unknown option(s) {unknown}; expected some of {sorted(names)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if value.get(name) is None]
        if missing:
            raise ConfigError(f"{option}.{missing[0]} must be given (got {option} options {sorted(value)}); "
                              f"{option} null leaves the part out")
        return cls(**value)
    raise ConfigError(f"{option} must be a {cls.__name__} or a mapping of its options, got {value!r}")


def as_record(part: Any) -> dict[str, Any] | None:
    """A part as a plain dict (None stays None): what hyperparameters and checkpoints hold."""
    return None if part is None else dataclasses.asdict(part)


def merge_options(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Data options ``base`` (a config's ``data.init_args``) with ``overrides`` applied, a part's options one by one:
    ``merge_options({"synthetic": {"num_prompts": 3000, "seed": 0}}, {"synthetic": {"num_prompts": 300}})`` keeps
    the seed."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def check_at_least_one(part: Any, option: str, names: tuple[str, ...]) -> None:
    """Refuse a value below 1 among ``part``'s fields ``names``, naming ``option.<field>`` and the value."""
    for name in names:
        value = getattr(part, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option}.{name} must be >= 1, got {value!r}")


__all__ = ["Batches", "Source", "Split", "Synthetic", "as_record", "check_at_least_one", "coerce", "merge_options"]
