"""Where barp keeps what it caches (embeddings, hub downloads, encoder probes), and the hash of a file's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$BARP_CACHE`` if set, else ``~/.cache/barp``."""
    return Path(cache_dir or os.environ.get("BARP_CACHE") or Path.home() / ".cache" / "barp").expanduser()


def update_with_file(digest: hashlib._Hash, path: str | os.PathLike) -> None:
    """Feed a file's bytes to ``digest``, 1 MiB at a time (memory does not grow with the file)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
