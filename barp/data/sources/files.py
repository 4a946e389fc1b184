"""Read one data file into a DataFrame (CSV, TSV, parquet, pickle) or a list of JSON objects (JSON, JSONL).

The container is sniffed from the bytes (parquet magic, pickle protocol marker, a leading ``[`` or ``{``) and
only then from the extension, so a mis-named file is still read correctly. Every failure becomes one
:class:`~barp.errors.DataValidationError` naming the file (and the line, where the parser knows it).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from barp.data.sources.safety import PICKLE_SUFFIXES, check_pickle
from barp.errors import ConfigError, DataValidationError

Container = Literal["csv", "parquet", "pickle", "json", "datasets"]

#: Columns always read from CSV as text, so a prompt such as "NA" or "42" is kept as written.
TEXT_COLUMNS = ("prompt", "question", "sample_id", "prompt_id", "id", "eval_name", "task", "model", "model_name")


@dataclass
class RawFile:
    """The content of one file, before its layout is known.

    Args:
        path: The file.
        container: How it was stored.
        frame: The table (CSV, parquet, pickle, and JSON lists of row objects).
        objects: The JSON objects, for JSON and JSONL files (``frame`` is built from them on demand).
        name: How messages name the source, when not by ``path`` (a hub dataset's address).
    """

    path: Path
    container: Container
    frame: pd.DataFrame | None = None
    objects: list[dict] | None = None
    name: str | None = None

    @property
    def source(self) -> str:
        """The file (or dataset) as named in every message."""
        return self.name or str(self.path)

    def table(self) -> pd.DataFrame:
        """The content as a DataFrame (JSON objects become rows)."""
        if self.frame is None:
            self.frame = pd.DataFrame(self.objects)
        return self.frame


def _fail(path: Path, message: str) -> DataValidationError:
    return DataValidationError(f"{path}: {message}")


def sniff(path: Path, head: bytes) -> Container:
    """Guess the container of ``path`` from its first bytes, then its extension."""
    suffix = path.suffix.lower()
    if head.startswith(b"PAR1"):
        return "parquet"
    if suffix in (".parquet", ".pq"):
        raise _fail(path, "is not a valid parquet file (it does not start with the PAR1 magic bytes)")
    if head[:1] == b"\x80" or suffix in PICKLE_SUFFIXES:
        return "pickle"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"[", b"{"):
        return "json"
    return "csv"


class _RepeatedKey(ValueError):
    """A JSON object names one key twice (``json`` would silently keep the last value)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    repeated = "an object names the key {!r} twice (JSON would keep only the last value); remove one"
    if stripped.startswith("["):
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise _fail(path, f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
        except _RepeatedKey as exc:
            raise _fail(path, repeated.format(exc.args[0])) from None
        where = "item"
    else:  # JSON lines: one object per line
        data = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line, object_pairs_hook=_unique_keys))
            except json.JSONDecodeError as exc:
                raise _fail(path, f"line {lineno} is not a JSON object (JSON lines file): {exc.msg}") from exc
            except _RepeatedKey as exc:
                raise _fail(path, f"line {lineno}: " + repeated.format(exc.args[0])) from None
        where = "line-object"
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise _fail(path, f"row {i}: {where} is a {type(item).__name__}, expected a JSON object")
    return data


