"""Where barp keeps what it caches (embeddings, hub downloads, encoder probes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$BARP_CACHE`` if set, else ``~/.cache/barp``."""
    return Path(cache_dir or os.environ.get("BARP_CACHE") or Path.home() / ".cache" / "barp").expanduser()
