"""The LightningDataModule: builds the outcome table, splits it, embeds prompts once (cached) and serves batches.

Training batches carry ``emb`` and ``row`` only: outcomes are revealed by the bandit environment
(:meth:`RoutingDataModule.train_environment`). Evaluation batches carry the full outcome rows, because
evaluation (and the reference policies) may look at every model's outcome.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from barp.data.embedding_cache import (
    DistributedGroup,
    EmbeddingCache,
    default_cache_dir,
)
from barp.data.environment import BanditEnvironment, Environment, LoggedEnvironment
from barp.data.parts import Batches, Source, Split, Synthetic, as_record, check_at_least_one, coerce
from barp.data.splits import Splits, make_splits
from barp.data.table import OutcomeTable
from barp.encoders import (
    DTYPE_FILE,
    EncoderSpec,
    SentenceEncoder,
    check_max_length,
    encoder_identity,
    resolve_dtype,
    resolve_encoder_path,
)
from barp.errors import ConfigError

if TYPE_CHECKING:  # annotations only: barp.data.sources.logs imports pandas, read when a training log is given
    from barp.data.sources.logs import LoggedFeedback

#: Split names in the order predict batches number them (``batch["split"]``).
SPLIT_ORDER = ("train", "val", "test", "ood")
#: The parts' defaults (module-level: a default argument is built once).
DEFAULT_SYNTHETIC, DEFAULT_SPLIT, DEFAULT_ENCODER_SPEC, DEFAULT_BATCHES = Synthetic(), Split(), EncoderSpec(), Batches()


class EvaluationShards(DistributedSampler):
    """Each process's share of an evaluation split, without padding: process r of W takes rows r, r + W, ...

    Lightning's default distributed sampler pads a split to a multiple of the number of processes by repeating
    prompts, so every mean over it would count those prompts twice. Evaluation metrics are sums reduced across the
    processes (:mod:`barp.metrics.routing`), so uneven shares give the exact mean over the split.
    """

    def __init__(self, dataset: _Rows, num_replicas: int, rank: int) -> None:
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


class _LogRows(Dataset):
    """Batches of log rows: ``row`` (the log row) and ``emb``, gathered per batch from one embedding per distinct
    prompt (memory-mapped on the CPU), so a log of R requests over P prompts holds P embeddings, not R."""

    def __init__(self, rows: torch.Tensor, prompt: torch.Tensor, table: np.ndarray | torch.Tensor) -> None:
        self.rows, self.prompt, self.table = rows, prompt, table
        self.n = len(rows)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long).to(self.rows.device)
        prompts = self.prompt[index]
        if isinstance(self.table, torch.Tensor):
            emb = self.table[prompts]
        else:  # a memory-mapped file: read the batch's rows (a copy), in the order asked
            emb = torch.from_numpy(np.ascontiguousarray(self.table[prompts.cpu().numpy()]))
        return {"emb": emb, "row": self.rows[index]}


def _identity_collate(batch: Any) -> Any:
    """The batch as :meth:`_Rows.__getitems__` gathered it (a dict of tensors; torch types a collate function's
    input as a list of samples)."""
    return batch


class RoutingDataModule(L.LightningDataModule):
    """Serves a routing table's ID train/val/test and OOD test splits as frozen-encoder embeddings.

    With no ``source`` the table is barp's built-in benchmark, a SYNTHETIC RouterBench-shaped table generated
    from a seed (see :mod:`barp.data.synthetic`); with ``source`` it is read from its files.

    Each argument but ``train_log``, ``cache_dir`` and ``predict_splits`` is a part (a dataclass of
    :mod:`barp.data.parts`, or :class:`~barp.encoders.EncoderSpec`), given as the part or as a dict of its options
    (YAML ``data.init_args.split.ood_tasks``, CLI ``--data.init_args.batches.batch_size``). The hyperparameters
    hold each part as a plain dict.

    Args:
        source: The outcome files and how to read them; None uses the built-in synthetic benchmark.
        train_log: Train from this log of served requests (CSV, JSON lines or parquet with prompt, model,
            propensity, score, cost; see docs/off_policy.md) instead of pulling arms on the table's training split:
            off-policy, each request revealing only the model that answered. The table still gives the
            validation and test splits (and the model list, which the log's models must belong to).
        synthetic: The built-in synthetic benchmark's size and seed (used without ``source``).
        split: Held-out (OOD) task families, validation and test fractions, and the split's seed.
        encoder: How prompts are embedded (frozen encoder, max length, truncation side, dtype, batch size, device).
            With dtype ``auto`` the resolved dtype replaces it in :attr:`encoder_spec` and the hyperparameters.
        batches: Training and evaluation batch sizes, training repeats per epoch, DataLoader workers.
        cache_dir: Embedding cache folder; default ``$BARP_CACHE`` or ``~/.cache/barp``.
        predict_splits: Which splits ``predict`` routes.
    """

    def __init__(
        self,
        source: Source | None = None,
        train_log: str | None = None,
        synthetic: Synthetic = DEFAULT_SYNTHETIC,
        split: Split = DEFAULT_SPLIT,
        encoder: EncoderSpec = DEFAULT_ENCODER_SPEC,
        batches: Batches = DEFAULT_BATCHES,
        cache_dir: str | None = None,
        predict_splits: list[Literal["train", "val", "test", "ood"]] | None = None,
    ) -> None:
        super().__init__()
        self.source = None if source is None else coerce(Source, source, "data.source")
        self.synthetic = coerce(Synthetic, synthetic, "data.synthetic")
        self.split = coerce(Split, split, "data.split")
        self._encoder_spec = coerce(EncoderSpec, encoder, "data.encoder")
        self.batches = coerce(Batches, batches, "data.batches")
        self.train_log_path = train_log
        self.cache_dir = cache_dir
        # Plain dicts only: checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({
            "source": as_record(self.source), "train_log": train_log, "synthetic": as_record(self.synthetic),
            "split": as_record(self.split), "encoder": as_record(self._encoder_spec),
            "batches": as_record(self.batches), "cache_dir": cache_dir,
            "predict_splits": None if predict_splits is None else list(predict_splits),
        })
        check_at_least_one(self.batches, "data.batches", ("batch_size", "eval_batch_size", "train_repeats"))
        check_at_least_one(self._encoder_spec, "data.encoder", ("max_length",))
        check_at_least_one(self.synthetic, "data.synthetic", ("num_prompts",))
        ood_tasks = self.split.ood_tasks
        if ood_tasks is None:
            from barp.data.synthetic import DEFAULT_OOD_TASKS

            ood_tasks = list(DEFAULT_OOD_TASKS) if self.source is None else []
        test_path = self.source.test_path if self.source else None
        val_path = self.source.val_path if self.source else None
        for fixed, fraction, name in ((test_path, self.split.test_fraction, "test"),
                                      (val_path, self.split.val_fraction, "val")):
            if fixed and fraction is not None:
                raise ConfigError(
                    f"data.split.{name}_fraction ({fraction}) cannot be used with data.source.{name}_path ({fixed}): "
                    f"the {name} split is that file's rows; remove data.split.{name}_fraction (or pass "
                    f"--data.split.{name}_fraction null)"
                )
        val_fraction, test_fraction = self.split.val_fraction, self.split.test_fraction
        self.val_fraction = 0.0 if val_path else (0.1 if val_fraction is None else val_fraction)
        self.test_fraction = 0.0 if test_path else (0.2 if test_fraction is None else test_fraction)
        self.ood_tasks = list(ood_tasks)
        self.predict_splits = list(predict_splits or ["test", "ood"])
        self._table: OutcomeTable | None = None
        self._roles: list[str] | None = None  # per row: "pool", "val" or "test" (fixed split files)
        # the training log (train_log): LoggedFeedback, distinct prompts, and their embeddings
        self._log: LoggedFeedback | None = None
        self._log_prompts: list[str] | None = None
        self._log_prompt_index: np.ndarray | None = None
        self._log_embeddings: np.ndarray | None = None
        self._splits: Splits | None = None
        self._embeddings: np.ndarray | None = None
        self._encoder: tuple[dict, SentenceEncoder] | None = None  # (spec, encoder) of the last embedding

    @property
    def encoder_spec(self) -> EncoderSpec:
        """How the prompts are embedded; its dtype is the resolved one once the prompts are embedded."""
        return self._encoder_spec

    # ------------------------------------------------------------------ table and splits
    @property
    def table(self) -> OutcomeTable:
        """The full outcome table (built on first use)."""
        if self._table is None:
            if self.source is None:
                from barp.data.synthetic import generate_synthetic

                self._table = generate_synthetic(num_prompts=self.synthetic.num_prompts, seed=self.synthetic.seed)
            else:
                self._table, self._roles = self._load_files()
        return self._table

    def _load_files(self) -> tuple[OutcomeTable, list[str] | None]:
        """The table of the source's ``path`` (and of ``val_path`` / ``test_path``, with each row's split role)."""
        from barp.data.sources import load_table
        from barp.data.sources.assemble import concat

        source = self.source
        assert source is not None, "the built-in benchmark has no files"
        options = dict(format=source.format, trust_pickle=source.trust_pickle, cache_dir=self.cache_dir,
                       **dataclasses.asdict(source.load_options()))
        parts = source.files()
        tables = [load_table(p, **options) for _, p in parts]
        if len(tables) == 1:
            return tables[0], None
        named = ", ".join(f"{role if role != 'pool' else 'train'}={p}" for role, p in parts)
        table = concat(tables, source=named, pools=[role for role, _ in parts])
        roles = [role for (role, _), t in zip(parts, tables) for _ in range(len(t))]
        assert len(roles) == len(table), "rows of different roles are never dropped as copies"
        training = set(tables[0].prompts)
        for (role, p), t in zip(parts[1:], tables[1:]):
            shared = [text for text in t.prompts if text in training]
            if shared:
                warnings.warn(
                    f"{p}: {len(set(shared))} of its {len(set(t.prompts))} prompts also occur in data.source.path "
                    f"({source.path}); they are kept as published (the {role} split is the file's rows), so they "
                    "are both trained and evaluated on",
                    UserWarning,
                    stacklevel=3,
                )
        return table, roles

    @property
    def splits(self) -> Splits:
        """Row indices of each split."""
        if self._splits is None:
            self._splits = make_splits(self.table, self.ood_tasks, self.val_fraction, self.test_fraction,
                                       self.split.seed, roles=self._roles)
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

        return int(AutoConfig.from_pretrained(resolve_encoder_path(self.encoder_spec.name)).hidden_size)

    @property
    def eval_splits(self) -> dict[str, list[str]]:
        """Names of the splits each evaluation stage reports (``id``, ``ood``), in dataloader order."""
        test = ["id"] + (["ood"] if len(self.splits.ood) else [])
        return {"validate": ["id"], "test": test, "fit": ["id"]}

    @property
    def train_log(self) -> LoggedFeedback | None:
        """The training log (``train_log``) as a validated ``LoggedFeedback``, or None."""
        if self._log is None and self.train_log_path:
            from barp.data.sources.logs import read_log

            self._log = read_log(self.train_log_path, models=self.table.models)
            index: dict[str, int] = {}  # distinct prompt text -> its row among the log's prompts
            for text in self._log.prompts:
                index.setdefault(text, len(index))
            self._log_prompts = list(index)
            self._log_prompt_index = np.asarray([index[t] for t in self._log.prompts], dtype=np.int64)
            evaluated = {self.table.prompts[i] for part in (self.splits.val, self.splits.test, self.splits.ood)
                         for i in part}
            shared = sum(1 for t in self._log_prompts if t in evaluated)
            if shared:
                warnings.warn(f"{self.train_log_path}: {shared} of its {len(self._log_prompts)} prompts are also "
                              "in the validation or test splits, so they are trained and evaluated on",
                              UserWarning, stacklevel=2)
        return self._log

    def _distinct_log_prompts(self) -> list[str]:
        """The training log's distinct prompts (set with the log by :attr:`train_log`)."""
        assert self._log_prompts is not None, "read train_log first"
        return self._log_prompts

    def train_environment(self) -> Environment:
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

        For Python use and tests: ``RoutingDataModule(split=Split(ood_tasks=[...])).use_table(table)``.
        """
        if self._splits is not None or self._embeddings is not None:
            raise RuntimeError("use_table must come before setup(): the splits and embeddings follow the table")
        self._table, self._roles = table, None
        return self

    def train_embeddings(self) -> np.ndarray:
        """Embeddings of the training split, shape (N, D), row i = training batches' ``row == i`` (no outcomes)."""
        assert self._embeddings is not None, "call setup() first"
        if self.train_log is not None:
            assert self._log_embeddings is not None, "call setup() first"
            return self._log_embeddings  # one row per distinct log prompt (the critic's rows)
        return self._embeddings[self.splits.train]

    # ------------------------------------------------------------------ embeddings
    def _cache_root(self) -> Path:
        return (Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()) / "embeddings"

    def _resolve_dtype(self, group: DistributedGroup | None = None) -> str:
        """Resolve ``encoder_dtype`` (``auto``: probe once per machine) and keep the result in the hyperparameters,
        so the cache key, checkpoints and a served router all see the dtype the prompts were embedded in. Under DDP
        every process takes rank 0's choice."""
        spec = self._encoder_spec
        check_max_length(spec.name, spec.max_length, "data.encoder.max_length")
        dtype = resolve_dtype(spec.dtype, spec.name, spec.max_length, spec.truncation_side, spec.batch_size,
                              spec.device, self._cache_root() / DTYPE_FILE)
        if group is not None:
            dtype = group.broadcast(dtype)
        self._encoder_spec = dataclasses.replace(spec, dtype=dtype)
        self.hparams["encoder"] = as_record(self._encoder_spec)
        return dtype

    def _cache(self) -> EmbeddingCache:
        dtype = self._resolve_dtype()
        spec = self._encoder_spec
        return EmbeddingCache(self._cache_root(), encoder_identity(spec.name), spec.max_length, spec.truncation_side,
                              dtype)

    def _encode(self, texts: list[str]) -> np.ndarray:
        self._resolve_dtype()
        spec = dataclasses.asdict(self._encoder_spec)
        if self._encoder is None or self._encoder[0] != spec:  # loaded once, not once per cache chunk
            self._encoder = (spec, SentenceEncoder(**spec))
        return self._encoder[1].encode(texts, progress=True)

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
            self._log_embeddings, _ = self._cache().get_or_compute(self._distinct_log_prompts(), self._encode)
        self._encoder = None  # every prompt is embedded: let the weights go

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
            self._log_embeddings, _ = self._cache().get_or_compute(self._distinct_log_prompts(), self._encode,
                                                                   group=group)
        self._encoder = None
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
                          collate_fn=_identity_collate, num_workers=self.batches.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Training batches: ``emb`` and ``row`` (position in the training split, or the log row with
        ``train_log``) only; no outcomes."""
        repeats = self.batches.train_repeats
        if self.train_log is not None:
            log_rows = torch.arange(len(self.train_log)).repeat(repeats)
            prompt = torch.as_tensor(self._log_prompt_index)[log_rows]
            table: np.ndarray | torch.Tensor = self._log_embedding_file()
            on_device = self._on_train_device({"row": log_rows, "prompt": prompt})
            if on_device["row"].device.type != "cpu":  # batches gathered on the accelerator: the table goes there
                table = torch.as_tensor(np.asarray(table)).to(on_device["row"].device)
            log_data = _LogRows(on_device["row"], on_device["prompt"], table)
            return DataLoader(log_data, batch_size=self.batches.batch_size, shuffle=True, collate_fn=_identity_collate,
                              num_workers=self.batches.num_workers)
        rows = np.tile(self.splits.train, self.batches.train_repeats)
        tensors = self._tensors(rows, outcomes=False)
        tensors["row"] = torch.arange(len(self.splits.train)).repeat(self.batches.train_repeats)  # env positions
        return self._loader(self._on_train_device(tensors), self.batches.batch_size, shuffle=True)

    def _log_embedding_file(self) -> np.ndarray:
        """The training log's distinct-prompt embeddings, memory-mapped from ``log-<prompts hash>.npy`` in the
        embedding cache's folder (written once, atomically, the first time a log with these prompts trains)."""
        import hashlib

        from barp.atomic import atomic_path
        from barp.data.embedding_cache import text_key

        assert self._log_embeddings is not None, "call setup() first"
        digest = hashlib.sha1(b"".join(text_key(t) for t in self._distinct_log_prompts())).hexdigest()[:16]
        path = self._cache().folder / f"log-{digest}.npy"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.asarray(self._log_embeddings, dtype=np.float32))
        table = np.load(path, mmap_mode="r")
        if table.shape != self._log_embeddings.shape:  # a damaged or foreign file: write it again
            path.unlink()
            return self._log_embedding_file()
        return table

    def _on_train_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The training tensors on the trainer's accelerator, once, when batches are gathered in this process
        (``num_workers = 0``): each batch is then one indexing on the device, with no host-to-device copy."""
        trainer = getattr(self, "trainer", None)
        device = trainer.strategy.root_device if trainer is not None else None
        if device is None or device.type == "cpu" or self.batches.num_workers > 0:
            return tensors
        return {k: v.to(device) for k, v in tensors.items()}

    def val_dataloader(self) -> DataLoader:
        """ID validation batches with full outcomes (for evaluation only)."""
        return self._loader(self._tensors(self.splits.val, outcomes=True), self.batches.eval_batch_size, False,
                            split="validation")

    def test_dataloader(self) -> list[DataLoader]:
        """ID test and (if any task is held out) OOD test batches, in that order."""
        size = self.batches.eval_batch_size
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
        return self._loader(tensors, self.batches.eval_batch_size, False, split="predict")
