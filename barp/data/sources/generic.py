"""barp's generic layouts for users' own data (CSV, JSONL or parquet), and the long -> wide pivot.

Wide: one row per prompt with ``prompt_id`` (optional: the row number is used), ``prompt``, ``task`` (optional:
``default_task``), then per model a score column ``<model>`` (in [0, 1]) and a cost column ``<model>|total_cost``
(USD). Models are the names before ``|total_cost``; other columns are ignored. barp's canonical parquet (what
:meth:`OutcomeTable.to_parquet` writes) is this layout with every column present.

Long: one row per (prompt, model) with ``prompt_id, prompt, task, model, score, cost`` (``task`` optional).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from barp.data.sources.assemble import Cells, LoadOptions, assemble, is_missing
from barp.data.sources.files import RawFile
from barp.data.sources.tasks import task_values
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError

COST_SUFFIX = "|total_cost"


def frame_of(raw: RawFile) -> pd.DataFrame:
    """The file's table with string column names."""
    frame = raw.table()
    frame.columns = [str(c) for c in frame.columns]
    return frame


def column_or_none(frame: pd.DataFrame, column: str) -> list:
    """The cells of ``column``, or None for every row when the file has no such column."""
    return frame[column].tolist() if column in frame.columns else [None] * len(frame)


def require(frame: pd.DataFrame, columns: Sequence[str], source: str, layout: str) -> None:
    """Raise naming the first of ``columns`` that ``frame`` lacks.

    Args:
        frame: The file's table.
        columns: Required column names.
        source: The file, for the message.
        layout: The layout's name, for the message.
    """
    for column in columns:
        if column not in frame.columns:
            found = ", ".join(map(repr, list(frame.columns)[:12])) + (", ..." if frame.shape[1] > 12 else "")
            raise DataValidationError(
                f"{source}: column {column!r} is missing (every row); the {layout} layout needs columns "
                f"{list(columns)}; the file has {found}"
            )


def wide_models(frame: pd.DataFrame, source: str) -> list[str]:
    """Model names from the ``<model>|total_cost`` columns; each must have its ``<model>`` score column."""
    models = [c[: -len(COST_SUFFIX)] for c in frame.columns if c.endswith(COST_SUFFIX)]
    if not models:
        raise DataValidationError(
            f"{source}: no '<model>{COST_SUFFIX}' cost columns (every row); a wide table needs a score column "
            f"'<model>' and a cost column '<model>{COST_SUFFIX}' per model"
        )
    for model in models:
        if model not in frame.columns:
            loose = [c for c in frame.columns if "|" not in c and c not in ("prompt", "prompt_id", "task")]
            raise DataValidationError(
                f"{source}: column {model!r} is missing (every row): the score column of model {model!r}, whose "
                f"cost column {model + COST_SUFFIX!r} exists; other plain columns: {loose[:12]}"
            )
    return models


def wide_cells(
    frame: pd.DataFrame, source: str, *, ids: list, prompts: list, tasks: list[str], rows: list[int]
) -> Cells:
    """Cells of a wide table restricted to the file rows ``rows``, models from the cost columns."""
    models = wide_models(frame, source)
    return Cells(
        source=source,
        ids=ids,
        prompts=prompts,
        tasks=tasks,
        rows=rows,
        scores={m: frame[m].iloc[rows].tolist() for m in models},
        costs={m: frame[m + COST_SUFFIX].iloc[rows].tolist() for m in models},
        score_column={m: m for m in models},
        cost_column={m: m + COST_SUFFIX for m in models},
    )


