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


#: Split roles a row can be given by the file it came from (see ``roles`` of :func:`make_splits`).
ROLES = ("pool", "val", "test")


def make_splits(
    table: OutcomeTable,
    ood_tasks: Sequence[str] = (),
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 42,
    roles: Sequence[str] | None = None,
) -> Splits:
    """Split a table: every row of an ``ood_tasks`` family goes to OOD test; the rest of each task is shuffled
    with ``seed`` and cut into test, val and train by the given fractions (rounded per task).

    Rows with the same prompt text (repeated samples of a prompt) are shuffled and cut as one group, so a
    prompt never lands in two of train, val and test.

    Args:
        table: The outcome table.
        ood_tasks: Task families held out entirely (out-of-distribution test).
        val_fraction: Share of each in-distribution task's pooled rows used for validation.
        test_fraction: Share of each in-distribution task's pooled rows used for the ID test.
        seed: Shuffling seed.
        roles: Per row, ``"pool"`` (cut by the fractions), ``"val"`` or ``"test"`` (fixed: the row is in that
            split, e.g. it came from a published test file, unless its family is held out as OOD). None: every
            row is pooled.

    Returns:
        The :class:`Splits`.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ConfigError(f"data.split.{name} must be in [0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.split.val_fraction + data.split.test_fraction must be < 1 (something must remain to train on), "
            f"got {val_fraction} + {test_fraction}"
        )
    tasks = np.asarray(table.tasks)
    role = np.asarray(["pool"] * len(tasks) if roles is None else list(roles))
    if len(role) != len(tasks) or not set(role.tolist()) <= set(ROLES):
        raise ValueError(f"roles must give one of {ROLES} per row")
    known = set(table.tasks)
    unknown = [t for t in ood_tasks if t not in known]
    if unknown:
        raise ConfigError(
            f"data.split.ood_tasks: {unknown} not found in {table.source}; available tasks: {sorted(known)}"
        )
    if set(ood_tasks) == known:
        raise ConfigError(f"data.split.ood_tasks holds out every task ({sorted(known)}): nothing is left to train on")
    rng = np.random.default_rng(seed)
    is_ood = np.isin(tasks, list(ood_tasks))
    parts: dict[str, list[np.ndarray]] = {
        "train": [],
        "val": [np.flatnonzero((role == "val") & ~is_ood)],
        "test": [np.flatnonzero((role == "test") & ~is_ood)],
    }
    pooled = (role == "pool") & ~is_ood
    for task in sorted(set(tasks[pooled].tolist())):
        groups = _prompt_groups(np.flatnonzero(pooled & (tasks == task)), table.prompts)
        groups = [groups[g] for g in rng.permutation(len(groups))]
        n_rows = sum(len(g) for g in groups)
        cut = {"test": int(round(test_fraction * n_rows)), "val": int(round(val_fraction * n_rows))}
        filled = {"test": 0, "val": 0}
        for group in groups:
            name = next((n for n in ("test", "val") if filled[n] < cut[n]), "train")
            filled[name] = filled.get(name, 0) + len(group)
            parts[name].append(group)
    ood = np.flatnonzero(is_ood)

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(xs)).astype(np.int64) if xs else np.zeros(0, dtype=np.int64)

    return Splits(train=cat(parts["train"]), val=cat(parts["val"]), test=cat(parts["test"]), ood=ood)


def _prompt_groups(rows: np.ndarray, prompts: Sequence[str]) -> list[np.ndarray]:
    """``rows`` grouped by prompt text, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in rows.tolist():
        groups.setdefault(prompts[i], []).append(i)
    return [np.asarray(g, dtype=np.int64) for g in groups.values()]
