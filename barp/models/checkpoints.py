"""Checkpoints: read them without running code, record the data they were trained on, check that record.

A checkpoint written by ``barp fit`` carries, under ``"barp"``, the model names (in the policy's order), the task
names, the encoder's identity and settings, and a fingerprint of every training prompt; Lightning adds the data
module's hyperparameters (``"datamodule_hyper_parameters"``), the split settings among them. Whoever applies a
checkpoint to data (``test``, ``validate``, ``predict``, a resumed ``fit``, ``barp sweep``, ``TrainedRouter``) reads
it with :func:`load_checkpoint` and checks it with the functions below, which raise one
:class:`~barp.errors.ConfigError` naming the checkpoint, the setting and both values.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from barp.data.compat import upgrade_data_hparams
from barp.encoders import EncoderSpec, encoder_identity
from barp.errors import BarpError, ConfigError
from barp.models.compat import upgrade_checkpoint
from barp.models.protocols import Router, RouterData
from barp.models.shift import ShiftGuard

RECORD_KEY = "barp"
RNG_KEY = "barp_rng"
#: Checkpoint key of the frozen encoder's record (:meth:`~barp.encoders.EncoderSpec.identity`).
ENCODER_KEY = "barp_encoder"
#: Checkpoint key of the shift guard (:mod:`barp.models.shift`), when the module has one.
GUARD_KEY = "barp_shift_guard"


def load_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict[str, Any]:
    """Read a checkpoint written by ``barp fit`` without running any code from it (``weights_only`` unpickling).

    Args:
        path: The ``.ckpt`` file.
        option: The option that named it, for error messages.

    Returns:
        The checkpoint dictionary, its hyperparameters in today's form (:func:`~barp.models.compat.upgrade_checkpoint`).

    Raises:
        ConfigError: The path is missing or a folder, the file is truncated or not a checkpoint, it holds objects a
            barp checkpoint never contains (a crafted file could run code when unpickled), or it was not written
            by barp.
    """
    where = f"{option} {str(path)!r}"
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(q.name for q in p.glob("*.ckpt"))[:3]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ConfigError(f"{where} is a folder, not a checkpoint file{hint}: name the .ckpt file")
    if not p.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        with warnings.catch_warnings():  # torch's own advice (e.g. on pickle protocols) is not for barp's users
            warnings.simplefilter("ignore")
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch words it "Unsupported global: GLOBAL os.system" or "unsupported GLOBAL posix.system" by version
        hit = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(err), re.IGNORECASE)
        if hit is None:  # not a pickle that names code: a damaged or foreign file
            raise ConfigError(f"{where} is not a readable checkpoint (truncated, or not written by barp fit)") from None
        named = f" ({hit.group(1)})"
        raise ConfigError(
            f"{where}: refused to load: it holds Python objects{named} that a barp checkpoint never contains, and "
            "unpickling them could run code. Only checkpoints written by barp fit are loaded."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError,
            zipfile.BadZipFile, UnicodeDecodeError):  # a text file, say: the unpickler fails in its own ways
        raise ConfigError(f"{where} is not a readable checkpoint (truncated, or not written by barp fit)") from None
    upgrade_checkpoint(ckpt)  # written before the module's options became parts: read in today's form
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    arms = hp.get("arms") if isinstance(hp, dict) else None
    names = arms.get("model_names") if isinstance(arms, dict) else None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and isinstance(names, list) and names
            and all(isinstance(n, str) for n in names) and "pytorch-lightning_version" in ckpt):
        raise ConfigError(f"{where} is not a barp checkpoint (no router weights, model names and Lightning's "
                          "record): use a checkpoint written by barp fit")
    return ckpt



# ---------------------------------------------------------------------------------------------- the record
def row_fingerprints(prompt_ids: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
    """One 64-bit fingerprint per (prompt id, prompt text) row, sorted (int64)."""
    values = [int.from_bytes(hashlib.sha1(f"{pid}\x1f{text}".encode()).digest()[:8], "little", signed=True)
              for pid, text in zip(prompt_ids, prompts)]
    return torch.as_tensor(np.sort(np.asarray(values, dtype=np.int64)))


def split_fingerprints(datamodule, rows: np.ndarray) -> torch.Tensor:
    """Fingerprints of a set-up datamodule's table rows ``rows``."""
    table = datamodule.table
    return row_fingerprints([table.prompt_ids[i] for i in rows], [table.prompts[i] for i in rows])


def encoder_record(spec: EncoderSpec) -> dict[str, Any]:
    """What a checkpoint records of how its prompts were embedded: the spec's identity plus the encoder's weights'
    identity (``identity``: resolved location and fingerprint)."""
    return {**spec.identity(), "identity": encoder_identity(spec.name)}


