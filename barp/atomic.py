"""Atomic file writes: write under a temporary name in the target's folder, then rename over the target.

A reader (or a run that was killed mid-write) sees either the old file or the complete new one, never a part.
Every file barp writes for a user (results, sweeps, plots, canonical parquet, logs, cache shards) goes through here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path next to ``path``; on a clean exit rename it to ``path``, else delete it.

    Args:
        path: The file to write (its folder is created).
        suffix: Suffix of the temporary name (e.g. ``.tmp.png`` when a writer infers the format from it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)
