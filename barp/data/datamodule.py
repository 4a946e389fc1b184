"""The LightningDataModule: builds the outcome table, splits it, embeds prompts once (cached) and serves batches.

Training batches carry ``emb`` and ``row`` only: outcomes are revealed by the bandit environment
(:meth:`RoutingDataModule.train_environment`). Evaluation batches carry the full outcome rows, because
evaluation (and the reference policies) may look at every model's outcome.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from barp.data.embedding_cache import (
    DistributedGroup,
    EmbeddingCache,
    default_cache_dir,
)
from barp.data.environment import BanditEnvironment, LoggedEnvironment
from barp.data.splits import Splits, make_splits
from barp.data.table import OutcomeTable
from barp.encoders import (
    DEFAULT_ENCODER,
    DTYPE_FILE,
    EncoderDtype,
    SentenceEncoder,
    check_max_length,
    encoder_identity,
    resolve_dtype,
    resolve_encoder_path,
)
from barp.errors import ConfigError

#: Split names in the order predict batches number them (``batch["split"]``).
SPLIT_ORDER = ("train", "val", "test", "ood")


class EvaluationShards(DistributedSampler):
    """Each process's share of an evaluation split, without padding: process r of W takes rows r, r + W, ...

    Lightning's default distributed sampler pads a split to a multiple of the number of processes by repeating
    prompts, so every mean over it would count those prompts twice. Evaluation metrics are sums reduced across the
    processes (:mod:`barp.metrics.routing`), so uneven shares give the exact mean over the split.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))


