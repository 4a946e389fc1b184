"""GraphRouter (Feng, Shen and You, ICLR 2025, arXiv 2410.03834): LLM routing as edge prediction on a heterogeneous
graph of task, query and LLM nodes, trained with FULL information on the train split, conditioned on the preference.

Plain PyTorch, no graph library: the graph has one relation per (source type, destination type), every destination
type receives from exactly one relation, and messages are linear (as in PyG's ``GeneralConv``), so a layer is three
gathers and three ``index_add_`` calls (:class:`RelationConv`). Full-batch message passing over the whole training
graph (N queries + T tasks + K LLMs, N * K query-LLM edges) takes milliseconds on a CPU for thousands of queries;
torch_geometric would add a compiled dependency (and its scatter wheels) for nothing barp needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from barp.errors import ConfigError
from barp.learning.rl import check_cost_power, normalized_cost, reward, sample_preferences
from barp.models.baselines.offline import FullInformationData, OfflineRouterModule

#: The variable-size buffers of the training graph (checkpoints restore their sizes).
GRAPH_BUFFERS = ("task_features", "llm_features", "query_emb", "query_task", "edge_scores", "edge_costs")


def default_descriptions(task_names: list[str], model_names: list[str]) -> dict[str, dict[str, str]]:
    """The descriptions used where no file gives one: ``Task: <name>`` and ``Language model: <name>``."""
    return {"tasks": {t: f"Task: {t}" for t in task_names}, "models": {m: f"Language model: {m}" for m in model_names}}


def _llm_candidates(data: dict, where: str) -> dict[str, dict[str, str]]:
    """An LLMRouter ``llm_candidates`` table ``{model: {feature: text, ...}}`` as ``{models: {model: text}}``."""
    models = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or "feature" not in entry:
            raise ConfigError(f"{where}: model '{name}' of an LLMRouter llm_candidates table has no 'feature' text "
                              f"(got {entry!r})")
        models[str(name)] = entry["feature"]
    return {"models": models}


def read_descriptions(path: str | None, task_names: list[str], model_names: list[str]) -> dict[str, dict[str, str]]:
    """Task and LLM descriptions: the defaults, overridden by a YAML/JSON file ``{tasks: {name: text}, models:
    {name: text}}`` (either section may be left out; names not in the data are ignored), or by an LLMRouter
    ``llm_candidates`` table (``{model: {feature: text, size: .., input_price: .., ...}}``, as the development set's
    ``llm_candidates.json``): each model's ``feature`` text is its description.

    Raises:
        ConfigError: The file cannot be read, or a section is not a mapping of names to non-empty texts.
    """
    out = default_descriptions(task_names, model_names)
    if path is None:
        return out
    where = f"model.descriptions {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{where}: cannot read it ({err})") from None
    if isinstance(data, dict) and data and not set(data) & {"tasks", "models"} and all(
            isinstance(v, dict) for v in data.values()):
        data = _llm_candidates(data, where)
    if not isinstance(data, dict) or not set(data) <= {"tasks", "models"}:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{where}: expected a mapping with keys 'tasks' and/or 'models' (or an LLMRouter "
                          f"llm_candidates table), got {got}")
    for section, names in (("tasks", task_names), ("models", model_names)):
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: field '{section}' must map names to texts, got {type(given).__name__}")
        for name, value in given.items():
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: field '{section}.{name}' must be a non-empty text, got {value!r}")
            if str(name) in names:
                out[section][str(name)] = value
    return out


def sum_incoming(total: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``aggr: add``: the sum of each node's incoming messages (``total``, already summed)."""
    return total


def mean_incoming(total: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``aggr: mean``: the summed incoming messages divided by each node's number of incoming edges (0 for none)."""
    count = torch.zeros(len(total), device=total.device, dtype=total.dtype)
    count.index_add_(0, dst, torch.ones_like(dst, dtype=total.dtype))
    return total / count.clamp(min=1).unsqueeze(-1)


Aggregation = Literal["mean", "add"]
QueryState = Literal["input", "final"]
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"mean": mean_incoming,
                                                                                 "add": sum_incoming}


