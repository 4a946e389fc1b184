"""Reading data-module hyperparameters saved before the data module took its options in parts.

Checkpoints written before the data module took parts hold FLAT data hyperparameters (``path``,
``num_prompts``, ``split_seed``, ``encoder_dtype``, ``batch_size``, ...); :func:`upgrade_data_hparams` turns them into
today's grouped form (``source``, ``synthetic``, ``split``, ``encoder``, ``batches``, ...), which
:class:`~barp.data.datamodule.RoutingDataModule` takes as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from barp.data.parts import Batches, Source, Split, Synthetic, as_record
from barp.encoders import EncoderSpec

#: The grouped form's keys that are parts (dicts).
PARTS = ("source", "synthetic", "split", "encoder", "batches")
#: Flat option -> (part, field) for the flat options that moved into a part.
FLAT_OPTIONS: dict[str, tuple[str, str]] = {
    **{name: ("source", name) for name in ("path", "val_path", "test_path", "format", "prices", "task_map",
                                            "default_task", "task_column", "on_missing", "trust_pickle")},
    "num_prompts": ("synthetic", "num_prompts"), "synthetic_seed": ("synthetic", "seed"),
    "ood_tasks": ("split", "ood_tasks"), "val_fraction": ("split", "val_fraction"),
    "test_fraction": ("split", "test_fraction"), "split_seed": ("split", "seed"),
    **{name: ("batches", name) for name in ("batch_size", "eval_batch_size", "train_repeats", "num_workers")},
}
#: Flat options that set the encoder (read by :meth:`EncoderSpec.from_record`).
FLAT_ENCODER = ("encoder", "max_length", "truncation_side", "encoder_dtype", "encoder_batch_size", "encoder_device")


def is_flat(hparams: Mapping[str, Any]) -> bool:
    """Whether ``hparams`` are in the old flat form: an encoder name instead of an encoder part or, without either, a
    flat option."""
    encoder = hparams.get("encoder")
    if isinstance(encoder, Mapping):
        return False
    return isinstance(encoder, str) or any(key in hparams for key in (*FLAT_OPTIONS, *FLAT_ENCODER))


def upgrade_data_hparams(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Data-module hyperparameters in today's grouped form, from the old flat form or already grouped (a copy).

    Flat options a checkpoint lacks take the parts' defaults; keys that are no option (Lightning's ``_class_path``,
    ``_instantiator``) and ``train_log``, ``cache_dir``, ``predict_splits`` are kept as they are.
    """
    if not is_flat(flat):
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in flat.items()}
    moved = set(FLAT_OPTIONS) | set(FLAT_ENCODER)
    out: dict[str, Any] = {k: v for k, v in flat.items() if k not in moved}
    groups: dict[str, dict[str, Any]] = {"source": {}, "synthetic": {}, "split": {}, "batches": {}}
    for key, (part, field) in FLAT_OPTIONS.items():
        if key in flat:
            groups[part][field] = flat[key]
    source = groups["source"]
    out["source"] = as_record(Source(**source)) if source.get("path") is not None else None
    out["synthetic"] = as_record(Synthetic(**groups["synthetic"]))
    out["split"] = as_record(Split(**groups["split"]))
    out["encoder"] = as_record(EncoderSpec.from_record({k: flat[k] for k in FLAT_ENCODER if k in flat}))
    out["batches"] = as_record(Batches(**groups["batches"]))
    return out


__all__ = ["upgrade_data_hparams"]
