"""The outcome table: logged routing data (N prompts x K models) in one validated in-memory form.

Every data source (the built-in synthetic benchmark, RouterBench, users' own files) produces an
:class:`OutcomeTable`; everything downstream (splits, embeddings, the bandit environment,
evaluation) consumes only this form.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from barp.atomic import atomic_path
from barp.errors import DataValidationError

#: The most one request may cost (USD). No LLM call costs this much: a larger value is a unit mistake (micro-dollars,
#: tokens) or junk, and one such row would dominate every mean cost, interval and budget it enters.
MAX_COST_USD = 1000.0


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, eq=False)
class OutcomeTable:
    """Full-information outcomes of K models on N prompts.

    Building one validates every field; a bad value raises :class:`DataValidationError` naming the
    source, the field, the row (and prompt id) or column, and the value.

    Args:
        prompt_ids: Unique id per prompt (N strings).
        prompts: Prompt text per prompt (N non-empty strings).
        tasks: Task (family) name per prompt (N non-empty strings).
        models: Model names (K >= 2 unique strings), in column order of ``scores`` and ``costs``.
        scores: Quality score per (prompt, model), shape (N, K), finite and in [0, 1].
        costs: Cost in USD per (prompt, model), shape (N, K), finite, in [0, :data:`MAX_COST_USD`].
        source: Where the table came from (a file path or a generator name), used in error messages.
    """

    prompt_ids: list[str]
    prompts: list[str]
    tasks: list[str]
    models: list[str]
    scores: np.ndarray
    costs: np.ndarray
    source: str = "<memory>"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", [str(p) for p in self.prompt_ids])
        object.__setattr__(self, "models", [str(m) for m in self.models])
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64))
        object.__setattr__(self, "costs", np.asarray(self.costs, dtype=np.float64))
        self._validate()
        self.scores.setflags(write=False)
        self.costs.setflags(write=False)

    # ------------------------------------------------------------------ validation
    def _fail(self, message: str) -> None:
        raise DataValidationError(f"{self.source}: {message}")

    def _validate(self) -> None:
        n = len(self.prompt_ids)
        k = len(self.models)
        if n == 0:
            self._fail("the table has no rows (prompts)")
        if k < 2:
            self._fail(f"field 'models': routing needs at least 2 models, got {k}: {self.models}")
        seen_models: set[str] = set()
        for j, name in enumerate(self.models):
            if not name.strip():
                self._fail(f"field 'models': model name at column {j} is empty")
            if name in seen_models:
                self._fail(f"field 'models': duplicate model name {name!r}")
            seen_models.add(name)
        for fname in ("prompts", "tasks"):
            values = getattr(self, fname)
            if len(values) != n:
                self._fail(f"field '{fname}': expected {n} values (one per prompt id), got {len(values)}")
        seen: dict[str, int] = {}
        for i, pid in enumerate(self.prompt_ids):
            if pid in seen:
                self._fail(f"field 'prompt_id': duplicate id {pid!r} at rows {seen[pid]} and {i}")
            seen[pid] = i
        for i, (pid, text) in enumerate(zip(self.prompt_ids, self.prompts)):
            if not isinstance(text, str):
                self._fail(f"field 'prompt': row {i} (id {pid!r}) is not text: {_describe(text)}")
            if not text.strip():
                self._fail(f"field 'prompt': row {i} (id {pid!r}) is empty")
        for i, (pid, task) in enumerate(zip(self.prompt_ids, self.tasks)):
            if not isinstance(task, str) or not task.strip():
                self._fail(f"field 'task': row {i} (id {pid!r}) has no task name: {_describe(task)}")
        for fname, arr in (("score", self.scores), ("cost", self.costs)):
            if arr.shape != (n, k):
                self._fail(f"field '{fname}': expected shape ({n}, {k}), got {arr.shape}")
            bad = ~np.isfinite(arr)
            if fname == "score":
                bad |= (arr < 0) | (arr > 1)
                rule = "a finite number in [0, 1]"
            else:
                bad |= (arr < 0) | (arr > MAX_COST_USD)
                rule = f"a finite cost in [0, {MAX_COST_USD:g}] (USD per request)"
            if bad.any():
                i, j = map(int, np.argwhere(bad)[0])
                count = int(bad.sum())
                more = f" ({count - 1} more bad cells)" if count > 1 else ""
                self._fail(
                    f"field '{fname}': row {i} (id {self.prompt_ids[i]!r}), model {self.models[j]!r}: "
                    f"value {float(arr[i, j])!r} is not {rule}{more}"
                )

    # ------------------------------------------------------------------ views
    @property
    def num_prompts(self) -> int:
        """Number of prompts N."""
        return len(self.prompt_ids)

    @property
    def num_models(self) -> int:
        """Number of models K."""
        return len(self.models)

    @property
    def task_names(self) -> list[str]:
        """Sorted unique task names."""
        return sorted(set(self.tasks))

    def __len__(self) -> int:
        return self.num_prompts

    def subset(self, rows: Sequence[int] | np.ndarray) -> OutcomeTable:
        """Return the table restricted to ``rows`` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return OutcomeTable(
            prompt_ids=[self.prompt_ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            models=list(self.models),
            scores=self.scores[idx],
            costs=self.costs[idx],
            source=self.source,
        )

    def summary(self) -> dict[str, object]:
        """Per-model mean score and cost, the oracle's mean score and the best single model."""
        mean_score = self.scores.mean(axis=0)
        best = int(np.argmax(mean_score))
        return {
            "num_prompts": self.num_prompts,
            "num_models": self.num_models,
            "rows_per_task": {t: self.tasks.count(t) for t in self.task_names},
            "mean_score": dict(zip(self.models, map(float, mean_score))),
            "mean_cost": dict(zip(self.models, map(float, self.costs.mean(axis=0)))),
            "oracle_score": float(self.scores.max(axis=1).mean()),
            "best_single_model": self.models[best],
        }

    # ------------------------------------------------------------------ canonical file form
    def to_frame(self):  # -> pandas.DataFrame
        """Wide DataFrame: ``prompt_id, prompt, task``, then ``<model>`` and ``<model>|total_cost`` per model."""
        import pandas as pd

        data: dict[str, object] = {
            "prompt_id": self.prompt_ids,
            "prompt": self.prompts,
            "task": self.tasks,
        }
        for j, m in enumerate(self.models):
            data[m] = self.scores[:, j]
        for j, m in enumerate(self.models):
            data[f"{m}|total_cost"] = self.costs[:, j]
        return pd.DataFrame(data)

    def to_parquet(self, path: str | os.PathLike) -> Path:
        """Write barp's canonical parquet file atomically (temporary name, then rename)."""
        with atomic_path(path) as tmp:
            self.to_frame().to_parquet(tmp, index=False)
        return Path(path)
