"""Data sources: turn logged routing files (RouterBench, users' own tables, score records) into an OutcomeTable.

:func:`load_table` is the single entry point: it resolves the path (a file, a glob, comma-separated files, or an
``hf://`` hub path, or a ``datasets`` folder or hub dataset), reads each file safely (pickles only when pinned or
trusted), detects or applies the layout, validates every value with errors naming the file, column and row, and
concatenates the files.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import get_args

from barp.data.sources.assemble import LoadOptions, OnMissing, concat
from barp.data.sources.files import RawFile, read_file
from barp.data.sources.hf_datasets import is_dataset_path, read_dataset
from barp.data.sources.hub import is_hub_path, resolve_hub_path
from barp.data.sources.layouts import FORMATS, Format, detect, read_layout
from barp.data.sources.records import prices_name
from barp.data.table import OutcomeTable
from barp.errors import DataValidationError

__all__ = ["FORMATS", "Format", "OnMissing", "expand_path", "load_table"]

_GLOB_CHARS = ("*", "?", "[")


def expand_path(path: str, cache_dir: str | None = None) -> list[Path | str]:
    """The sources ``path`` names: files, globs, comma-separated files/globs, ``hf://`` files, and datasets.

    Files come back as :class:`~pathlib.Path`; ``datasets`` sources (``hf-dataset://...`` or a ``save_to_disk``
    folder, with an optional ``#SPLIT``) as the text that names them, read by :func:`.hf_datasets.read_dataset`.

    Args:
        path: The path specification.
        cache_dir: Where hub files are cached (see :func:`barp.data.sources.hub.resolve_hub_path`).

    Raises:
        DataValidationError: The specification is empty, or a glob matches no file.
    """
    spec = str(path).strip()
    if not spec:
        raise DataValidationError("data path is empty: give a file, a glob, or comma-separated files")
    parts = [spec] if os.path.exists(spec) else [p.strip() for p in spec.split(",") if p.strip()]
    files: list[Path | str] = []
    for part in parts:
        if is_dataset_path(part):
            files.append(part)
        elif is_hub_path(part):
            files.append(resolve_hub_path(part, cache_dir))
        elif any(ch in part for ch in _GLOB_CHARS) and not os.path.exists(part):
            matches = sorted(glob.glob(os.path.expanduser(part)))
            if not matches:
                raise DataValidationError(f"{part}: no file matches this pattern")
            files.extend(Path(m) for m in matches)
        else:
            files.append(Path(part).expanduser())
    return files


def load_table(
    path: str,
    format: Format = "auto",
    *,
    on_missing: OnMissing = "drop",
    trust_pickle: bool = False,
    task_map: dict[str, str] | None = None,
    default_task: str = "other",
    prices: str | dict | None = None,
    cache_dir: str | None = None,
    task_column: str = "task",
) -> OutcomeTable:
    """Load logged routing outcomes from one or more files into a validated :class:`OutcomeTable`.

    Args:
        path: A file, a glob, several comma-separated files or globs (concatenated; same models; repeated ids
            and rows handled as :mod:`.duplicates` says), ``hf://withmartian/routerbench/routerbench_0shot.pkl``
            (pinned revision; downloaded into ``cache_dir`` only when ``HF_HUB_OFFLINE`` is unset), a folder
            written by ``datasets``' ``save_to_disk`` or ``hf-dataset://OWNER/NAME@REVISION`` (each with an
            optional ``#SPLIT``; see :mod:`.hf_datasets`).
        format: The layout: ``"routerbench"`` (wide), ``"routerbench_long"`` (raw), ``"wide"`` / ``"long"``
            (barp's generic tables), ``"records"`` (JSON score records + ``prices``), ``"parquet"`` (barp's
            canonical parquet), or ``"auto"`` to detect it from the content. The container (CSV, TSV, JSON,
            JSONL, parquet, pickle) is always detected from the content.
        on_missing: ``"drop"`` rows with missing score cells (one warning gives their count) or ``"error"``.
        trust_pickle: Unpickle files whose SHA-256 is not one of the pinned official RouterBench pickles.
            Pickles can run code: only for files you trust.
        task_map: Task-family overrides, name or prefix (longest wins; trailing ``*`` optional) -> family.
            For RouterBench it is consulted before the built-in families; for generic files it renames tasks.
        default_task: Family of RouterBench ``eval_name`` values no rule covers, and of rows without a task.
        prices: For ``records`` only: a dict or JSON/YAML file, model -> ``[usd_per_1M_input, usd_per_1M_output]``
            (entries of models no record scores are ignored). A file in another layout has costs of its own and
            refuses a price table.
        cache_dir: barp's cache folder; ``hf://`` files go to ``<cache_dir>/hub/OWNER/DATASET/FILE`` (default
            ``$BARP_CACHE``, else ``~/.cache/barp``).
        task_column: The column (records: key) with each row's task family in generic tables and records.

    Returns:
        The table; its ``source`` is the file (or ``path`` when several files were concatenated).

    Raises:
        DataValidationError: Any problem with the path, options or content, naming the file, column and row.
    """
    if format not in FORMATS:
        raise DataValidationError(f"{path}: unknown format {format!r} (--data.source.format); choose one of "
                                  f"{list(FORMATS)}")
    if on_missing not in get_args(OnMissing):
        raise DataValidationError(f"{path}: on_missing must be 'drop' or 'error', got {on_missing!r}")
    if not str(default_task).strip():
        raise DataValidationError(f"{path}: default_task must be a non-empty task name")
    if not str(task_column).strip():
        raise DataValidationError(f"{path}: task_column must be a non-empty column name")
    options = LoadOptions(on_missing=on_missing, task_map=task_map, default_task=default_task, prices=prices,
                          task_column=task_column)
    sources = expand_path(path, cache_dir)
    raws = (read_dataset(s, cache_dir) if isinstance(s, str) else read_file(s, trust_pickle) for s in sources)
    tables = [read_layout(_check_prices(raw, format, prices), format, options) for raw in raws]
    return tables[0] if len(tables) == 1 else concat(tables, source=str(path))


def _check_prices(raw: RawFile, format: Format, prices: str | dict | None) -> RawFile:
    """Refuse a price table for a file whose layout has costs of its own (only records take one)."""
    if prices is None:
        return raw
    layout = detect(raw) if format == "auto" else format
    if layout != "records":
        raise DataValidationError(
            f"{raw.source}: this {layout} table already has a cost per (prompt, model), so the price table "
            f"{prices_name(prices)} would not be used; drop prices (--data.source.prices), which is only for score "
            "records without costs")
    return raw
