"""Repeat memory: route a prompt seen in training by its own observed outcomes (ours; ``BaRPModule(memory=True)``).

Why: served traffic repeats prompts (retries, templates, popular questions), and so do routing datasets: 105 of the
500 prompts of the development set's published test file occur in its training file. Under bandit feedback the
learner pulled several models on each training prompt; the neighbour critic keeps those outcomes
(:class:`~barp.learning.critic.NeighbourCritic`, one per (prompt, model) cell), but the policy head generalises
across prompts and does not recall a single prompt's outcomes (and should not: fitting one prompt's 0/1 draws hurts
on prompts it has not seen; docs/method.md). The memory recalls them beside the head, from bandit feedback only:

- its keys are the training prompts' embeddings; a prompt is *seen* when its embedding's cosine similarity to a key
  is at least :data:`SAME` (the encoder cannot tell the two texts apart);
- for a seen prompt, each model pulled on it in training has a known reward ``w_q q - w_c c`` at the request's
  preference (``c`` the normalised cost ``min(cost / tau, 1)``);
- the policy's greedy choice ``a`` is replaced by the best pulled model ``b`` (the cheapest of those tied) when
  ``a`` was pulled and ``b``'s reward is higher (or equal and ``b`` cheaper), or when ``a`` was not pulled and
  ``b``'s reward is at least the best ``a`` could reach (``w_q q_max - w_c * a's mean observed cost``, ``q_max`` the
  highest score observed): the switch never trades a known outcome for a guess;
- unseen prompts, and exploring decisions, are the policy's alone.

What it measures on the development set and the built-in benchmark is in docs/method.md ("Repeated prompts").
"""

from __future__ import annotations

import torch

from barp.learning.neighbours import NeighbourIndex

#: Cosine similarity at or above which a prompt is the training prompt it matches (float noise of re-embedding the
#: same text in another batch stays far above it; two different texts that the encoder maps this close are the same
#: prompt to the router).
SAME = 1.0 - 1e-5
#: Reward differences below this are ties.
TIE = 1e-9


def summary(score: torch.Tensor, cost: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """What the switching rule needs of the whole memory, computed once per memory state: each model's mean observed
    normalised cost (K,) and the highest observed score (at least 1); None before any pull."""
    if not bool(seen.any()):
        return None
    mean_cost = (cost * seen).sum(0) / seen.sum(0).clamp(min=1)
    return mean_cost, max(1.0, float(score[seen].max()))


def recall(action: torch.Tensor, emb: torch.Tensor, w: torch.Tensor, index: NeighbourIndex, score: torch.Tensor,
           cost: torch.Tensor, seen: torch.Tensor,
           stats: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's greedy ``action`` (B,) with the memory applied, and the mask of the prompts it changed.

    Args:
        action: Greedy choices, (B,).
        emb: The prompts' embeddings, (B, D).
        w: Preferences ``(w_q, w_c)``, (B, 2).
        index: The training prompts' embeddings (the memory's keys), row i = memory row i.
        score, cost: Observed score and normalised cost per (training prompt, model), (N, K).
        seen: Which (training prompt, model) cells were pulled, (N, K).
        stats: :func:`summary` of this memory, when the caller keeps it (computed here otherwise).
    """
    changed = torch.zeros(len(action), dtype=torch.bool, device=action.device)
    stats = summary(score, cost, seen) if stats is None else stats
    if len(index) == 0 or len(emb) == 0 or stats is None:
        return action, changed
    sims, rows = index.search(emb, 1)
    hit = (sims[:, 0] >= SAME).to(action.device)
    if not bool(hit.any()):
        return action, changed
    j = rows[:, 0].to(seen.device)[hit.to(seen.device)]
    known, q, c = seen[j], score[j].to(w.dtype), cost[j].to(w.dtype)
    wq, wc = w[hit, :1], w[hit, 1:]
    r = wq * q - wc * c
    r_seen = r.masked_fill(~known, -float("inf"))
    best = r_seen.max(dim=-1).values
    mean_cost, q_max = stats[0].to(w), stats[1]
    a = action[hit]
    a_known = known.gather(1, a[:, None])[:, 0]
    r_a = r.gather(1, a[:, None])[:, 0]
    ceiling = wq[:, 0] * q_max - wc[:, 0] * mean_cost[a]
    tied = known & (r_seen >= best[:, None] - TIE)
    cheapest = c.masked_fill(~tied, float("inf")).argmin(dim=-1)
    cheaper = c.gather(1, cheapest[:, None])[:, 0] < c.gather(1, a[:, None])[:, 0]
    better = (best > r_a + TIE) | ((best >= r_a - TIE) & cheaper)  # a tie goes to the cheapest
    switch = torch.where(a_known, better, best >= ceiling - TIE) & torch.isfinite(best)
    out = action.clone()
    rows_hit = hit.nonzero().flatten()
    out[rows_hit[switch]] = cheapest[switch]
    changed[rows_hit[switch]] = out[rows_hit[switch]] != action[rows_hit[switch]]
    return out, changed
