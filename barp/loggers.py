"""Logger wrappers. Their ``save_dir`` defaults to the trainer's ``default_root_dir`` (barp's CLI fills it in), so
one option decides where a run writes; W&B defaults to offline and never crashes a run for lack of network or key."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        return bool(wandb.Api().api_key)
    except Exception:  # noqa: BLE001 - any failure means no usable key
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's W&B logger, offline unless ``WANDB_MODE=online`` (or ``offline: false``) asks otherwise.

    Offline runs write a local folder under ``save_dir``; upload it later with ``wandb sync``. Asked to go
    online without an API key, it warns and stays offline instead of crashing the run.

    Args:
        offline: None follows ``WANDB_MODE`` (offline unless it is ``online``); True/False force the mode.
        save_dir: Folder of the local run; None: the trainer's ``default_root_dir`` (filled in by ``barp``), else
            the working directory.
        **kwargs: Passed to :class:`lightning.pytorch.loggers.WandbLogger` (project, name, ...).
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
        super().__init__(offline=offline, save_dir=save_dir or ".", **kwargs)


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