def _check_header(path: Path, sep: str) -> None:
    """Refuse a header that names one column twice (pandas would silently rename the second ``name.1``)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle, delimiter=sep), [])
    seen: dict[str, int] = {}
    for position, name in enumerate(header):
        if name and name in seen:
            raise _fail(path, f"the header names column {name!r} twice (positions {seen[name]} and {position}, "
                              "counted from 0); rename or remove one of them")
        seen[name] = position


def _read_csv(path: Path) -> pd.DataFrame:
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        _check_header(path, sep)
        return pd.read_csv(path, sep=sep, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as exc:
        raise _fail(path, "is empty (no header and no rows)") from exc
    except pd.errors.ParserError as exc:
        raise _fail(path, f"cannot be parsed as CSV: {str(exc).strip()}") from exc
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text (bad byte at offset {exc.start}); is it really a CSV file?") from exc


def _read_pickle(path: Path, trust_pickle: bool) -> pd.DataFrame:
    check_pickle(path, trust_pickle)
    try:
        data = pd.read_pickle(path)
    except Exception as exc:  # a corrupt or foreign pickle can fail in many ways
        raise _fail(path, f"cannot be unpickled ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, pd.DataFrame):
        raise _fail(path, f"the pickle holds a {type(data).__name__}, expected a pandas DataFrame")
    return data


def read_head(path: Path) -> bytes:
    """The first 4 KiB of a data file (what :func:`sniff` reads its format from).

    Raises:
        DataValidationError: The file is missing, a directory, unreadable or empty.
    """
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a directory, expected a data file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not head.strip():
        raise _fail(path, "is empty")
    return head


def read_file(path: Path, trust_pickle: bool = False) -> RawFile:
    """Read ``path`` into a :class:`RawFile`.

    Args:
        path: The file.
        trust_pickle: Unpickle the file even when its hash is not one of the pinned official pickles.

    Raises:
        DataValidationError: The file is missing, unreadable, empty, malformed, or an untrusted pickle.
    """
    head = read_head(path)
    container = sniff(path, head)
    raw = RawFile(path=path, container=container)
    try:
        if container == "parquet":
            raw.frame = pd.read_parquet(path)
        elif container == "pickle":
            raw.frame = _read_pickle(path, trust_pickle)
        elif container == "json":
            raw.objects = _read_json(path)
        else:
            raw.frame = _read_csv(path)
    except DataValidationError:
        raise
    except UnicodeDecodeError as exc:
        raise _fail(path, f"is not UTF-8 text (bad byte at offset {exc.start})") from exc
    except Exception as exc:  # pyarrow and OS errors: keep the message, drop the traceback
        raise _fail(path, f"cannot be read as {container} ({type(exc).__name__}: {exc})") from exc
    if raw.frame is not None:
        unnamed = [c for c in raw.frame.columns if isinstance(c, str) and c.startswith("Unnamed: ")]
        raw.frame = raw.frame.drop(columns=unnamed)  # the index column of CSVs written with index=True
        if len(raw.frame) == 0:
            raise _fail(path, "has no data rows (only a header)")
    elif not raw.objects:
        raise _fail(path, "has no data rows (an empty JSON list)")
    return raw


def local_files(spec: str) -> list[Path]:
    """The existing local files a path specification names: a file, a glob, or comma-separated files and globs.

    Hub paths and ``datasets`` sources name no local file the user gave, and are skipped.
    """
    spec = str(spec).strip()
    parts = [spec] if os.path.exists(spec) else [p.strip() for p in spec.split(",") if p.strip()]
    found: list[Path] = []
    for part in parts:
        for candidate in sorted(glob.glob(os.path.expanduser(part))) or [os.path.expanduser(part)]:
            if os.path.isfile(candidate):
                found.append(Path(candidate))
    return found


def check_not_input(output: str | os.PathLike, inputs: Mapping[str, object], option: str = "--output") -> None:
    """Refuse, before any work, to write a file that is one of the inputs (it would replace what was read).

    Args:
        output: The file that would be written.
        inputs: Option -> the input it names (a file, glob or comma-separated files; None or "" is skipped).
        option: How the message names the output option (e.g. ``--output 'runs/ope'``, writing ``runs/ope/ope.csv``).

    Raises:
        ConfigError: ``output`` resolves to one of the input files (the same file, also through a link).
    """
    out = Path(output).expanduser()
    if not out.is_file():
        return  # an input to read exists; a path that holds no file is none of them
    for name, spec in inputs.items():
        if spec is None or not str(spec).strip():
            continue
        for candidate in local_files(str(spec)):
            if os.path.samefile(candidate, out):
                raise ConfigError(f"{option} would write {str(out)!r}, which is the input file {str(candidate)!r} "
                                  f"({name}): it would be overwritten; write to another path")
