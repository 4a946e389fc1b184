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
  ``<file>.torn``, synced), cut from the file, and a :class:`LogRepairWarning` names the file and the line;
- two rows of ``log.jsonl`` with one ``decision_id`` (two writers) are refused, naming both lines.

One process writes a log folder: opening takes an exclusive ``fcntl.flock`` on ``serve.lock`` in the folder (held
until :meth:`FeedbackLog.close` or the process ends), and a second opener gets one :class:`~barp.errors.ConfigError`.

Pending decisions expire ``decision_ttl_s`` seconds after they were routed: they are appended, with ``expired_at``,
to ``expired.jsonl`` (an archive nobody replays), and their feedback is refused with :class:`ExpiredDecision`.
``decisions.jsonl`` is compacted (rewritten atomically with only the pending decisions: temporary file, fsync,
rename, fsync of the folder) when it holds more than ``compact_after`` lines that are no longer pending and more
such lines than pending ones, checked at opening and after each feedback or expiry. Memory holds the pending
decisions and the ids of recent outcomes only (ids of answered or expired decisions are kept ``decision_ttl_s``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from barp.atomic import atomic_write_bytes, fsync_path
from barp.errors import ConfigError, DataValidationError
from barp.service.budget import cost_problem

DECISIONS_FILE = "decisions.jsonl"
LOG_FILE = "log.jsonl"
#: The lock file that makes one process the writer of a log folder.
LOCK_FILE = "serve.lock"
#: Archive of decisions that expired without feedback (each row has ``expired_at``).
EXPIRED_FILE = "expired.jsonl"
#: Where a reset of the budget controller is recorded (the log rows before it are not replayed).
BUDGET_RESET_FILE = "budget_reset.json"
#: Suffix of the file a torn last line is set aside in (``log.jsonl.torn``, ``decisions.jsonl.torn``).
TORN_SUFFIX = ".torn"
#: Columns of a pending decision that are copied into its log row.
ROW_FROM_DECISION = ("prompt", "model", "propensity", "w_c", "timestamp", "prompt_id", "note", "decision_id",
                     "preference", "route_key_id")
#: Fields a line of decisions.jsonl must have: the decision's id and what its log row cannot do without.
DECISION_KEYS = ("decision_id", "prompt", "model", "propensity")
#: Fields a line of log.jsonl must have: the decision's id and the required columns of the off-policy log.
LOG_KEYS = (*DECISION_KEYS, "score", "cost")


class UnknownDecision(KeyError):
    """Feedback names a decision id this log never recorded."""


class DuplicateFeedback(ValueError):
    """Feedback for a decision that already has its row in the log (each decision gets one outcome)."""


class ExpiredDecision(KeyError):
    """Feedback for a decision that expired without feedback (``decision_ttl_s`` after it was routed)."""


class LogUnavailable(OSError):
    """The log could not be written (a full disk, an I/O error); nothing of the request was recorded."""


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
    err: str | None  # why a line is not valid JSON
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
                  f"not valid JSON): set aside in {aside} and removed from the log", LogRepairWarning, stacklevel=4)
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
        """Append whole lines (one write, then fsync).

        Raises:
            LogUnavailable: The write or the sync failed (a full disk, an I/O error); no partial line is left.
        """
        data = b"".join(_line(r) for r in records)
        try:
            size = os.fstat(self.fd).st_size
        except OSError as err:
            raise LogUnavailable(err.errno, err.strerror or str(err)) from None
        try:
            written = os.write(self.fd, data)
            if written != len(data):  # only on a full disk or a similar failure: leave no partial line behind
                os.ftruncate(self.fd, size)
                raise LogUnavailable(f"short write ({written} of {len(data)} bytes); the disk may be full")
            if self.sync:
                os.fsync(self.fd)
        except LogUnavailable:
            raise
        except OSError as err:
            with contextlib.suppress(OSError):  # a failed sync may leave the lines: cut them (memory = file)
                os.ftruncate(self.fd, size)
            raise LogUnavailable(err.errno, err.strerror or str(err)) from None

    def close(self) -> None:
        os.close(self.fd)


