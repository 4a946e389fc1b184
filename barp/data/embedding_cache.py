"""On-disk cache of frozen-encoder embeddings, keyed by encoder identity, max length, truncation side and text.

The encoder is frozen, so each prompt is embedded once. One folder per encoder setting holds shards
(``shard-*.npz``: text keys and vectors); a run embeds only texts no shard holds, ``chunk_size`` texts at a time,
and adds one shard per chunk, written to a temporary name and renamed: an interrupted run keeps every finished
chunk and never leaves a broken shard. A shard damaged anyway (a truncated copy, a full disk) is reported by name,
set aside as ``*.damaged`` and its texts are embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from barp.atomic import atomic_path

#: Texts embedded per shard: an interrupted run loses at most this many texts' work.
CHUNK_SIZE = 1024


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
        dim = None
        for shard in sorted(self.folder.glob("shard-*.npz")):
            keys, vectors = self._read_shard(shard, dim)
            if keys is None:
                continue
            dim = vectors.shape[1]
            for k, v in zip(keys, vectors):
                store[k.tobytes()] = v
        return store

    @staticmethod
    def _read_shard(shard: Path, dim: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A shard's keys and vectors; a damaged shard is reported, renamed ``*.damaged`` and skipped."""
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
            problem = None
            if keys.ndim != 2 or keys.shape[1] != 20 or keys.dtype != np.uint8:
                problem = f"keys of shape {keys.shape}"
            elif vectors.ndim != 2 or len(vectors) != len(keys) or (dim is not None and vectors.shape[1] != dim):
                problem = f"vectors of shape {vectors.shape} for {len(keys)} keys"
            elif not np.isfinite(vectors).all():
                problem = "non-finite vectors"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            problem = f"{type(err).__name__}: {err}"
        if problem is None:
            return keys, vectors
        warnings.warn(f"embedding cache: shard {shard} is damaged ({problem}); set aside as "
                      f"{shard.name}.damaged, its prompts are embedded again", stacklevel=3)
        try:
            os.replace(shard, shard.with_name(shard.name + ".damaged"))
        except OSError:
            pass  # a read-only cache: skipped again next time
        return None, None

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "setting.json"
        if not meta.exists():
            meta.write_text(json.dumps(self.setting, indent=2))
        digest = hashlib.sha1(b"".join(keys)).hexdigest()[:16]
        final = self.folder / f"shard-{digest}.npz"
        with atomic_path(final) as tmp, open(tmp, "wb") as fh:
            # raw 20-byte keys as uint8 rows ("S20" would drop trailing zero bytes)
            keys_u8 = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 20)
            np.savez(fh, keys=keys_u8, vectors=vectors.astype(np.float32))
        return final

    def get_or_compute(
        self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray], chunk_size: int = CHUNK_SIZE
    ) -> tuple[np.ndarray, int]:
        """Return embeddings for ``texts`` in order, computing only the ones not cached.

        Args:
            texts: The texts to embed.
            compute: Called with the missing unique texts, ``chunk_size`` at a time; returns their vectors. Each
                chunk is saved as a shard as soon as it is computed.
            chunk_size: Texts per call of ``compute`` (and per shard).

        Returns:
            The (len(texts), dim) float32 array and the number of texts that had to be computed.
        """
        store = self._load()
        keys = [text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts):
            if k not in store and k not in missing:
                missing[k] = t
        pending = list(missing.items())
        for start in range(0, len(pending), max(int(chunk_size), 1)):
            chunk = pending[start:start + max(int(chunk_size), 1)]
            vectors = np.asarray(compute([t for _, t in chunk]), dtype=np.float32)
            self._write_shard([k for k, _ in chunk], vectors)
            store.update(zip((k for k, _ in chunk), vectors))
        return np.stack([store[k] for k in keys]).astype(np.float32), len(missing)
