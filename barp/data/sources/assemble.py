"""Validate the cells of one file and build its :class:`~barp.data.table.OutcomeTable`.

Every layout reader collects the same :class:`Cells` (ids, prompts, tasks, a score and a cost per model, and the
file row each value came from); :func:`assemble` checks them in file terms, so a bad value is reported as
``FILE: column C, row R (id ...)`` with R the 0-based data row of the file (header excluded), then builds the
table. Rows with missing score cells are dropped with one warning, or rejected when ``on_missing="error"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from barp.data.sources.duplicates import unique_rows, warn_duplicates
from barp.data.table import MAX_COST_USD, OutcomeTable
from barp.errors import DataValidationError

OnMissing = Literal["drop", "error"]
#: Text cells read as missing in numeric columns (compared lower-case).
NA_TEXT = frozenset({"", "na", "n/a", "nan", "null", "none", "<na>"})


def is_missing(value: object) -> bool:
    """Whether a cell holds no value (None, NaN, NA)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def describe(value: object) -> str:
    """A short printable form of a cell value."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class LoadOptions:
    """How to turn a file into a table (see :func:`barp.data.sources.load_table`).

    Args:
        on_missing: ``"drop"`` rows with missing score cells (one warning) or ``"error"``.
        task_map: Name or prefix -> task family overrides.
        default_task: Family of RouterBench names no rule covers, and of generic rows without a task.
        prices: Price table for the records layout (a JSON/YAML path or a dict).
        task_column: The column (records: the key) holding each row's task family, in the generic layouts
            and records (RouterBench files always use ``eval_name``).
    """

    on_missing: OnMissing = "drop"
    task_map: dict[str, str] | None = None
    default_task: str = "other"
    prices: str | dict | None = None
    task_column: str = "task"


@dataclass
class Cells:
    """The values of one file, one entry per prompt, as read (not yet validated).

    Args:
        source: The file, named in every message.
        ids: Prompt id per prompt.
        prompts: Prompt text per prompt (text, or a list of turns to join).
        tasks: Task family per prompt.
        rows: The file row of each prompt.
        scores: Model -> score cell per prompt.
        costs: Model -> cost cell per prompt.
        score_column: Model -> the file column its scores come from (for messages).
        cost_column: Model -> the file column its costs come from.
        cell_rows: Model -> the file row of each cell, where it differs from ``rows`` (long layouts); -1 marks a
            (prompt, model) pair that has no row at all.
        id_column: The file column of the ids; prompt_column likewise.
    """

    source: str
    ids: list
    prompts: list
    tasks: list[str]
    rows: list[int]
    scores: dict[str, list]
    costs: dict[str, list]
    score_column: dict[str, str]
    cost_column: dict[str, str]
    cell_rows: dict[str, list[int]] | None = None
    id_column: str = "prompt_id"
    prompt_column: str = "prompt"
    models: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.models = sorted(self.scores)

    def where(self, column: str, i: int, model: str | None = None, with_source: bool = True) -> str:
        """``FILE: column C, row R (id X)`` for prompt ``i`` (and the cell of ``model``, in long layouts)."""
        row = self.rows[i] if model is None or self.cell_rows is None else self.cell_rows[model][i]
        pid = self.ids[i]
        if row < 0:
            text = f"column {column!r}, no row for prompt id {pid!r} and model {model!r}"
        else:
            text = f"column {column!r}, row {row} (id {pid!r})"
        return f"{self.source}: {text}" if with_source else text


def _to_float(value: object) -> float | None:
    """Parse one numeric cell; None when missing; raise ValueError when not a number."""
    if is_missing(value):
        return None
    if isinstance(value, str):
        if value.strip().lower() in NA_TEXT:
            return None
        return float(value)
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return float(value)
    raise ValueError(value)


def _numbers(cells: Cells, values: dict[str, list], columns: dict[str, str]) -> np.ndarray:
    """Parse the cells of each model into an (N, K) float array with NaN for missing cells."""
    out = np.full((len(cells.ids), len(cells.models)), np.nan)
    for j, model in enumerate(cells.models):
        for i, value in enumerate(values[model]):
            try:
                parsed = _to_float(value)
            except (TypeError, ValueError):
                raise DataValidationError(
                    f"{cells.where(columns[model], i, model)}: value {describe(value)} is not a number"
                ) from None
            if parsed is not None:
                out[i, j] = parsed
    return out


def _first_bad(cells: Cells, bad: np.ndarray, columns: dict[str, str], values: np.ndarray, rule: str) -> None:
    """Raise for the first True cell of ``bad``; ``rule`` says what the value should be (None: it is missing)."""
    if not bad.any():
        return
    i, j = map(int, np.argwhere(bad)[0])
    model = cells.models[j]
    more = int(bad.sum()) - 1
    tail = f" ({more} more bad cells)" if more else ""
    problem = f"the value {float(values[i, j])!r} is not {rule}" if rule else "the value is missing (NaN or empty)"
    raise DataValidationError(f"{cells.where(columns[model], i, model)}: {problem}{tail}")


def prompt_text(value: object) -> str | None:
    """The prompt as text: strings as they are, a list of turns joined by blank lines; None if not text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) and all(isinstance(t, str) for t in value):
        return "\n\n".join(value)
    return None