class RelationConv(nn.Module):
    """One relation's GeneralConv-style message passing (You et al. 2020; PyG ``GeneralConv`` with its defaults:
    directed messages, one head, no attention, in = out channels so the self term is the identity):

    ``h_v' = AGG_{u -> v} (W_msg h_u + b_msg + W_edge e_uv + b_edge) + h_v``

    Args:
        dim: Node state width (same for source and destination types).
        edge_dim: Edge feature width (0: the relation has no edge features).
        aggr: ``mean`` or ``add`` (sum) over a node's incoming edges; nodes without one receive 0.
    """

    def __init__(self, dim: int, edge_dim: int = 0, aggr: Aggregation = "mean") -> None:
        super().__init__()
        self.aggr = aggr
        self.lin_msg = nn.Linear(dim, dim)
        self.lin_edge = nn.Linear(edge_dim, dim) if edge_dim else None

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                edge_attr: torch.Tensor | None = None) -> torch.Tensor:
        """New destination states, shape of ``x_dst``, from edges ``src[i] -> dst[i]`` (index tensors)."""
        msg = self.lin_msg(x_src)[src]  # linear maps commute with the gather: one matmul per node, not per edge
        if self.lin_edge is not None:
            msg = msg + self.lin_edge(edge_attr)
        out = torch.zeros_like(x_dst).index_add_(0, dst, msg)
        return AGGREGATIONS[self.aggr](out, dst) + x_dst


class GraphRouterNet(nn.Module):
    """The GNN: input projections per node type, ``num_layers`` heterogeneous GeneralConv layers (task -> query,
    query -> task, query -> LLM with edge features), joint BatchNorm over all nodes, ReLU between layers, and the
    edge score ``mean(q * h_llm * (1 + W_s w))`` (a logit) for every (query, LLM) pair, where ``q`` is the query's
    input state (``query_state: input``, the official code's) or its state after the layers (``final``).

    Args:
        embed_dim: Width of the frozen encoder's embeddings (query, task and LLM features).
        hidden_dim: Node state width.
        num_layers: Message-passing layers.
        edge_dim: Query-LLM edge feature width (score and normalised cost: 2).
        aggr: Neighbourhood aggregation of every relation (see :class:`RelationConv`).
        pref_film: Scale the LLM states in each predicted query's edge scores by ``1 + W_s w`` (its preference).
        query_state: The query side of the edge score: ``input``, the projection of the query's embedding and
            preference plus the mean projection of its linked tasks (the official code's ``x_ini``, where the task
            projection is concatenated to the query's); ``final``, the query's state after the layers.
    """

    def __init__(self, embed_dim: int, hidden_dim: int = 32, num_layers: int = 2, edge_dim: int = 2,
                 aggr: Aggregation = "mean", pref_film: bool = True, query_state: QueryState = "input") -> None:
        super().__init__()
        self.query_state = query_state
        self.query_proj = nn.Linear(embed_dim, hidden_dim)
        self.task_proj = nn.Linear(embed_dim, hidden_dim)
        self.llm_proj = nn.Linear(embed_dim, hidden_dim)
        self.pref_proj = nn.Linear(2, hidden_dim)  # the preference, on the query nodes whose edges are predicted
        # the preference's scaling of the LLM states in the edge score (starts at 1: no scaling)
        self.pref_scale = nn.Linear(2, hidden_dim) if pref_film else None
        if self.pref_scale is not None:
            nn.init.zeros_(self.pref_scale.weight)
            nn.init.zeros_(self.pref_scale.bias)
        self.edge_mlp = nn.Linear(edge_dim, edge_dim)  # the official code's ReLU(Linear) on the edge features
        self.layers = nn.ModuleList(nn.ModuleDict({
            "task_query": RelationConv(hidden_dim, 0, aggr),
            "query_task": RelationConv(hidden_dim, 0, aggr),
            "query_llm": RelationConv(hidden_dim, edge_dim, aggr),
        }) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden_dim) for _ in range(num_layers))

    def forward(self, task_x: torch.Tensor, query_x: torch.Tensor, llm_x: torch.Tensor, pref: torch.Tensor,
                query_task: tuple[torch.Tensor, torch.Tensor], task_query: tuple[torch.Tensor, torch.Tensor],
                query_llm: tuple[torch.Tensor, torch.Tensor], edge_attr: torch.Tensor) -> torch.Tensor:
        """Edge logits of every query node with a preference against every LLM node.

        Args:
            task_x, query_x, llm_x: Node features (T, D), (Q, D), (K, D).
            pref: Preferences (P, 2) of the last P query nodes: the ones whose LLM edges are predicted.
            query_task: (query, task) index pairs of the query -> task edges.
            task_query: (task, query) index pairs of the task -> query edges.
            query_llm: (query, llm) index pairs of the visible query -> LLM edges.
            edge_attr: Their features (E, edge_dim).

        Returns:
            Logits (P, K).
        """
        num_t, num_q = len(task_x), len(query_x)
        q = self.query_proj(query_x)
        q = torch.cat([q[:num_q - len(pref)], q[num_q - len(pref):] + self.pref_proj(pref)])
        tasks = self.task_proj(task_x)
        h = torch.cat([tasks, q, self.llm_proj(llm_x)])
        t_sl, q_sl, m_sl = slice(0, num_t), slice(num_t, num_t + num_q), slice(num_t + num_q, None)
        edge = F.relu(self.edge_mlp(edge_attr))
        for i, (relations, norm) in enumerate(zip(self.layers, self.norms)):
            layer = cast(nn.ModuleDict, relations)
            ht, hq, hm = h[t_sl], h[q_sl], h[m_sl]
            h = torch.cat([layer["query_task"](hq, ht, *query_task),
                           layer["task_query"](ht, hq, *task_query),
                           layer["query_llm"](hq, hm, *query_llm, edge)])
            h = norm(h)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        if self.query_state == "input":  # the input projection plus the mean projection of the linked tasks
            src, dst = task_query
            linked = torch.zeros_like(q).index_add_(0, dst, tasks[src])
            predicted = (q + mean_incoming(linked, dst))[num_q - len(pref):]
        else:
            predicted = h[q_sl][num_q - len(pref):]
        if self.pref_scale is not None:  # (P, 1, H) * (K, H): each predicted query's preference-scaled LLM states
            llm = h[m_sl].unsqueeze(0) * (1 + self.pref_scale(pref)).unsqueeze(1)
            return (predicted.unsqueeze(1) * llm).mean(dim=-1)
        return (predicted.unsqueeze(1) * h[m_sl].unsqueeze(0)).mean(dim=-1)


