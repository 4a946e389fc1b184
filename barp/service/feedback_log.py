"""The service's crash-safe request log: routed decisions and their feedback, as append-only JSON lines.

A log folder holds two files, both append-only, one JSON object per line:

- ``decisions.jsonl``: one line per routed prompt (decision id, prompt, model, propensity, w_c, time, ...), written
  before ``/route`` answers, so every decision id a client has seen survives a restart;
- ``log.jsonl``: one line per ``/feedback``, in the off-policy log format of :mod:`barp.data.sources.logs`
  (``prompt, model, propensity, score, cost, w_c, timestamp, prompt_id, note`` plus ``decision_id``), so
  ``read_log`` and ``barp ope`` read it as it is.

Every append is one ``os.write`` of whole lines on an ``O_APPEND`` descriptor followed by ``os.fsync``, and the
service answers only after the fsync: a request that got its answer is on disk. A process killed mid-write can leave
at most a partial last line (no newline, and never valid JSON: no proper prefix of a JSON object is one).

Opening the log reads and checks both files before it changes anything:

- every complete line must be a JSON object with the fields the service needs (:data:`DECISION_KEYS`,
  :data:`LOG_KEYS`), a non-empty string ``decision_id``, and in ``log.jsonl`` a score in [0, 1] and a cost in
  [0, ``MAX_COST_USD``]; otherwise opening refuses with one error naming the file, the line and the value, rather
  than append to (or replay) a damaged log;
- a last line without its newline that is valid JSON is a complete line (someone edited the file, or the newline
  was lost): it is checked like the others and kept, and a newline is added so the next append starts a new line;
- a last line without its newline that is not valid JSON is a write cut by a crash: it is set aside (appended to
  ``<file>.torn``, synced), cut from the file, and a :class:`LogRepairWarning` names the file and the line.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from barp.errors import ConfigError, DataValidationError
from barp.service.budget import cost_problem

DECISIONS_FILE = "decisions.jsonl"
LOG_FILE = "log.jsonl"
#: Suffix of the file a torn last line is set aside in (``log.jsonl.torn``, ``decisions.jsonl.torn``).
TORN_SUFFIX = ".torn"
#: Columns of a pending decision that are copied into its log row.
ROW_FROM_DECISION = ("prompt", "model", "propensity", "w_c", "timestamp", "prompt_id", "note", "decision_id",
                     "preference")
#: Fields a line of decisions.jsonl must have: the decision's id and what its log row cannot do without.
DECISION_KEYS = ("decision_id", "prompt", "model", "propensity")
#: Fields a line of log.jsonl must have: the decision's id and the required columns of the off-policy log.
LOG_KEYS = (*DECISION_KEYS, "score", "cost")


class UnknownDecision(KeyError):
    """Feedback names a decision id this log never recorded."""


class DuplicateFeedback(ValueError):
    """Feedback for a decision that already has its row in the log (each decision gets one outcome)."""


class LogRepairWarning(UserWarning):
    """Opening the log set aside a torn last line (a write cut by a crash)."""


def row_problem(item: Any, name: str) -> str | None:
    """What is wrong with one parsed line of ``name`` (:data:`DECISIONS_FILE` or :data:`LOG_FILE`); None if it is a
    complete, valid row."""
    if not isinstance(item, dict):
        return f"is a {type(item).__name__}, not a JSON object"
    keys = LOG_KEYS if name == LOG_FILE else DECISION_KEYS
    missing = [k for k in keys if k not in item]
    if missing:
        return f"lacks {', '.join(repr(k) for k in missing)} (a line of {name} needs {', '.join(keys)})"
    decision_id = item["decision_id"]
    if not isinstance(decision_id, str) or not decision_id:
        return f"'decision_id' {decision_id!r} is not a non-empty string"
    if name == LOG_FILE:
        score = item["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not (math.isfinite(score)
                                                                                  and 0 <= score <= 1):
            return f"'score' {score!r} is not a number in [0, 1]"
        problem = cost_problem(item["cost"])
        if problem is not None:
            return f"'cost' {problem}"
    return None


@dataclass
class _Scan:
    """One file of the log as read at start-up, before any change."""

    path: Path
    items: list[dict[str, Any]] = field(default_factory=list)
    tail_offset: int = 0  # where the last line without a newline starts (valid when tail is set)
    tail: str | None = None  # None, "row" (a complete row without its newline) or "torn"
    tail_line: int = 0
    tail_bytes: bytes = b""


def scan(path: Path) -> _Scan:
    """Read and check one file of the log (nothing is changed).

    Raises:
        ConfigError: The path is not a regular file or cannot be read.
        DataValidationError: A line is not valid JSON or not a complete, valid row (names the file, the 1-based line
            and the value).
    """
    result = _Scan(path)
    if not path.exists():
        return result
    if not path.is_file():
        raise ConfigError(f"--log_dir: {str(path)!r} is a {'folder' if path.is_dir() else 'special file'}, not the "
                          f"{path.name} file barp serve writes: move it away")
    offset = 0
    try:
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                complete = raw.endswith(b"\n")
                try:
                    item = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    item, err = None, "not UTF-8"
                except json.JSONDecodeError as bad:
                    item, err = None, bad.msg
                else:
                    err = None
                if err is not None:
                    if not complete:  # a write cut by a crash
                        result.tail, result.tail_line, result.tail_offset, result.tail_bytes = \
                            "torn", lineno, offset, raw
                        break
                    raise DataValidationError(f"{path}: line {lineno} is not valid JSON ({err}); this log was not "
                                              "written by barp serve, or was edited: fix or move it")
                problem = row_problem(item, path.name)
                if problem is not None:
                    raise DataValidationError(f"{path}: line {lineno} {problem}; this log was not written by barp "
                                              "serve, or was edited: fix or move it")
                result.items.append(item)
                if not complete:
                    result.tail, result.tail_line, result.tail_offset = "row", lineno, offset
                offset += len(raw)
    except OSError as err:
        raise ConfigError(f"--log_dir: cannot read {str(path)!r} ({err.strerror or err})") from None
    return result


def repair_tail(found: _Scan) -> int:
    """Make a scanned file end with a newline: add the missing newline after a complete last row, or set a torn last
    line aside (appended to ``<file>.torn`` and synced) and cut it from the file (synced), with a
    :class:`LogRepairWarning` naming the file and the line.

    Returns:
        The number of bytes cut from the file (0 unless the last line was torn).
    """
    if found.tail is None:
        return 0
    if found.tail == "row":
        with open(found.path, "ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return 0
    aside = found.path.with_name(found.path.name + TORN_SUFFIX)
    with open(aside, "ab") as handle:
        handle.write(found.tail_bytes + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    with open(found.path, "rb+") as handle:
        handle.truncate(found.tail_offset)
        handle.flush()
        os.fsync(handle.fileno())
    warnings.warn(f"{found.path}: line {found.tail_line} was cut short by a crash ({len(found.tail_bytes)} bytes, "
                  f"not valid JSON): set aside in {aside} and removed from the log", LogRepairWarning, stacklevel=3)
    return len(found.tail_bytes)


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


class _AppendOnly:
    """One append-only file: each :meth:`append` is a single ``os.write`` on an ``O_APPEND`` fd, then ``fsync``."""

    def __init__(self, path: Path, sync: bool = True) -> None:
        self.path = path
        self.sync = sync
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        data = b"".join(_line(r) for r in records)
        written = os.write(self.fd, data)
        if written != len(data):  # only on a full disk or a similar failure: leave no partial line behind
            os.ftruncate(self.fd, os.fstat(self.fd).st_size - written)
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); the disk may be full")
        if self.sync:
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class FeedbackLog:
    """The service's request log in ``folder`` (created if needed); reopening it resumes where it stopped.

    Args:
        folder: Folder of ``decisions.jsonl`` and ``log.jsonl``.
        sync: fsync after every append (turn off only for benchmarks of the rest of the service).
    """

    def __init__(self, folder: str | os.PathLike, sync: bool = True) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--log_dir {str(folder)!r} is a file, not a folder: name a folder for "
                              f"{DECISIONS_FILE} and {LOG_FILE}")
        found = {name: scan(self.folder / name) for name in (DECISIONS_FILE, LOG_FILE)}  # check all, change nothing
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--log_dir {str(folder)!r} cannot be created ({err.strerror or err})") from None
        self.dropped_bytes: dict[str, int] = {}
        for name, scanned in found.items():  # a loop, not a comprehension: the warning points at the caller
            self.dropped_bytes[name] = repair_tail(scanned)
        self._pending: dict[str, dict[str, Any]] = {}
        for item in found[DECISIONS_FILE].items:
            self._pending[item["decision_id"]] = item
        self._rows: list[dict[str, Any]] = found[LOG_FILE].items
        self._done = {r["decision_id"] for r in self._rows}
        for decision_id in self._done:
            self._pending.pop(decision_id, None)
        self._lock = threading.Lock()
        try:
            self._decisions = _AppendOnly(self.folder / DECISIONS_FILE, sync)
            self._log = _AppendOnly(self.folder / LOG_FILE, sync)
        except OSError as err:
            raise ConfigError(f"--log_dir {str(folder)!r}: cannot open {err.filename!r} for appending "
                              f"({err.strerror or err})") from None
        if sync:  # make the new files' names durable too
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @property
    def path(self) -> Path:
        """The off-policy log file (``log.jsonl``), readable by :func:`barp.data.sources.logs.read_log`."""
        return self.folder / LOG_FILE

    @property
    def num_rows(self) -> int:
        """Rows in the log (decisions with their feedback)."""
        return len(self._rows)

    @property
    def num_pending(self) -> int:
        """Decisions still waiting for feedback."""
        return len(self._pending)

    def rows(self) -> list[dict[str, Any]]:
        """The log rows so far, oldest first (copies)."""
        with self._lock:
            return [dict(r) for r in self._rows]

    def record_decisions(self, decisions: Sequence[dict[str, Any]]) -> None:
        """Persist routed decisions (each with a unique ``decision_id``) in one write + fsync."""
        with self._lock:
            self._decisions.append(decisions)
            for d in decisions:
                self._pending[str(d["decision_id"])] = dict(d)

    def record_feedback(self, decision_id: str, score: float, cost: float, timestamp: str) -> dict[str, Any]:
        """Append the log row of a decision's outcome (one write + fsync) and return it.

        Args:
            decision_id: An id returned by ``/route``.
            score: The served model's score, in [0, 1].
            cost: Its cost in USD, in [0, ``MAX_COST_USD``].
            timestamp: When the feedback arrived (ISO 8601).

        Raises:
            DataValidationError: The score or the cost is out of range (nothing is written).
            UnknownDecision: The id was never recorded.
            DuplicateFeedback: The decision already has its row.
        """
        problem = cost_problem(cost)
        if not (math.isfinite(score) and 0 <= score <= 1) or problem is not None:
            raise DataValidationError(f"feedback for {decision_id!r}: score must be in [0, 1] and the cost a finite "
                                      f"number in [0, MAX_COST_USD], got score={score!r}, cost={cost!r}")
        with self._lock:
            if decision_id in self._done:
                raise DuplicateFeedback(decision_id)
            decision = self._pending.get(decision_id)
            if decision is None:
                raise UnknownDecision(decision_id)
            row = {k: decision.get(k) for k in ROW_FROM_DECISION}
            row.update(score=float(score), cost=float(cost), feedback_timestamp=timestamp)
            self._log.append([row])
            self._rows.append(row)
            self._done.add(decision_id)
            del self._pending[decision_id]
            return dict(row)

    def close(self) -> None:
        """Close the files (appends after this fail)."""
        with self._lock:
            self._decisions.close()
            self._log.close()
