"""Logger wrappers. Their ``save_dir`` defaults to the trainer's ``default_root_dir`` (barp's CLI fills it in), so
one option decides where a run writes; W&B defaults to offline and never crashes a run for lack of network or key."""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.utilities import _scan_checkpoints
from lightning.pytorch.utilities import rank_zero_only


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api().api_key)
    except Exception:  # noqa: BLE001 - any failure means no usable key
        return False


#: Keys of the records a barp checkpoint carries (:mod:`barp.models.checkpoints`: ``RECORD_KEY``, ``ENCODER_KEY``;
#: a test checks they agree), read here for the W&B model artifact's metadata.
CHECKPOINT_RECORD_KEY = "barp"
CHECKPOINT_ENCODER_KEY = "barp_encoder"


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger, offline unless ``WANDB_MODE=online`` (or ``offline: false``) asks otherwise.

    Offline runs write a local folder under ``save_dir``; upload it later with ``wandb sync``. Asked to go
    online without an API key, it warns and stays offline instead of crashing the run.

    ``log_model`` (``true``: the checkpoints at the end of training; ``all``: each as it is written) logs the
    checkpoints as W&B model artifacts, offline too (Lightning's logger refuses that pair; here the artifacts go into
    the offline run and upload with ``wandb sync``). Each artifact's metadata holds, besides Lightning's (the
    monitored score, the checkpoint callback's settings), what the checkpoint records about its data and encoder
    (:func:`checkpoint_metadata`), so a model in W&B says what it was trained on.

    At test end barp's results table, Pareto figure and traffic shares are logged to this logger's run by
    :class:`barp.cli.callbacks.ResultsTable` (:mod:`barp.wandb_report`).

    Args:
        offline: None follows ``WANDB_MODE`` (offline unless it is ``online``); True/False force the mode.
        save_dir: Folder of the local run; None: the trainer's ``default_root_dir`` (filled in by ``barp``), else
            the working directory.
        **kwargs: Passed to :class:`lightning.pytorch.loggers.WandbLogger` (project, name, log_model, ...).
    """

    def __init__(self, offline: bool | None = None, save_dir: str | None = None, **kwargs) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "offline").lower() != "online"
        if not offline and not _wandb_has_key():
            warnings.warn("W&B online mode was requested but no API key is set (WANDB_API_KEY or `wandb login`); "
                          "logging OFFLINE instead: upload later with `wandb sync <run folder>`.", stacklevel=2)
            offline = True
        if offline:
            os.environ["WANDB_MODE"] = "offline"
            if kwargs.get("log_model"):  # Lightning refuses offline + log_model; W&B logs artifacts offline
                kwargs.setdefault("mode", "offline")
        super().__init__(offline=offline and not kwargs.get("log_model"), save_dir=save_dir or ".", **kwargs)
        self._offline = offline

    def _scan_and_log_checkpoints(self, checkpoint_callback) -> None:
        """Lightning's checkpoint artifacts (the same files, names, aliases and metadata), with the checkpoint's
        data and encoder records (:func:`checkpoint_metadata`) added to each artifact's metadata under ``barp``."""
        import wandb

        for mtime, path, score, _tag in _scan_checkpoints(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": score.item() if isinstance(score, torch.Tensor) else score,
                "original_filename": Path(path).name,
                checkpoint_callback.__class__.__name__: {
                    k: getattr(checkpoint_callback, k) for k in ("monitor", "mode", "save_last", "save_top_k",
                                                                 "save_weights_only", "_every_n_train_steps")
                    if hasattr(checkpoint_callback, k)},
                "barp": checkpoint_metadata(path),
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[path] = mtime


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """What a barp checkpoint records about its training data and frozen encoder, as plain JSON for an artifact.

    ``data``: the models (in the policy's order) and task families, the number of training prompts and of the prompts
    the fit evaluated, and a fingerprint of each set (``train_sha256``/``eval_sha256``: SHA-256 of the sorted 64-bit
    per-prompt fingerprints the checkpoint stores; two checkpoints with equal ``train_sha256`` were trained on the
    same prompts). ``encoder``: name, max length, truncation side, dtype and the weights' identity. A checkpoint
    without the records (not written by ``barp fit``) gives ``{}``.

    The file is read with ``torch.load(weights_only=True)``: no code from it runs.
    """
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    record = ckpt.get(CHECKPOINT_RECORD_KEY) or {}
    out: dict[str, Any] = {}
    if record:
        data: dict[str, Any] = {"models": list(record.get("model_names") or []),
                                "tasks": list(record.get("task_names") or [])}
        for name in ("train", "eval"):
            rows = record.get(f"{name}_rows")
            if rows is not None:
                values = torch.as_tensor(rows).to(torch.int64).contiguous().numpy()
                data[f"{name}_prompts"] = int(values.size)
                data[f"{name}_sha256"] = hashlib.sha256(values.tobytes()).hexdigest()
        out["data"] = data
    encoder = record.get("encoder") or ckpt.get(CHECKPOINT_ENCODER_KEY)
    if encoder:
        out["encoder"] = {k: v for k, v in dict(encoder).items() if isinstance(v, (str, int, float, bool))}
    return out


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSV logger (``<save_dir>/<name>/version_<n>/metrics.csv``) with an optional ``save_dir``.

    Two differences from Lightning's: a new run claims its ``version_<n>`` folder by creating it (so two fits
    started at once into one ``save_dir`` get two folders, where Lightning's would give both ``version_0``), and a
    resumed fit (:meth:`resume_after_epoch`, called by ``barp fit --ckpt_path``) keeps the earlier run's
    ``metrics.csv`` rows up to the checkpoint instead of deleting the file.

    Args:
        save_dir: None: the trainer's ``default_root_dir`` (filled in by ``barp``), else the working directory.
        name: Experiment name (a folder under ``save_dir``).
        **kwargs: Passed to :class:`lightning.pytorch.loggers.CSVLogger` (version, ...).
    """

    def __init__(self, save_dir: str | None = None, name: str = "lightning_logs", **kwargs) -> None:
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)
        self._resume_epoch: int | None = None

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        root = Path(self.root_dir)  # <save_dir>/<name>
        rank = rank_zero_only.rank  # type: ignore[attr-defined]  # set on the function by lightning; untyped
        if "://" in str(self.root_dir) or rank != 0:
            return version  # a remote store, or a process that never writes: Lightning's choice
        root.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir is atomic: of two runs that saw the same free number, one gets the next
            try:
                (root / f"version_{version}").mkdir()
                return version
            except FileExistsError:
                version += 1

    def resume_after_epoch(self, epoch: int) -> None:
        """Continue this run's ``metrics.csv`` after ``epoch`` (the resumed checkpoint's): rows of later epochs,
        logged by the interrupted run after its checkpoint, are dropped, as the resumed run logs them again."""
        self._resume_epoch = int(epoch)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The CSV writer; on a resume, seeded with the earlier rows (Lightning's writer deletes the file)."""
        if self._experiment is not None or self._resume_epoch is None:
            return super().experiment
        path = Path(self.log_dir) / "metrics.csv"
        header, rows = [], []
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = [r for r in reader if not r.get("epoch") or float(r["epoch"]) <= self._resume_epoch]
        with warnings.catch_warnings():  # "previous log files will be deleted": not so here
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = super().experiment
        if header:
            writer.metrics_keys = sorted(header)
            with path.open("w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=writer.metrics_keys)
                out.writeheader()
                out.writerows(rows)
        return writer


#: barp's loggers whose unset ``save_dir`` the CLI fills with ``trainer.default_root_dir``.
ROOTED_LOGGERS = (f"{__name__}.CSVLogger", f"{__name__}.WandbLogger")