def link_nearest(emb: torch.Tensor, query_emb: torch.Tensor, query_task: torch.Tensor,
                 num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``task_link: nearest``: each new prompt joins the task whose training prompts' mean (normalised) embedding
    is most similar (cosine); (new prompt, task) index pairs."""
    present = torch.unique(query_task)
    sums = torch.zeros(num_tasks, query_emb.shape[-1], device=emb.device)
    sums.index_add_(0, query_task, F.normalize(query_emb, dim=-1))
    centroids = F.normalize(sums[present], dim=-1)
    nearest = present[(F.normalize(emb, dim=-1) @ centroids.T).argmax(dim=-1)]
    return torch.arange(len(emb), device=emb.device), nearest


def link_all(emb: torch.Tensor, query_emb: torch.Tensor, query_task: torch.Tensor,
             num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``task_link: all``: each new prompt joins every task that has training prompts; (new prompt, task) pairs."""
    present = torch.unique(query_task)
    rows = torch.arange(len(emb), device=emb.device).repeat_interleave(len(present))
    return rows, present.repeat(len(emb))


def nearest_recovery(query_emb: torch.Tensor, query_task: torch.Tensor, num_tasks: int) -> float:
    """The share of training prompts whose nearest task centroid (``link_nearest``) is their own task."""
    if len(query_emb) == 0:
        return 0.0
    _, nearest = link_nearest(query_emb, query_emb, query_task, num_tasks)
    return float((nearest == query_task).float().mean())


#: ``task_link: auto`` links a new prompt to its nearest task when the nearest task centroid is the own task of at
#: least this share of the training prompts (the tasks are then recognisable from the embedding), else to all tasks.
AUTO_LINK_MIN_RECOVERY = 0.9


def effect_target(rewards: torch.Tensor, w: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """``target: effect``: the reward shifted into [0, 1], ``w_q q + w_c (1 - min(c / tau, 1))`` (a soft label)."""
    return rewards + w[:, 1:]


def best_target(rewards: torch.Tensor, w: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """``target: best``: the official code's label, 1 for every model of best reward, 0 for the others."""
    return best


TaskLink = Literal["auto", "nearest", "all"]
EdgeTarget = Literal["effect", "best"]
TASK_LINKS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]]
TASK_LINKS = {"nearest": link_nearest, "all": link_all}
QUERY_STATES = ("input", "final")
EDGE_TARGETS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]
EDGE_TARGETS = {"effect": effect_target, "best": best_target}


