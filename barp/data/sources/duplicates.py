"""Repeated prompt ids and repeated prompts: what barp does with them, in one place.

Published routing files reuse ids: RouterBench's 5-shot data (and the per-task CSVs cut from it) label different
prompts with the same ``sample_id``, and records without ids are numbered from 0 in every file. An id is a label,
not the identity of a prompt, so such files load. The rules, applied in file order (and, for several files, in
the order the files are given):

- **Exact copy**: a row with the same id, the same prompt and the same score and cost for every model as an
  earlier row of the same pool is dropped (``drop_copies``); rows of different roles (a training file and a
  fixed test file) are never dropped, since each belongs to its own split.
- **Same id, different row** (another prompt, or the same prompt with other outcomes, e.g. a repeated sample of a
  stochastic model): the row is kept and its id made unique by a suffix: the second row labelled ``x`` becomes
  ``x#2``, the third ``x#3`` (skipping any suffix that is already an id in the data).
- **Same prompt, different ids**: kept as separate rows. Random splits keep every row of one prompt text in the
  same split (:func:`barp.data.splits.make_splits`), so a prompt is never both trained and tested on.

One warning per load gives the counts and the first example.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Separator of the suffix that makes a repeated id unique (``id#2``).
ID_SUFFIX = "#"


@dataclass(frozen=True)
class UniqueRows:
    """The outcome of :func:`unique_rows`.

    Args:
        keep: Indices of the rows kept, in order.
        ids: The (unique) id of each kept row.
        copies: Rows dropped as exact copies of an earlier row.
        relabelled: Kept rows whose id was changed.
        example: A readable example of the first relabelled id (``'x' -> 'x#2'``), or None.
    """

    keep: np.ndarray
    ids: list[str]
    copies: int
    relabelled: int
    example: str | None


def unique_rows(
    ids: Sequence[str],
    prompts: Sequence[str],
    scores: np.ndarray,
    costs: np.ndarray,
    pools: Sequence[object] | None = None,
) -> UniqueRows:
    """Apply the module's rules to validated rows.

    Args:
        ids: Id per row (text).
        prompts: Prompt text per row.
        scores: (N, K) scores, no NaN.
        costs: (N, K) costs, no NaN.
        pools: Per row, the pool it belongs to (for example its split role); exact copies are dropped only
            within one pool. None: one pool.
    """
    taken = set(ids)
    first: dict[str, list[int]] = {}
    next_suffix: Counter[str] = Counter()
    keep: list[int] = []
    out_ids: list[str] = []
    copies = relabelled = 0
    example = None
    for i, pid in enumerate(ids):
        earlier = first.setdefault(pid, [])
        if any(_same_row(i, j, prompts, scores, costs, pools) for j in earlier):
            copies += 1
            continue
        new_id = pid
        if earlier:
            next_suffix[pid] = max(next_suffix[pid], 1)
            while new_id in taken:
                next_suffix[pid] += 1
                new_id = f"{pid}{ID_SUFFIX}{next_suffix[pid]}"
            taken.add(new_id)
            relabelled += 1
            example = example or f"{pid!r} -> {new_id!r}"
        earlier.append(i)
        keep.append(i)
        out_ids.append(new_id)
    return UniqueRows(np.asarray(keep, dtype=np.int64), out_ids, copies, relabelled, example)


def _same_row(i: int, j: int, prompts, scores: np.ndarray, costs: np.ndarray, pools) -> bool:
    same_pool = pools is None or pools[i] == pools[j]
    return (
        same_pool
        and prompts[i] == prompts[j]
        and np.array_equal(scores[i], scores[j])
        and np.array_equal(costs[i], costs[j])
    )


def repeated_prompts(prompts: Sequence[str], scores: np.ndarray) -> tuple[int, int]:
    """How many prompt texts occur on more than one row, and how many of those with differing scores."""
    rows: dict[str, list[int]] = {}
    for i, text in enumerate(prompts):
        rows.setdefault(text, []).append(i)
    groups = [r for r in rows.values() if len(r) > 1]
    differing = sum(1 for r in groups if not all(np.array_equal(scores[r[0]], scores[k]) for k in r[1:]))
    return len(groups), differing


def warn_duplicates(source: str, result: UniqueRows, prompts: Sequence[str], scores: np.ndarray) -> None:
    """One warning with the counts of dropped copies, relabelled ids and repeated prompts (nothing if none).

    Args:
        source: The file (or path pattern) named in the warning.
        result: What :func:`unique_rows` did.
        prompts: Prompt text per kept row.
        scores: Scores of the kept rows.
    """
    parts = []
    if result.copies:
        parts.append(f"dropped {result.copies} rows that exactly copy an earlier row (same id, prompt and outcomes)")
    if result.relabelled:
        parts.append(
            f"made {result.relabelled} repeated prompt ids unique by a '{ID_SUFFIX}N' suffix in file order "
            f"(first: {result.example})"
        )
    groups, differing = repeated_prompts(prompts, scores)
    if groups:
        parts.append(
            f"{groups} prompts occur on more than one row ({differing} of them with different scores): kept as "
            "separate rows; random splits keep all rows of a prompt in one split"
        )
    if parts:
        warnings.warn(f"{source}: " + "; ".join(parts), UserWarning, stacklevel=4)


__all__ = ["ID_SUFFIX", "UniqueRows", "repeated_prompts", "unique_rows", "warn_duplicates"]
