"""RouterBench layouts: the wide table (official pickles, or the same columns in CSV/parquet) and the long one.

Wide: ``sample_id, prompt, eval_name``, a score column ``<model>`` and a cost column ``<model>|total_cost`` per
model (in any order; columns are picked by name, the model list comes from the cost columns; response and oracle
columns are ignored). Long (``routerbench_raw.pkl``): one row per (sample, model) with ``sample_id, model_name,
eval_name, prompt, performance`` and a cost column, pivoted to wide.

Pitfalls handled: object-typed scores are cast to float; prompts stored as the text of a Python list of turns are
parsed with :func:`ast.literal_eval` (never ``eval``) and the turns joined by blank lines, falling back to the raw
text; ``test-match`` rows are dropped; ``eval_name`` is mapped to task families
(:func:`~barp.data.sources.tasks.routerbench_family`); ``sample_id`` is the prompt id.
"""

from __future__ import annotations

import ast

import pandas as pd

from barp.data.sources.assemble import LoadOptions, assemble, is_missing
from barp.data.sources.files import RawFile
from barp.data.sources.generic import frame_of, pivot_long, require, wide_cells
from barp.data.sources.tasks import TEST_MATCH, routerbench_family
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError

#: Accepted names of the cost column in the long layout, in order of preference.
LONG_COST_COLUMNS = ("cost", "total_cost", "estimated_cost")


def parse_prompt(value: object) -> object:
    """Join the turns of a list-literal prompt (``"['turn 1', 'turn 2']"``); other values are returned as is.

    Args:
        value: A prompt cell.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value
    try:
        turns = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if isinstance(turns, (list, tuple)) and turns and all(isinstance(t, str) for t in turns):
        return "\n\n".join(turns)
    return value


def _families(frame: pd.DataFrame, source: str, options: LoadOptions) -> list[str | None]:
    """Task family per file row; None for ``test-match`` rows."""
    out: list[str | None] = []
    for r, name in enumerate(frame["eval_name"].tolist()):
        if is_missing(name) or not str(name).strip():
            raise DataValidationError(f"{source}: column 'eval_name', row {r}: the value is missing")
        name = str(name).strip()
        out.append(None if name == TEST_MATCH else routerbench_family(name, options.task_map, options.default_task))
    if all(f is None for f in out):
        raise DataValidationError(f"{source}: column 'eval_name': every row is a {TEST_MATCH!r} row (none left)")
    return out


def read_wide(raw: RawFile, options: LoadOptions) -> OutcomeTable:
    """Load a RouterBench wide table.

    Args:
        raw: The file's content.
        options: Loading options (``task_map``, ``default_task``, ``on_missing``).
    """
    frame, source = frame_of(raw), raw.source
    require(frame, ["sample_id", "prompt", "eval_name"], source, "RouterBench wide")
    families = _families(frame, source, options)
    rows = [r for r, f in enumerate(families) if f is not None]
    cells = wide_cells(
        frame,
        source,
        ids=frame["sample_id"].iloc[rows].tolist(),
        prompts=[parse_prompt(p) for p in frame["prompt"].iloc[rows].tolist()],
        tasks=[f for f in families if f is not None],  # the families of ``rows``
        rows=rows,
    )
    cells.id_column = "sample_id"
    return assemble(cells, options.on_missing)


def read_long(raw: RawFile, options: LoadOptions) -> OutcomeTable:
    """Load a RouterBench long (raw) table, one row per (sample, model), pivoted to wide.

    Args:
        raw: The file's content.
        options: Loading options.
    """
    frame, source = frame_of(raw), raw.source
    cost_col = next((c for c in LONG_COST_COLUMNS if c in frame.columns), LONG_COST_COLUMNS[0])
    require(
        frame, ["sample_id", "model_name", "eval_name", "prompt", "performance", cost_col], source, "RouterBench long"
    )
    cells = pivot_long(
        frame,
        source,
        tasks=_families(frame, source, options),
        id_col="sample_id",
        model_col="model_name",
        score_col="performance",
        cost_col=cost_col,
        prompt_col="prompt",
    )
    cells.prompts = [parse_prompt(p) for p in cells.prompts]
    return assemble(cells, options.on_missing)
