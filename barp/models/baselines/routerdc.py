"""RouterDC: a query-based router trained by dual contrastive learning, as a full-information comparison router.

Source: Chen, Jiang, Lin, Kwok and Zhang, "RouterDC: Query-Based Router by Dual Contrastive Learning for
Assembling Large Language Models" (NeurIPS 2024, arXiv 2409.19886), and its official code (``shuhao02/RouterDC``,
``train_router_mdeberta.py``), whose settings are the defaults here.

The router (paper): a query encoder E and one learnable embedding k_t per LLM; the score of model t is
``cos(E(x), k_t) / temperature`` and routing takes the highest score. Training (paper) adds two contrastive losses:

- **sample-LLM** (:func:`sample_llm_loss`): per query, the top-K+ models by outcome are positives, the bottom K- are
  negatives, and for each positive ``-log(exp(s+) / (exp(s+) + sum_neg exp(s-)))``;
- **sample-sample** (:func:`sample_sample_loss`): the training queries are clustered by k-means on their
  embeddings (:func:`kmeans`, seeded); each query of a batch is pulled towards a query of its own cluster and pushed
  from ``sample_negatives`` queries of other clusters of the same batch (:func:`cluster_pairs`).

Total loss = sample-LLM + ``cluster_loss_weight`` * sample-sample. The checkpoint kept is the one with the best
score on the training data, evaluated every ``select_every`` steps (the official code's ``best_training_model``;
``select_prompts`` scores it on a seeded subset of the training prompts, to make it affordable in finetune mode).

What barp adds (ours, documented in docs/evaluation.md, "RouterDC in barp"):

- **The cost trade-off** (``preference_mode``). The paper routes on quality only. ``per_preference`` (the default,
  chosen on validation; docs/evaluation.md): one RouterDC (its own E and LLM embeddings, :class:`RouterDCTower`;
  the k-means clusters shared) per point w_c of ``preference_grid`` (default: the module's evaluation
  preferences), trained with positives and negatives ranked by the reward ``r = w_q q - w_c min(c / tau, 1)`` at
  that fixed w (at w_c = 0 exactly the paper's RouterDC); a query at w is routed by the tower of the nearest grid
  point. ``conditioned``: one model serves every w: ranked by the reward at a preference drawn per query
  (``w_c = u ** cost_power``, as BaRP draws it), the preference entering the scorer as a residual on the query
  embedding, ``E(x, w) = E(x) + g([E(x); phi(w)])``, with ``g``'s last layer initialised at zero, so that
  training starts from the paper's ``cos(E(x), k_t)``; the sample-sample loss acts on the preference-free E(x).
- **Ties.** A negative counts for a positive only where its reward is strictly lower (the official code drops a
  "negative" that answered correctly and a "positive" that did not, which is the same rule on 0/1 scores).
- **Encoder** (``encoder_mode``). The paper fine-tunes mDeBERTa-v3-base (not available offline). ``finetune``
  (the faithful variant) fine-tunes barp's MiniLM (mean pooling, the encoder barp embeds with); its weights are part
  of this router's state, so a checkpoint routes with them. ``frozen`` (the default, fast) keeps barp's frozen
  cached embeddings and trains an MLP projection as E.
- **Steps.** Training counts optimizer steps of ``batch_size`` queries, as the paper does, whatever the
  datamodule's batch size: each training batch is cut into chunks of ``batch_size`` rows, one AdamW step each, and
  training stops after ``max_steps`` steps (or when the trainer's epochs run out first).

Full-information access path: the outcomes come from
:func:`~barp.models.baselines.offline.full_information_training_data` (train split only); the finetune mode reads
the training prompts' texts from the same rows of the datamodule's table (:func:`training_prompts`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from barp.errors import ConfigError
from barp.learning.policy import PreferenceEncoder, PreferenceFeatures
from barp.learning.rl import check_cost_power, check_w_c, preference_tensor, reward, sample_preferences
from barp.models.base import RouterModule
from barp.models.baselines.offline import FullInformationData, full_information_training_data

PreferenceMode = Literal["conditioned", "per_preference"]


# ---------------------------------------------------------------------------------------------- the two losses
def sample_llm_loss(logits: torch.Tensor, rewards: torch.Tensor, top_k: int, last_k: int,
                    tie_break: bool = False) -> torch.Tensor:
    """RouterDC's sample-LLM contrastive loss.

    For each query, the ``top_k`` models with the highest reward are positives and the ``last_k`` with the lowest
    are negatives; each positive adds ``-log(exp(s+) / (exp(s+) + sum_neg exp(s-)))`` over the negatives whose
    reward is strictly lower than its own (a positive with no such negative adds 0). Summed over positives,
    averaged over queries (as the official code).

    Args:
        logits: Scores ``cos(E(x), k_t) / temperature``, shape (B, K).
        rewards: Each model's outcome (reward at the query's preference), shape (B, K).
        top_k: Positives per query (at most K).
        last_k: Negatives per query (at most K).
        tie_break: Rank models of equal reward in random order (ours; else ``topk``'s order, which favours some
            columns: with 0/1 scores many models tie, and a fixed order would make the same ones the positives).
    """
    ranked = rewards
    if tie_break:  # a jitter far below any reward gap, for the ranking only (``valid`` compares true rewards)
        ranked = rewards + torch.rand_like(rewards) * 1e-6 * (1.0 + rewards.abs().max())
    pos_idx = ranked.topk(top_k, dim=-1).indices
    neg_idx = ranked.topk(last_k, dim=-1, largest=False).indices
    pos_r, neg_r = rewards.gather(1, pos_idx), rewards.gather(1, neg_idx)
    s_pos, s_neg = logits.gather(1, pos_idx), logits.gather(1, neg_idx)
    valid = pos_r.unsqueeze(-1) > neg_r.unsqueeze(-2)  # (B, K+, K-)
    neg = s_neg.unsqueeze(-2).expand(valid.shape).masked_fill(~valid, -math.inf)
    both = torch.cat([s_pos.unsqueeze(-1), neg], dim=-1)
    log_p = s_pos - torch.logsumexp(both, dim=-1)  # 0 where no negative counts
    return -log_p.sum(dim=-1).mean()


def sample_sample_loss(h: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
    """RouterDC's sample-sample contrastive loss on query embeddings (cosine similarity, no temperature, as the
    official code): ``-log(exp(sim(h_i, h_i+)) / (exp(sim(h_i, h_i+)) + sum_neg exp(sim(h_i, h_i-))))``, averaged
    over the queries with ``valid`` set (0 when none is).

    Args:
        h: Query embeddings E(x), shape (B, D).
        positive: Index of each query's positive in the batch, shape (B,).
        negatives: Indices of each query's negatives in the batch, shape (B, H).
        valid: Which queries count, shape (B,) bool.
    """
    z = F.normalize(h, dim=-1)
    sim = z @ z.T
    picked = torch.cat([sim.gather(1, positive.unsqueeze(-1)), sim.gather(1, negatives)], dim=-1)
    loss = -torch.log_softmax(picked, dim=-1)[:, 0]
    if not bool(valid.any()):
        return loss.sum() * 0.0
    return loss[valid].mean()


def cluster_pairs(clusters: torch.Tensor, num_negatives: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-batch positives and negatives of the sample-sample loss from each query's cluster.

    The positive is a random other query of the same cluster (the query itself where it is alone in its cluster,
    as the official code may pick); the negatives are ``num_negatives`` distinct random queries of other clusters.
    A query with fewer than ``num_negatives`` queries of other clusters in the batch is not valid (skipped, as the
    official code skips it).

    Returns:
        ``(positive (B,), negatives (B, H), valid (B,))``.
    """
    b = len(clusters)
    u = torch.rand(b, b, generator=generator).to(clusters.device)
    same = clusters.unsqueeze(0) == clusters.unsqueeze(1)
    eye = torch.eye(b, dtype=torch.bool, device=clusters.device)
    cand = same & ~eye
    positive = torch.where(cand.any(-1), torch.where(cand, u, -1.0).argmax(-1), torch.arange(b, device=u.device))
    other = ~same
    h = min(num_negatives, b)
    negatives = torch.where(other, u, -1.0).topk(h, dim=-1).indices
    valid = other.sum(-1) >= num_negatives
    return positive, negatives, valid


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Seeded k-means (k-means++ initialisation, Lloyd iterations) on the rows of ``x``; cluster id per row (N,).

    Args:
        x: Points, shape (N, D).
        k: Number of clusters (capped at N).
        seed: Seed of the initialisation: the same seed and points give the same clusters.
        iters: Maximum Lloyd iterations.
    """
    x = x.double()
    n = len(x)
    k = max(1, min(int(k), n))
    g = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randint(n, (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values ** 2
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n, dtype=x.dtype)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=g)]])
    labels = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iters):
        for j in range(k):
            members = labels == j
            if bool(members.any()):
                centres[j] = x[members].mean(dim=0)
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def training_prompts(datamodule) -> list[str]:
    """FULL-INFORMATION access, texts: the training split's prompt texts, row ``i`` = training batches' ``row == i``
    (the rows of :func:`~barp.models.baselines.offline.full_information_training_data`)."""
    return list(datamodule.table.subset(datamodule.splits.train).prompts)


# ---------------------------------------------------------------------------------------------- the router
class RouterDCTower(nn.Module):
    """One RouterDC scorer's own weights: the query encoder E (:class:`ProjectionTower` or :class:`FinetunedTower`,
    by ``encoder_mode``) and one learnable embedding k_t per LLM (the official code's init, std 0.78)."""

    reads_texts: ClassVar[bool] = False  # whether E reads the prompt texts (else barp's frozen embeddings)

    def __init__(self, embed_dim: int, hidden_dim: int, num_models: int, encoder_name: str) -> None:
        super().__init__()
        self.dim = hidden_dim  # E's output width
        self.text_encoder: nn.Module | None = None
        self.projection: nn.Module | None = None

    def add_llm_embeddings(self, num_models: int) -> None:
        """The k_t, created after E (the random draws of E's initialisation come first)."""
        self.llm_embeddings = nn.Parameter(torch.randn(num_models, self.dim) * 0.78)

    def training_embedding(self, emb: torch.Tensor, texts: Callable[[], list[str]],
                           settings: dict[str, Any]) -> torch.Tensor:
        """E(x) with gradients, for training: of frozen embeddings (B, D_in), or of their texts (``texts()``)."""
        raise NotImplementedError

    def query_embedding(self, emb: torch.Tensor, texts: Callable[[], list[str]],
                        settings: dict[str, Any]) -> torch.Tensor:
        """E(x) for routing and selection."""
        return self.training_embedding(emb, texts, settings)

    def forget(self) -> None:
        """Drop what was cached for the current weights (after an optimizer step or a load)."""


class ProjectionTower(RouterDCTower):
    """``encoder_mode: frozen``: E is an MLP projection of barp's frozen cached embedding."""

    def __init__(self, embed_dim: int, hidden_dim: int, num_models: int, encoder_name: str) -> None:
        super().__init__(embed_dim, hidden_dim, num_models, encoder_name)
        self.projection = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(),
                                        nn.Linear(hidden_dim, hidden_dim))
        self.add_llm_embeddings(num_models)

    def training_embedding(self, emb: torch.Tensor, texts: Callable[[], list[str]],
                           settings: dict[str, Any]) -> torch.Tensor:
        assert self.projection is not None
        return self.projection(emb)


