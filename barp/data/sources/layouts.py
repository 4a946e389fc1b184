"""Which layout a file is in: named by the user, or detected from its content and columns.

Detection looks at what was read, not at the file name: JSON objects with a ``scores`` dict are records;
``model_name`` + ``performance`` columns are RouterBench long; ``model`` + ``score`` are generic long;
``<model>|total_cost`` columns with ``sample_id`` or ``eval_name`` are RouterBench wide, and without them the
generic wide table (which barp's canonical parquet is an instance of).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import barp.data.sources.generic as generic
import barp.data.sources.records as records
import barp.data.sources.routerbench as routerbench
from barp.data.sources.assemble import LoadOptions
from barp.data.sources.files import RawFile
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError

Format = Literal["auto", "routerbench", "routerbench_long", "wide", "long", "records", "parquet"]
FORMATS: tuple[str, ...] = get_args(Format)

READERS: dict[str, Callable[[RawFile, LoadOptions], OutcomeTable]] = {
    "routerbench": routerbench.read_wide,
    "routerbench_long": routerbench.read_long,
    "wide": generic.read_wide,
    "long": generic.read_long,
    "records": records.read_records,
    "parquet": lambda raw, options: generic.read_wide(raw, options, canonical=True),
}

_EXPECTED = (
    "RouterBench wide (sample_id, prompt, eval_name, <model>, <model>|total_cost), RouterBench long (sample_id, "
    "model_name, eval_name, prompt, performance, cost), generic wide (prompt_id, prompt, task, <model>, "
    "<model>|total_cost), generic long (prompt_id, prompt, task, model, score, cost), or JSON records "
    "({question, scores: {model: score}})"
)


def detect(raw: RawFile) -> str:
    """The layout of ``raw`` guessed from its content.

    Args:
        raw: The file's content.

    Raises:
        DataValidationError: No supported layout matches; the message lists the columns found and those expected.
    """
    if raw.objects is not None and records.is_records(raw.objects):
        return "records"
    columns = {str(c) for c in raw.table().columns}
    if {"model_name", "performance"} <= columns:
        return "routerbench_long"
    if {"model", "score"} <= columns:
        return "long"
    if any(c.endswith(generic.COST_SUFFIX) for c in columns):
        return "routerbench" if columns & {"sample_id", "eval_name"} else "wide"
    found = sorted(columns)
    shown = ", ".join(map(repr, found[:12])) + (", ..." if len(found) > 12 else "")
    raise DataValidationError(
        f"{raw.source}: cannot detect the format (header row, columns {shown}): expected {_EXPECTED}. "
        f"Fix the column names, or name the format with format=... (--data.source.format), one of {list(FORMATS[1:])}"
    )


def read_layout(raw: RawFile, fmt: str, options: LoadOptions) -> OutcomeTable:
    """Turn ``raw`` into a table, in layout ``fmt`` (``"auto"`` detects it).

    Args:
        raw: The file's content.
        fmt: One of :data:`FORMATS`.
        options: Loading options.
    """
    if fmt == "parquet" and raw.container != "parquet":
        raise DataValidationError(
            f"{raw.source}: format 'parquet' needs barp's canonical parquet file, got a {raw.container} file"
        )
    if fmt == "records" and raw.objects is None:
        raise DataValidationError(
            f"{raw.source}: format 'records' needs a JSON list of {{question, scores}} objects, "
            f"got a {raw.container} file"
        )
    layout = detect(raw) if fmt == "auto" else fmt
    return READERS[layout](raw, options)
