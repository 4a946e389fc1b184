"""Served-request logs: one row per request a router answered, with the probability of the model it chose.

A log is what a deployed router sees (bandit feedback): for each request the prompt, the model that answered, the
probability the logging policy gave that model (its propensity), that model's score and cost, and optionally the
preference it was served at. It never holds another model's outcome. Columns (other columns are ignored):

===============  ========  ==========================================================================
column           required  meaning
===============  ========  ==========================================================================
``prompt``       yes       the prompt text
``model``        yes       the model that answered (one of the router's models)
``propensity``   yes       probability the logging policy gave that model, in (0, 1]
``score``        yes       its quality score, in [0, 1]
``cost``         yes       its cost in USD, in [0, :data:`~barp.data.table.MAX_COST_USD`] (1000)
``w_c``          no        cost weight the request was served at, in [0, 1] (empty: not recorded)
``timestamp``    no        when it was served (kept as text)
``prompt_id``    no        an id of the prompt (repeated requests of one prompt may share it)
``decision_id``  no        the id ``barp serve`` gave the request; unique per row
``note``         no        free text; the simulator writes ``simulated: ...`` on every row
===============  ========  ==========================================================================

CSV, TSV, JSON, JSON lines and parquet are read through :func:`barp.data.sources.files.read_file` (the container
is sniffed from the content), and every bad value stops loading with one :class:`~barp.errors.DataValidationError`
naming the file, the column, the row (0-based, header excluded) and the value. A row that repeats an earlier row
exactly (every column above equal, a copied or twice-written row) and a repeated ``decision_id`` are refused too:
such a row would count one request twice and narrow every interval computed from the log.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from barp.atomic import atomic_path
from barp.data.sources.assemble import NA_TEXT, describe, is_missing, prompt_text
from barp.data.sources.chunks import CHUNK_ROWS, Chunk, iter_chunks
from barp.data.sources.generic import require
from barp.data.table import MAX_COST_USD
from barp.errors import DataValidationError

REQUIRED_COLUMNS = ("prompt", "model", "propensity", "score", "cost")
OPTIONAL_COLUMNS = ("w_c", "timestamp", "prompt_id", "decision_id", "note")
#: Prefix of the ``note`` the simulator writes, so a simulated log says so wherever it goes.
SIMULATED = "simulated"
#: Two pandas hash keys (16 characters each): the row hashes of the repeat check are 2 x 64 bits.
HASH_KEYS = ("barp-log-repeat1", "barp-log-repeat2")


@dataclass(frozen=True, eq=False)
class LoggedFeedback:
    """A validated log of served requests (bandit feedback with propensities), one entry per request.

    Building one validates every field; a bad value raises :class:`DataValidationError` naming the source, the
    column, the row and the value. Rows are numbered as in the source file (0-based, header excluded).

    Args:
        prompts: Prompt text per request (N non-empty strings).
        models: The candidate models (K >= 2 unique names); ``actions`` index into this list.
        actions: Index of the model that answered, per request, shape (N,).
        propensity: Probability the logging policy gave that model, in (0, 1], shape (N,).
        score: That model's score, in [0, 1], shape (N,).
        cost: That model's cost in USD, in [0, :data:`~barp.data.table.MAX_COST_USD`], shape (N,).
        w_c: Cost weight served at, in [0, 1], or NaN where not recorded, shape (N,); None: none recorded.
        prompt_ids: An id per request (default: the row number); repeated requests of one prompt may share it.
        timestamps: When each request was served (text), or None.
        notes: The distinct ``note`` values of the log (a simulated log has one starting with ``simulated``).
        source: Where the log came from (a file), used in messages.
    """

    prompts: list[str]
    models: list[str]
    actions: np.ndarray
    propensity: np.ndarray
    score: np.ndarray
    cost: np.ndarray
    w_c: np.ndarray | None = None
    prompt_ids: list[str] | None = None
    timestamps: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.prompts)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        set_("models", [str(m) for m in self.models])
        set_("actions", np.asarray(self.actions, dtype=np.int64).reshape(-1))
        for name in ("propensity", "score", "cost"):
            set_(name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        set_("w_c", np.full(n, np.nan) if self.w_c is None else np.asarray(self.w_c, dtype=np.float64).reshape(-1))
        set_("prompt_ids", [str(i) for i in range(n)] if self.prompt_ids is None else [str(p) for p in self.prompt_ids])
        set_("notes", list(self.notes))
        self._validate()
        for name in ("actions", "propensity", "score", "cost", "w_c"):
            getattr(self, name).setflags(write=False)

    # ------------------------------------------------------------------ validation
    def _fail(self, message: str) -> None:
        raise DataValidationError(f"{self.source}: {message}")

    def _validate(self) -> None:
        assert self.w_c is not None and self.prompt_ids is not None  # __post_init__ fills both in
        n, k = len(self.prompts), len(self.models)
        if n == 0:
            self._fail("the log has no rows (served requests)")
        if k < 2 or len(set(self.models)) != k or not all(m.strip() for m in self.models):
            self._fail(f"the models must be >= 2 unique non-empty names, got {self.models}")
        for name in ("actions", "propensity", "score", "cost", "w_c", "prompt_ids"):
            if len(getattr(self, name)) != n:
                self._fail(f"column {name!r}: expected {n} values (one per request), got {len(getattr(self, name))}")
        if self.timestamps is not None and len(self.timestamps) != n:
            self._fail(f"column 'timestamp': expected {n} values (one per request), got {len(self.timestamps)}")
        check_values(self.source, self.prompts, self.models, self.actions, self.propensity, self.score, self.cost,
                     self.w_c, self.prompt_ids)

    # ------------------------------------------------------------------ views
    @property
    def num_rows(self) -> int:
        """Number of logged requests N."""
        return len(self.prompts)

    @property
    def num_models(self) -> int:
        """Number of candidate models K."""
        return len(self.models)

    @property
    def simulated(self) -> bool:
        """Whether the log says it was simulated from a full-information table (not real traffic)."""
        return any(note.startswith(SIMULATED) for note in self.notes)

    def __len__(self) -> int:
        return self.num_rows

    def model_counts(self) -> np.ndarray:
        """How many requests each model answered, shape (K,)."""
        return np.bincount(self.actions, minlength=self.num_models)

    def subset(self, rows: Sequence[int] | np.ndarray) -> LoggedFeedback:
        """The log restricted to ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        assert self.w_c is not None and self.prompt_ids is not None  # __post_init__ fills both in
        return LoggedFeedback(
            prompts=[self.prompts[i] for i in idx], models=self.models, actions=self.actions[idx],
            propensity=self.propensity[idx], score=self.score[idx], cost=self.cost[idx], w_c=self.w_c[idx],
            prompt_ids=[self.prompt_ids[i] for i in idx],
            timestamps=None if self.timestamps is None else [self.timestamps[i] for i in idx],
            notes=self.notes, source=self.source,
        )

    # ------------------------------------------------------------------ file form
    def to_frame(self) -> pd.DataFrame:
        """The log in file layout: ``prompt_id, prompt, model, propensity, score, cost, w_c`` (+ timestamp, note)."""
        data: dict[str, object] = {
            "prompt_id": self.prompt_ids,
            "prompt": self.prompts,
            "model": [self.models[a] for a in self.actions],
            "propensity": self.propensity,
            "score": self.score,
            "cost": self.cost,
            "w_c": self.w_c,
        }
        if self.timestamps is not None:
            data["timestamp"] = self.timestamps
        if self.notes:
            data["note"] = "; ".join(self.notes)
        return pd.DataFrame(data)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the log atomically (temporary name, then rename): ``.parquet``, ``.jsonl``/``.json`` or CSV.

        Args:
            path: The file; its suffix chooses the container (anything else is written as CSV).
        """
        path = Path(path)
        frame = self.to_frame()
        suffix = path.suffix.lower()
        with atomic_path(path) as tmp:
            if suffix in (".parquet", ".pq"):
                frame.to_parquet(tmp, index=False)
            elif suffix in (".jsonl", ".json"):
                frame.to_json(tmp, orient="records", lines=True, force_ascii=False, double_precision=15)
            else:
                frame.to_csv(tmp, index=False, sep="\t" if suffix in (".tsv", ".tab") else ",")
        return path


def check_values(source: str, prompts: Sequence[str], models: Sequence[str], actions: np.ndarray,
                 propensity: np.ndarray, score: np.ndarray, cost: np.ndarray, w_c: np.ndarray,
                 prompt_ids: Sequence[str], first_row: int = 0, whole: bool = True) -> None:
    """The per-request checks of :class:`LoggedFeedback`, on the rows ``first_row, first_row + 1, ...`` of
    ``source`` (a chunk of a file when not ``whole``).

    Raises:
        DataValidationError: Naming the source, the column, the first bad row and its value, and how many more rows
            are bad (in the chunk, when not ``whole``).
    """
    for i, text in enumerate(prompts):
        if not isinstance(text, str) or not text.strip():
            raise DataValidationError(f"{source}: column 'prompt', row {first_row + i}: the prompt is empty or not "
                                      f"text: {describe(text)}")
    k = len(models)

    def first_bad(column: str, bad: np.ndarray, values: np.ndarray, rule: str) -> None:
        if not bad.any():
            return
        i = int(np.flatnonzero(bad)[0])
        more = int(bad.sum()) - 1
        where = "" if whole else f" among rows {first_row}-{first_row + len(bad) - 1}; later rows not checked yet"
        tail = f" ({more} more bad rows{where})" if more else ""
        raise DataValidationError(f"{source}: column {column!r}, row {first_row + i} (prompt id {prompt_ids[i]!r}): "
                                  f"value {values[i].item()!r} is not {rule}{tail}")

    first_bad("model", (actions < 0) | (actions >= k), actions, f"a model index in [0, {k})")
    checks = (
        ("propensity", propensity, lambda p: ~np.isfinite(p) | (p <= 0) | (p > 1),
         "a probability in (0, 1] (the logging policy's probability of the served model)"),
        ("score", score, lambda s: ~np.isfinite(s) | (s < 0) | (s > 1), "a score in [0, 1]"),
        ("cost", cost, lambda c: ~np.isfinite(c) | (c < 0) | (c > MAX_COST_USD),
         f"a finite cost in [0, {MAX_COST_USD:g}] (USD per request)"),
        ("w_c", w_c, lambda w: ~np.isnan(w) & (~np.isfinite(w) | (w < 0) | (w > 1)),
         "a cost weight in [0, 1] (or empty)"),
    )
    for name, values, is_bad, rule in checks:
        first_bad(name, is_bad(values), values, rule)


# ---------------------------------------------------------------------- reading
def _number(value: object) -> float:
    """One numeric cell as a float (NaN when missing); ValueError when it is not a number (booleans included)."""
    if is_missing(value):
        return float("nan")
    if isinstance(value, str):
        return float("nan") if value.strip().lower() in NA_TEXT else float(value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise ValueError(value)


def _numbers(frame: pd.DataFrame, column: str, source: str, required: bool, first_row: int = 0) -> np.ndarray:
    """A numeric column as floats; a non-number (or, when ``required``, a missing cell) is an error."""
    series = frame[column]
    if pd.api.types.is_float_dtype(series.dtype) or (pd.api.types.is_integer_dtype(series.dtype)
                                                      and not pd.api.types.is_bool_dtype(series.dtype)):
        out = series.to_numpy(dtype=np.float64, na_value=np.nan)  # numbers already: no cell to parse
        missing = np.flatnonzero(np.isnan(out)) if required else np.empty(0, dtype=np.int64)
        if len(missing):
            raise DataValidationError(f"{source}: column {column!r}, row {first_row + int(missing[0])}: the value is "
                                      "missing (NaN or empty); every logged request needs its " + column)
        return out
    out = np.full(len(frame), np.nan)
    for i, value in enumerate(series.tolist()):
        try:
            out[i] = _number(value)
        except (TypeError, ValueError):
            raise DataValidationError(f"{source}: column {column!r}, row {first_row + i}: value {describe(value)} is "
                                      "not a number") from None
        if required and np.isnan(out[i]):
            raise DataValidationError(f"{source}: column {column!r}, row {first_row + i}: the value is missing (NaN "
                                      "or empty); every logged request needs its " + column)
    return out


def _texts(frame: pd.DataFrame, column: str, source: str, first_row: int = 0) -> list[str]:
    """A required text column; a missing, empty or non-text cell is an error."""
    out: list[str] = []
    series = frame[column]
    for i, (value, missing) in enumerate(zip(series.tolist(), series.isna().tolist())):
        text = prompt_text(value) if column == "prompt" else (None if missing else str(value))
        if text is None or not text.strip():
            what = "missing" if is_missing(value) or text is not None else f"not text: {describe(value)}"
            raise DataValidationError(f"{source}: column {column!r}, row {first_row + i}: the value is {what}")
        out.append(text)
    return out


def _optional_texts(frame: pd.DataFrame, column: str) -> list[str] | None:
    if column not in frame.columns:
        return None
    series = frame[column]
    return ["" if missing else str(v) for v, missing in zip(series.tolist(), series.isna().tolist())]


def _check_columns(frame: pd.DataFrame, source: str) -> None:
    require(frame, REQUIRED_COLUMNS, source, f"served-request log (optional columns: {list(OPTIONAL_COLUMNS)})")


def _one_model_error(source: str, name: str) -> DataValidationError:
    return DataValidationError(f"{source}: column 'model': every row names {name!r}; a log of one model cannot "
                               "evaluate a router: pass the router's models (read_log(models=...))")


def read_log(
    path: str | os.PathLike, models: Sequence[str] | None = None, trust_pickle: bool = False,
    chunk_rows: int = CHUNK_ROWS,
) -> LoggedFeedback:
    """Read and validate a served-request log, ``chunk_rows`` rows at a time (it never has to fit in pandas whole).

    The log is a file (CSV, TSV, JSON, JSON lines or parquet), a folder of such files (one per day, say: read in
    name order, as one log) or a ``datasets`` folder (``save_to_disk``; ``DIR#SPLIT`` for one split of a
    ``DatasetDict``). Each chunk is checked as it is read, with the messages a whole-file check gives: the file, the
    column, the row within that file (0-based, header excluded) and the value. Rows are kept as columns of numbers,
    and each distinct prompt (and prompt id) text once.

    Args:
        path: The log file or folder.
        models: The candidate models, in the router's order (a model the log names outside this list is an error);
            None: the sorted names the log uses (then at least two must occur).
        trust_pickle: Read a pickled DataFrame whose hash is not pinned (pickles can run code).
        chunk_rows: Rows read and checked at a time (:data:`~barp.data.sources.chunks.CHUNK_ROWS`).

    Returns:
        The validated log; its ``source`` is the path.

    Raises:
        DataValidationError: A file is unreadable, a column is missing, a value is missing or out of range, or a
            row repeats an earlier one (see :func:`check_repeats`); the message names the file, the column, the row
            and the value.
    """
    reader = _ChunkedLog(models)
    source = str(Path(path).expanduser()) if "#" not in str(path) else str(path)
    for chunk in iter_chunks(str(path), chunk_rows, trust_pickle):
        reader.add(chunk)
    return reader.finish(source)


class _ChunkedLog:
    """A log gathered chunk by chunk: each chunk validated as it comes, repeats looked for across all of them."""

    def __init__(self, models: Sequence[str] | None) -> None:
        self.given = models is not None
        self.names: list[str] = [str(m) for m in models] if models is not None else []
        self.code = {m: j for j, m in enumerate(self.names)}
        self.rows = 0
        self.prompts: list[str] = []
        self.ids: list[str] = []
        self.timestamps: list[str] | None = None
        self.columns: dict[str, list[np.ndarray]] = {c: [] for c in ("actions", "propensity", "score", "cost", "w_c")}
        self.notes: set[str] = set()
        self._texts: dict[str, str] = {}  # one string object per distinct prompt (and prompt id) text
        self._hashes: list[np.ndarray] = []  # per chunk, a 128-bit hash of each row's check_repeats key, (n, 2)
        self._chunks: list[tuple[str, int, int]] = []  # per chunk: file, its first row there, its first log row
        self._decisions: dict[str, tuple[str, int]] = {}
        self._decision_repeat: str | None = None
        self.sources: list[str] = []

    def _shared(self, text: str) -> str:
        return self._texts.setdefault(text, text)

    def add(self, chunk: Chunk) -> None:
        """Validate ``chunk`` and keep its rows (raising on its first bad value, named by file and row)."""
        frame, source, first = chunk.frame, chunk.source, chunk.start
        frame.columns = [str(c) for c in frame.columns]
        if chunk.start == 0:
            _check_columns(frame, source)
            self.sources.append(source)
        for column in REQUIRED_COLUMNS:  # a later chunk of JSON lines may lack a key every row of it leaves out
            if column not in frame.columns:
                frame[column] = None
        names = _texts(frame, "model", source, first)
        actions = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            j = self.code.get(name)
            if j is None:
                if self.given:
                    shown = ", ".join(map(repr, self.names[:12])) + (", ..." if len(self.names) > 12 else "")
                    raise DataValidationError(f"{source}: column 'model', row {first + i}: unknown model {name!r}; "
                                              f"the router's models are {shown}")
                j = self.code[name] = len(self.names)
                self.names.append(name)
            actions[i] = j
        prompts = [self._shared(t) for t in _texts(frame, "prompt", source, first)]
        numbers = {c: _numbers(frame, c, source, required=True, first_row=first)
                   for c in ("propensity", "score", "cost")}
        w_c = (_numbers(frame, "w_c", source, required=False, first_row=first) if "w_c" in frame.columns
               else np.full(len(frame), np.nan))
        raw_ids = _optional_texts(frame, "prompt_id")
        ids = ([str(self.rows + i) for i in range(len(frame))] if raw_ids is None
               else [self._shared(pid) if pid.strip() else str(self.rows + i) for i, pid in enumerate(raw_ids)])
        check_values(source, prompts, self.names, actions, numbers["propensity"], numbers["score"], numbers["cost"],
                     w_c, ids, first_row=first, whole=chunk.whole)
        timestamps = _optional_texts(frame, "timestamp")
        if timestamps is not None and self.timestamps is None:
            self.timestamps = [""] * self.rows
        if self.timestamps is not None:
            self.timestamps.extend(timestamps if timestamps is not None else [""] * len(frame))
        self.notes.update(n for n in _optional_texts(frame, "note") or [] if n.strip())
        decisions = _optional_texts(frame, "decision_id")
        self._look_for_repeats(source, first, raw_ids, prompts, names, numbers, w_c, timestamps, decisions)
        self.prompts.extend(prompts)
        self.ids.extend(ids)
        for name, values in (("actions", actions), ("w_c", w_c), *numbers.items()):
            self.columns[name].append(values)
        self.rows += len(frame)

    def _look_for_repeats(self, source, first, raw_ids, prompts, names, numbers, w_c, timestamps, decisions) -> None:
        """Note repeated decision ids and rows equal to an earlier one (raised by :meth:`finish`, after every value
        is checked, as :func:`check_repeats` does)."""
        n = len(prompts)
        if decisions is not None:
            for i, did in enumerate(decisions):
                if not did.strip():
                    continue
                if did in self._decisions:
                    if self._decision_repeat is None:
                        at, row = self._decisions[did]
                        rows = (f"rows {row} and {first + i}" if at == source
                                else f"row {first + i} (and {at} row {row})")
                        self._decision_repeat = (
                            f"{source}: column 'decision_id', {rows}: decision id {did!r} is logged twice; one "
                            "decision has one outcome (a copied row, or two servers writing one log)")
                else:
                    self._decisions[did] = (source, first + i)
        absent = "\x00absent"  # a column the file lacks (None in check_repeats' keys): no cell text equals it
        cell = lambda values: [absent] * n if values is None else values  # noqa: E731
        w = np.where(np.isnan(w_c), -1.0, w_c + 0.0)  # +0.0: -0.0 and 0.0 are one value, as in check_repeats
        key = pd.DataFrame({"id": cell(raw_ids), "prompt": prompts, "model": names,
                            "propensity": numbers["propensity"] + 0.0, "score": numbers["score"] + 0.0,
                            "cost": numbers["cost"] + 0.0, "w_c": w, "timestamp": cell(timestamps),
                            "decision": cell(decisions)})
        halves = [pd.util.hash_pandas_object(key, index=False, hash_key=k).to_numpy() for k in HASH_KEYS]
        self._hashes.append(np.stack(halves, axis=1))  # 128 bits per row: equal rows, equal hashes
        self._chunks.append((source, first, self.rows))

    def _where(self, log_row: int) -> tuple[str, int]:
        """The file and the row within it of log row ``log_row``."""
        starts = [log_start for _, _, log_start in self._chunks]
        source, first, log_start = self._chunks[bisect.bisect_right(starts, log_row) - 1]
        return source, first + log_row - log_start

    def _repeated_rows(self) -> tuple[tuple[str, int], tuple[str, int], int, int] | None:
        """The first row equal to an earlier one (where, where the earlier is, its log row) and how many rows repeat
        an earlier one; None when none does. Sorting the rows' hashes finds them in O(N log N)."""
        hashes = np.concatenate(self._hashes) if self._hashes else np.empty((0, 2), dtype=np.uint64)
        self._hashes = []
        order = np.lexsort((np.arange(len(hashes)), hashes[:, 1], hashes[:, 0]))  # equal rows together, in row order
        ordered = hashes[order]
        same = np.zeros(len(order), dtype=bool)
        same[1:] = (ordered[1:] == ordered[:-1]).all(axis=1)
        if not same.any():
            return None
        group_first = order[np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))]
        repeated = order[same]
        i = int(np.argmin(repeated))
        row = int(repeated[i])
        return self._where(row), self._where(int(group_first[same][i])), row, len(repeated)

    def finish(self, source: str) -> LoggedFeedback:
        """The whole log, once every chunk is in; raises on a repeated request (see :func:`check_repeats`)."""
        names, actions = self.names, np.concatenate(self.columns["actions"])
        if not self.given:
            if len(names) < 2:
                raise _one_model_error(source, names[0])
            order = sorted(range(len(names)), key=names.__getitem__)
            remap = np.empty(len(names), dtype=np.int64)
            remap[order] = np.arange(len(names))
            names, actions = [names[j] for j in order], remap[actions]
        log = LoggedFeedback(
            prompts=self.prompts, models=names, actions=actions,
            propensity=np.concatenate(self.columns["propensity"]), score=np.concatenate(self.columns["score"]),
            cost=np.concatenate(self.columns["cost"]), w_c=np.concatenate(self.columns["w_c"]), prompt_ids=self.ids,
            timestamps=self.timestamps, notes=sorted(self.notes), source=source,
        )
        if self._decision_repeat is not None:
            raise DataValidationError(self._decision_repeat)
        repeats = self._repeated_rows()
        if repeats is not None:
            (at, row), (earlier_at, earlier), log_row, count = repeats
            more = f" ({count - 1} more repeated rows)" if count > 1 else ""
            earlier_text = f"row {earlier}" if earlier_at == at else f"{earlier_at} row {earlier}"
            assert log.prompt_ids is not None  # LoggedFeedback.__post_init__ fills it in
            raise DataValidationError(
                f"{at}: row {row} repeats {earlier_text} exactly (prompt id {log.prompt_ids[log_row]!r}, model "
                f"{log.models[log.actions[log_row]]!r}, same prompt, propensity, score, cost, w_c and timestamp)"
                f"{more}: a copied row counts one request twice; remove the copies (distinct requests need distinct "
                "timestamp, prompt_id or decision_id values)")
        return log


