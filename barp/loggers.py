"""Logger wrappers. Their ``save_dir`` defaults to the trainer's ``default_root_dir`` (barp's CLI fills it in), so
one option decides where a run writes; W&B defaults to offline and never crashes a run for lack of network or key."""

from __future__ import annotations

import os
import warnings

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


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

    Args:
        save_dir: None: the trainer's ``default_root_dir`` (filled in by ``barp``), else the working directory.
        name: Experiment name (a folder under ``save_dir``).
        **kwargs: Passed to :class:`lightning.pytorch.loggers.CSVLogger` (version, ...).
    """

    def __init__(self, save_dir: str | None = None, name: str = "lightning_logs", **kwargs) -> None:
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)


#: barp's loggers whose unset ``save_dir`` the CLI fills with ``trainer.default_root_dir``.
ROOTED_LOGGERS = (f"{__name__}.CSVLogger", f"{__name__}.WandbLogger")