class GraphRouter(OfflineRouterModule):
    """GraphRouter (Feng et al., ICLR 2025): routing as query-LLM edge prediction on a heterogeneous graph.

    **Graph.** One node per task family (all of the data's, ID and OOD), per training prompt (query) and per LLM.
    Query nodes carry the prompt embeddings barp caches; task and LLM nodes the frozen encoder's embedding of a short
    description (``descriptions``; default ``Task: <name>`` / ``Language model: <name>``), embedded once at fit start
    and kept in the module's state, so a checkpoint never re-embeds them. Edges: task -> query and query -> task
    (each training query with its task), and query -> LLM for every training (query, LLM) cell, carrying the observed
    score and normalised cost ``min(c / tau, 1)`` as edge features (full information, train split only).

    **GNN** (the official code's architecture): per-type linear projections of the features, ``num_layers``
    GeneralConv-style layers (:class:`RelationConv`, one per relation) with BatchNorm over all nodes and ReLU between
    layers, and the edge logit ``mean(h_query * h_llm)``, trained with binary cross-entropy on the sigmoid of the
    edge logit, as the official code. **Edge target** (``target``): ``effect`` (default, ours) is BaRP's reward at the
    query's preference shifted into [0, 1], ``w_q q + w_c (1 - min(c / tau, 1))`` (= reward + w_c), a soft label:
    BCE is minimised by its expected value given the query and w, so the highest edge logit is the model of highest
    expected reward. ``best`` is the official code's label (1 for the model of best effect, 0 for the others; every
    model reaching the best reward counts as best). With discrete or 0/1 scores, ties are the rule and at any w_c > 0
    they go to the cheapest tied model, so ``best`` learns how often a model is (tie-broken) best, not how good it
    is: on the built-in benchmark's validation split it almost never picked a strong model even at w_c = 0 (0.57,
    below the best single model's 0.76; ``effect``: 0.79; docs/evaluation.md, "GraphRouter in barp").

    **Training** (``steps_per_batch`` optimizer steps per training batch): the batch's prompts join the graph as new
    query nodes, exactly as prompts at inference, and their K edges are predicted; their own cells are hidden from
    message passing, and of the other training edges a random ``mask_rate`` share is hidden too (the paper's edge
    masking).

    **Preference** (ours; the paper trains one model per fixed effect-cost weighting): one model for every
    preference. Each predicted query draws w as BaRP does (``w_c = u ** cost_power``; default 2: more draws at small
    w_c, where the best model changes), its node gets ``W_p w`` added to its input, and (``pref_film``, ours) the LLM
    states in its edge scores are scaled by ``1 + W_s w`` (``W_s`` starts at zero), so w enters the edge score both
    additively through the query state and multiplicatively, per state dimension, on the LLM side. At test time the
    operator's w is fed the same way. Training cost on the built-in benchmark: see docs/evaluation.md, "GraphRouter
    in barp".

    **Inductive step.** A new prompt joins one task node (incoming edge only) and is scored against every LLM node;
    it changes no other node's state (BatchNorm uses its running statistics), so routing is the same prompt by
    prompt or in batches. barp routes by embedding and preference only (sweep, ``barp serve``, ``TrainedRouter``):
    the task is not given, so the prompt joins the task whose training prompts' mean embedding is most similar
    (cosine; ``task_link: nearest``), or every task that has training prompts (``task_link: all``, mean over them).
    ``task_link: auto`` (default) picks between the two from the training data: ``nearest`` where the nearest task
    centroid is the own task of at least :data:`AUTO_LINK_MIN_RECOVERY` of the training prompts (the tasks are
    recognisable from the embedding: 96% on the built-in benchmark), ``all`` where it is not (55% on the
    development set, whose topic clusters were not made in this encoder's space). :meth:`scores` accepts known task
    indices instead. OOD prompts join their nearest ID task (or all tasks).

    **Edge score** (``query_state``): as the official code, the query side is the predicted query's input state,
    the projection of its embedding and preference plus the mean projection of the tasks it is linked to; the LLM
    side is the LLM's state after message passing (``final``: the query's state after the layers, barp's first
    version: 0.02-0.03 lower on both datasets' validation splits, docs/evaluation.md).

    Deviations from the official code, for barp's setting: mean aggregation (``aggr``; GeneralConv's default sums,
    whose scale then depends on how many edges the mask leaves visible), the task as its own node type (the code
    concatenates a task projection to the query features; here the task's projection is added to the query's in the
    edge score), the ``effect`` target (a soft label in place of the one-hot best), the preference as an input
    (``W_p w`` and ``pref_film``), and a higher learning rate (3e-3, chosen on the built-in benchmark's validation
    split, for barp's budget of about 1,000 steps).

    Args:
        hidden_dim: Node state width (the paper's 32).
        num_layers: Message-passing layers (the paper's 2).
        aggr: Aggregation over a node's incoming edges: ``mean`` (ours) or ``add`` (GeneralConv's default).
        mask_rate: Share of the other training query-LLM edges hidden from message passing at each step.
        lr: AdamW learning rate (3e-3: chosen on the built-in benchmark's validation split).
        weight_decay: AdamW weight decay (the official code's 1e-4).
        cost_power: Training preferences ``w_c = u ** cost_power``, u ~ U(0, 1) (2: as BaRP's recipe; 1: uniform,
            as BaRP's paper).
        steps_per_batch: Optimizer steps per training batch (fresh preferences and mask each): the paper trains for
            many full-graph steps; 1 gives the same steps as every other method in ``barp sweep``.
        task_link: How a prompt of unknown task joins the graph: ``nearest`` task, ``all`` tasks, or ``auto``
            (``nearest`` where the nearest task centroid recovers the training prompts' own tasks, else ``all``).
        query_state: The query side of the edge score: ``input`` (the official code's) or ``final`` (see above).
        target: Edge target: ``effect`` (the reward shifted into [0, 1], a soft label; ours) or ``best`` (the
            official code's one-hot best model).
        pref_film: Scale the LLM states in the edge score by ``1 + W_s w`` (ours).
        descriptions: YAML/JSON file ``{tasks: {name: text}, models: {name: text}}``, or an LLMRouter
            ``llm_candidates`` table (each model's ``feature`` text), overriding the default descriptions (read at
            fit start).
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, hidden_dim: int = 32, num_layers: int = 2, aggr: Aggregation = "mean",
                 mask_rate: float = 0.3, lr: float = 3e-3, weight_decay: float = 1e-4, cost_power: float = 2.0,
                 steps_per_batch: int = 1, task_link: TaskLink = "auto",
                 descriptions: str | None = None, target: EdgeTarget = "effect",
                 pref_film: bool = True, query_state: QueryState = "input", **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        self.automatic_optimization = False  # steps_per_batch optimizer steps per training batch
        if hidden_dim < 1 or num_layers < 1:
            raise ConfigError(f"model.hidden_dim and model.num_layers must be >= 1, got {hidden_dim!r}, "
                              f"{num_layers!r}")
        if not 0 <= mask_rate < 1:
            raise ConfigError(f"model.mask_rate must be in [0, 1), got {mask_rate!r}")
        if not isinstance(steps_per_batch, int) or steps_per_batch < 1:
            raise ConfigError(f"model.steps_per_batch must be an integer >= 1, got {steps_per_batch!r}")
        if not lr > 0 or weight_decay < 0:
            raise ConfigError(f"model.lr must be > 0 and model.weight_decay >= 0, got {lr!r}, {weight_decay!r}")
        if target not in EDGE_TARGETS:
            raise ConfigError(f"model.target must be effect|best, got {target!r}")
        if aggr not in AGGREGATIONS or (task_link != "auto" and task_link not in TASK_LINKS):
            raise ConfigError(f"model.aggr must be mean|add and model.task_link auto|nearest|all, got {aggr!r}, "
                              f"{task_link!r}")
        if query_state not in QUERY_STATES:
            raise ConfigError(f"model.query_state must be input|final, got {query_state!r}")
        check_cost_power(cost_power, "model.cost_power")
        self.net = GraphRouterNet(self.embed_dim, hidden_dim, num_layers, edge_dim=2, aggr=aggr, pref_film=pref_film,
                                  query_state=query_state)
        k, d = len(self.model_names), self.embed_dim
        self.register_buffer("task_features", torch.zeros(len(self.task_names), d))
        self.register_buffer("llm_features", torch.zeros(k, d))
        self.register_buffer("query_emb", torch.zeros(0, d))
        self.register_buffer("query_task", torch.zeros(0, dtype=torch.long))
        self.register_buffer("edge_scores", torch.zeros(0, k))
        self.register_buffer("edge_costs", torch.zeros(0, k))
        self._train_tasks: torch.Tensor | None = None  # task index of each training row, read at fit start
        self._link: str | None = None  # the task link in use (``auto`` resolved), once the graph is known
        self._recovery: float | None = None  # with auto: nearest_recovery of the graph it was resolved on

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in GRAPH_BUFFERS:
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._link = None

    # ------------------------------------------------------------------ the training graph
    def check_fit_inputs(self) -> None:
        """The descriptions file, read and checked before ``barp fit`` writes its run folder."""
        read_descriptions(self.hparams.descriptions, self.task_names, self.model_names)

    def setup(self, stage: str) -> None:
        dm = self.router_data()
        self._train_tasks = None
        if stage == "fit" and dm is not None:
            index = {t: i for i, t in enumerate(self.task_names)}
            self._train_tasks = torch.as_tensor([index[dm.table.tasks[i]] for i in dm.splits.train])
        super().setup(stage)  # reads the full-information training data and calls fit_full_information

    def fit_full_information(self, data: FullInformationData, tasks: torch.Tensor | None = None) -> None:
        """Build the training graph and embed the task and LLM descriptions with the frozen encoder.

        Args:
            data: The train split with every model's outcome.
            tasks: Task index (into ``task_names``) of each training row (default: read from the datamodule).
        """
        tasks = self._train_tasks if tasks is None else tasks
        if tasks is None or len(tasks) != len(data.emb):
            raise RuntimeError("GraphRouter needs the task of every training prompt")
        texts = read_descriptions(self.hparams.descriptions, self.task_names, self.model_names)
        with torch.no_grad():
            feats = self.embed([texts["tasks"][t] for t in self.task_names] +
                               [texts["models"][m] for m in self.model_names]).float()
        self.task_features = feats[:len(self.task_names)].to(self.device)
        self.llm_features = feats[len(self.task_names):].to(self.device)
        self.query_emb = data.emb.to(self.device)
        self.query_task = torch.as_tensor(tasks, dtype=torch.long).to(self.device)
        self.edge_scores = data.scores.to(self.device)
        self.edge_costs = data.costs.to(self.device)
        self._link = None
        if self.hparams.task_link == "auto":
            link = self.task_link
            rank_zero_info(f"GraphRouter task_link auto: the nearest task centroid is the own task of "
                           f"{self._recovery:.1%} of the training prompts -> '{link}'")

    @property
    def task_link(self) -> str:
        """The task link in use: ``task_link``, with ``auto`` resolved from the training graph (the same after a
        checkpoint is loaded: it is computed from the saved graph)."""
        if self._link is None:
            self._link, self._recovery = str(self.hparams.task_link), None
            if self._link == "auto":
                self._recovery = nearest_recovery(self.query_emb, self.query_task, len(self.task_names))
                self._link = "nearest" if self._recovery >= AUTO_LINK_MIN_RECOVERY else "all"
        return self._link

    def link_tasks(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(new prompt, task) index pairs for prompts of unknown task (see ``task_link``)."""
        return TASK_LINKS[self.task_link](emb, self.query_emb, self.query_task, len(self.task_names))

    def _forward(self, emb: torch.Tensor, w: torch.Tensor, new_task: tuple[torch.Tensor, torch.Tensor],
                 hidden: torch.Tensor | None = None, llm_visible: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K) of new query nodes ``emb`` at ``w`` joined to tasks by ``new_task`` (pairs), on the training
        graph with the training queries in ``hidden`` (bool, N) cut off and the query-LLM cells ``llm_visible``
        (bool, N x K; default all) visible."""
        if len(self.query_emb) == 0:
            raise RuntimeError("GraphRouter: no training graph; fit it or load a checkpoint first")
        n, k, dev = len(self.query_emb), len(self.model_names), emb.device
        keep = torch.ones(n, dtype=torch.bool, device=dev) if hidden is None else ~hidden
        visible = keep.unsqueeze(-1).expand(n, k) if llm_visible is None else llm_visible & keep.unsqueeze(-1)
        q_idx, m_idx = visible.nonzero(as_tuple=True)  # row-major, as boolean indexing below
        edge_attr = torch.stack([self.edge_scores, normalized_cost(self.edge_costs, self.tau_value)], dim=-1)[visible]
        train_q = torch.arange(n, device=dev)
        new_rows, new_tasks = new_task
        task_query = (torch.cat([self.query_task, new_tasks]), torch.cat([train_q, n + new_rows]))
        query_task = (train_q[keep], self.query_task[keep])
        return self.net(self.task_features, torch.cat([self.query_emb, emb]), self.llm_features, w,
                        query_task, task_query, (q_idx, m_idx), edge_attr)

    def scores(self, emb: torch.Tensor, w: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Edge logits (B, K) of new prompts against every LLM: with known task indices (into ``task_names``), or
        joined by ``task_link`` (None)."""
        if task is None:
            pairs = self.link_tasks(emb)
        else:
            pairs = (torch.arange(len(emb), device=emb.device), task.to(emb.device).long())
        return self._forward(emb, w.to(emb.dtype), pairs)

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Edge logits (B, K) of the prompts at preferences ``w``; the task is inferred (``task_link``)."""
        return self.scores(emb, w)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """``steps_per_batch`` steps of edge prediction: the batch's prompts are the new queries whose LLM edges
        are predicted, each step with fresh preferences and a fresh edge mask."""
        optimizer = self.optimizer()
        rows = batch["row"].long().to(self.device)
        for _ in range(self.hparams.steps_per_batch):
            loss, accuracy = self._edge_loss(batch["emb"], rows)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.log_dict({"train/loss": loss.detach(), "train/best_accuracy": accuracy}, on_step=False, on_epoch=True,
                      batch_size=len(rows))
        return loss.detach()

    def _edge_loss(self, emb: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of the new queries' edge logits against the target at w (``target``), and the share
        of queries whose top-scored model is a best one at w."""
        n, k = self.edge_scores.shape
        w = sample_preferences(len(rows), device=self.device, cost_power=self.hparams.cost_power)
        hidden = torch.zeros(n, dtype=torch.bool, device=self.device)
        hidden[rows] = True
        llm_visible = torch.rand(n, k, device=self.device) >= self.hparams.mask_rate
        pairs = (torch.arange(len(rows), device=self.device), self.query_task[rows])
        logits = self._forward(emb, w, pairs, hidden, llm_visible)
        rewards = reward(self.edge_scores[rows], self.edge_costs[rows], w, self.tau_value)
        best = (rewards >= rewards.max(dim=-1, keepdim=True).values - 1e-9).float()
        target = EDGE_TARGETS[self.hparams.target](rewards, w, best)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        return loss, best.gather(-1, logits.detach().argmax(dim=-1, keepdim=True)).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
