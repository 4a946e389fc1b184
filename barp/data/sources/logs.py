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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from barp.atomic import atomic_path
from barp.data.sources.assemble import NA_TEXT, describe, is_missing, prompt_text
from barp.data.sources.files import read_file
from barp.data.sources.generic import require
from barp.data.table import MAX_COST_USD
from barp.errors import DataValidationError

REQUIRED_COLUMNS = ("prompt", "model", "propensity", "score", "cost")
OPTIONAL_COLUMNS = ("w_c", "timestamp", "prompt_id", "decision_id", "note")
#: Prefix of the ``note`` the simulator writes, so a simulated log says so wherever it goes.
SIMULATED = "simulated"


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
        for i, text in enumerate(self.prompts):
            if not isinstance(text, str) or not text.strip():
                self._fail(f"column 'prompt', row {i}: the prompt is empty or not text: {describe(text)}")
        bad = (self.actions < 0) | (self.actions >= k)
        self._first_bad("model", bad, self.actions, f"a model index in [0, {k})")
        checks = (
            ("propensity", self.propensity, lambda p: ~np.isfinite(p) | (p <= 0) | (p > 1),
             "a probability in (0, 1] (the logging policy's probability of the served model)"),
            ("score", self.score, lambda s: ~np.isfinite(s) | (s < 0) | (s > 1), "a score in [0, 1]"),
            ("cost", self.cost, lambda c: ~np.isfinite(c) | (c < 0) | (c > MAX_COST_USD),
             f"a finite cost in [0, {MAX_COST_USD:g}] (USD per request)"),
            ("w_c", self.w_c, lambda w: ~np.isnan(w) & (~np.isfinite(w) | (w < 0) | (w > 1)),
             "a cost weight in [0, 1] (or empty)"),
        )
        for name, values, is_bad, rule in checks:
            self._first_bad(name, is_bad(values), values, rule)

    def _first_bad(self, column: str, bad: np.ndarray, values: np.ndarray, rule: str) -> None:
        if not bad.any():
            return
        assert self.prompt_ids is not None  # __post_init__ fills it in
        i = int(np.flatnonzero(bad)[0])
        more = int(bad.sum()) - 1
        tail = f" ({more} more bad rows)" if more else ""
        self._fail(f"column {column!r}, row {i} (prompt id {self.prompt_ids[i]!r}): value {values[i].item()!r} "
                   f"is not {rule}{tail}")

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


def _numbers(frame: pd.DataFrame, column: str, source: str, required: bool) -> np.ndarray:
    """A numeric column as floats; a non-number (or, when ``required``, a missing cell) is an error."""
    out = np.full(len(frame), np.nan)
    for i, value in enumerate(frame[column].tolist()):
        try:
            out[i] = _number(value)
        except (TypeError, ValueError):
            raise DataValidationError(f"{source}: column {column!r}, row {i}: value {describe(value)} is not a "
                                      "number") from None
        if required and np.isnan(out[i]):
            raise DataValidationError(f"{source}: column {column!r}, row {i}: the value is missing (NaN or empty); "
                                      "every logged request needs its " + column)
    return out


def _texts(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    """A required text column; a missing, empty or non-text cell is an error."""
    out: list[str] = []
    for i, value in enumerate(frame[column].tolist()):
        text = prompt_text(value) if column == "prompt" else (None if is_missing(value) else str(value))
        if text is None or not text.strip():
            what = "missing" if is_missing(value) or text is not None else f"not text: {describe(value)}"
            raise DataValidationError(f"{source}: column {column!r}, row {i}: the value is {what}")
        out.append(text)
    return out


def _optional_texts(frame: pd.DataFrame, column: str) -> list[str] | None:
    if column not in frame.columns:
        return None
    return ["" if is_missing(v) else str(v) for v in frame[column].tolist()]


def _actions(names: list[str], models: Sequence[str] | None, source: str) -> tuple[list[str], np.ndarray]:
    """The model list (given, or the sorted names seen) and each row's index in it; unknown names are errors."""
    known = sorted(set(names)) if models is None else [str(m) for m in models]
    if models is None and len(known) < 2:
        raise DataValidationError(f"{source}: column 'model': every row names {known[0]!r}; a log of one model "
                                  "cannot evaluate a router: pass the router's models (read_log(models=...))")
    index = {m: j for j, m in enumerate(known)}
    actions = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        if name not in index:
            shown = ", ".join(map(repr, known[:12])) + (", ..." if len(known) > 12 else "")
            raise DataValidationError(f"{source}: column 'model', row {i}: unknown model {name!r}; the router's "
                                      f"models are {shown}")
        actions[i] = index[name]
    return known, actions


def _check_columns(frame: pd.DataFrame, source: str) -> None:
    require(frame, REQUIRED_COLUMNS, source, f"served-request log (optional columns: {list(OPTIONAL_COLUMNS)})")


def read_log(
    path: str | os.PathLike, models: Sequence[str] | None = None, trust_pickle: bool = False
) -> LoggedFeedback:
    """Read and validate one served-request log file (CSV, TSV, JSON, JSON lines or parquet).

    Args:
        path: The log file.
        models: The candidate models, in the router's order (a model the log names outside this list is an error);
            None: the sorted names the log uses (then at least two must occur).
        trust_pickle: Read a pickled DataFrame whose hash is not pinned (pickles can run code).

    Returns:
        The validated log; its ``source`` is the file.

    Raises:
        DataValidationError: The file is unreadable, a column is missing, a value is missing or out of range, or a
            row repeats an earlier one (see :func:`check_repeats`); the message names the file, the column, the row
            and the value.
    """
    raw = read_file(Path(path).expanduser(), trust_pickle)
    frame, source = raw.table(), raw.source
    frame.columns = [str(c) for c in frame.columns]
    _check_columns(frame, source)
    names, actions = _actions(_texts(frame, "model", source), models, source)
    notes = _optional_texts(frame, "note")
    timestamps = _optional_texts(frame, "timestamp")
    raw_ids = _optional_texts(frame, "prompt_id")
    ids = None if raw_ids is None else [pid if pid.strip() else str(i) for i, pid in enumerate(raw_ids)]
    log = LoggedFeedback(
        prompts=_texts(frame, "prompt", source),
        models=names,
        actions=actions,
        propensity=_numbers(frame, "propensity", source, required=True),
        score=_numbers(frame, "score", source, required=True),
        cost=_numbers(frame, "cost", source, required=True),
        w_c=_numbers(frame, "w_c", source, required=False) if "w_c" in frame.columns else None,
        prompt_ids=ids,
        timestamps=timestamps,
        notes=sorted({n for n in notes or [] if n.strip()}),
        source=source,
    )
    decisions = _optional_texts(frame, "decision_id")
    check_repeats(log, raw_ids, decisions)
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
