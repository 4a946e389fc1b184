"""Seeded splits of an outcome table: in-distribution train/val/test, stratified by task, and an OOD test set
made of held-out task families."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from barp.data.table import OutcomeTable
from barp.errors import ConfigError


@dataclass(frozen=True)
class Splits:
    """Row indices into the full table for each split (sorted within a split)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ood: np.ndarray


def make_splits(
    table: OutcomeTable,
    ood_tasks: Sequence[str] = (),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 42,
) -> Splits:
    """Split a table: every row of an ``ood_tasks`` family goes to OOD test; each other task is shuffled with
    ``seed`` and cut into test, val and train by the given fractions (rounded per task).

    Args:
        table: The outcome table.
        ood_tasks: Task families held out entirely (out-of-distribution test).
        val_fraction: Share of each in-distribution task used for validation.
        test_fraction: Share of each in-distribution task used for the ID test.
        seed: Shuffling seed.

    Returns:
        The :class:`Splits`.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"data.{name} must be in [0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction must be < 1 (something must remain to train on), "
            f"got {val_fraction} + {test_fraction}"
        )
    tasks = np.asarray(table.tasks)
    known = set(table.tasks)
    unknown = [t for t in ood_tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"data.ood_tasks: {unknown} not found in {table.source}; available tasks: {sorted(known)}"
        )
    if set(ood_tasks) == known:
        raise ConfigError(f"data.ood_tasks holds out every task ({sorted(known)}): nothing is left to train on")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for task in sorted(known - set(ood_tasks)):
        rows = np.flatnonzero(tasks == task)
        rows = rows[rng.permutation(len(rows))]
        n_test = int(round(test_fraction * len(rows)))
        n_val = int(round(val_fraction * len(rows)))
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    ood = np.flatnonzero(np.isin(tasks, list(ood_tasks)))

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(xs)) if xs else np.zeros(0, dtype=np.int64)

    return Splits(train=cat(parts["train"]), val=cat(parts["val"]), test=cat(parts["test"]), ood=ood)