def _check_ids(cells: Cells) -> list[str]:
    """The ids as text; a missing id is an error (repeated ids are resolved by :mod:`.duplicates`)."""
    ids: list[str] = []
    for i, pid in enumerate(cells.ids):
        if is_missing(pid) or not str(pid).strip():
            raise DataValidationError(f"{cells.where(cells.id_column, i)}: the prompt id is missing")
        ids.append(str(pid))
    return ids


def _missing_rows(cells: Cells, scores: np.ndarray, on_missing: OnMissing) -> np.ndarray:
    """Rows to keep; warn once about dropped rows, or raise when ``on_missing == "error"``."""
    missing = np.isnan(scores)
    bad_rows = missing.any(axis=1)
    if not bad_rows.any():
        return np.arange(len(cells.ids))
    i, j = map(int, np.argwhere(missing)[0])
    model = cells.models[j]
    count, n_cells = int(bad_rows.sum()), int(missing.sum())
    columns = sorted({cells.score_column[cells.models[c]] for c in np.flatnonzero(missing.any(axis=0))})
    if on_missing == "error":
        raise DataValidationError(
            f"{cells.where(cells.score_column[model], i, model)}: the score is missing "
            f"({count} rows have missing score cells); pass on_missing='drop' (--data.source.on_missing drop) to "
            "drop them"
        )
    warnings.warn(
        f"{cells.source}: dropped {count} of {len(cells.ids)} rows with missing score cells ({n_cells} cells, "
        f"columns {columns}; first at {cells.where(cells.score_column[model], i, model, with_source=False)}); "
        "pass on_missing='error' to reject them instead",
        UserWarning,
        stacklevel=4,
    )
    return np.flatnonzero(~bad_rows)


