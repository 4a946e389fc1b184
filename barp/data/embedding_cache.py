"""On-disk cache of frozen-encoder embeddings, keyed by encoder identity, max length, truncation side and text.

The encoder is frozen, so each prompt is embedded once. One folder per encoder setting holds shards
(``shard-*.npz``: text keys and vectors); a run embeds only texts no shard holds, ``chunk_size`` texts at a time,
and adds one shard per chunk, written to a temporary name and renamed: an interrupted run keeps every finished
chunk and never leaves a broken shard. A shard damaged anyway (a truncated copy, a full disk) is reported by name,
set aside as ``*.damaged`` and its texts are embedded again.

Several processes may fill one cache at once. Shards are named by the hash of their text keys and only ever appear
by an atomic rename, so two runs embedding the same texts write the same shard names and the last rename wins with an
equally valid file; a reader that finds a shard gone (merged away by another run) reads the folder again. Under DDP
(``group``, see :class:`DistributedGroup`), on one machine or several, the texts missing from any process's cache
are shared among all processes of all nodes: each embeds its share into its own part shards
(``shard-*-r<rank>.npz``); the processes then exchange their vectors, and for each cache folder one process (the
lowest-ranked node leader that sees it: once per node on local disks, once in all on a shared file system) writes the
shards a single process would have written there; each process then removes its parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barp.atomic import atomic_path, atomic_write_text
from barp.paths import cache_root

log = logging.getLogger("barp.encoders.cache")

#: Texts embedded per shard: an interrupted run loses at most this many texts' work.
CHUNK_SIZE = 1024


def default_cache_dir() -> Path:
    """``$BARP_CACHE`` if set, else ``~/.cache/barp``."""
    return cache_root()


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
        done: set[Path] = set()
        for _ in range(100):  # another process may merge shards away meanwhile: read the folder again
            vanished = False
            for shard in sorted(set(self.folder.glob("shard-*.npz")) - done):
                done.add(shard)
                try:
                    read = self._read_shard(shard, dim)
                except FileNotFoundError:
                    vanished = True
                    continue
                if read is None:
                    continue
                keys, vectors = read
                dim = vectors.shape[1]
                for k, v in zip(keys, vectors):
                    store[k.tobytes()] = v
            if not vanished:
                break
        return store

    @staticmethod
    def _read_shard(shard: Path, dim: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """A shard's keys and vectors; a damaged shard is reported, renamed ``*.damaged`` and skipped (None).

        Raises:
            FileNotFoundError: The shard is gone (another process merged it away).
        """
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
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            problem = f"{type(err).__name__}: {err}"
        if problem is None:
            return keys, vectors
        warnings.warn(f"embedding cache: shard {shard} is damaged ({problem}); set aside as "
                      f"{shard.name}.damaged, its prompts are embedded again", stacklevel=3)
        with contextlib.suppress(OSError):  # a read-only cache: skipped again next time
            os.replace(shard, shard.with_name(shard.name + ".damaged"))
        return None

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray, tag: str = "") -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "setting.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(self.setting, indent=2))
        digest = hashlib.sha1(b"".join(keys)).hexdigest()[:16]
        final = self.folder / f"shard-{digest}{tag}.npz"
        with atomic_path(final) as tmp, open(tmp, "wb") as fh:
            # raw 20-byte keys as uint8 rows ("S20" would drop trailing zero bytes)
            keys_u8 = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 20)
            np.savez(fh, keys=keys_u8, vectors=vectors.astype(np.float32))
        return final

    @staticmethod
    def _missing(keys: list[bytes], store: dict[bytes, np.ndarray]) -> list[int]:
        """Index of the first occurrence of each key not in ``store``, in order."""
        seen: set[bytes] = set()
        out = []
        for i, k in enumerate(keys):
            if k not in store and k not in seen:
                seen.add(k)
                out.append(i)
        return out

    def _compute(self, pending: list[tuple[bytes, str]], compute: Callable[[list[str]], np.ndarray],
                 chunk_size: int, tag: str = "") -> tuple[dict[bytes, np.ndarray], list[Path]]:
        """Embed ``pending`` (key, text) pairs ``chunk_size`` at a time, saving each chunk as a shard at once."""
        step = max(int(chunk_size), 1)
        out: dict[bytes, np.ndarray] = {}
        written = []
        for start in range(0, len(pending), step):
            chunk = pending[start:start + step]
            vectors = np.asarray(compute([t for _, t in chunk]), dtype=np.float32)
            written.append(self._write_shard([k for k, _ in chunk], vectors, tag))
            out.update(zip((k for k, _ in chunk), vectors))
        return out, written

    def get_or_compute(
        self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray], chunk_size: int = CHUNK_SIZE,
        group: DistributedGroup | None = None,
    ) -> tuple[np.ndarray, int]:
        """Return embeddings for ``texts`` in order, computing only the ones not cached.

        Args:
            texts: The texts to embed.
            compute: Called with the missing unique texts, ``chunk_size`` at a time; returns their vectors. Each
                chunk is saved as a shard as soon as it is computed.
            chunk_size: Texts per call of ``compute`` (and per shard).
            group: The processes of a distributed run, which then share the missing texts (every process calls
                this with the same texts); None (or a group of one) computes them all here.

        Returns:
            The (len(texts), dim) float32 array and the number of texts that had to be computed (by all processes).
        """
        store = self._load()
        keys = [text_key(t) for t in texts]
        if group is None or group.world_size <= 1:
            missing = self._missing(keys, store)
            computed, _ = self._compute([(keys[i], texts[i]) for i in missing], compute, chunk_size)
            store.update(computed)
            return np.stack([store[k] for k in keys]).astype(np.float32), len(missing)
        # Each node may have its own cache (local disks), so the processes' views may differ: a text cached by no
        # process is embedded once, by one process of all; one cached somewhere but missing elsewhere is sent by
        # the lowest rank that has it. The token (rank 0's) names this fill's writer marks.
        views = group.all_gather((self._missing(keys, store), secrets.token_hex(8)))
        lacking = [set(v) for v, _ in views]
        mine, token = views[group.rank][0], views[0][1]
        missing = sorted(set().union(*lacking))  # first-occurrence indices: in order
        nowhere = [i for i in missing if all(i in v for v in lacking)]
        if missing:
            mark = self._mark(token, group.rank) if group.local_leader else None
            share = [(keys[i], texts[i]) for i in nowhere[group.rank::group.world_size]]
            log.info("embedding cache: process %d of %d embeds %d of the %d uncached prompts", group.rank,
                     group.world_size, len(share), len(nowhere))
            computed, parts = self._compute(share, compute, chunk_size, tag=f"-r{group.rank}")
            computed.update((keys[i], store[keys[i]]) for i in missing  # cached here, first here, lacking elsewhere
                            if i not in lacking[group.rank] and all(i in v for v in lacking[:group.rank]))
            blob = (b"".join(computed), np.stack(list(computed.values())) if computed else None)
            for joined, vectors in group.all_gather(blob):  # after this, every leader has left its mark
                if vectors is not None:
                    store.update(zip((joined[j:j + 20] for j in range(0, len(joined), 20)), vectors))
            if mark is not None and self._writer(token) == mark:
                # the shards one process would have written into this folder (its own view), in its order
                ordered = [keys[i] for i in mine]
                step = max(int(chunk_size), 1)
                for start in range(0, len(ordered), step):
                    chunk = ordered[start:start + step]
                    self._write_shard(chunk, np.stack([store[k] for k in chunk]))
            group.barrier()
            for part in parts:
                part.unlink(missing_ok=True)
            if mark is not None:
                mark.unlink(missing_ok=True)
        # every text was either in this process's view or missing from it (then embedded and exchanged)
        return np.stack([store[k] for k in keys]).astype(np.float32), len(nowhere)

    def _mark(self, token: str, rank: int) -> Path:
        """Leave a node leader's mark for fill ``token`` in this folder (see :meth:`_writer`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        mark = self.folder / f".writer-{token}-r{rank}"
        mark.touch()
        return mark

    def _writer(self, token: str) -> Path | None:
        """The mark of the lowest-ranked node leader whose mark this folder holds: the one process that writes it
        (leaders on one shared file system see each other's marks; leaders on local disks see only their own)."""
        marks = list(self.folder.glob(f".writer-{token}-r*"))
        return min(marks, key=lambda m: int(m.name.rsplit("-r", 1)[1]), default=None)


class DistributedGroup:
    """The processes of an initialised ``torch.distributed`` run, as :meth:`EmbeddingCache.get_or_compute` uses them.

    Args:
        local_rank: This process's rank on its node (the node's leader, local rank 0, writes the node's cache unless
            a lower-ranked leader shares its file system). ``rank`` and ``world_size`` are global: all processes of
            all nodes.
    """

    def __init__(self, local_rank: int | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.local_leader = local_rank == 0

    @staticmethod
    def current(local_rank: int | None = None) -> DistributedGroup | None:
        """The group of the running distributed job, or None when ``torch.distributed`` is not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return None
        return DistributedGroup(local_rank)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process."""
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait for every process."""
        self._dist.barrier()
