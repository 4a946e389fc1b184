"""Nearest-neighbour search by cosine similarity: exact below a size, an inverted-file (IVF) index above it.

One interface for every neighbour search in barp (the neighbour critic, the shift guard, the kNN router):

    index = NeighbourIndex.build(keys, method="auto")   # keys (N, D); cosine similarity
    sims, idx = index.search(queries, k)                 # (Q, k) each, most similar first
    sims, idx = index.search(keys, k, exclude_self=True) # each key's k nearest OTHER keys

``method``:

- ``exact``: a chunked matmul and ``topk`` (``chunk`` query rows at a time: memory is chunk x N, linear in N); the
  time grows with N x Q (N^2 for the critic's neighbour lists of its own training prompts).
- ``approximate``: a torch IVF index. A seeded spherical k-means (``round(1.4 sqrt(N))`` lists: two Lloyd steps on
  a sample of 16 keys per list, then two on every key) files each key in its nearest list; a query scans the keys of
  its ``probes`` nearest lists (``max(7, ceil(0.45 sqrt(lists)))``, more for k > 10: :meth:`NeighbourIndex.probes_for`)
  in two passes. Pass 1: the queries grouped by their nearest list, one matmul per list: a provisional top k, whose
  k-th similarity is the query's bar. Pass 2: the other probed lists, one matmul per list over the queries probing
  it, keeping only similarities above the query's bar (a few per query). One integer sort then picks each query's k
  best. A self-search (``exclude_self``) also adds the reverse pairs: when pass 2 finds j for i above j's own bar, i
  is a candidate of j, at no cost in similarities (it lifts recall where j did not probe i's list). Deterministic
  for a given seed and configuration (own generator; the global RNG is untouched).
- ``auto`` (the default): ``exact`` below ``threshold`` keys (:data:`EXACT_BELOW`), else ``approximate``.

Why a torch IVF and not FAISS: measured on this project's 2-core machine (one thread, 16k keys of dimension 384),
FAISS's IVF-Flat (``faiss-cpu`` 1.15, build + search of every key's neighbours) was slower than the first version of
this index at equal recall, and this version is about twice as fast again; FAISS would also be a new compiled
dependency. On a GPU the same torch code runs on the device. docs/performance.md ("Neighbour search") has the
measured tables and how :data:`EXACT_BELOW` was picked.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from barp.errors import ConfigError

SearchMethod = Literal["auto", "exact", "approximate"]
METHODS: tuple[str, ...] = ("auto", "exact", "approximate")
#: ``auto`` searches exactly below this many keys (docs/performance.md, "Neighbour search"). On the stand-in
#: embeddings the index was 5.3x faster than exact search at 16k keys for k = 10 (recall@10 >= 0.958 over three index
#: seeds) but 1.5x for the critic's k = 40 (recall@40 0.94); 20,000 keeps the recipes' training sets (synthetic,
#: development set) on exact search, seconds each.
EXACT_BELOW = 20_000
#: IVF lists by default: ``round(LISTS_PER_SQRT_KEY * sqrt(N))`` (:func:`default_lists`).
LISTS_PER_SQRT_KEY = 1.4
#: Lists probed per query by default, for k <= :data:`PROBES_AT_K` (:func:`default_probes`, :meth:`probes_for`).
PROBES_AT_LEAST = 7
PROBES_PER_SQRT_LIST = 0.45
PROBES_AT_K = 10
#: k-means iterations of the coarse quantiser on a sample of the keys, then on every key (the full steps lifted
#: recall@10 at 16k stand-in keys from 0.92-0.95 to 0.96-0.97 across seeds, for about 50 ms).
KMEANS_ITERATIONS = 2
FULL_ITERATIONS = 2
#: At most this many keys per list train the coarse quantiser (a seeded sample).
SAMPLE_PER_LIST = 16
#: Queries searched at a time through the lists (the candidates of one block are in memory at once).
QUERY_CHUNK = 65536
#: A self-search adds the reverse pairs (False: measurement only, tests/learning/test_neighbours.py).
REVERSE_PAIRS = True
#: A self-search keeps each key's ``REVERSE_WIDTH * k`` best candidates before adding the reverse pairs.
REVERSE_WIDTH = 3


def default_lists(n: int) -> int:
    """IVF lists for ``n`` keys by default: ``round(LISTS_PER_SQRT_KEY * sqrt(n))``, at least 1."""
    return max(1, round(LISTS_PER_SQRT_KEY * math.sqrt(n)))


def default_probes(lists: int) -> int:
    """Lists probed per query by default (k <= 10): ``max(7, ceil(0.45 sqrt(lists)))``: 7 of 177 lists at 16k keys
    (recall@10 0.958-0.965 over index seeds, stand-in embeddings), 9 of 354 at 64k (0.90-0.91), 12 of 708 at 256k
    (0.83); growing them as sqrt(lists) keeps the time near N^1.5 while the scanned share of the keys falls as
    N^-0.25 (docs/performance.md, "Neighbour search")."""
    return max(PROBES_AT_LEAST, math.ceil(PROBES_PER_SQRT_LIST * math.sqrt(lists)))


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
        self._key_probes: torch.Tensor | None = None
        self.grow_probes = False  # True: probes were defaulted and grow with k (:meth:`probes_for`)
        self._position: torch.Tensor | None = None

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
        lists = _positive_int(lists, f"{option} lists") if lists is not None else default_lists(n)
        lists = min(lists, n)
        grow = probes is None
        probes = _positive_int(probes, f"{option} probes") if probes is not None else default_probes(lists)
        probes = min(probes, lists)
        centroids = _spherical_kmeans(x, lists, seed)
        key_probes = _nearest_centroids(x, centroids, probes)  # column 0: each key's own list
        order = torch.argsort(key_probes[:, 0], stable=True)
        bounds = torch.searchsorted(key_probes[order, 0], torch.arange(lists + 1, device=x.device))
        index = cls(x, "approximate", centroids, order, bounds, probes)
        index._key_probes = key_probes  # a self-search probes these lists: the same product, computed once
        index.grow_probes = grow
        return index

    def probes_for(self, k: int) -> int:
        """Lists probed per query for ``k`` neighbours: ``probes``, and with defaulted probes
        ``ceil(probes * sqrt(k / 10))`` above k = 10 (further neighbours lie in more lists: on the development set's
        MiniLM embeddings, recall@40 at the k = 10 probes was 0.03-0.04 below recall@10)."""
        assert self.centroids is not None
        if not self.grow_probes or k <= PROBES_AT_K:
            return self.probes
        return min(len(self.centroids), math.ceil(self.probes * math.sqrt(k / PROBES_AT_K)))

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
        # exclude_self: the queries are the keys, row for row (normalised once, at build)
        q = self.keys if exclude_self else F.normalize(queries.float(), dim=-1).to(self.keys.device)
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
        """Two passes over the probed lists, then (for a self-search) the reverse pairs; see the module docstring."""
        assert self.centroids is not None and self.order is not None and self.bounds is not None
        if self._sorted is None:  # the keys list by list, contiguous: each list's keys are a slice, not a gather
            self._sorted = self.keys[self.order]
        n = len(self.keys)
        if self._position is None:
            self._position = torch.empty_like(self.order)
            self._position[self.order] = torch.arange(n, device=q.device)  # key row -> its row in _sorted
        position = self._position
        p = self.probes_for(k)
        key_probes = self._key_probes
        if exclude_self and (key_probes is None or key_probes.shape[1] < p):
            key_probes = self._key_probes = _nearest_centroids(self.keys, self.centroids, p)  # more lists, larger k
        chunks = range(0, len(q), QUERY_CHUNK)  # bounded memory: a few dozen candidates per query of a chunk
        cand: list[tuple[torch.Tensor, ...]] = []
        bars = torch.empty(len(q), device=q.device)
        for start in chunks:
            rows = torch.arange(start, min(start + QUERY_CHUNK, len(q)), device=q.device)
            probe = key_probes[rows, :p] if exclude_self and key_probes is not None else None
            qid, key, sim, other, bars[rows] = self._probe_pass(q[rows], k, p, position[rows] if exclude_self else None,
                                                                probe)
            if len(chunks) > 1:  # keep each query's best few: what the reverse pairs below need
                top_s, top_i = _top_per_query(qid, key, sim, len(rows), min(REVERSE_WIDTH * k, n), distinct=False)
                kept = torch.isfinite(top_s)
                qid = torch.arange(len(rows), device=q.device)[:, None].expand_as(top_i)[kept]
                key, sim, other = top_i[kept], top_s[kept], torch.ones_like(top_s, dtype=torch.bool)[kept]
            cand.append((rows[qid], key, sim, other))
        qid, key, sim, other = (torch.cat(parts) for parts in zip(*cand))
        if exclude_self and REVERSE_PAIRS:  # i is a candidate of j when j is one of i's, above j's own bar
            back = self.order[key]  # the candidate's key row: the query it is, here
            turn = (other & (sim > bars[back])).nonzero().flatten()  # pairs in one list: j has seen i already
            qid, key, sim = (torch.cat([qid, back[turn]]), torch.cat([key, position[qid[turn]]]),
                             torch.cat([sim, sim[turn]]))
        sims, idx = _top_per_query(qid, key, sim, len(q), k, distinct=exclude_self)  # idx: rows of _sorted
        found = idx >= 0
        idx = torch.where(found, self.order[idx.clamp(min=0)], -1)
        short = (~found).any(dim=-1).nonzero().flatten()  # the probed lists held fewer than k keys
        if len(short):
            sims[short], idx[short] = self._exact(q[short], k, exclude_self, 2048, rows=short)
        return sims, idx

    def _probe_pass(self, q: torch.Tensor, k: int, p: int, own: torch.Tensor | None,
                    probe: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Each query's ``k`` best keys (rows of ``_sorted``, -1 where fewer) over its ``probes`` nearest lists.

        Pass 1: each query against its nearest list, the queries grouped by that list (contiguous slices, one matmul
        per list): a provisional top k whose k-th similarity is the query's bar. Pass 2: the other probed lists, one
        matmul per list over the queries probing it; only similarities above the query's bar are kept (a few per
        query), then one sort picks each query's k best. ``own``: the query's own row in ``_sorted`` (never returned).
        """
        assert self.centroids is not None and self._sorted is not None and self.bounds is not None
        assert self.order is not None
        nq, lists = len(q), len(self.centroids)
        kbounds = self.bounds.tolist()
        own_first = probe is not None  # the keys' own probes: column 0 is the list each key is filed in
        if probe is None:
            probe = _nearest_centroids(q, self.centroids, p)  # (Q, P), nearest first
        whole = own_first and nq == len(self.keys)  # every key at once: the queries in _sorted's order are _sorted
        qorder = self.order if whole else torch.argsort(probe[:, 0], stable=True)
        qbounds = kbounds if whole else torch.searchsorted(
            probe[qorder, 0], torch.arange(lists + 1, device=q.device)).tolist()
        qs = self._sorted if whole else q[qorder]
        mine = None if whole or own is None else own[qorder]  # whole: the diagonal and own_first cover it
        first_s = torch.full((nq, k), -float("inf"), device=q.device)
        first_i = torch.full((nq, k), -1, dtype=torch.long, device=q.device)
        for lst in range(lists):  # pass 1
            lo, hi, qlo, qhi = kbounds[lst], kbounds[lst + 1], qbounds[lst], qbounds[lst + 1]
            if hi == lo or qhi == qlo:
                continue
            sim = qs[qlo:qhi] @ self._sorted[lo:hi].T
            if whole:  # the list against itself: each key's own place is the diagonal
                sim.fill_diagonal_(-float("inf"))
            elif mine is not None:
                _mask_own(sim, mine[qlo:qhi], lo, hi)
            kk = min(k, hi - lo)
            top = sim.topk(kk, dim=-1)
            first_s[qlo:qhi, :kk], first_i[qlo:qhi, :kk] = top.values, lo + top.indices
        bar = first_s[:, k - 1]  # -inf where the nearest list held fewer than k keys: everything passes
        cand_q, cand_i, cand_s = [], [], []
        if p > 1:  # pass 2
            rest = probe[qorder, 1:].flatten()
            by_list = torch.argsort(rest, stable=True)
            rbounds = torch.searchsorted(rest[by_list], torch.arange(lists + 1, device=q.device)).tolist()
            for lst in range(lists):
                lo, hi = kbounds[lst], kbounds[lst + 1]
                slots = by_list[rbounds[lst]:rbounds[lst + 1]]
                if hi == lo or len(slots) == 0:
                    continue
                rows = slots // (p - 1)
                sim = qs[rows] @ self._sorted[lo:hi].T
                if mine is not None and not own_first:  # a key's own list is its nearest: pass 1 masked it
                    _mask_own(sim, mine[rows], lo, hi)
                r, c = (sim > bar[rows, None]).nonzero(as_tuple=True)
                cand_q.append(rows[r])
                cand_i.append(lo + c)
                cand_s.append(sim[r, c])
        valid = torch.isfinite(first_s)  # not a padding place, nor the query's own key
        qid = qorder[:, None].expand(-1, k)[valid]  # back to the caller's query order
        second = torch.cat([torch.zeros(int(valid.sum()), dtype=torch.bool, device=q.device),
                            torch.ones(sum(len(r) for r in cand_q), dtype=torch.bool, device=q.device)])
        bar_out = torch.empty_like(bar)
        bar_out[qorder] = bar
        return (torch.cat([qid, *(qorder[r] for r in cand_q)]), torch.cat([first_i[valid], *cand_i]),
                torch.cat([first_s[valid], *cand_s]), second, bar_out)