def assemble(cells: Cells, on_missing: OnMissing = "drop") -> OutcomeTable:
    """Validate ``cells`` and build the outcome table, its ``source`` being the file.

    Args:
        cells: The values read from one file.
        on_missing: ``"drop"`` rows with missing score cells (one warning gives their count) or ``"error"``.

    Raises:
        DataValidationError: The first bad value, naming the file, column and row.
    """
    if len(cells.models) < 2:
        raise DataValidationError(
            f"{cells.source}: routing needs at least 2 models, found {len(cells.models)}: {cells.models}"
        )
    ids = _check_ids(cells)
    scores = _numbers(cells, cells.scores, cells.score_column)
    keep = _missing_rows(cells, scores, on_missing)
    if len(keep) == 0:
        raise DataValidationError(f"{cells.source}: no rows left after dropping rows with missing score cells")
    costs = _numbers(cells, cells.costs, cells.cost_column)
    sub = np.zeros(len(ids), dtype=bool)
    sub[keep] = True
    missing_cost = np.isnan(costs) & sub[:, None]
    _first_bad(cells, missing_cost, cells.cost_column, costs, "")
    bad_cost = sub[:, None] & (~np.isfinite(costs) | (costs < 0) | (costs > MAX_COST_USD))
    _first_bad(cells, bad_cost, cells.cost_column, costs, f"a finite cost in [0, {MAX_COST_USD:g}] (USD per request)")
    bad_score = sub[:, None] & ~np.isnan(scores) & (~np.isfinite(scores) | (scores < 0) | (scores > 1))
    _first_bad(cells, bad_score, cells.score_column, scores, "a score in [0, 1]")
    prompts: list[str] = []
    for i in keep:
        text = prompt_text(cells.prompts[i])
        if text is None:
            what = "is missing" if is_missing(cells.prompts[i]) else f"is not text: {describe(cells.prompts[i])}"
            raise DataValidationError(f"{cells.where(cells.prompt_column, int(i))}: the prompt {what}")
        if not text.strip():
            raise DataValidationError(f"{cells.where(cells.prompt_column, int(i))}: the prompt is empty")
        prompts.append(text)
    kept_ids = [ids[i] for i in keep]
    unique = unique_rows(kept_ids, prompts, scores[keep], costs[keep])
    rows = keep[unique.keep]
    prompts = [prompts[i] for i in unique.keep]
    warn_duplicates(cells.source, unique, prompts, scores[rows])
    return OutcomeTable(
        prompt_ids=unique.ids,
        prompts=prompts,
        tasks=[cells.tasks[i] for i in rows],
        models=list(cells.models),
        scores=scores[rows],
        costs=costs[rows],
        source=cells.source,
    )


def concat(tables: Sequence[OutcomeTable], source: str, pools: Sequence[object] | None = None) -> OutcomeTable:
    """Stack the tables of several files (same models) into one, applying :mod:`.duplicates`' rules across files.

    Args:
        tables: One table per file, each with its file as ``source``.
        source: The combined source (the path pattern the user gave).
        pools: Per table, the pool it belongs to (e.g. its split role): exact copies are dropped only within a
            pool. None: all tables form one pool (the files of one glob).
    """
    first = tables[0]
    for table in tables:
        if set(table.models) != set(first.models):
            extra = sorted(set(table.models) ^ set(first.models))
            raise DataValidationError(
                f"{table.source}: its models differ from those of {first.source} (models in only one of them: "
                f"{extra}); files loaded together must have the same model columns"
            )
    order = [[t.models.index(m) for m in first.models] for t in tables]
    ids = [p for t in tables for p in t.prompt_ids]
    prompts = [p for t in tables for p in t.prompts]
    scores = np.concatenate([t.scores[:, o] for t, o in zip(tables, order)])
    costs = np.concatenate([t.costs[:, o] for t, o in zip(tables, order)])
    files = [k for k, t in enumerate(tables) for _ in range(len(t))]
    row_pools = None if pools is None else [pools[k] for k in files]
    unique = unique_rows(ids, prompts, scores, costs, row_pools)
    keep = unique.keep
    warn_duplicates(f"{source} (across its {len(tables)} files)", unique, [], scores[:0])
    tasks = [x for t in tables for x in t.tasks]
    return OutcomeTable(
        prompt_ids=unique.ids,
        prompts=[prompts[i] for i in keep],
        tasks=[tasks[i] for i in keep],
        models=list(first.models),
        scores=scores[keep],
        costs=costs[keep],
        source=source,
    )


__all__ = ["Cells", "LoadOptions", "OnMissing", "assemble", "concat", "describe", "is_missing", "prompt_text"]