def _epoch(value: Any, default: float) -> float:
    """Seconds since the epoch of a decision's ``time`` (a number) or ISO ``timestamp``; ``default`` if neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            return default
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
    return default


def duplicate_problem(found: _Scan) -> str | None:
    """Two rows of ``log.jsonl`` with one ``decision_id`` (two servers wrote the folder), or None."""
    first: dict[str, int] = {}
    for lineno, item in enumerate(found.items, start=1):
        did = item["decision_id"]
        if did in first:
            return (f"{found.path}: lines {first[did]} and {lineno} both hold the feedback of decision {did!r}; one "
                    "decision has one outcome (two servers wrote this folder?): keep one of the two lines")
        first[did] = lineno
    return None


class FeedbackLog:
    """The service's request log in ``folder`` (created if needed); reopening it resumes where it stopped.

    Args:
        folder: Folder of ``decisions.jsonl`` and ``log.jsonl``.
        sync: fsync after every append (turn off only for benchmarks of the rest of the service).
        decision_ttl_s: Seconds a routed decision waits for its feedback before it expires (None: never).
        compact_after: Rewrite ``decisions.jsonl`` once it holds more than this many lines that are no longer
            pending (and more of them than pending ones).
        clock: Seconds since the epoch (tests pass a fake clock).

    Raises:
        ConfigError: The folder is unusable or another process holds its lock.
        DataValidationError: A file of the folder is damaged (names the file, the line and the value).
    """

    def __init__(self, folder: str | os.PathLike, sync: bool = True, decision_ttl_s: float | None = 86400.0,
                 compact_after: int = 10_000, clock=time.time) -> None:
        self.folder = Path(folder).expanduser()
        self.sync = sync
        self.decision_ttl_s = decision_ttl_s
        self.compact_after = compact_after
        self.clock = clock
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"--log_dir {str(folder)!r} is a file, not a folder: name a folder for "
                              f"{DECISIONS_FILE} and {LOG_FILE}")
        found = self._scan_all()  # check all, change nothing
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"--log_dir {str(folder)!r} cannot be created ({err.strerror or err})") from None
        self._lock_fd: int | None = self._take_lock(str(folder))
        try:
            if any(self._stat(name) != stat for name, stat in self._scan_stats.items()):
                found = self._scan_all()  # another writer changed it between the scan and the lock
            self._open(found)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ opening
    def _stat(self, name: str) -> tuple[int, int] | None:
        try:
            st = (self.folder / name).stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def _scan_all(self) -> dict[str, _Scan]:
        self._scan_stats = {name: self._stat(name) for name in (DECISIONS_FILE, LOG_FILE)}
        found = {name: scan(self.folder / name) for name in (DECISIONS_FILE, LOG_FILE)}
        problem = duplicate_problem(found[LOG_FILE])
        if problem is not None:
            raise DataValidationError(problem)
        return found

    def _take_lock(self, shown: str) -> int:
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"--log_dir {shown!r}: cannot open its lock file {LOCK_FILE} "
                              f"({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ConfigError(f"--log_dir {shown!r} is in use by another barp serve{who}: one server per log folder "
                              f"(its lock file {LOCK_FILE} is held); stop that server or give another --log_dir") \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open(self, found: dict[str, _Scan]) -> None:
        self.dropped_bytes: dict[str, int] = {}
        for name, scanned in found.items():  # a loop, not a comprehension: the warning points at the caller
            self.dropped_bytes[name] = repair_tail(scanned)
        now = self.clock()
        log_items = found[LOG_FILE].items
        self._num_rows = len(log_items)
        self._reset_marker = self._read_reset()
        after = self._reset_marker.get("after_rows", 0) if self._reset_marker else 0
        self._replay = [(r.get("preference"), float(r["cost"])) for r in log_items[after:]]
        done_ids = {r["decision_id"] for r in log_items}
        self._done: OrderedDict[str, float] = OrderedDict()  # recent outcomes: id -> when it stops being remembered
        for r in log_items:
            self._done[r["decision_id"]] = _epoch(r.get("feedback_time", r.get("feedback_timestamp")), now)
        self._pending: dict[str, dict[str, Any]] = {}
        for item in found[DECISIONS_FILE].items:
            if item["decision_id"] not in done_ids:
                item["time"] = _epoch(item.get("time", item.get("timestamp")), now)
                self._pending[item["decision_id"]] = item
        self._decision_lines = len(found[DECISIONS_FILE].items)
        self._expired: OrderedDict[str, float] = OrderedDict()  # id -> when it expired
        del found, log_items, done_ids
        self._lock = threading.Lock()
        try:
            self._decisions = _AppendOnly(self.folder / DECISIONS_FILE, self.sync)
            self._log = _AppendOnly(self.folder / LOG_FILE, self.sync)
            self._expired_file = _AppendOnly(self.folder / EXPIRED_FILE, self.sync)
        except OSError as err:
            raise ConfigError(f"--log_dir {str(self.folder)!r}: cannot open {Path(err.filename or '').name!r} for "
                              f"appending ({err.strerror or err})") from None
        if self.sync:  # make the new files' names durable too
            fsync_path(self.folder)
        with self._lock:
            self._forget(now)
            self._expire(now)
            if self._expired and self._decision_lines > len(self._pending):
                # archived now: compact so that a restart does not archive them again
                with contextlib.suppress(OSError):
                    self.compact()
            self._maybe_compact()

    # ------------------------------------------------------------------ state
    @property
    def path(self) -> Path:
        """The off-policy log file (``log.jsonl``), readable by :func:`barp.data.sources.logs.read_log`."""
        return self.folder / LOG_FILE

    @property
    def num_rows(self) -> int:
        """Rows in the log (decisions with their feedback)."""
        return self._num_rows

    @property
    def num_pending(self) -> int:
        """Decisions still waiting for feedback (expired ones excluded)."""
        with self._lock:
            self._expire(self.clock())
            return len(self._pending)

    @property
    def decision_lines(self) -> int:
        """Lines in ``decisions.jsonl`` (pending decisions and, until the next compaction, answered or expired
        ones)."""
        return self._decision_lines

    def rows(self) -> list[dict[str, Any]]:
        """The log rows so far, oldest first (read from the file)."""
        with self._lock:
            return scan(self.path).items

    def replay_costs(self) -> list[tuple[Any, float]]:
        """``(preference, cost)`` of the rows after the last budget reset, oldest first, as read at opening (the
        budget controller replays them); emptied by the call."""
        out, self._replay = self._replay, []
        return out

    @property
    def reset_marker(self) -> dict[str, Any] | None:
        """The last budget reset read at opening or written since (``after_rows``, ``w_c``, ``time``), or None."""
        return self._reset_marker

    # ------------------------------------------------------------------ expiry and compaction (under the lock)
    def _forget(self, now: float) -> None:
        ttl = self.decision_ttl_s
        if ttl is None:
            return
        for remembered in (self._done, self._expired):
            while remembered and next(iter(remembered.values())) + ttl <= now:
                remembered.popitem(last=False)

    def _expire(self, now: float) -> None:
        ttl = self.decision_ttl_s
        if ttl is None or not self._pending:
            return
        gone = []
        for decision_id, decision in self._pending.items():  # routing order: the oldest first
            if decision["time"] + ttl > now:
                break
            gone.append(decision_id)
        if not gone:
            return
        stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
        self._expired_file.append([{**self._pending[d], "expired_at": stamp,
                                    "note": f"expired: no feedback within {ttl:g} s"} for d in gone])
        for decision_id in gone:
            del self._pending[decision_id]
            self._expired[decision_id] = now
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        dead = self._decision_lines - len(self._pending)
        if dead <= self.compact_after or dead <= len(self._pending):
            return
        try:
            self.compact()
        except OSError as err:  # the request that triggered it is done; try again after as many more lines
            self.compact_after += dead
            warnings.warn(f"{DECISIONS_FILE}: compaction failed ({err.strerror or err}); will retry later",
                          LogRepairWarning, stacklevel=2)

    def compact(self) -> None:
        """Rewrite ``decisions.jsonl`` with only the pending decisions, atomically (a temporary file, fsync,
        rename, fsync of the folder); the caller holds the lock."""
        path = self.folder / DECISIONS_FILE
        atomic_write_bytes(path, b"".join(_line(d) for d in self._pending.values()), durable=True)
        self._decisions.close()
        self._decisions = _AppendOnly(path, self.sync)
        self._decision_lines = len(self._pending)

    # ------------------------------------------------------------------ writes
    def record_decisions(self, decisions: Sequence[dict[str, Any]]) -> None:
        """Persist routed decisions (each with a unique ``decision_id``) in one write + fsync."""
        now = self.clock()
        with self._lock:
            self._forget(now)
            self._expire(now)
            stamped = [{**d, "time": now} for d in decisions]  # the log's clock decides expiry
            self._decisions.append(stamped)
            self._decision_lines += len(stamped)
            for d in stamped:
                self._pending[str(d["decision_id"])] = d

    def record_feedback(self, decision_id: str, score: float, cost: float, timestamp: str,
                        key_id: str | None = None) -> dict[str, Any]:
        """Append the log row of a decision's outcome (one write + fsync) and return it.

        Args:
            decision_id: An id returned by ``/route``.
            score: The served model's score, in [0, 1].
            cost: Its cost in USD, in [0, ``MAX_COST_USD``].
            timestamp: When the feedback arrived (ISO 8601).
            key_id: The public id of the API key that posted it (None: the server has no keys).

        Raises:
            DataValidationError: The score or the cost is out of range (nothing is written).
            UnknownDecision: The id was never recorded (or is long forgotten).
            ExpiredDecision: The decision expired without feedback.
            DuplicateFeedback: The decision already has its row.
            LogUnavailable: The row could not be written (nothing is recorded).
        """
        problem = cost_problem(cost)
        if not (math.isfinite(score) and 0 <= score <= 1) or problem is not None:
            raise DataValidationError(f"feedback for {decision_id!r}: score must be in [0, 1] and the cost a finite "
                                      f"number in [0, MAX_COST_USD], got score={score!r}, cost={cost!r}")
        now = self.clock()
        with self._lock:
            self._forget(now)
            self._expire(now)
            if decision_id in self._done:
                raise DuplicateFeedback(decision_id)
            if decision_id in self._expired:
                raise ExpiredDecision(decision_id)
            decision = self._pending.get(decision_id)
            if decision is None:
                raise UnknownDecision(decision_id)
            row = {k: decision.get(k) for k in ROW_FROM_DECISION}
            row.update(score=float(score), cost=float(cost), feedback_timestamp=timestamp, key_id=key_id)
            self._log.append([row])
            self._num_rows += 1
            self._done[decision_id] = now
            del self._pending[decision_id]
            self._maybe_compact()
            return dict(row)

    # ------------------------------------------------------------------ the budget controller's reset
    def _read_reset(self) -> dict[str, Any] | None:
        path = self.folder / BUDGET_RESET_FILE
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataValidationError(f"{path}: not a budget reset record written by barp serve ({err}); fix or "
                                      "move it") from None
        after = record.get("after_rows") if isinstance(record, dict) else None
        w_c = record.get("w_c") if isinstance(record, dict) else None
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= self._num_rows \
                or isinstance(w_c, bool) or not isinstance(w_c, (int, float)) or not 0 <= w_c <= 1:
            raise DataValidationError(f"{path}: 'after_rows' must be a row count in [0, {self._num_rows}] and 'w_c' "
                                      f"a number in [0, 1], got {record!r}; fix or move it")
        return record

    def record_budget_reset(self, w_c: float, key_id: str | None = None) -> dict[str, Any]:
        """Record (atomically, synced) that the budget controller restarts from ``w_c`` after the current rows: a
        restart replays only the rows logged after this."""
        with self._lock:
            record = {"after_rows": self._num_rows, "w_c": float(w_c), "time": self.clock(), "key_id": key_id}
            try:
                atomic_write_bytes(self.folder / BUDGET_RESET_FILE, (json.dumps(record) + "\n").encode(),
                                   durable=True)
            except OSError as err:
                raise LogUnavailable(err.errno, err.strerror or str(err)) from None
            self._reset_marker = record
            return dict(record)

    def close(self) -> None:
        """Close the files and release the folder's lock (appends after this fail)."""
        with self._lock:
            self._decisions.close()
            self._log.close()
            self._expired_file.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None