def data_encoder(data_hparams: dict[str, Any]) -> EncoderSpec:
    """The encoder spec in a data module's hyperparameters (grouped, or an old checkpoint's flat ones)."""
    return EncoderSpec.from_record(upgrade_data_hparams(data_hparams).get("encoder") or {})


def saved_encoder(ckpt: dict[str, Any]) -> EncoderSpec:
    """The encoder a checkpoint's module embeds raw prompts with: its record (:data:`ENCODER_KEY`), else its data's
    hyperparameters (float32 where neither names a dtype)."""
    record = ckpt.get(ENCODER_KEY)
    return EncoderSpec.from_record(record) if record else data_encoder(ckpt.get("datamodule_hyper_parameters") or {})


def data_record(datamodule, model_names: list[str], task_names: list[str]) -> dict[str, Any]:
    """What a checkpoint must know about its data: models, tasks, encoder, the training prompts and the prompts its
    own evaluation splits held (a published test file may share rows with the training file)."""
    splits = datamodule.splits
    evaluated = np.concatenate([np.asarray(splits.val), np.asarray(splits.test), np.asarray(splits.ood)])
    return {
        "version": 1,
        "model_names": list(model_names),
        "task_names": list(task_names),
        "encoder": encoder_record(datamodule.encoder_spec),
        "train_rows": split_fingerprints(datamodule, splits.train),
        "eval_rows": split_fingerprints(datamodule, evaluated.astype(np.int64)),
    }


