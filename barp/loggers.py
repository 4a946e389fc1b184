"""Logger wrappers. W&B defaults to offline and never crashes a run for lack of network or API key."""

from __future__ import annotations

import os
import warnings

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
        **kwargs: Passed to :class:`lightning.pytorch.loggers.WandbLogger` (project, name, save_dir, ...).
    """

    def __init__(self, offline: bool | None = None, **kwargs) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE", "offline").lower() != "online"
        if not offline and not _wandb_has_key():
            warnings.warn("W&B online mode was requested but no API key is set (WANDB_API_KEY or `wandb login`); "
                          "logging OFFLINE instead: upload later with `wandb sync <run folder>`.", stacklevel=2)
            offline = True
        if offline:
            os.environ["WANDB_MODE"] = "offline"
        kwargs.setdefault("save_dir", "runs")
        super().__init__(offline=offline, **kwargs)