class _Rows(Dataset):
    """Batches of rows from in-memory tensors, gathered in one indexing operation per batch."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long).to(next(iter(self.tensors.values())).device)
        return {k: v[index] for k, v in self.tensors.items()}


def _identity_collate(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return batch


class RoutingDataModule(L.LightningDataModule):
    """Serves a routing table's ID train/val/test and OOD test splits as frozen-encoder embeddings.

    With no ``path`` the table is barp's built-in benchmark, a SYNTHETIC RouterBench-shaped table generated
    from a seed (see :mod:`barp.data.synthetic`); with ``path`` it is read from a file.

    Args:
        path: Data file (or glob, comma-separated files, ``hf://...`` file, ``datasets`` folder or
            ``hf-dataset://OWNER/NAME@REVISION#SPLIT``); None uses the built-in synthetic benchmark. With
            ``test_path`` (or ``val_path``) these are the training rows.
        test_path: A published test split to keep as it is: its rows are exactly the ID test split (those of an
            ``ood_tasks`` family go to the OOD test instead); ``test_fraction`` is then not used. Same forms as
            ``path``, read with the same options.
        val_path: A published validation split, likewise; without it validation is cut from ``path``'s rows by
            ``val_fraction``.
        train_log: Train from this log of served requests (CSV, JSON lines or parquet with prompt, model,
            propensity, score, cost; see docs/off_policy.md) instead of pulling arms on the table's training split:
            off-policy, each request revealing only the model that answered. The table still gives the
            validation and test splits (and the model list, which the log's models must belong to).
        format: File format; ``auto`` detects it from the content.
        num_prompts: Size of the built-in synthetic benchmark.
        synthetic_seed: Seed of the built-in synthetic benchmark.
        on_missing: Rows with missing score cells in a file: ``drop`` them (with one warning) or ``error``.
        trust_pickle: Load a pickle whose SHA-256 is not a pinned official file (pickles can run code).
        task_map: Extra mapping from a file's task/eval names (exact or prefix) to task families.
        default_task: Family for RouterBench eval names no rule maps, and for rows without a task.
        task_column: Column (records: key) holding each row's task family in generic tables and score records,
            e.g. ``cluster_id`` for LLMRouter's files.
        prices: Price table (model -> USD per 1M input/output tokens) for record files without costs.
        ood_tasks: Task families held out of training and evaluated as the out-of-distribution test split.
        val_fraction: Share of each in-distribution task used for validation (default 0.1; refused with
            ``val_path``).
        test_fraction: Share of each in-distribution task used for the ID test (default 0.2; not used, and
            refused if set, with ``test_path``).
        split_seed: Seed of the split.
        encoder: Frozen sentence encoder (HF name or local directory); the default resolves to the packaged
            all-MiniLM-L6-v2.
        max_length: Encoder max tokens per prompt.
        truncation_side: Which end of a long prompt to cut; ``left`` keeps the end (the question).
        encoder_batch_size: Prompts per encoder forward pass.
        encoder_dtype: Encoder compute dtype. ``auto`` (default) uses the fastest dtype whose embeddings agree with
            float32's (cosine >= 0.999 on every prompt of a short probe, run once per machine and remembered in
            ``<cache_dir>/embeddings/encoder_dtype.json``); ``float32`` is the reference. Once resolved,
            ``hparams.encoder_dtype`` (and so every checkpoint and the embedding cache's key) holds the dtype used.
        encoder_device: Device for embedding (``cpu``, ``cuda``); embeddings are cached either way.
        cache_dir: Embedding cache folder; default ``$BARP_CACHE`` or ``~/.cache/barp``.
        batch_size: Training batch size (per device).
        eval_batch_size: Batch size for validation, test and predict.
        train_repeats: Passes over the training prompts per epoch (each with fresh preferences and actions).
        num_workers: DataLoader workers (the data are in memory; 0 is usually fastest).
        predict_splits: Which splits ``predict`` routes.
    """

    def __init__(
        self,
        path: str | None = None,
        test_path: str | None = None,
        val_path: str | None = None,
        train_log: str | None = None,
        format: str = "auto",
        num_prompts: int = 3000,
        synthetic_seed: int = 0,
        on_missing: Literal["drop", "error"] = "drop",
        trust_pickle: bool = False,
        task_map: dict[str, str] | None = None,
        default_task: str = "other",
        task_column: str = "task",
        prices: str | dict | None = None,
        ood_tasks: list[str] | None = None,
        val_fraction: float | None = None,
        test_fraction: float | None = None,
        split_seed: int = 42,
        encoder: str = DEFAULT_ENCODER,
        max_length: int = 256,
        truncation_side: Literal["left", "right"] = "left",
        encoder_batch_size: int = 64,
        encoder_dtype: EncoderDtype = "auto",
        encoder_device: str = "cpu",
        cache_dir: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1024,
        train_repeats: int = 1,
        num_workers: int = 0,
        predict_splits: list[Literal["train", "val", "test", "ood"]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                            ("train_repeats", train_repeats), ("max_length", max_length)):
            if value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value!r}")
        if ood_tasks is None:
            from barp.data.synthetic import DEFAULT_OOD_TASKS

            ood_tasks = list(DEFAULT_OOD_TASKS) if path is None else []
        if (test_path or val_path) and path is None:
            raise ConfigError("data.test_path / data.val_path need data.path (the training rows) as well")
        for fixed, fraction, name in ((test_path, test_fraction, "test"), (val_path, val_fraction, "val")):
            if fixed and fraction is not None:
                raise ConfigError(
                    f"data.{name}_fraction ({fraction}) cannot be used with data.{name}_path ({fixed}): the {name} "
                    f"split is that file's rows; remove data.{name}_fraction (or pass --data.{name}_fraction null)"
                )
        self.val_fraction = 0.0 if val_path else (0.1 if val_fraction is None else val_fraction)
        self.test_fraction = 0.0 if test_path else (0.2 if test_fraction is None else test_fraction)
        self.ood_tasks = list(ood_tasks)
        self.predict_splits = list(predict_splits or ["test", "ood"])
        self._table: OutcomeTable | None = None
        self._roles: list[str] | None = None  # per row: "pool", "val" or "test" (fixed split files)
        self._log = None  # the training log (train_log): LoggedFeedback, distinct prompts, and their embeddings
        self._log_prompts: list[str] | None = None
        self._log_prompt_index: np.ndarray | None = None
        self._log_embeddings: np.ndarray | None = None
        self._splits: Splits | None = None
        self._embeddings: np.ndarray | None = None

    # ------------------------------------------------------------------ table and splits
    @property
    def table(self) -> OutcomeTable:
        """The full outcome table (built on first use)."""
        if self._table is None:
            hp = self.hparams
            if hp.path is None:
                from barp.data.synthetic import generate_synthetic

                self._table = generate_synthetic(num_prompts=hp.num_prompts, seed=hp.synthetic_seed)
            else:
                self._table, self._roles = self._load_files()
        return self._table

    def _load_files(self) -> tuple[OutcomeTable, list[str] | None]:
        """The table of ``path`` (and of ``val_path`` / ``test_path``, with each row's split role)."""
        from barp.data.sources import load_table
        from barp.data.sources.assemble import concat

        hp = self.hparams
        options = dict(format=hp.format, on_missing=hp.on_missing, trust_pickle=hp.trust_pickle,
                       task_map=hp.task_map, default_task=hp.default_task, prices=hp.prices,
                       cache_dir=hp.cache_dir, task_column=hp.task_column)
        parts = [(role, p) for role, p in (("pool", hp.path), ("val", hp.val_path), ("test", hp.test_path)) if p]
        tables = [load_table(p, **options) for _, p in parts]
        if len(tables) == 1:
            return tables[0], None
        source = ", ".join(f"{role if role != 'pool' else 'train'}={p}" for role, p in parts)
        table = concat(tables, source=source, pools=[role for role, _ in parts])
        roles = [role for (role, _), t in zip(parts, tables) for _ in range(len(t))]
        assert len(roles) == len(table), "rows of different roles are never dropped as copies"
        training = set(tables[0].prompts)
        for (role, p), t in zip(parts[1:], tables[1:]):
            shared = [text for text in t.prompts if text in training]
            if shared:
                warnings.warn(
                    f"{p}: {len(set(shared))} of its {len(set(t.prompts))} prompts also occur in data.path "
                    f"({hp.path}); they are kept as published (the {role} split is the file's rows), so they "
                    "are both trained and evaluated on",
                    UserWarning,
                    stacklevel=3,
                )
        return table, roles

    @property
    def splits(self) -> Splits:
        """Row indices of each split."""
        if self._splits is None:
            hp = self.hparams
            self._splits = make_splits(self.table, self.ood_tasks, self.val_fraction, self.test_fraction, hp.split_seed,
                                       roles=self._roles)
        return self._splits

    @property
    def model_names(self) -> list[str]:
        """Candidate model names, in the policy's output order."""
        return list(self.table.models)

    @property
    def task_names(self) -> list[str]:
        """All task families (ID and OOD), sorted."""
        return self.table.task_names

    @property
    def embed_dim(self) -> int:
        """Embedding size of the configured encoder (read from its config; no weights are loaded)."""
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(resolve_encoder_path(self.hparams.encoder)).hidden_size)

    @property
    def eval_splits(self) -> dict[str, list[str]]:
        """Names of the splits each evaluation stage reports (``id``, ``ood``), in dataloader order."""
        test = ["id"] + (["ood"] if len(self.splits.ood) else [])
        return {"validate": ["id"], "test": test, "fit": ["id"]}

    @property
    def train_log(self):
        """The training log (``train_log``) as a validated ``LoggedFeedback``, or None."""
        if self._log is None and self.hparams.train_log:
            from barp.data.sources.logs import read_log

            self._log = read_log(self.hparams.train_log, models=self.table.models)
            index: dict[str, int] = {}  # distinct prompt text -> its row among the log's prompts
            for text in self._log.prompts:
                index.setdefault(text, len(index))
            self._log_prompts = list(index)
            self._log_prompt_index = np.asarray([index[t] for t in self._log.prompts], dtype=np.int64)
            evaluated = {self.table.prompts[i] for part in (self.splits.val, self.splits.test, self.splits.ood)
                         for i in part}
            shared = sum(1 for t in self._log_prompts if t in evaluated)
            if shared:
                warnings.warn(f"{self.hparams.train_log}: {shared} of its {len(self._log_prompts)} prompts are also "
                              "in the validation or test splits, so they are trained and evaluated on",
                              UserWarning, stacklevel=2)
        return self._log

    def train_environment(self):
        """The bandit environment over the training split (row numbers match training batches' ``row``); with
        ``train_log``, the :class:`~barp.data.environment.LoggedEnvironment` of the log (row = log row)."""
        log = self.train_log
        if log is not None:
            return LoggedEnvironment(log.actions, log.propensity, log.score, log.cost, self._log_prompt_index,
                                     list(log.models))
        return BanditEnvironment(self.table.subset(self.splits.train))

    def embeddings(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Embeddings of the table's rows ``rows`` (default: every row), shape (N, D), in the table's row order."""
        if self._embeddings is None:
            raise RuntimeError("the prompts are not embedded yet: call prepare_data() and setup() first")
        return self._embeddings if rows is None else self._embeddings[rows]

    def use_table(self, table: OutcomeTable) -> RoutingDataModule:
        """Serve ``table`` (an in-memory outcome table) instead of the configured source; before setup only.

        For Python use and tests: ``RoutingDataModule(ood_tasks=[...]).use_table(table)``.
        """
        if self._splits is not None or self._embeddings is not None:
            raise RuntimeError("use_table must come before setup(): the splits and embeddings follow the table")
        self._table, self._roles = table, None
        return self

    def train_embeddings(self) -> np.ndarray:
        """Embeddings of the training split, shape (N, D), row i = training batches' ``row == i`` (no outcomes)."""
        assert self._embeddings is not None, "call setup() first"
        if self.train_log is not None:
            return self._log_embeddings  # one row per distinct log prompt (the critic's rows)
        return self._embeddings[self.splits.train]

    # ------------------------------------------------------------------ embeddings
    def _cache_root(self) -> Path:
        hp = self.hparams
        return (Path(hp.cache_dir).expanduser() if hp.cache_dir else default_cache_dir()) / "embeddings"

    def _resolve_dtype(self, group: DistributedGroup | None = None) -> str:
        """Resolve ``encoder_dtype`` (``auto``: probe once per machine) and keep the result in the hyperparameters,
        so the cache key, checkpoints and a served router all see the dtype the prompts were embedded in. Under DDP
        every process takes rank 0's choice."""
        hp = self.hparams
        check_max_length(hp.encoder, hp.max_length, "data.max_length")
        dtype = resolve_dtype(hp.encoder_dtype, hp.encoder, hp.max_length, hp.truncation_side, hp.encoder_batch_size,
                              hp.encoder_device, self._cache_root() / DTYPE_FILE)
        if group is not None:
            dtype = group.broadcast(dtype)
        hp.encoder_dtype = dtype
        return dtype

    def _cache(self) -> EmbeddingCache:
        hp = self.hparams
        dtype = self._resolve_dtype()
        return EmbeddingCache(self._cache_root(), encoder_identity(hp.encoder), hp.max_length, hp.truncation_side,
                              dtype)

    def _encode(self, texts: list[str]) -> np.ndarray:
        hp = self.hparams
        encoder = SentenceEncoder(hp.encoder, hp.max_length, hp.truncation_side, hp.encoder_batch_size,
                                  self._resolve_dtype(), hp.encoder_device)
        return encoder.encode(texts, progress=True)

    def _distributed(self) -> DistributedGroup | None:
        """The DDP processes sharing the embedding work: set when a trainer runs this module on several."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return DistributedGroup.current(trainer.local_rank)

    def prepare_data(self) -> None:
        """Embed every prompt not yet in the cache (runs once per node, before ``setup``).

        Under DDP this only resolves ``encoder_dtype`` (so a probe runs once per node, before the other processes
        wait for it); ``setup`` then shares the uncached prompts among the processes.
        """
        if self.trainer is not None and self.trainer.world_size > 1:
            self._resolve_dtype()
            return
        self._embeddings, _ = self._cache().get_or_compute(self.table.prompts, self._encode)
        if self.train_log is not None:
            self._log_embeddings, _ = self._cache().get_or_compute(self._log_prompts, self._encode)

    def setup(self, stage: str | None = None) -> None:
        """Load embeddings (from the cache that ``prepare_data`` filled; under DDP each process embeds its share of
        the uncached prompts first) and check the split sizes."""
        group = self._distributed()
        if group is not None and (self._embeddings is None
                                  or (self.train_log is not None and self._log_embeddings is None)):
            self._resolve_dtype(group)  # every process embeds with rank 0's dtype
        if self._embeddings is None:
            self._embeddings, _ = self._cache().get_or_compute(self.table.prompts, self._encode, group=group)
        if self.train_log is not None and self._log_embeddings is None:
            self._log_embeddings, _ = self._cache().get_or_compute(self._log_prompts, self._encode, group=group)
        if len(self.splits.train) == 0:
            raise ConfigError(f"{self.table.source}: the training split is empty; lower val/test fractions")

    def _tensors(self, rows: np.ndarray, outcomes: bool) -> dict[str, torch.Tensor]:
        """Embeddings and full-table row numbers of ``rows``; with ``outcomes``, also task, scores and costs."""
        assert self._embeddings is not None, "call setup() first"
        table = self.table
        out = {"emb": torch.as_tensor(self._embeddings[rows]), "row": torch.as_tensor(rows, dtype=torch.long)}
        if outcomes:
            task_index = {t: i for i, t in enumerate(table.task_names)}
            out["task"] = torch.as_tensor([task_index[table.tasks[i]] for i in rows], dtype=torch.long)
            out["scores"] = torch.as_tensor(table.scores[rows], dtype=torch.float32)
            out["costs"] = torch.as_tensor(table.costs[rows], dtype=torch.float32)
        return out

    def _loader(self, tensors: dict[str, torch.Tensor], batch_size: int, shuffle: bool,
                split: str | None = None) -> DataLoader:
        """Batches of ``tensors``; an evaluation ``split`` is sharded across processes without padding."""
        rows = _Rows(tensors)
        sampler = None
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if split is not None and world > 1:
            if 0 < len(rows) < world:
                raise ConfigError(f"the {split} split has {len(rows)} prompts, fewer than the {world} processes "
                                  "(trainer.devices x num_nodes): evaluate on fewer devices or a larger split")
            sampler = EvaluationShards(rows, world, torch.distributed.get_rank())
        return DataLoader(rows, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          collate_fn=_identity_collate, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Training batches: ``emb`` and ``row`` (position in the training split, or the log row with
        ``train_log``) only; no outcomes."""
        repeats = self.hparams.train_repeats
        if self.train_log is not None:
            log_rows = torch.arange(len(self.train_log)).repeat(repeats)
            emb = torch.as_tensor(self._log_embeddings)[torch.as_tensor(self._log_prompt_index)[log_rows]]
            return self._loader(self._on_train_device({"emb": emb, "row": log_rows}), self.hparams.batch_size,
                                shuffle=True)
        rows = np.tile(self.splits.train, self.hparams.train_repeats)
        tensors = self._tensors(rows, outcomes=False)
        tensors["row"] = torch.arange(len(self.splits.train)).repeat(self.hparams.train_repeats)  # env positions
        return self._loader(self._on_train_device(tensors), self.hparams.batch_size, shuffle=True)

    def _on_train_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training tensors on the trainer's accelerator, once, when batches are gathered in this process
        (``num_workers = 0``): each batch is then one indexing on the device, with no host-to-device copy."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu" or self.hparams.num_workers > 0:
            return tensors
        return {k: v.to(device) for k, v in tensors.items()}

    def val_dataloader(self) -> DataLoader:
        """ID validation batches with full outcomes (for evaluation only)."""
        return self._loader(self._tensors(self.splits.val, outcomes=True), self.hparams.eval_batch_size, False,
                            split="validation")

    def test_dataloader(self) -> list[DataLoader]:
        """ID test and (if any task is held out) OOD test batches, in that order."""
        size = self.hparams.eval_batch_size
        loaders = [self._loader(self._tensors(self.splits.test, True), size, False, split="ID test")]
        if len(self.splits.ood):
            loaders.append(self._loader(self._tensors(self.splits.ood, True), size, False, split="OOD test"))
        return loaders

    def predict_dataloader(self) -> DataLoader:
        """Rows of ``predict_splits``; batches carry ``row`` (position in the full table) and ``split``."""
        parts = [(SPLIT_ORDER.index(s), getattr(self.splits, s)) for s in self.predict_splits]
        rows = np.concatenate([r for _, r in parts])
        split_ids = np.concatenate([np.full(len(r), i) for i, r in parts])
        tensors = self._tensors(rows, outcomes=False)
        tensors["split"] = torch.as_tensor(split_ids, dtype=torch.long)
        return self._loader(tensors, self.hparams.eval_batch_size, False, split="predict")
