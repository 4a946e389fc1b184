"""Convert any routing-log file barp reads into barp's canonical parquet, and print a summary of it.

Example::

    python tools/prepare_data.py --path routerbench_0shot.pkl --output data/routerbench_0shot.parquet
    python tools/prepare_data.py --path my_records.json --prices prices.yaml --output data/mine.parquet

The parquet file is written atomically (a temporary file, then a rename) and only after the whole input has been
read and validated: on bad input the message goes to stderr, the exit code is 1 and no output file is written.
An ``--output`` that is a folder or one of the inputs (a ``--path`` file or the ``--prices`` table) is refused
before anything is read.
Converting once is the recommended path for large files and for pickles (the parquet loads fast and safely).
"""

from __future__ import annotations

import sys
from pathlib import Path

from barp.data.sources import Format, OnMissing, load_table
from barp.data.sources.files import check_not_input
from barp.errors import ConfigError, run_tool


def format_summary(summary: dict) -> str:
    """Render :meth:`OutcomeTable.summary` as text: rows per task, per-model mean score and cost, oracle, best."""
    lines = [f"{summary['num_prompts']} prompts x {summary['num_models']} models", "", "rows per task:"]
    lines += [f"  {task:<24s} {count:>7d}" for task, count in summary["rows_per_task"].items()]
    width = max(len(m) for m in summary["mean_score"])
    lines += ["", f"  {'model':<{width}s}  mean score   mean cost (USD)"]
    for model, score in summary["mean_score"].items():
        lines.append(f"  {model:<{width}s}  {score:10.4f}   {summary['mean_cost'][model]:.3e}")
    lines += [
        "",
        f"oracle mean score:  {summary['oracle_score']:.4f}",
        f"best single model:  {summary['best_single_model']}",
    ]
    return "\n".join(lines)


def check_output(path: str, output: str, prices: str | None = None) -> None:
    """Refuse, before reading anything, an ``output`` that is a folder or one of the input files.

    Args:
        path: The input specification (a file, a glob or comma-separated files).
        output: The parquet file to write.
        prices: The price table, also an input.

    Raises:
        ConfigError: ``output`` is a folder, or names an input file (the data or the price table; it would be
            replaced by the parquet).
    """
    out = Path(output).expanduser()
    if out.is_dir():
        raise ConfigError(f"--output {output!r} is a folder: name the parquet file to write, "
                          f"e.g. {output}/data.parquet")
    check_not_input(out, {"--path": path, "--prices": prices}, option=f"--output {output!r}")


def prepare(
    path: str,
    output: str,
    format: Format = "auto",
    trust_pickle: bool = False,
    on_missing: OnMissing = "drop",
    task_map: dict[str, str] | None = None,
    default_task: str = "other",
    prices: str | None = None,
    cache_dir: str | None = None,
    task_column: str = "task",
) -> dict:
    """Convert ``path`` to barp's canonical parquet at ``output`` and print a summary.

    Args:
        path: Input file(s): a file, a glob, comma-separated files, an hf:// path, a ``datasets`` folder or an
            ``hf-dataset://OWNER/NAME@REVISION#SPLIT`` hub dataset.
        output: The parquet file to write (not a folder, not one of the inputs: refused before reading).
        format: Input layout (auto, routerbench, routerbench_long, wide, long, records, parquet).
        trust_pickle: Unpickle an input whose SHA-256 is not a pinned official RouterBench file.
        on_missing: Drop rows with missing score cells (one warning) or reject them (error).
        task_map: Task-family overrides, name or prefix -> family.
        default_task: Family of unmapped RouterBench names and of rows without a task.
        prices: Price table (JSON/YAML) for the records layout; costs are then estimates.
        cache_dir: Download folder for hf:// paths.
        task_column: Column (records: key) with each row's task family, e.g. ``cluster_id`` for LLMRouter's files.

    Returns:
        The table summary (see ``OutcomeTable.summary``) plus the output path.
    """
    check_output(path, output, prices)
    table = load_table(
        path,
        format,
        on_missing=on_missing,
        trust_pickle=trust_pickle,
        task_map=task_map,
        default_task=default_task,
        prices=prices,
        cache_dir=cache_dir,
        task_column=task_column,
    )
    written = table.to_parquet(output)
    summary = table.summary()
    print(format_summary(summary))
    print(f"\nwrote {written}")
    return {**summary, "output": str(Path(written))}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (1 with the message on stderr for bad input)."""
    return run_tool(prepare, argv, exit_code=1)


if __name__ == "__main__":
    sys.exit(main())
