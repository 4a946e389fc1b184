"""Read a table in chunks of rows, never whole: a file (CSV, TSV, JSON lines, parquet), a folder of such files
(a log written one file per day) or a ``datasets`` folder (``save_to_disk``, memory-mapped Arrow).

CSV and TSV go through pandas' own chunked parser with :func:`barp.data.sources.files.read_file`'s options (text
columns kept as written, only empty cells missing), JSON lines one line at a time, parquet one record batch at a
time (pyarrow), and a ``datasets`` folder one Arrow slice at a time, so memory holds one chunk of the file, not the
file. A JSON array (one ``[...]`` document) and a pickle cannot be streamed and are read whole, then handed out in
chunks. Every chunk says which file it comes from and the row (0-based, header excluded) its first row has in that
file, so that a message about a later chunk names the file and the row as a whole-file reader would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from barp.data.sources.files import (
    TEXT_COLUMNS,
    _check_header,
    _fail,
    _read_json,
    _read_pickle,
    _RepeatedKey,
    _unique_keys,
    read_head,
    sniff,
)
from barp.errors import DataValidationError

#: Rows per chunk: memory holds this many rows of a file at a time (a million-row log is 16 chunks).
CHUNK_ROWS = 65_536
#: File suffixes a folder of log files is read for (other files, hidden files and ``*.tmp`` are left alone).
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".jsonl", ".json", ".parquet", ".pq")


@dataclass(frozen=True)
class Chunk:
    """Consecutive rows of one file.

    Args:
        source: The file (or dataset folder) the rows come from, as messages name it.
        start: The file's row number of the chunk's first row (0-based, header excluded).
        frame: The rows.
        last: Whether no chunk of this file follows.
    """

    source: str
    start: int
    frame: pd.DataFrame
    last: bool

    @property
    def whole(self) -> bool:
        """Whether the chunk is the whole file."""
        return self.start == 0 and self.last


def table_files(path: str | Path) -> list[str]:
    """The tables a path names: itself (a file or a ``datasets`` folder, with an optional ``#SPLIT``), or each file
    of a folder whose suffix is one of :data:`TABLE_SUFFIXES`, sorted by name (daily files named by date read in
    date order).

    Raises:
        DataValidationError: The path does not exist, or is a folder holding no such file.
    """
    from barp.data.sources.hf_datasets import is_dataset_path

    text = str(path)
    if is_dataset_path(text):
        return [text]
    folder = Path(text).expanduser()
    if not folder.is_dir():
        return [text]
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in TABLE_SUFFIXES)
    if not files:
        raise DataValidationError(f"{folder}: is a folder holding no log files (no {', '.join(TABLE_SUFFIXES)} "
                                  "files, and not a datasets save_to_disk folder)")
    return [str(p) for p in files]


def iter_chunks(path: str | Path, chunk_rows: int = CHUNK_ROWS, trust_pickle: bool = False) -> Iterator[Chunk]:
    """Every chunk of every table ``path`` names (see :func:`table_files`), in order.

    Args:
        path: A file, a folder of files, or a ``datasets`` folder (``DIR`` or ``DIR#SPLIT``).
        chunk_rows: Rows per chunk (the last chunk of a file may hold fewer).
        trust_pickle: Unpickle a file whose hash is not pinned (pickles can run code).

    Raises:
        DataValidationError: A file is missing, empty, malformed or holds no rows; the message names it (and the
            line, where the parser knows it).
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    for name in table_files(path):
        yield from _with_last(name, _file_frames(name, chunk_rows, trust_pickle))


def _with_last(source: str, frames: Iterator[pd.DataFrame]) -> Iterator[Chunk]:
    """Number the frames' rows and mark the last one (one frame of look-ahead)."""
    start, held = 0, None
    for frame in frames:
        if held is not None:
            yield Chunk(source, start, held, last=False)
            start += len(held)
        held = frame
    if held is None or start + len(held) == 0:
        raise DataValidationError(f"{source}: has no data rows")
    yield Chunk(source, start, held, last=True)


def _file_frames(name: str, chunk_rows: int, trust_pickle: bool) -> Iterator[pd.DataFrame]:
    from barp.data.sources.hf_datasets import is_dataset_path

    if is_dataset_path(name):
        yield from _dataset_frames(name, chunk_rows)
        return
    path = Path(name).expanduser()
    head = read_head(path)
    container = sniff(path, head)
    try:
        if container == "parquet":
            frames = _parquet_frames(path, chunk_rows)
        elif container == "csv":
            frames = _csv_frames(path, chunk_rows)
        elif container == "json" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            frames = _slices(pd.DataFrame(_read_json(path)), chunk_rows)  # one JSON document: read whole
        elif container == "json":
            frames = _json_lines_frames(path, chunk_rows)
        else:
            frames = _slices(_read_pickle(path, trust_pickle), chunk_rows)
        for frame in frames:
            unnamed = [c for c in frame.columns if isinstance(c, str) and c.startswith("Unnamed: ")]
            yield frame.drop(columns=unnamed) if unnamed else frame  # the index column of CSVs with index=True
    except DataValidationError:
        raise
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc
    except pd.errors.ParserError as exc:
        raise _fail(path, f"cannot be parsed as CSV: {str(exc).strip()}") from exc
    except Exception as exc:  # pyarrow and OS errors: keep the message, drop the traceback
        raise _fail(path, f"cannot be read as {container} ({type(exc).__name__}: {exc})") from exc


def _slices(frame: pd.DataFrame, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), chunk_rows):
        yield frame.iloc[start:start + chunk_rows].reset_index(drop=True)


def _csv_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    _check_header(path, sep)
    try:
        reader = pd.read_csv(path, sep=sep, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                             na_values=[""], chunksize=chunk_rows)
    except pd.errors.EmptyDataError as exc:
        raise _fail(path, "is empty (no header and no rows)") from exc
    with reader:
        for frame in reader:
            yield frame.reset_index(drop=True)


def _json_lines_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    repeated = "an object names the key {!r} twice (JSON would keep only the last value); remove one"
    objects: list[dict] = []
    row = 0
    with open(path, encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise _fail(path, f"line {lineno} is not a JSON object (JSON lines file): {exc.msg}") from exc
            except _RepeatedKey as exc:
                raise _fail(path, f"line {lineno}: " + repeated.format(exc.args[0])) from None
            if not isinstance(item, dict):
                raise _fail(path, f"row {row}: line-object is a {type(item).__name__}, expected a JSON object")
            objects.append(item)
            row += 1
            if len(objects) == chunk_rows:
                yield pd.DataFrame(objects)
                objects = []
    if objects:
        yield pd.DataFrame(objects)


def _parquet_frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as handle:
        for batch in handle.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


def _dataset_frames(name: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """A ``save_to_disk`` folder, one Arrow slice at a time (the Arrow files are memory-mapped, not read whole)."""
    from datasets import load_from_disk

    from barp.data.sources.hf_datasets import _pick_split, split_suffix

    folder, split = split_suffix(name)
    try:
        data = load_from_disk(str(Path(folder).expanduser()))
    except Exception as exc:  # corrupt Arrow files, version mismatches
        raise DataValidationError(f"{folder}: cannot be read as a datasets folder ({type(exc).__name__}: {exc})"
                                  ) from exc
    dataset = _pick_split(data, split, folder)
    for table in dataset.with_format("arrow").iter(batch_size=chunk_rows):
        yield table.to_pandas()
