"""On-disk cache of frozen-encoder embeddings, keyed by encoder identity, max length, truncation side and text.

The encoder is frozen, so each prompt is embedded once. One folder per encoder setting holds shards
(``shard-*.npz``: text keys and vectors); a run embeds only texts no shard holds and adds one shard,
written to a temporary name and renamed, so an interrupted run never leaves a broken cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    """``$BARP_CACHE`` if set, else ``~/.cache/barp``."""
    return Path(os.environ.get("BARP_CACHE", Path.home() / ".cache" / "barp")).expanduser()


def text_key(text: str) -> bytes:
    """20-byte SHA-1 digest of a text (the per-text cache key)."""
    return hashlib.sha1(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Embeddings for one encoder setting, stored as shards under ``root/<setting hash>/``.

    Args:
        root: Cache root folder.
        identity: Encoder identity (name and weights fingerprint).
        max_length: Encoder max tokens.
        truncation_side: Encoder truncation side.
        dtype: Encoder compute dtype.
    """

    def __init__(self, root: str | Path, identity: str, max_length: int, truncation_side: str, dtype: str) -> None:
        self.setting = {
            "encoder": identity,
            "max_length": max_length,
            "truncation_side": truncation_side,
            "dtype": dtype,
        }
        blob = json.dumps(self.setting, sort_keys=True).encode()
        self.folder = Path(root).expanduser() / hashlib.sha256(blob).hexdigest()[:16]

    def _load(self) -> dict[bytes, np.ndarray]:
        store: dict[bytes, np.ndarray] = {}
        if not self.folder.is_dir():
            return store
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as data:
                keys, vectors = data["keys"], data["vectors"]
            for k, v in zip(keys, vectors):
                store[k.tobytes()] = v
        return store

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "setting.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.setting, indent=2))
        digest = hashlib.sha1(b"".join(keys)).hexdigest()[:16]
        final = self.folder / f"shard-{digest}.npz"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".shard-", suffix=".npz")
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                # raw 20-byte keys as uint8 rows ("S20" would drop trailing zero bytes)
                keys_u8 = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 20)
                np.savez(fh, keys=keys_u8, vectors=vectors.astype(np.float32))
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def get_or_compute(
        self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]
    ) -> tuple[np.ndarray, int]:
        """Return embeddings for ``texts`` in order, computing only the ones not cached.

        Args:
            texts: The texts to embed.
            compute: Called once with the list of missing unique texts; returns their vectors.

        Returns:
            The (len(texts), dim) float32 array and the number of texts that had to be computed.
        """
        store = self._load()
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts):
            if k not in store and k not in missing:
                missing[k] = t
        if missing:
            vectors = np.asarray(compute(list(missing.values())), dtype=np.float32)
            self._write_shard(list(missing.keys()), vectors)
            store.update(zip(missing.keys(), vectors))
        return np.stack([store[k] for k in keys]).astype(np.float32), len(missing)