def _mask_own(sim: torch.Tensor, own: torch.Tensor, lo: int, hi: int) -> None:
    """-inf at each query's own key (``own``: rows of ``_sorted``) where it lies in the list ``[lo, hi)``."""
    inside = ((own >= lo) & (own < hi)).nonzero().flatten()
    sim[inside, own[inside] - lo] = -float("inf")


def _top_per_query(qid: torch.Tensor, key: torch.Tensor, sim: torch.Tensor, nq: int, k: int,
                   distinct: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query id in ``0..nq-1``: the ``k`` candidates ``(sim, key)`` of highest ``sim``, most similar first,
    padded with ``(-inf, -1)``. One integer sort by (query, similarity); ``distinct``: a key listed twice for a query
    (a pair found from both ends) counts once."""
    rank_key = ((1.0 - sim) * (1 << 30)).long()  # similarity in [-1, 1] -> [0, 2^31], descending order
    packed, order = torch.sort(qid * (1 << 32) + rank_key)
    qid = packed >> 32
    width = 2 * k if distinct else k  # a pair found twice takes two places before the duplicates are dropped
    start = torch.searchsorted(qid, torch.arange(nq, device=qid.device))
    rank = torch.arange(len(qid), device=qid.device) - start[qid]
    keep = (rank < width).nonzero().flatten()
    place = qid[keep] * width + rank[keep]
    top_s = torch.full((nq * width,), -float("inf"), device=sim.device)
    top_i = torch.full((nq * width,), -1, dtype=torch.long, device=sim.device)
    top_s[place], top_i[place] = sim[order[keep]], key[order[keep]]
    top_s, top_i = top_s.view(nq, width), top_i.view(nq, width)
    if distinct:
        by_key, perm = top_i.sort(dim=-1)
        again = torch.zeros_like(by_key, dtype=torch.bool)
        again[:, 1:] = (by_key[:, 1:] == by_key[:, :-1]) & (by_key[:, 1:] >= 0)
        top_s = top_s.scatter(1, perm, top_s.gather(1, perm).masked_fill(again, -float("inf")))
        best = top_s.topk(k, dim=-1)
        top_s, top_i = best.values, torch.where(torch.isinf(best.values), -1, top_i.gather(1, best.indices))
    return top_s, top_i


def _nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([(block @ centroids.T).max(dim=-1).indices for block in x.split(chunk)])


def _nearest_centroids(x: torch.Tensor, centroids: torch.Tensor, p: int, chunk: int = 65536) -> torch.Tensor:
    """Each row's ``p`` most similar centroids, nearest first: (N, p)."""
    return torch.cat([(block @ centroids.T).topk(p, dim=-1).indices for block in x.split(chunk)])


def _spherical_kmeans(x: torch.Tensor, lists: int, seed: int) -> torch.Tensor:
    """``lists`` unit centroids: :data:`KMEANS_ITERATIONS` Lloyd steps on a seeded sample of ``x`` (at most
    :data:`SAMPLE_PER_LIST` keys per list), then :data:`FULL_ITERATIONS` on every key."""
    generator = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(len(x), generator=generator)[:min(len(x), SAMPLE_PER_LIST * lists)].to(x.device)]
    centroids = sample[torch.randperm(len(sample), generator=generator)[:lists].to(x.device)].clone()
    for step in range(KMEANS_ITERATIONS + FULL_ITERATIONS):
        points = sample if step < KMEANS_ITERATIONS else x
        assign = _nearest_centroid(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        count = torch.bincount(assign, minlength=lists)
        centroids = torch.where(count[:, None] > 0, F.normalize(sums, dim=-1), centroids)  # an empty list keeps its
    return centroids                                                                    # centroid