def check_repeats(log: LoggedFeedback, prompt_ids: list[str] | None = None,
                  decision_ids: list[str] | None = None) -> None:
    """Refuse a log that holds one request twice: a repeated ``decision_id``, or a row equal to an earlier one.

    Rows are equal when they agree on prompt id, prompt, model, propensity, score, cost, w_c, timestamp and decision
    id (a copied file, or one answer written twice). Real repeated requests of one prompt differ in their
    timestamp or decision id, which is how a log tells them apart.

    Args:
        log: The validated log.
        prompt_ids: The file's ``prompt_id`` cells as written ("" where empty), or None without that column.
        decision_ids: The file's ``decision_id`` cells ("" where empty), or None without that column.

    Raises:
        DataValidationError: Naming the file, the two rows and the repeated value.
    """
    if decision_ids is not None:
        first: dict[str, int] = {}
        for i, did in enumerate(decision_ids):
            if not did.strip():
                continue
            if did in first:
                raise DataValidationError(
                    f"{log.source}: column 'decision_id', rows {first[did]} and {i}: decision id {did!r} is logged "
                    "twice; one decision has one outcome (a copied row, or two servers writing one log)")
            first[did] = i
    assert log.w_c is not None and log.prompt_ids is not None  # LoggedFeedback.__post_init__ fills both in
    column = lambda values: [None] * log.num_rows if values is None else values  # noqa: E731
    w_c = [None if np.isnan(w) else float(w) for w in log.w_c]
    keys = zip(column(prompt_ids), log.prompts, log.actions.tolist(), log.propensity.tolist(), log.score.tolist(),
               log.cost.tolist(), w_c, column(log.timestamps), column(decision_ids))
    seen: dict[tuple, int] = {}
    repeats: list[tuple[int, int]] = []
    for i, key in enumerate(keys):
        if key in seen:
            repeats.append((seen[key], i))
        else:
            seen[key] = i
    if repeats:
        earlier, row = repeats[0]
        more = f" ({len(repeats) - 1} more repeated rows)" if len(repeats) > 1 else ""
        raise DataValidationError(
            f"{log.source}: row {row} repeats row {earlier} exactly (prompt id {log.prompt_ids[row]!r}, model "
            f"{log.models[log.actions[row]]!r}, same prompt, propensity, score, cost, w_c and timestamp){more}: a "
            "copied row counts one request twice; remove the copies (distinct requests need distinct timestamp, "
            "prompt_id or decision_id values)")
