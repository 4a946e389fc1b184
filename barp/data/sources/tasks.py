"""Task families: the user's ``task_map`` and RouterBench's ``eval_name`` -> family rule.

``task_map`` maps a name to a family by exact match first, then by the longest key that is a prefix of the name
(a trailing ``*`` on a key is optional: ``{"mmlu-*": "knowledge"}`` and ``{"mmlu-": "knowledge"}`` are the same).
For RouterBench files the user's map is tried first, then the built-in families; every other ``eval_name`` goes
to ``default_task``. For the generic layouts the map renames the file's own ``task`` values and leaves the
others as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from barp.data.sources.assemble import LoadOptions, is_missing

#: Names RouterBench keeps as their own family.
ROUTERBENCH_KEPT = ("hellaswag", "arc-challenge", "winogrande", "mbpp")
#: RouterBench's smoke-test rows, dropped on load.
TEST_MATCH = "test-match"


def match_task_map(name: str, task_map: dict[str, str] | None) -> str | None:
    """The family ``task_map`` gives ``name`` (exact key, else longest prefix key), or None.

    Args:
        name: A task or ``eval_name`` value.
        task_map: Name or prefix (optionally ending in ``*``) -> family.
    """
    if not task_map:
        return None
    if name in task_map:
        return str(task_map[name])
    best: tuple[int, str] | None = None
    for key, family in task_map.items():
        prefix = key[:-1] if key.endswith("*") else key
        if prefix and name.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), str(family))
    return None if best is None else best[1]


def routerbench_family(eval_name: str, task_map: dict[str, str] | None, default_task: str) -> str:
    """Map a RouterBench ``eval_name`` to its task family.

    ``mmlu-*`` -> ``mmlu``, ``grade-school-math`` -> ``gsm8k``, ``mtbench*`` -> ``mt-bench``; ``hellaswag``,
    ``arc-challenge``, ``winogrande`` and ``mbpp`` keep their names; the rest -> ``default_task``, unless
    ``task_map`` says otherwise (it is consulted first).

    Args:
        eval_name: The row's ``eval_name``.
        task_map: The user's overrides (exact name or prefix).
        default_task: Family of every name no rule covers.
    """
    mapped = match_task_map(eval_name, task_map)
    if mapped is not None:
        return mapped
    if eval_name == "mmlu" or eval_name.startswith("mmlu-"):
        return "mmlu"
    if eval_name == "grade-school-math":
        return "gsm8k"
    if eval_name.startswith("mtbench"):
        return "mt-bench"
    if eval_name in ROUTERBENCH_KEPT:
        return eval_name
    return default_task


def user_task(value: object, task_map: dict[str, str] | None, default_task: str) -> str:
    """A generic file's ``task`` cell, renamed by ``task_map``; empty cells get ``default_task``.

    Args:
        value: The cell (None or NaN when missing).
        task_map: The user's renames (exact name or prefix).
        default_task: Family of rows without a task.
    """
    if is_missing(value):
        return default_task
    name = str(value).strip()
    if not name:
        return default_task
    mapped = match_task_map(name, task_map)
    return name if mapped is None else mapped


def task_values(values: Sequence[object], source: str, options: LoadOptions) -> list[str]:
    """Task family per row from the file's task column (``options.task_column``), renamed by ``task_map``.

    Args:
        values: The column's cells (all None when the file has no such column).
        source: The file, for the warning.
        options: Loading options (``task_column``, ``task_map``, ``default_task``).

    A file without the column gives every row ``default_task``; when the column was named by the user
    (anything but ``task``), that is said in one warning, so a misspelt name does not pass unnoticed.
    """
    if all(is_missing(v) for v in values):
        if options.task_column != "task":
            warnings.warn(
                f"{source}: no row has the task column {options.task_column!r} (--data.source.task_column): every row "
                f"gets the task {options.default_task!r} (--data.source.default_task)",
                UserWarning,
                stacklevel=4,
            )
        return [options.default_task] * len(values)
    return [user_task(v, options.task_map, options.default_task) for v in values]