def read_wide(raw: RawFile, options: LoadOptions, *, canonical: bool = False) -> OutcomeTable:
    """Load a generic wide table (or barp's canonical parquet when ``canonical``).

    Args:
        raw: The file's content.
        options: Loading options (``task_map``, ``default_task``, ``on_missing``).
        canonical: Require every column of the canonical parquet (``prompt_id``, ``prompt``, ``task``).
    """
    frame, source = frame_of(raw), raw.source
    layout = "canonical parquet" if canonical else "generic wide"
    require(frame, ["prompt_id", "prompt", "task"] if canonical else ["prompt"], source, layout)
    rows = list(range(len(frame)))
    ids = frame["prompt_id"].tolist() if "prompt_id" in frame.columns else [str(r) for r in rows]
    tasks = task_values(column_or_none(frame, options.task_column), source, options)
    cells = wide_cells(frame, source, ids=ids, prompts=frame["prompt"].tolist(), tasks=tasks, rows=rows)
    return assemble(cells, options.on_missing)


def pivot_long(
    frame: pd.DataFrame,
    source: str,
    *,
    tasks: Sequence[str | None],
    id_col: str,
    model_col: str,
    score_col: str,
    cost_col: str,
    prompt_col: str,
) -> Cells:
    """Pivot a long table (one row per prompt and model) to per-prompt cells.

    Args:
        frame: The file's table.
        source: The file, for messages.
        tasks: Task family per file row; None drops the row silently.
        id_col: Column of prompt ids; the first row of an id gives its prompt and task.
        model_col: Column of model names.
        score_col: Column of scores.
        cost_col: Column of costs.
        prompt_col: Column of prompts.
    """
    ids, models = frame[id_col].tolist(), frame[model_col].tolist()
    prompts_in, scores_in, costs_in = (frame[c].tolist() for c in (prompt_col, score_col, cost_col))
    index: dict[str, int] = {}
    keys: list[str] = []
    prompts: list = []
    kept_tasks: list[str] = []
    rows: list[int] = []
    cell_row: dict[tuple[int, str], int] = {}
    for r, task in enumerate(tasks):
        if task is None:
            continue
        for column, value in ((id_col, ids[r]), (model_col, models[r])):
            if is_missing(value) or not str(value).strip():
                raise DataValidationError(f"{source}: column {column!r}, row {r}: the value is missing")
        key, model = str(ids[r]), str(models[r])
        i = index.get(key)
        if i is None:
            i = index[key] = len(keys)
            keys.append(key)
            prompts.append(prompts_in[r])
            kept_tasks.append(task)
            rows.append(r)
        if (i, model) in cell_row:
            raise DataValidationError(
                f"{source}: column {model_col!r}, row {r} (id {key!r}): a second row for model {model!r} "
                f"(the first is row {cell_row[(i, model)]})"
            )
        cell_row[(i, model)] = r
    names = sorted({m for _, m in cell_row})
    n = len(keys)
    scores = {m: [None] * n for m in names}
    costs = {m: [None] * n for m in names}
    cell_rows = {m: [-1] * n for m in names}
    for (i, m), r in cell_row.items():
        scores[m][i], costs[m][i], cell_rows[m][i] = scores_in[r], costs_in[r], r
    return Cells(
        source=source,
        ids=keys,
        prompts=prompts,
        tasks=kept_tasks,
        rows=rows,
        scores=scores,
        costs=costs,
        score_column={m: score_col for m in names},
        cost_column={m: cost_col for m in names},
        cell_rows=cell_rows,
        id_column=id_col,
        prompt_column=prompt_col,
    )


def read_long(raw: RawFile, options: LoadOptions) -> OutcomeTable:
    """Load a generic long table: ``prompt_id, prompt, task, model, score, cost`` (``task`` optional).

    Args:
        raw: The file's content.
        options: Loading options.
    """
    frame, source = frame_of(raw), raw.source
    require(frame, ["prompt_id", "prompt", "model", "score", "cost"], source, "generic long")
    tasks = task_values(column_or_none(frame, options.task_column), source, options)
    cells = pivot_long(
        frame,
        source,
        tasks=tasks,
        id_col="prompt_id",
        model_col="model",
        score_col="score",
        cost_col="cost",
        prompt_col="prompt",
    )
    return assemble(cells, options.on_missing)
