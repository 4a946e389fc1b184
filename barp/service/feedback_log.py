"""The service's crash-safe request log: routed decisions and their feedback, as append-only JSON lines.

A log folder holds two files, both append-only, one JSON object per line:

- ``decisions.jsonl``: one line per routed prompt (decision id, prompt, model, propensity, w_c, time, ...), written
  before ``/route`` answers, so every decision id a client has seen survives a restart;
- ``log.jsonl``: one line per ``/feedback``, in the off-policy log format of :mod:`barp.data.sources.logs`
  (``prompt, model, propensity, score, cost, w_c, timestamp, prompt_id, note`` plus ``decision_id``), so
  ``read_log`` and ``barp ope`` read it as it is.

Every append is one ``os.write`` of whole lines on an ``O_APPEND`` descriptor followed by ``os.fsync``, and the
service answers only after the fsync: a request that got its answer is on disk. A process killed mid-write can leave
at most a partial last line (no newline); opening the log drops it (the file is truncated after its last newline
and synced), so the files always hold complete lines, and the request that was in flight is the only one lost.
A line that is complete but not valid JSON cannot come from this writer: opening refuses it with one error naming
the file and the line, rather than appending to a damaged log.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from barp.errors import DataValidationError

DECISIONS_FILE = "decisions.jsonl"
LOG_FILE = "log.jsonl"
#: Columns of a pending decision that are copied into its log row.
ROW_FROM_DECISION = ("prompt", "model", "propensity", "w_c", "timestamp", "prompt_id", "note", "decision_id",
                     "preference")


class UnknownDecision(KeyError):
    """Feedback names a decision id this log never recorded."""


class DuplicateFeedback(ValueError):
    """Feedback for a decision that already has its row in the log (each decision gets one outcome)."""


def repair_tail(path: Path) -> int:
    """Drop a partial last line (a write cut by a crash): truncate after the last newline and sync.

    Args:
        path: A JSON-lines file (need not exist).

    Returns:
        The number of bytes dropped (0 when the file ends with a newline, is empty or does not exist).
    """
    if not path.exists():
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        keep, end = 0, size
        while end > 0:  # scan back, a block at a time, for the last newline
            start = max(0, end - (1 << 16))
            handle.seek(start)
            found = handle.read(end - start).rfind(b"\n")
            if found >= 0:
                keep = start + found + 1
                break
            end = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return size - keep


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file written by :class:`FeedbackLog` (after :func:`repair_tail`).

    Raises:
        DataValidationError: A line is not a JSON object (names the file and the 1-based line).
    """
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataValidationError(f"{path}: line {lineno} is not valid JSON ({err.msg}); this log was not "
                                          "written by barp serve, or was edited: fix or move it") from None
            if not isinstance(item, dict):
                raise DataValidationError(f"{path}: line {lineno} is a {type(item).__name__}, not a JSON object")
            yield item


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
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dropped_bytes = {name: repair_tail(self.folder / name) for name in (DECISIONS_FILE, LOG_FILE)}
        self._pending: dict[str, dict[str, Any]] = {}
        for item in read_lines(self.folder / DECISIONS_FILE):
            self._pending[str(item["decision_id"])] = item
        self._rows: list[dict[str, Any]] = list(read_lines(self.folder / LOG_FILE))
        self._done = {str(r.get("decision_id")) for r in self._rows}
        for decision_id in self._done:
            self._pending.pop(decision_id, None)
        self._lock = threading.Lock()
        self._decisions = _AppendOnly(self.folder / DECISIONS_FILE, sync)
        self._log = _AppendOnly(self.folder / LOG_FILE, sync)
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
            cost: Its cost in USD, >= 0.
            timestamp: When the feedback arrived (ISO 8601).

        Raises:
            UnknownDecision: The id was never recorded.
            DuplicateFeedback: The decision already has its row.
        """
        if not (math.isfinite(score) and 0 <= score <= 1 and math.isfinite(cost) and cost >= 0):
            raise ValueError(f"score must be in [0, 1] and cost finite >= 0, got score={score!r}, cost={cost!r}")
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