def capture_rng() -> dict[str, Any]:
    """Every random generator a fit draws from (torch CPU and CUDA, numpy, Python), as checkpointable values."""
    import random

    # the legacy tuple (numpy's default; its stubs also allow the dict of legacy=False)
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.as_tensor(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore generators saved by :func:`capture_rng`."""
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_records(checkpoint: dict[str, Any], data: dict[str, Any] | None, encoder: dict[str, Any],
                  guard: dict[str, Any] | None) -> None:
    """Add a router module's records to a checkpoint being saved: its training data's record (:func:`data_record`;
    None: none known), its frozen encoder's settings, its shift guard's state (None: no guard) and every random
    generator's state (:func:`capture_rng`)."""
    if data is not None:
        checkpoint[RECORD_KEY] = data
    checkpoint[ENCODER_KEY] = dict(encoder)
    if guard is not None:
        checkpoint[GUARD_KEY] = guard
    checkpoint[RNG_KEY] = capture_rng()


def read_encoder(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The frozen encoder's settings (:meth:`~barp.encoders.EncoderSpec.identity`) a checkpoint recorded, or its
    data's for checkpoints without the record (:func:`saved_encoder`)."""
    return saved_encoder(checkpoint).identity()


def read_guard(checkpoint: dict[str, Any], quantile: float | None, neighbours: int) -> ShiftGuard | None:
    """The shift guard a checkpoint saved, if it was built with these settings (else None: the data rebuild it)."""
    guard = checkpoint.get(GUARD_KEY)
    if guard is not None and quantile == guard["quantile"] and neighbours == guard["neighbours"]:
        return ShiftGuard.from_state(guard)  # what the guard was at training
    return None


def restore_saved_rng(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """Restore the random generators a checkpoint saved (:func:`capture_rng`) and return their state (None: it saved
    none). A resumed fit continues with the generators of the moment its checkpoint was written; the module restores
    them again in ``on_fit_start``, the last hook before the training loop draws (its data loader's shuffling seed,
    then preferences and actions), since the checkpoint may also load after it (strategies that restore after
    setup)."""
    state = checkpoint.get(RNG_KEY)
    if state is not None:
        restore_rng(state)
    return state


def load_records(module: Router, checkpoint: dict[str, Any]) -> None:
    """A router module's ``on_load_checkpoint``: read the checkpoint's records (trained or not, the data record, the
    encoder settings, the shift guard) and, inside a Trainer, check it against the data it is applied to
    (:func:`check_against_data`) before its weights load. Models in another order are mapped by name (with a
    warning) for evaluation; a resumed fit restores its random generators (:func:`restore_saved_rng`)."""
    module._trained = int(checkpoint.get("global_step", 0)) > 0
    module._data_record = checkpoint.get(RECORD_KEY) or module._data_record
    module.encoder_settings = read_encoder(checkpoint)
    guard = read_guard(checkpoint, module.fallback_quantile, module.fallback_neighbours)
    module.guard = module.guard if guard is None else guard  # a guard of other settings: the data at hand rebuild it
    if (dm := module.router_data()) is None:
        return
    trainer = module.trainer
    where, fn = f"--ckpt_path {str(trainer.ckpt_path)!r}", str(getattr(trainer.state.fn, "value", trainer.state.fn))
    order = check_against_data(checkpoint, dm, fn, where)
    if fn == "fit":
        module._rng_state = restore_saved_rng(checkpoint)
    if order is not None:
        names = list(checkpoint["hyper_parameters"]["arms"]["model_names"])
        rank_zero_warn(f"barp: {where} orders the models {names}, the data {list(dm.model_names)}: mapped by name")
        module.model_names, module._column_order = names, torch.as_tensor(order)
        module.eval_metrics = module._build_metrics().to(module.device)


def check_against_data(checkpoint: dict[str, Any], datamodule: RouterData, fn: str, where: str) -> list[int] | None:
    """Check a checkpoint against the data a Trainer applies it to (before its weights load).

    Args:
        checkpoint: The checkpoint.
        datamodule: The trainer's set-up data.
        fn: The Trainer's function (``fit``, ``validate``, ``test``, ``predict``).
        where: Prefix of error messages (the checkpoint option and path).

    Returns:
        The data column of each of the checkpoint's arms; None when both orders agree.

    Raises:
        ConfigError: Other models (or, resuming a fit, another order), another encoder setting, other training
            prompts for a resumed fit, or a training prompt in an evaluated split.
    """
    names = list(checkpoint["hyper_parameters"]["arms"]["model_names"])
    order = model_order(names, list(datamodule.model_names), where)
    if order is not None and fn == "fit":
        raise ConfigError(f"{where}: the checkpoint orders the models {names}, the data {datamodule.model_names}: "
                          "resume on data with the models in the checkpoint's order")
    check_encoder(checkpoint, dict(datamodule.hparams), where)
    if fn == "fit":
        check_same_training(checkpoint, datamodule, where)
    elif fn in ("validate", "test"):
        splits = ({"val": datamodule.splits.val} if fn == "validate"
                  else {"test": datamodule.splits.test, "ood": datamodule.splits.ood})
        check_unseen(checkpoint, datamodule, splits, where)
    return order


# ---------------------------------------------------------------------------------------------- the checks
def model_order(ckpt_models: list[str], data_models: list[str], where: str) -> list[int] | None:
    """The data column of each of the checkpoint's arms; None when both orders agree.

    Raises:
        ConfigError: The data's models are not the checkpoint's (by name).
    """
    if list(ckpt_models) == list(data_models):
        return None
    missing = [m for m in ckpt_models if m not in data_models]
    extra = [m for m in data_models if m not in ckpt_models]
    if missing or extra or len(ckpt_models) != len(data_models):
        raise ConfigError(
            f"{where}: the checkpoint routes to models {list(ckpt_models)}, the data has {list(data_models)} "
            f"(not in the data: {missing}; not in the checkpoint: {extra}). A router only chooses among the models "
            "it was trained on: use data with exactly these models (same names)."
        )
    return [list(data_models).index(m) for m in ckpt_models]


def check_encoder(ckpt: dict[str, Any], data_hparams: dict[str, Any], where: str) -> None:
    """Refuse data embedded differently from the checkpoint's training data (encoder, max length, truncation side,
    dtype)."""
    record = (ckpt.get(RECORD_KEY) or {}).get("encoder")
    saved_spec = EncoderSpec.from_record(record) if record else data_encoder(ckpt.get("datamodule_hyper_parameters")
                                                                             or {})
    saved = (record or {}).get("identity") or encoder_identity(saved_spec.name)
    now_spec = data_encoder(data_hparams)
    now = encoder_identity(now_spec.name)
    diffs = []
    for key, value in saved_spec.identity().items():
        current = now_spec.identity()[key]
        if value != current:
            if key == "name" and saved == now:
                continue  # another name for the same weights
            diffs.append(f"data.encoder.{key}: checkpoint {value!r}, now {current!r}")
    if not diffs and saved != now:
        diffs.append(f"data.encoder weights: checkpoint {saved!r}, now {now!r}")
    if diffs:
        raise ConfigError(f"{where}: the data would be embedded differently from the checkpoint's training data ("
                          + "; ".join(diffs) + "). Use the checkpoint's settings.")


def _options(hparams: dict[str, Any]) -> dict[str, Any]:
    """Data hyperparameters (either form) as ``{dotted option: value}``, e.g. ``{"split.seed": 42, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in upgrade_data_hparams(hparams).items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict) and key in ("source", "synthetic", "split", "encoder", "batches"):
            flat.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            flat[key] = value
    return flat


def _setting_diffs(ckpt: dict[str, Any], data_hparams: dict[str, Any]) -> str:
    saved, now = _options(ckpt.get("datamodule_hyper_parameters") or {}), _options(data_hparams)
    diffs = [f"data.{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in sorted(saved)
             if k in now and saved[k] != now[k]]
    return "; ".join(diffs) if diffs else "no data option differs; the data file itself does"


def trained_on(ckpt: dict[str, Any], fingerprints: np.ndarray) -> np.ndarray | None:
    """Which of the rows (:func:`row_fingerprints`) the checkpoint was trained on and did not also evaluate at fit
    time (a published test file may share rows with the training file); None if the checkpoint has no record."""
    record = ckpt.get(RECORD_KEY) or {}
    if record.get("train_rows") is None:
        return None
    evaluated = record.get("eval_rows", torch.zeros(0, dtype=torch.int64)).numpy()
    return np.isin(fingerprints, record["train_rows"].numpy()) & ~np.isin(fingerprints, evaluated)


def check_unseen(ckpt: dict[str, Any], datamodule, splits: dict[str, np.ndarray], where: str) -> None:
    """Refuse to evaluate on prompts the checkpoint was trained on.

    Args:
        ckpt: The checkpoint.
        datamodule: The set-up data module.
        splits: Evaluated split name -> table rows.
        where: Prefix of error messages (the checkpoint option and path).
    """
    for name, rows in splits.items():
        if not len(rows):
            continue
        seen = trained_on(ckpt, split_fingerprints(datamodule, rows).numpy())
        if seen is None:
            return
        if seen.any():
            raise ConfigError(
                f"{where}: {int(seen.sum())} of {len(rows)} {name} prompts were training prompts of this checkpoint, "
                f"so the results would not measure unseen prompts. Data settings that differ from the checkpoint's: "
                f"{_setting_diffs(ckpt, dict(datamodule.hparams))}. Use the split the checkpoint was trained with."
            )


def check_same_training(ckpt: dict[str, Any], datamodule, where: str) -> None:
    """Refuse to resume a fit on other training prompts than the checkpoint's."""
    trained = (ckpt.get(RECORD_KEY) or {}).get("train_rows")
    if trained is None:
        return
    now = split_fingerprints(datamodule, datamodule.splits.train)
    if not torch.equal(now, trained):
        raise ConfigError(
            f"{where}: the training prompts differ from the checkpoint's ({len(trained)} then, {len(now)} now; "
            f"{_setting_diffs(ckpt, dict(datamodule.hparams))}): resume on the data and split it was trained on."
        )


def embed_like_checkpoint(data_config, checkpoint: dict) -> None:
    """``data.encoder.dtype: auto`` with a checkpoint means the checkpoint's dtype (its policy was trained on those
    embeddings); an explicit dtype is left as given, and the checkpoint checks refuse it if it differs."""
    init = data_config.get("init_args") if data_config is not None else None
    encoder = init.get("encoder") if init is not None else None
    data = checkpoint.get("datamodule_hyper_parameters")
    saved = data_encoder(data).dtype if data else None
    if encoder is not None and encoder.get("dtype") == "auto" and saved not in (None, "auto"):
        encoder["dtype"] = saved


#: Source settings that grant trust: a checkpoint never sets them (a crafted one could otherwise run code while its
#: data is rebuilt); only the user's own command line does.
TRUST_OPTIONS = ("trust_pickle",)


def datamodule_from_checkpoint(ckpt: dict[str, Any], stage: str, trust_pickle: bool = False):
    """The checkpoint's data, rebuilt from the data settings saved in it (relative paths are read from the current
    folder), prepared (prompts embedded through barp's embedding cache) and set up for ``stage``.

    Args:
        ckpt: The checkpoint (:func:`load_checkpoint`).
        stage: The Lightning stage to set the data up for.
        trust_pickle: The user's own ``trust_pickle`` (their command line's); the checkpoint's saved value is
            never used, so a checkpoint cannot make barp unpickle a file that is not a pinned official pickle.
    """
    import inspect

    from barp.data.datamodule import RoutingDataModule

    saved = upgrade_data_hparams(ckpt.get("datamodule_hyper_parameters") or {})
    accepted = inspect.signature(RoutingDataModule).parameters
    settings = {k: v for k, v in saved.items() if k in accepted}
    if settings.get("source") is not None:
        source = {k: v for k, v in settings["source"].items() if k not in TRUST_OPTIONS}
        settings["source"] = {**source, "trust_pickle": bool(trust_pickle)}
    dm = RoutingDataModule(**settings)
    try:
        dm.prepare_data()
        dm.setup(stage)
    except BarpError as err:
        if "refusing to unpickle" not in str(err) or trust_pickle:
            raise
        raise type(err)(f"the checkpoint's data settings name this file, and a checkpoint never grants "
                        f"trust_pickle: {err}") from None
    return dm