#: Prompts per encoder call when fine-tuning (:meth:`FinetunedTower.encode_texts`): sorted by length, so each call
#: pads to its own longest prompt.
LENGTH_BUCKET = 16


class FinetunedTower(RouterDCTower):
    """``encoder_mode: finetune``: E fine-tunes barp's MiniLM (mean pooling over tokens) on the prompt texts."""

    reads_texts = True

    def __init__(self, embed_dim: int, hidden_dim: int, num_models: int, encoder_name: str) -> None:
        from transformers import AutoModel

        from barp.encoders import resolve_encoder_path

        super().__init__(embed_dim, hidden_dim, num_models, encoder_name)
        encoder = AutoModel.from_pretrained(resolve_encoder_path(encoder_name), dtype=torch.float32)
        self.text_encoder = encoder
        self.dim = int(encoder.config.hidden_size)
        self.add_llm_embeddings(num_models)
        self.encoder_name = encoder_name
        self._tokenizer: Any = None  # built on first use; not part of the state
        self._tuned: dict[str, torch.Tensor] = {}  # prompt text -> E(x) at the current weights (evaluation)

    def encode_texts(self, texts: Sequence[str], settings: dict[str, Any]) -> torch.Tensor:
        """E(x) of prompt texts: mean pooling over tokens, with the data's max length and truncation."""
        tok = self._tokenizer
        if tok is None:
            from transformers import AutoTokenizer

            from barp.encoders import resolve_encoder_path

            tok = self._tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(self.encoder_name))
        tok.truncation_side = settings["truncation_side"]
        device = self.llm_embeddings.device
        ids = tok(list(texts), truncation=True, max_length=int(settings["max_length"]))["input_ids"]
        # Length buckets: the prompts sorted by token count, encoded LENGTH_BUCKET at a time, each padded only to its
        # own longest. The encoder has no cross-prompt term (LayerNorm, masked attention), so E(x) is the same as in
        # one padded batch, but a batch of short prompts with one long one no longer pads all of them to the long
        # one's length (on the development set: median 27 tokens, 9% over 256).
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        assert self.text_encoder is not None
        for start in range(0, len(order), LENGTH_BUCKET):
            chunk = order[start:start + LENGTH_BUCKET]
            enc = tok.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(device)
            hidden = self.text_encoder(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            for j, i in enumerate(chunk):
                out[i] = pooled[j]
        return torch.stack(out)

    def training_embedding(self, emb: torch.Tensor, texts: Callable[[], list[str]],
                           settings: dict[str, Any]) -> torch.Tensor:
        return self.encode_texts(texts(), settings)

    def query_embedding(self, emb: torch.Tensor, texts: Callable[[], list[str]],
                        settings: dict[str, Any]) -> torch.Tensor:
        """E(x) without gradients, in eval mode, cached until the weights change."""
        wanted = texts()
        tuned = self._tuned
        missing = list(dict.fromkeys(t for t in wanted if t not in tuned))
        if missing:
            assert self.text_encoder is not None
            encoder = self.text_encoder
            was_training = encoder.training
            encoder.eval()
            with torch.no_grad():
                for start in range(0, len(missing), 64):
                    chunk = missing[start:start + 64]
                    tuned.update(zip(chunk, self.encode_texts(chunk, settings)))
            encoder.train(was_training)
        return torch.stack([tuned[t] for t in wanted]).to(self.llm_embeddings.device)

    def forget(self) -> None:
        self._tuned.clear()


EncoderMode = Literal["frozen", "finetune"]
TOWERS: dict[str, type[RouterDCTower]] = {"frozen": ProjectionTower, "finetune": FinetunedTower}


class RouterDC(RouterModule):
    """RouterDC (Chen et al., NeurIPS 2024), trained with full information on the train split; see the module
    docstring for the method and what barp adds (the cost trade-off, the two encoder modes, step counting).

    ``preference_mode`` says how one router serves every preference w:

    - ``per_preference`` (default, chosen on validation; docs/evaluation.md): one RouterDC per point g of
      ``preference_grid`` (its own E and LLM embeddings, ``self.towers[j]``; the k-means clusters are shared),
      trained with positives and negatives ranked by the reward at the fixed w = (1 - g, g): at g = 0 exactly the
      paper's RouterDC. A query at w is routed by the tower of the grid point nearest to w_c (the lower one on a
      tie). All towers train in the same optimizer steps on the same batches (their weights are disjoint, so one
      AdamW on the summed loss is each tower's own AdamW), and each keeps its own best selection.
    - ``conditioned``: one scorer ``cos(E(x, w), k_t) / temperature`` with ``E(x, w) = E(x) + g([E(x); phi(w)])``
      (``g``'s last layer starts at zero: the paper's scorer at the start), trained at a w drawn per query.

    Args:
        encoder_mode: ``frozen`` (default, fast): E is an MLP projection of barp's frozen cached embedding.
            ``finetune`` (the faithful variant): E fine-tunes barp's MiniLM (the data's encoder, mean pooling); its
            weights are in the router's state and checkpoints. Slow on CPU (one MiniLM per grid point).
        preference_mode: ``per_preference`` or ``conditioned`` (above).
        preference_grid: The grid of ``per_preference`` (values of w_c in [0, 1]). None: the module's evaluation
            preferences (``evaluation.w_c`` and ``evaluation.extra_w_c``).
        temperature: Divides the cosine scores (the official code's ``--tempreture 1``).
        top_k: Positives K+ per query (paper: 3; capped at K // 2, so that positives and negatives never overlap).
        last_k: Negatives K- per query (paper: 3; capped at K - K+).
        num_clusters: k-means clusters N of the training queries for the sample-sample loss (paper: 5).
        cluster_loss_weight: lambda, weight of the sample-sample loss (paper: 1).
        sample_negatives: Negatives per query in the sample-sample loss, drawn from other clusters of the batch
            (the official code's ``H = 3``).
        cluster_seed: Seed of the k-means initialisation (same seed, same clusters) and of ``select_prompts``.
        lr: AdamW learning rate (paper: 5e-5) of the LLM embeddings and the fine-tuned encoder.
        head_lr: AdamW learning rate of the layers that start from scratch: the frozen mode's projection and the
            preference layers phi and g. None (default): ``lr``, the paper's one learning rate (chosen on validation:
            1e-3 and 3e-4 overfit the frozen projection; docs/evaluation.md).
        weight_decay: AdamW weight decay (PyTorch's default 0.01; the official code leaves it).
        batch_size: Queries per optimizer step (paper: 64); each training batch is cut into chunks of this size.
        max_steps: Optimizer steps (paper: 1,000), then training stops (earlier if the trainer's epochs run out).
        select_every: Every so many steps (and at the last step) the router is scored on the training data, and the
            best weights are kept (the official code: 50 steps, best training score). 0: keep the last weights.
        select_prompts: Score the selection on this many training prompts (a seeded random subset, fixed for the
            fit; ours, to make selection affordable in finetune mode). None: all training prompts (the paper).
        hidden_dim: Width of the frozen mode's projection (hidden layer and E(x)) and of ``g``.
        pref_dim: Width of the preference encoder phi (``conditioned``).
        preference_features: Inputs of phi: ``raw`` (w_q, w_c) or ``log_ratio`` (adds log(w_c / w_q)).
        cost_power: ``conditioned``: training preferences ``w_c = u ** cost_power``, u uniform (as BaRP).
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, encoder_mode: EncoderMode = "frozen", preference_mode: PreferenceMode = "per_preference",
                 preference_grid: list[float] | None = None, temperature: float = 1.0, top_k: int = 3,
                 last_k: int = 3, num_clusters: int = 5, cluster_loss_weight: float = 1.0, sample_negatives: int = 3,
                 cluster_seed: int = 0, lr: float = 5e-5, head_lr: float | None = None, weight_decay: float = 0.01,
                 batch_size: int = 64, max_steps: int = 1000, select_every: int = 50,
                 select_prompts: int | None = None, hidden_dim: int = 256, pref_dim: int = 64,
                 preference_features: PreferenceFeatures = "log_ratio", cost_power: float = 2.0, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if encoder_mode not in TOWERS:
            raise ConfigError(f"model.encoder_mode must be frozen or finetune, got {encoder_mode!r}")
        if preference_mode not in ("conditioned", "per_preference"):
            raise ConfigError(f"model.preference_mode must be conditioned or per_preference, got {preference_mode!r}")
        for name, value in (("temperature", temperature), ("lr", lr)):
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ConfigError(f"model.{name} must be a finite number > 0, got {value!r}")
        if head_lr is not None and not (isinstance(head_lr, (int, float)) and 0 < head_lr < math.inf):
            raise ConfigError(f"model.head_lr must be a finite number > 0 or null, got {head_lr!r}")
        for name, value, low in (("top_k", top_k, 1), ("last_k", last_k, 1), ("num_clusters", num_clusters, 1),
                                 ("sample_negatives", sample_negatives, 1), ("batch_size", batch_size, 2),
                                 ("max_steps", max_steps, 1), ("select_every", select_every, 0),
                                 ("hidden_dim", hidden_dim, 1), ("pref_dim", pref_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"model.{name} must be an integer >= {low}, got {value!r}")
        if select_prompts is not None and (isinstance(select_prompts, bool) or not isinstance(select_prompts, int)
                                           or select_prompts < 1):
            raise ConfigError(f"model.select_prompts must be an integer >= 1 or null, got {select_prompts!r}")
        if not (isinstance(cluster_loss_weight, (int, float)) and 0 <= cluster_loss_weight < math.inf):
            raise ConfigError(f"model.cluster_loss_weight must be a finite number >= 0, got {cluster_loss_weight!r}")
        if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
            raise ConfigError(f"model.weight_decay must be a finite number >= 0, got {weight_decay!r}")
        check_cost_power(cost_power, "model.cost_power")
        if TOWERS[encoder_mode].reads_texts and self.fallback_quantile is not None:
            raise ConfigError("model.guard: the shift guard compares frozen embeddings; RouterDC with "
                              "encoder_mode=finetune routes with its own encoder: set model.guard to null")
        if self.per_preference:
            if preference_grid is not None and (isinstance(preference_grid, (str, bytes))
                                                or not isinstance(preference_grid, Sequence) or not preference_grid):
                raise ConfigError(f"model.preference_grid must be a non-empty list of w_c or null, got "
                                  f"{preference_grid!r}")
            raw = self.eval_preferences if preference_grid is None else preference_grid
            self.grid = sorted({check_w_c(g, "model.preference_grid") for g in raw})
        else:
            self.grid = []
        self.automatic_optimization = False
        k = len(self.model_names)
        # capped so that positives and negatives never overlap: K+ <= K // 2, K- <= K - K+
        self.top_k = min(top_k, k // 2)
        self.last_k = min(last_k, k - self.top_k)
        self.towers = nn.ModuleList([TOWERS[encoder_mode](self.embed_dim, hidden_dim, k, self.encoder_name)
                                     for _ in range(max(1, len(self.grid)))])
        dim = self.tower(0).dim
        self.preference: PreferenceEncoder | None
        self.condition: nn.Sequential | None
        if not self.per_preference:
            self.preference = PreferenceEncoder(pref_dim, preference_features)
            self.condition = nn.Sequential(nn.Linear(dim + pref_dim, hidden_dim), nn.GELU(),
                                           nn.Linear(hidden_dim, dim))
            last = cast(nn.Linear, self.condition[-1])
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        else:
            self.preference = self.condition = None
        self.train_data: FullInformationData | None = None
        self._prompts: list[str] | None = None  # training prompt texts (finetune), by training row
        self._tasks: torch.Tensor | None = None  # task id per training row (selection's per-task mean)
        self._clusters: torch.Tensor | None = None  # k-means cluster per training row
        self._select_rows: torch.Tensor | None = None  # the training rows the selection scores
        self._texts: dict[bytes, str] = {}  # frozen-embedding bytes -> prompt text (finetune routing)
        # per selection unit: (training score, step, parameters) of its best so far
        self._best: list[tuple[float, int, dict[str, torch.Tensor]]] | None = None
        self._scored_step = -1  # the last step scored for selection

    @property
    def per_preference(self) -> bool:
        return self.hparams.preference_mode == "per_preference"

    # ------------------------------------------------------------------ data
    def setup(self, stage: str) -> None:
        """Resolve tau (base class); at fit start read the training split with full information and cluster it."""
        super().setup(stage)
        dm = self.router_data()
        if dm is None:
            return
        if self.reads_texts:
            self.remember_texts(dm.embeddings(), dm.table.prompts)
        if stage != "fit":
            return
        self.train_data = full_information_training_data(dm)
        table = dm.table.subset(dm.splits.train)
        index = {t: i for i, t in enumerate(self.task_names)}
        self._tasks = torch.as_tensor([index.get(t, -1) for t in table.tasks], dtype=torch.long)
        if self.reads_texts:
            self._prompts = training_prompts(dm)
        self._clusters = kmeans(self.train_data.emb, self.hparams.num_clusters, self.hparams.cluster_seed)
        n, m = len(self.train_data.emb), self.hparams.select_prompts
        rows = torch.arange(n)
        if m is not None and m < n:
            g = torch.Generator().manual_seed(int(self.hparams.cluster_seed))
            rows = torch.randperm(n, generator=g)[:m].sort().values
        self._select_rows = rows
        self._best = None
        self._scored_step = -1

    def remember_texts(self, emb, texts: Sequence[str]) -> None:
        """Finetune mode: map frozen embeddings (as the data and :meth:`embed` give them) to their prompt texts, so
        that :meth:`route`, which receives frozen embeddings, can run the fine-tuned encoder on the texts."""
        arr = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
        self._texts.update({row.tobytes(): text for row, text in zip(arr, texts)})

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Frozen embeddings of raw prompts (base class); the finetune mode also remembers their texts."""
        emb = super().embed(prompts)
        if self.reads_texts and len(emb):
            self.remember_texts(emb.cpu().numpy(), list(prompts))
        return emb

    # ------------------------------------------------------------------ the scorer
    def tower(self, j: int) -> RouterDCTower:
        """The j-th tower (``self.towers[j]``, typed)."""
        return cast(RouterDCTower, self.towers[j])

    @property
    def reads_texts(self) -> bool:
        """Whether the towers' E reads prompt texts (``encoder_mode: finetune``) rather than frozen embeddings."""
        return self.tower(0).reads_texts

    def encode_texts(self, texts: Sequence[str], tower: int = 0) -> torch.Tensor:
        """E(x) of a tower's fine-tuned encoder (``encoder_mode: finetune``): mean pooling over tokens, with the
        data's max length and truncation."""
        unit = self.tower(tower)
        if not isinstance(unit, FinetunedTower):
            raise RuntimeError("RouterDC.encode_texts: only encoder_mode=finetune encodes texts")
        return unit.encode_texts(texts, self.encoder_settings)

    def _texts_of(self, emb: torch.Tensor) -> list[str]:
        keys = np.ascontiguousarray(emb.detach().float().cpu().numpy())
        try:
            return [self._texts[row.tobytes()] for row in keys]
        except KeyError:
            raise RuntimeError("RouterDC (encoder_mode=finetune) routes prompt texts: route raw prompts "
                               "(TrainedRouter.route, route_prompts) or embeddings of the data it was set up "
                               "with") from None

    def query_embedding(self, emb: torch.Tensor, tower: int = 0) -> torch.Tensor:
        """A tower's E(x) for frozen embeddings: its projection (frozen mode) or its fine-tuned encoder on their
        texts."""
        return self.tower(tower).query_embedding(emb, lambda: self._texts_of(emb), self.encoder_settings)

    def _forget(self) -> None:
        """The weights changed: drop the towers' cached embeddings."""
        for j in range(len(self.towers)):
            self.tower(j).forget()

    def scores(self, h: torch.Tensor, w: torch.Tensor, tower: int = 0) -> torch.Tensor:
        """``cos(E(x, w), k_t) / temperature`` for a tower's query embeddings E(x) (B, D) and preferences (B, 2):
        (B, K). ``per_preference``: E(x, w) = E(x) (each tower serves one fixed w)."""
        z = h
        if self.condition is not None and self.preference is not None:
            z = h + self.condition(torch.cat([h, self.preference(w)], dim=-1))
        k = self.tower(tower).llm_embeddings
        return F.normalize(z, dim=-1) @ F.normalize(k, dim=-1).T / self.hparams.temperature

    def tower_of(self, w: torch.Tensor) -> torch.Tensor:
        """Index of the tower serving each preference (B, 2): the grid point nearest to w_c (the lower on a tie;
        always 0 when ``conditioned``), shape (B,)."""
        if not self.per_preference:
            return torch.zeros(len(w), dtype=torch.long, device=w.device)
        grid = torch.as_tensor(self.grid, dtype=w.dtype, device=w.device)
        return (w[:, 1:2] - grid).abs().argmin(dim=-1)

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """RouterDC's scores of every model, shape (B, K), each row by the tower of its preference; greedy routing
        takes the highest."""
        towers = self.tower_of(w)
        if len(towers) == 0 or bool((towers == towers[0]).all()):
            j = int(towers[0]) if len(towers) else 0
            return self.scores(self.query_embedding(emb, j), w, j)
        out = torch.empty(len(emb), len(self.model_names), device=emb.device)
        for j in towers.unique().tolist():
            rows = towers == j
            out[rows] = self.scores(self.query_embedding(emb[rows], j), w[rows], j)
        return out

    # ------------------------------------------------------------------ training
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        head, base = [], []
        if self.condition is not None and self.preference is not None:
            head += [*self.preference.parameters(), *self.condition.parameters()]
        for tower in map(self.tower, range(len(self.towers))):
            base.append(tower.llm_embeddings)
            if tower.projection is not None:
                head += list(tower.projection.parameters())
            if tower.text_encoder is not None:
                base += list(tower.text_encoder.parameters())
        head_lr = hp.lr if hp.head_lr is None else hp.head_lr
        groups = [{"params": base, "lr": hp.lr}] + ([{"params": head, "lr": head_lr}] if head else [])
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)

    def _tower_loss(self, emb: torch.Tensor, rows: torch.Tensor, tower: int,
                    w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sample-LLM loss, sample-sample loss) of one tower on training rows at preferences w (B, 2)."""
        h = self.tower(tower).training_embedding(emb, lambda: self._training_texts(rows), self.encoder_settings)
        data = self._training_data()
        assert self._clusters is not None  # set with the training data
        rewards = reward(data.scores[rows].to(self.device), data.costs[rows].to(self.device), w, self.tau_value)
        llm = sample_llm_loss(self.scores(h, w, tower), rewards, self.top_k, self.last_k, tie_break=True)
        positive, negatives, valid = cluster_pairs(self._clusters[rows].to(self.device), self.hparams.sample_negatives)
        return llm, sample_sample_loss(h, positive, negatives, valid)

    def _training_data(self) -> FullInformationData:
        if self.train_data is None:
            raise RuntimeError("RouterDC needs a datamodule (full-information training data)")
        return self.train_data

    def _training_texts(self, rows: torch.Tensor) -> list[str]:
        """Finetune mode: the prompt texts of training rows."""
        if self._prompts is None:
            raise RuntimeError("RouterDC (encoder_mode=finetune) needs the training prompts: fit it with a datamodule")
        return [self._prompts[i] for i in rows.tolist()]

    def loss(self, emb: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both RouterDC losses on training rows (indices into the training split): ``conditioned`` at fresh
        preferences; ``per_preference`` summed over the towers, each at its grid point (the logged parts are
        averages over towers)."""
        self._training_data()
        hp = self.hparams
        rows = rows.long().cpu()
        if self.per_preference:
            parts = [self._tower_loss(emb, rows, j, preference_tensor(g, len(rows), self.device))
                     for j, g in enumerate(self.grid)]
            llm = torch.stack([p[0] for p in parts])
            cluster = torch.stack([p[1] for p in parts])
            total = (llm + hp.cluster_loss_weight * cluster).sum()
            return {"loss": total, "sample_llm_loss": llm.mean(), "sample_sample_loss": cluster.mean()}
        w = sample_preferences(len(rows), device=self.device, cost_power=hp.cost_power)
        llm, cluster = self._tower_loss(emb, rows, 0, w)
        return {"loss": llm + hp.cluster_loss_weight * cluster, "sample_llm_loss": llm, "sample_sample_loss": cluster}

    def _step_budget(self) -> int:
        budget = int(self.hparams.max_steps)
        trainer_max = int(getattr(self.trainer, "max_steps", -1) or -1)
        return min(budget, trainer_max) if trainer_max > 0 else budget

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Cut the batch into chunks of ``batch_size`` queries, one AdamW step each, until ``max_steps`` steps."""
        opt = self.optimizer()
        budget, every = self._step_budget(), self.hparams.select_every
        size = self.hparams.batch_size
        for start in range(0, len(batch["row"]), size):
            if self.global_step >= budget:
                break
            out = self.loss(batch["emb"][start:start + size], batch["row"][start:start + size])
            opt.zero_grad()
            self.manual_backward(out["loss"])
            opt.step()
            self._forget()
            self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, on_step=False, on_epoch=True,
                          batch_size=len(batch["row"][start:start + size]))
            if every and self.global_step % every == 0:
                self._select()
        last_epoch = self.trainer.max_epochs is not None and self.trainer.max_epochs > 0 \
            and self.current_epoch + 1 >= self.trainer.max_epochs and self.trainer.is_last_batch
        if self.global_step >= budget or last_epoch:
            self._finish(budget)

    def _units(self) -> list[nn.Module]:
        """What selection keeps the best weights of, each on its own score: each tower (``per_preference``), or
        the whole router (``conditioned``)."""
        return list(self.towers) if self.per_preference else [self]

    def _finish(self, budget: int) -> None:
        """Last step: score it, keep the best weights seen on the training data, and stop training."""
        if self.hparams.select_every:
            if self._scored_step != self.global_step:
                self._select()
            assert self._best is not None  # set by _select
            with torch.no_grad():
                for unit, (_, _, params) in zip(self._units(), self._best):
                    for name, p in unit.named_parameters():
                        p.copy_(params[name])
            self._forget()
            self.log("train/selected_step", float(np.mean([b[1] for b in self._best])))
        if self.global_step < budget:
            rank_zero_warn(f"RouterDC: the trainer's epochs ran out after {self.global_step} of "
                           f"{budget} steps (model.max_steps); raise trainer.max_epochs for the full budget")
        self.trainer.should_stop = True

    @torch.no_grad()
    def training_scores(self) -> list[float]:
        """The router's score on the training data (``select_prompts`` of them), per selection unit: the mean
        reward of its choices over each task's training prompts, averaged over tasks (each task counts once, as
        the paper's average over training sets); ``per_preference``: each tower at its grid point;
        ``conditioned``: averaged over the evaluation preferences."""
        data, rows = self._training_data(), self._select_rows
        if rows is None:
            rows = torch.arange(len(data.emb))
        assert self._tasks is not None  # set with the training data
        tasks, scores, costs = self._tasks[rows], data.scores[rows], data.costs[rows]
        was_training = self.training
        self.eval()
        try:
            def score(tower: int, w_c: float) -> torch.Tensor:
                emb = data.emb[rows]
                h = torch.cat([self.query_embedding(emb[i:i + 1024].to(self.device), tower)
                               for i in range(0, len(emb), 1024)])
                w = preference_tensor(w_c, len(h), self.device)
                action = self.scores(h, w, tower).argmax(-1).cpu()
                got = reward(scores, costs, w.cpu(), self.tau_value).gather(1, action[:, None])[:, 0]
                return torch.stack([got[tasks == t].mean() for t in tasks.unique()]).mean()

            if self.per_preference:
                return [float(score(j, g)) for j, g in enumerate(self.grid)]
            return [float(torch.stack([score(0, w_c) for w_c in self.eval_preferences]).mean())]
        finally:
            self.train(was_training)

    def training_score(self) -> float:
        """The mean of :meth:`training_scores` over selection units."""
        return float(np.mean(self.training_scores()))

    def _select(self) -> None:
        scores = self.training_scores()
        self._scored_step = int(self.global_step)
        self.log("train/selection_score", float(np.mean(scores)))
        best: list[tuple[float, int, dict[str, torch.Tensor]] | None] = [None for _ in scores]
        if self._best:
            best = list(self._best)
        for i, (unit, score) in enumerate(zip(self._units(), scores)):
            kept = best[i]
            if kept is None or score > kept[0]:
                params = {name: p.detach().clone() for name, p in unit.named_parameters()}
                best[i] = (score, int(self.global_step), params)
        self._best = [b for b in best if b is not None]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._forget()
