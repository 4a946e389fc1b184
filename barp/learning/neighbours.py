"""Nearest-neighbour search by cosine similarity: exact below a size, an inverted-file (IVF) index above it.

One interface for every neighbour search in barp (the neighbour critic, the shift guard, the kNN router):

    index = NeighbourIndex.build(keys, method="auto")   # keys (N, D); cosine similarity
    sims, idx = index.search(queries, k)                 # (Q, k) each, most similar first
    sims, idx = index.search(keys, k, exclude_self=True) # each key's k nearest OTHER keys

``method``:

- ``exact``: a chunked matmul and ``topk`` (``chunk`` query rows at a time: memory is chunk x N, linear in N); the
  time grows with N x Q (N^2 for the critic's neighbour lists of its own training prompts).
- ``approximate``: a torch IVF index. A seeded spherical k-means (``lists`` ~ sqrt(N) centroids, fitted on a sample
  of at most 64 keys per list) cuts the keys into lists; a query is compared with the keys of its ``probes`` nearest
  lists only (``max(12, ceil(sqrt(lists)) + 1)`` by default; one matmul per list over the queries that probe it):
  measured 6-8x the time per 4x keys against exact search's 15-16x, memory linear. Deterministic for a given seed
  and configuration (own generator; the global RNG is untouched).
- ``auto`` (the default): ``exact`` below ``threshold`` keys (:data:`EXACT_BELOW`), else ``approximate``.

Why a torch IVF and not FAISS: measured on this project's 2-core machine (one thread, 16k keys of dimension 384),
FAISS's IVF-Flat (``faiss-cpu`` 1.15, build + search of every key's neighbours) was slower than this index at equal
recall, whose per-list matmuls run through BLAS, and FAISS would be a new compiled dependency; on a GPU the same
torch code runs on the device. docs/performance.md ("Neighbour search") has the measured table and how
:data:`EXACT_BELOW` was picked.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from barp.errors import ConfigError

SearchMethod = Literal["auto", "exact", "approximate"]
METHODS: tuple[str, ...] = ("auto", "exact", "approximate")
#: ``auto`` searches exactly below this many keys (docs/performance.md, "Neighbour search"): below ~5k keys the index
#: is no faster; at 16k it was 2.4x faster at recall@10 0.948 (one thread), at 64k 5.1x at 0.871 on the stand-in
#: embeddings. 20,000 keeps the recipes' training sets (synthetic, development set) on exact search, seconds each.
EXACT_BELOW = 20_000


def default_probes(lists: int) -> int:
    """Lists probed per query by default: ``max(12, ceil(sqrt(lists)) + 1)`` (12 of 108 lists on the development
    set's 11,571 MiniLM embeddings: recall@10 0.968). Probing a fixed number lost recall as N grew (0.95 at 16k
    keys, 0.86 at 64k, 0.73 at 256k with 12 probes); growing them as sqrt(lists) recovers some (0.87 at 64k, 0.77 at
    256k on the stand-in embeddings, docs/performance.md) while the scanned share of the keys still falls as
    N^-0.25."""
    return max(12, math.ceil(math.sqrt(lists)) + 1)
#: k-means iterations of the coarse quantiser.
KMEANS_ITERATIONS = 10
#: At most this many keys per list train the coarse quantiser (a seeded sample).
SAMPLE_PER_LIST = 64


def check_method(method: object, option: str = "search") -> str:
    """``method`` if it is one of :data:`METHODS`, else one clear error naming ``option``."""
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"{option} must be one of {list(METHODS)}, got {method!r}")
    return method


def _positive_int(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")
    return value


class NeighbourIndex:
    """An index of L2-normalised keys answering cosine top-k queries, exactly or through IVF lists.

    Build it with :meth:`build`. Attributes: ``keys`` (N, D) normalised float32; ``method``: ``exact`` or
    ``approximate`` (what ``auto`` resolved to); for IVF, ``centroids`` (L, D), ``order`` (key ids sorted by list),
    ``bounds`` (L + 1 offsets of each list in ``order``), ``probes``.
    """

    def __init__(self, keys: torch.Tensor, method: str, centroids: torch.Tensor | None = None,
                 order: torch.Tensor | None = None, bounds: torch.Tensor | None = None, probes: int = 1) -> None:
        self.keys, self.method = keys, method
        self.centroids, self.order, self.bounds, self.probes = centroids, order, bounds, probes
        self._sorted: torch.Tensor | None = None

    @classmethod
    def build(cls, keys: torch.Tensor, method: str = "auto", threshold: int = EXACT_BELOW, seed: int = 0,
              lists: int | None = None, probes: int | None = None, option: str = "search",
              normalise: bool = True) -> NeighbourIndex:
        """Index ``keys`` (N, D) for cosine search.

        Args:
            keys: Key embeddings, shape (N, D) (normalised here).
            method: ``auto``, ``exact`` or ``approximate`` (module docstring).
            threshold: ``auto`` is exact below this many keys.
            seed: Seed of the coarse quantiser's sample and initial centroids (approximate only).
            lists: IVF lists (default ``round(sqrt(N))``, at most N).
            probes: Lists probed per query (default :func:`default_probes`, at most ``lists``).
            option: The configuration option named in errors (e.g. ``model.critic.search``).
            normalise: L2-normalise the keys; False: they already are (kept as they are, no copy).

        Raises:
            ConfigError: An unknown method or a bad threshold, lists or probes.
        """
        check_method(method, option)
        _positive_int(threshold, f"{option} threshold")
        if keys.ndim != 2:
            raise ConfigError(f"{option}: keys must be a (N, D) matrix, got shape {tuple(keys.shape)}")
        x = F.normalize(keys.float(), dim=-1) if normalise else keys.float()
        n = len(x)
        if method == "exact" or (method == "auto" and n < threshold) or n == 0:
            return cls(x, "exact")
        lists = _positive_int(lists, f"{option} lists") if lists is not None else max(1, round(math.sqrt(n)))
        lists = min(lists, n)
        probes = _positive_int(probes, f"{option} probes") if probes is not None else default_probes(lists)
        centroids = _spherical_kmeans(x, lists, seed)
        assign = _nearest_centroid(x, centroids)
        order = torch.argsort(assign, stable=True)
        bounds = torch.searchsorted(assign[order], torch.arange(lists + 1, device=x.device))
        return cls(x, "approximate", centroids, order, bounds, min(probes, lists))

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, queries: torch.Tensor, k: int, exclude_self: bool = False,
               chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` keys most cosine-similar to each query: ``(sims, idx)``, each (Q, k), most similar first.

        Args:
            queries: Query embeddings, shape (Q, D) (normalised here).
            k: Neighbours per query (1 <= k <= N, or N - 1 with ``exclude_self``).
            exclude_self: The queries are the keys, row for row: never return a query's own row.
            chunk: Query rows per block of the exact similarity matrix (memory chunk x N).
        """
        n = len(self.keys)
        most = n - 1 if exclude_self else n
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= most:
            raise ConfigError(f"neighbour search: k must be in [1, {most}], got {k!r}")
        if exclude_self and len(queries) != n:
            raise ConfigError(f"neighbour search: exclude_self needs the {n} keys as queries, got {len(queries)}")
        q = F.normalize(queries.float(), dim=-1).to(self.keys.device)
        if self.method == "exact":
            return self._exact(q, k, exclude_self, chunk)
        return self._ivf(q, k, exclude_self)

    def _exact(self, q: torch.Tensor, k: int, exclude_self: bool, chunk: int,
               rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunked matmul + topk; ``rows``: the query's own key row (exclude_self) when ``q`` is a subset."""
        sims = torch.empty(len(q), k, device=q.device)
        idx = torch.empty(len(q), k, dtype=torch.long, device=q.device)
        for start in range(0, len(q), chunk):
            sim = q[start:start + chunk] @ self.keys.T
            if exclude_self:
                block = torch.arange(len(sim), device=q.device)
                own = start + block if rows is None else rows[start:start + chunk]
                sim[block, own] = -float("inf")  # never the prompt itself
            top = sim.topk(k, dim=-1)
            sims[start:start + chunk], idx[start:start + chunk] = top.values, top.indices
            del sim  # one chunk x N block alive at a time: memory grows linearly in N
        return sims, idx

    def _ivf(self, q: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per list: the queries probing it against its keys; each query's k best over its probed lists."""
        assert self.centroids is not None and self.order is not None and self.bounds is not None
        nq, p, lists = len(q), self.probes, len(self.centroids)
        probe = (q @ self.centroids.T).topk(p, dim=-1).indices  # (Q, P)
        flat = probe.flatten()
        by_list = torch.argsort(flat, stable=True)
        qbounds = torch.searchsorted(flat[by_list], torch.arange(lists + 1, device=q.device)).tolist()
        kbounds = self.bounds.tolist()
        if self._sorted is None:  # the keys list by list, contiguous: each list's keys are a slice, not a gather
            self._sorted = self.keys[self.order]
        position = torch.empty_like(self.order)
        position[self.order] = torch.arange(len(self.order), device=q.device)  # key row -> row in _sorted
        part_sims = torch.full((nq, p, k), -float("inf"), device=q.device)
        part_idx = torch.full((nq, p, k), -1, dtype=torch.long, device=q.device)
        for lst in range(lists):
            lo, hi = kbounds[lst], kbounds[lst + 1]
            slots = by_list[qbounds[lst]:qbounds[lst + 1]]
            if hi == lo or len(slots) == 0:
                continue
            rows, col = slots // p, slots % p
            sim = q[rows] @ self._sorted[lo:hi].T
            if exclude_self:  # a query's own row lies in its own list only
                own = position[rows]
                inside = ((own >= lo) & (own < hi)).nonzero().flatten()
                sim[inside, own[inside] - lo] = -float("inf")
            kk = min(k, hi - lo)
            top = sim.topk(kk, dim=-1)
            part_sims[rows, col, :kk] = top.values
            part_idx[rows, col, :kk] = self.order[lo + top.indices]
        top = part_sims.view(nq, p * k).topk(k, dim=-1)
        sims, idx = top.values, part_idx.view(nq, p * k).gather(1, top.indices)
        short = torch.isinf(sims).any(dim=-1).nonzero().flatten()  # probed lists held fewer than k keys
        if len(short):
            sims[short], idx[short] = self._exact(q[short], k, exclude_self, 2048, rows=short)
        return sims, idx


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([(block @ centroids.T).argmax(dim=-1) for block in x.split(chunk)])


def _spherical_kmeans(x: torch.Tensor, lists: int, seed: int) -> torch.Tensor:
    """``lists`` unit centroids from a seeded sample of ``x`` (at most :data:`SAMPLE_PER_LIST` per list)."""
    generator = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(len(x), generator=generator)[:min(len(x), SAMPLE_PER_LIST * lists)].to(x.device)]
    centroids = sample[torch.randperm(len(sample), generator=generator)[:lists].to(x.device)].clone()
    for _ in range(KMEANS_ITERATIONS):
        assign = _nearest_centroid(sample, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        count = torch.bincount(assign, minlength=lists)
        centroids = torch.where(count[:, None] > 0, F.normalize(sums, dim=-1), centroids)  # an empty list keeps its
    return centroids                                                                    # centroid
