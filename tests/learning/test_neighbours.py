"""barp.learning.neighbours: exact search as before, an IVF index above the threshold with recall@10 >= 0.95."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import barp.learning.neighbours as neighbours
from barp.errors import ConfigError
from barp.learning.critic import NeighbourCritic, nearest_neighbours
from barp.learning.neighbours import EXACT_BELOW, NeighbourIndex, _top_per_query, default_lists
from barp.learning.strategies import Neighbours


def old_nearest_neighbours(emb: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """barp.learning.critic.nearest_neighbours as it was before NeighbourIndex (commit b4117e9), verbatim."""
    n = len(emb)
    x = F.normalize(emb.float(), dim=-1)
    out = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, chunk):
        sim = x[start:start + chunk] @ x.T
        block = torch.arange(len(sim))
        sim[block, start + block] = -float("inf")
        out[start:start + chunk] = sim.topk(k, dim=-1).indices
        del sim
    return out


def clustered(n: int, dim: int = 32, clusters: int = 60, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Seeded unit vectors around ``clusters`` random centres: embeddings have structure; uniform random vectors in
    high dimension have none (their nearest neighbour is barely nearer than any other), where no index beats a scan."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    x = centres[torch.randint(clusters, (n,), generator=g)] + noise * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=-1)


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())) / truth.numel()


def test_exact_path_is_the_old_function_row_for_row():
    emb = torch.randn(301, 16, generator=torch.Generator().manual_seed(1))
    for chunk in (2048, 64):  # one block; several, the last partial
        assert torch.equal(nearest_neighbours(emb, 7, chunk=chunk), old_nearest_neighbours(emb, 7, chunk=chunk))
    sims, idx = NeighbourIndex.build(emb, "exact").search(emb, 7, exclude_self=True)
    assert torch.equal(idx, old_nearest_neighbours(emb, 7))
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # most similar first


def test_approximate_recall_at_10_against_exact():
    keys = clustered(3000)
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 10, exclude_self=True)
    index = NeighbourIndex.build(keys, "approximate", seed=0)
    assert index.method == "approximate" and index.centroids is not None
    assert len(index.centroids) == default_lists(3000) == 77  # 1.4 sqrt(N)
    sims, found = index.search(keys, 10, exclude_self=True)
    assert recall(found, truth) >= 0.95
    assert not (found == torch.arange(3000)[:, None]).any()  # never the prompt itself
    assert (found >= 0).all() and (sims[:, :-1] >= sims[:, 1:]).all()
    # outside queries too (no reverse pairs for them: lower recall at the same probes, docs/performance.md)
    queries = clustered(200, seed=5)
    _, truth_q = NeighbourIndex.build(keys, "exact").search(queries, 10)
    assert recall(index.search(queries, 10)[1], truth_q) >= 0.9
    assert recall(NeighbourIndex.build(keys, "approximate", probes=20).search(queries, 10)[1], truth_q) >= 0.95


def test_approximate_index_is_deterministic_per_seed():
    keys = clustered(1500, clusters=30)
    a = NeighbourIndex.build(keys, "approximate", seed=3, probes=2).search(keys, 10, exclude_self=True)[1]
    b = NeighbourIndex.build(keys, "approximate", seed=3, probes=2).search(keys, 10, exclude_self=True)[1]
    assert torch.equal(a, b)
    torch.manual_seed(123)  # the global RNG plays no part
    c = NeighbourIndex.build(keys, "approximate", seed=3, probes=2).search(keys, 10, exclude_self=True)[1]
    assert torch.equal(a, c)
    other = NeighbourIndex.build(keys, "approximate", seed=4, probes=2)
    assert not torch.equal(other.centroids, NeighbourIndex.build(keys, "approximate", seed=3).centroids)


def test_too_few_keys_in_the_probed_lists_are_searched_exactly():
    keys = clustered(400, clusters=40, noise=0.05)  # tight clusters of ~10: one probed list holds fewer than k keys
    index = NeighbourIndex.build(keys, "approximate", lists=40, probes=1)
    sims, found = index.search(keys, 15, exclude_self=True)
    assert (found >= 0).all() and torch.isfinite(sims).all()
    assert not (found == torch.arange(400)[:, None]).any()
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 15, exclude_self=True)
    probed = (keys @ index.centroids.T).argmax(dim=-1)
    size = (index.bounds[1:] - index.bounds[:-1])[probed]  # keys in the one probed list, the query's own included
    short = size < 15  # fewer than k candidates whether or not the query's own row is among them
    assert 0 < int(short.sum()) < 400
    assert torch.equal(found[short], truth[short])  # searched exactly


def test_auto_switches_at_the_threshold():
    keys = clustered(500)
    assert NeighbourIndex.build(keys, "auto", threshold=501).method == "exact"
    assert NeighbourIndex.build(keys, "auto", threshold=500).method == "approximate"
    assert NeighbourIndex.build(keys).method == "exact" and EXACT_BELOW > 500
    assert NeighbourIndex.build(keys, "exact", threshold=10).method == "exact"
    assert NeighbourIndex.build(keys[:50], "approximate").method == "approximate"  # forced, whatever the size
    critic = NeighbourCritic(keys, 3, neighbours=10, prior=1.0, search="approximate")
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 10, exclude_self=True)
    assert recall(critic.neighbours, truth) >= 0.95 and not torch.equal(critic.neighbours, truth)


@pytest.mark.parametrize("call, message", [
    (lambda: NeighbourIndex.build(torch.randn(10, 4), "fast"),
     r"search must be one of \['auto', 'exact', 'approximate'\], got 'fast'"),
    (lambda: NeighbourIndex.build(torch.randn(10, 4), "approximate", probes=0), r"search probes .* >= 1, got 0"),
    (lambda: NeighbourIndex.build(torch.randn(10, 4), threshold=0), r"search threshold .* >= 1, got 0"),
    (lambda: NeighbourIndex.build(torch.randn(10, 4)).search(torch.randn(2, 4), 11), r"k must be in \[1, 10\]"),
    (lambda: NeighbourIndex.build(torch.randn(10, 4)).search(torch.randn(2, 4), 3, exclude_self=True),
     r"exclude_self needs the 10 keys as queries, got 2"),
    (lambda: Neighbours(search="faiss"), r"model.critic.search must be one of .*got 'faiss'"),
])
def test_a_bad_option_is_one_clear_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_top_per_query_by_hand():
    # query 0: keys 5 (0.9), 7 (0.8, listed twice: a pair found from both ends), 2 (0.1); query 1: key 3 only
    qid = torch.tensor([0, 0, 1, 0, 0])
    key = torch.tensor([7, 5, 3, 7, 2])
    sim = torch.tensor([0.8, 0.9, 0.4, 0.8, 0.1])
    s, i = _top_per_query(qid, key, sim, 3, 2, distinct=True)
    assert i.tolist() == [[5, 7], [3, -1], [-1, -1]]
    assert torch.allclose(s[0], torch.tensor([0.9, 0.8])) and s[1, 0] == 0.4 and torch.isinf(s[1:, 1]).all()
    _, i = _top_per_query(qid, key, sim, 3, 3, distinct=False)  # without distinct the duplicate takes a place
    assert i[0].tolist() == [5, 7, 7]


def test_queries_in_several_chunks_and_the_reverse_pairs(monkeypatch):
    keys = clustered(3000)
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 10, exclude_self=True)
    index = NeighbourIndex.build(keys, "approximate", seed=0)
    whole = index.search(keys, 10, exclude_self=True)[1]
    monkeypatch.setattr(neighbours, "QUERY_CHUNK", 700)  # five chunks, each trimmed before the reverse pairs
    chunked = index.search(keys, 10, exclude_self=True)[1]
    assert recall(chunked, truth) >= 0.95 and recall(whole, truth) >= 0.95
    assert not (chunked == torch.arange(3000)[:, None]).any() and (chunked >= 0).all()
    assert (chunked == whole).float().mean() > 0.98  # the trim keeps 3k candidates: nearly nothing is lost


def test_the_reverse_pairs_add_recall_at_no_cost_in_similarities(monkeypatch):
    keys = clustered(3000)
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 10, exclude_self=True)
    index = NeighbourIndex.build(keys, "approximate", seed=0, probes=2)
    with_reverse = index.search(keys, 10, exclude_self=True)[1]
    monkeypatch.setattr(neighbours, "REVERSE_PAIRS", False)
    forward = index.search(keys, 10, exclude_self=True)[1]  # the same passes, from the query side only
    assert 1 - recall(with_reverse, truth) < 0.7 * (1 - recall(forward, truth))  # misses fall by over 30%
    assert not (forward == torch.arange(3000)[:, None]).any()


def test_defaulted_probes_grow_with_k_and_explicit_ones_do_not():
    keys = clustered(3000)
    index = NeighbourIndex.build(keys, "approximate", seed=0)
    assert index.probes_for(10) == index.probes_for(5) == index.probes == 7
    assert index.probes_for(40) == 14  # ceil(7 * sqrt(4))
    _, truth = NeighbourIndex.build(keys, "exact").search(keys, 40, exclude_self=True)
    assert recall(index.search(keys, 40, exclude_self=True)[1], truth) >= 0.95
    fixed = NeighbourIndex.build(keys, "approximate", seed=0, probes=3)
    assert fixed.probes_for(40) == 3
