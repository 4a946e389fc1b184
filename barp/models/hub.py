"""Routers as folders and Hub repositories: the files ``save_pretrained`` writes, reading them back, and the one entry
point that turns any router reference (a checkpoint file, such a folder, a Hugging Face Hub repository id) into the
checkpoint dictionary barp's commands use.

    router.save_pretrained("routers/synthetic-barp")            # config.json, model.safetensors, README.md
    TrainedRouter.from_pretrained("routers/synthetic-barp")
    TrainedRouter.from_pretrained("owner/synthetic-barp", revision="<commit sha>")   # through huggingface_hub
    barp serve --router routers/synthetic-barp                   # --router is --ckpt_path's alias

A folder holds:

- ``model.safetensors``: the module's ``state_dict``, plus the checkpoint's tensor records under the reserved prefix
  ``__barp__/`` (no module attribute can start with it): the 64-bit fingerprints of the training prompts and of the
  prompts the fit evaluated (``record/train_rows``, ``record/eval_rows``; hashes, no text), which ``barp ope`` and
  ``barp calibrate`` check that evaluation prompts are unseen with, and the shift guard's tensors (``guard/*``: the
  training prompts' embeddings, per-model means), which routing uses.
- ``config.json``: the format version, the router class path, the module's hyperparameters as plain JSON, models,
  tau, the encoder's identity, the preference convention and reward, the data's settings and record, the guard's
  numbers, and what is known of the training run and its validation/test results.
- ``README.md``: a generated model card (Hugging Face model-card YAML header). The loader never reads it, and it is
  no part of the router's identity (:func:`router_sha256`).

Reading never runs code from the files: tensors come from safetensors and everything else from JSON; the router class
must be one of barp's (:func:`module_class`), and every field is checked with one :class:`~barp.errors.ConfigError`
each (missing, wrong type, format version newer than this barp reads). A folder is for routing and evaluating
(``barp serve``, ``ope``, ``calibrate``, :class:`~barp.models.trained.TrainedRouter`); resuming a fit needs the
Lightning checkpoint, whose optimiser state and random generators a folder does not keep.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from barp.atomic import fsync_path, replace_file_set
from barp.errors import ConfigError
from barp.models.base import RouterModule
from barp.models.checkpoints import ENCODER_KEY, GUARD_KEY, RECORD_KEY, load_checkpoint
from barp.models.compat import upgrade_checkpoint
from barp.paths import file_sha256

#: The version of the folder format this barp writes; a folder of a newer format is refused.
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
#: The files a folder's identity (:func:`router_sha256`) is computed from, in this order: all the loader reads.
IDENTITY_FILES = (CONFIG_FILE, WEIGHTS_FILE)
#: The files ``save_pretrained`` writes (and the Hub download fetches).
FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
#: Prefix of the checkpoint's tensor records in model.safetensors (no state_dict key can start with it).
RESERVED = "__barp__/"
#: Checkpoint key of what a folder records of its training run and results (kept when a loaded folder is saved again).
PRETRAINED_KEY = "barp_pretrained"
#: The preference convention and the reward, as config.json and the model card state them.
PREFERENCE = {
    "w": "(1 - w_c, w_c)",
    "w_c": "the cost weight in [0, 1]: 0 routes for quality alone, 1 for cost alone",
    "reward": "r = (1 - w_c) * score - w_c * min(cost / tau, 1)",
    "units": "score in [0, 1]; cost in USD per request; tau in USD (costs above tau count as 1)",
}
#: A Hugging Face Hub repository id: ``owner/name``.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_GUARD_TENSORS = ("reference", "quality", "cost", "pulls")
_GUARD_NUMBERS = ("threshold", "neighbours", "quantile", "count")


# ---------------------------------------------------------------------------------------------- the router class
def module_class(ckpt: dict[str, Any], option: str = "--ckpt_path") -> type[RouterModule]:
    """The :class:`~barp.models.base.RouterModule` subclass that wrote a checkpoint (from its ``_class_path``).

    Only barp's own modules, or modules the process has already imported, are looked up: a checkpoint or a
    config.json never makes barp import arbitrary code (``os.system`` names a function of an imported module, not a
    router class, and is refused). Checkpoints written before barp's modules moved into layers (``barp.module``,
    ``barp.routers.*``) still load.

    Raises:
        ConfigError: The class path names no barp router class.
    """
    upgrade_checkpoint(ckpt)  # older module paths (``barp.module``, ``barp.routers.*``) named as today's
    class_path = str(ckpt["hyper_parameters"].get("_class_path", "barp.models.barp.BaRPModule"))
    module_name, _, class_name = class_path.rpartition(".")
    cls = None
    if module_name == "barp" or module_name.startswith("barp."):
        try:
            cls = getattr(importlib.import_module(module_name), class_name, None)
        except ImportError:
            cls = None
    elif module_name in sys.modules:
        cls = getattr(sys.modules[module_name], class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, RouterModule)):
        raise ConfigError(f"{option}: the checkpoint's router class {class_path!r} is not a barp router class")
    return cls


# ---------------------------------------------------------------------------------------------- the one entry point
def load_router(ref: str | Path, option: str = "--ckpt_path", revision: str | None = None
                ) -> tuple[dict[str, Any], Path]:
    """Read a router from a checkpoint file, a folder written by ``save_pretrained``, or a Hub repository id, as the
    checkpoint dictionary :func:`~barp.models.checkpoints.load_checkpoint` returns, its router class checked.

    Args:
        ref: The reference, as the user gave it.
        option: The option or call that named it, for error messages.
        revision: The Hub revision (commit sha, tag or branch) of a repository id; refused for a local path.

    Returns:
        ``(checkpoint dictionary, local path)``: the path is the file or folder read (a Hub repository's snapshot
        folder in the Hugging Face cache), the one :func:`router_sha256` identifies.

    Raises:
        ConfigError: See :func:`resolve_router`, :func:`read_pretrained`, ``load_checkpoint`` and :func:`module_class`.
    """
    path = resolve_router(ref, revision, option)
    where = f"{option} {str(ref)!r}"
    if path.is_dir() and ((path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists()
                          or not any(path.glob("*.ckpt"))):
        ckpt = read_pretrained(path, where)
    else:  # a checkpoint file (or a folder of checkpoints: load_checkpoint names them)
        ckpt = load_checkpoint(path, option)
    module_class(ckpt, where)
    return ckpt, path


def resolve_router(ref: str | Path, revision: str | None = None, option: str = "--ckpt_path") -> Path:
    """The local file or folder a router reference names: an existing path as it is, else a Hub repository id's
    snapshot folder (:func:`hub_snapshot`).

    Raises:
        ConfigError: A local path with a ``revision``; a path that does not exist and is no repository id (or ends
            in ``.ckpt``); see :func:`hub_snapshot`.
    """
    text = str(ref)
    if not text.strip():
        raise ConfigError(f"{option} is empty: give a checkpoint file, a router folder or a Hub repository id")
    path = Path(text).expanduser()
    if path.exists():
        if revision is not None:
            raise ConfigError(f"--revision {revision!r} applies to a Hugging Face Hub repository id, but {option} "
                              f"{text!r} is a local path: leave --revision out")
        return path
    if not REPO_ID.fullmatch(text) or text.endswith(".ckpt"):
        raise ConfigError(f"{option} {text!r} does not exist: give a checkpoint file written by barp fit, a folder "
                          "written by save_pretrained, or a Hugging Face Hub repository id (owner/name)")
    return hub_snapshot(text, revision, option)


def hub_snapshot(repo_id: str, revision: str | None, option: str = "--ckpt_path") -> Path:
    """The folder of a Hub repository's router files at ``revision``, downloaded into (or read from) the local
    Hugging Face cache by ``huggingface_hub.snapshot_download`` (only config.json, model.safetensors, README.md).

    Pin ``revision`` to a commit sha: a branch (the default, ``main``) loads whatever was pushed last, so a
    UserWarning says so when it is None.

    Raises:
        ConfigError: The files are not in the local cache and the Hub cannot be reached (``HF_HUB_OFFLINE=1``, or no
            network): the message says where to put them. The repository or revision does not exist, or the
            download fails.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{option} {repo_id!r}" + ("" if revision is None else f" (revision {revision!r})")
    if revision is None:
        warnings.warn(f"{option} {repo_id!r}: no revision given, so the repository's main branch as it is now is "
                      "loaded; pin --revision to a commit sha (revision=... in Python) to load the same router every "
                      "time", UserWarning, stacklevel=3)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(FOLDER_FILES), library_name="barp")
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        rev = "" if revision is None else f" --revision {revision}"
        raise ConfigError(
            f"{where}: not in the local Hugging Face cache, and {why}. Put the router's files ({CONFIG_FILE}, "
            f"{WEIGHTS_FILE}) in a folder and name the folder instead: on a machine with network run "
            f"`hf download {repo_id}{rev} --local-dir DIR` (or `huggingface-cli download ...`) and copy DIR here, or "
            f"use a folder written by save_pretrained; then {option} DIR") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{where}: no such Hub repository (or it is private: log in with `hf auth login` or set "
                          "HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{where}: the repository has no such revision") from None
    except (HfHubHTTPError, OSError) as err:
        raise ConfigError(f"{where}: the download failed ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return Path(str(folder))


def router_sha256(path: str | os.PathLike) -> str:
    """The identity of a router that calibration.json records: for a checkpoint file the SHA-256 of its bytes; for a
    folder written by ``save_pretrained`` the SHA-256 over the name and SHA-256 of each of :data:`IDENTITY_FILES`
    (config.json, model.safetensors; the model card is left out, so editing it keeps the identity). Hex.

    Raises:
        ConfigError: A folder misses one of the files.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return file_sha256(p)
    digest = hashlib.sha256(f"barp-pretrained-{FORMAT_VERSION}\n".encode())
    for name in IDENTITY_FILES:
        if not (p / name).is_file():
            raise ConfigError(f"router folder {str(path)!r} holds no {name}: not a folder written by save_pretrained")
        digest.update(f"{name}\n{file_sha256(p / name)}\n".encode())
    return digest.hexdigest()




#: The help of ``--ckpt_path`` / ``--router`` in ``barp serve``, ``ope`` and ``calibrate``.
ROUTER_HELP = ("The router: a checkpoint written by barp fit, a folder written by save_pretrained, or a Hugging Face "
               "Hub repository id (owner/name; pin --revision to a commit sha). --router is an alias.")


def add_router_argument(parser):
    """Add ``--ckpt_path`` with its alias ``--router`` (required; :data:`ROUTER_HELP`) to a command's parser built
    without it (``function_parser(..., skip={"ckpt_path"})``), and return the parser. The command function still
    receives it as ``ckpt_path``."""
    parser.add_argument("--ckpt_path", "--router", type=str, required=True, help=ROUTER_HELP)
    return parser


# ---------------------------------------------------------------------------------------------- writing
def pretrained_files(ckpt: dict[str, Any], test_metrics: Mapping[str, float] | None = None
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json's content and model.safetensors' tensors of a (trained) checkpoint dictionary.

    Args:
        ckpt: A checkpoint dictionary (``load_checkpoint``, :func:`read_pretrained`, or a module's, see
            :meth:`~barp.models.trained.TrainedRouter.checkpoint`).
        test_metrics: Test results to record (name -> number), e.g. ``barp test``'s ``test/id/aiq``; default: those
            the checkpoint already records.

    Raises:
        ConfigError: A hyperparameter that is not plain JSON, a test metric that is not a finite number.
    """
    upgrade_checkpoint(ckpt)
    cls = module_class(ckpt, "save_pretrained")
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt["state_dict"].items()}
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    models = [str(m) for m in hp["arms"]["model_names"]]
    try:
        json.dumps(hp, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"save_pretrained: the module's hyperparameters are not plain JSON ({err})") from None
    tensors = dict(state)
    record = ckpt.get(RECORD_KEY) or None
    encoder = dict(ckpt.get(ENCODER_KEY) or (record or {}).get("encoder") or {})
    encoder = {k: encoder.get(k) for k in ("name", "max_length", "truncation_side", "dtype")}
    encoder["identity"] = (record or {}).get("encoder", {}).get("identity")
    data: dict[str, Any] = {"hyper_parameters": ckpt.get("datamodule_hyper_parameters"), "record": None}
    if record is not None:
        train, evaluated = record["train_rows"].to(torch.int64), record["eval_rows"].to(torch.int64)
        tensors[RESERVED + "record/train_rows"], tensors[RESERVED + "record/eval_rows"] = train, evaluated
        data["record"] = {"version": int(record.get("version", 1)), "task_names": list(record.get("task_names", [])),
                          "train_prompts": len(train), "eval_prompts": len(evaluated),
                          "fingerprint": hashlib.sha256(train.numpy().tobytes()).hexdigest()}
    guard = ckpt.get(GUARD_KEY)
    guard_numbers = None
    if guard is not None:
        guard_numbers = {k: guard[k] for k in _GUARD_NUMBERS}
        for key in _GUARD_TENSORS:
            if guard.get(key) is not None:
                tensors[RESERVED + "guard/" + key] = guard[key].detach().cpu().contiguous()
    previous = ckpt.get(PRETRAINED_KEY) or {}
    results = dict(previous.get("test_metrics") or {}) if test_metrics is None else dict(test_metrics)
    for name, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"save_pretrained: test_metrics[{name!r}] must be a finite number, got {value!r}")
    config = {
        "format_version": FORMAT_VERSION,
        "library_name": "barp",
        "barp_version": _barp_version(),
        "router_class": f"{cls.__module__}.{cls.__qualname__}",
        "models": models,
        "tau": float(state["tau"]),
        "encoder": encoder,
        "preference": PREFERENCE,
        "hyper_parameters": hp,
        "data": data,
        "shift_guard": guard_numbers,
        "training": previous.get("training") or _training(ckpt),
        "test_metrics": {k: float(v) for k, v in results.items()},
    }
    return config, tensors


def _barp_version() -> str:
    from barp import __version__

    return __version__


def _training(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a Lightning checkpoint tells of its run: steps, epoch, Lightning's version, the monitored validation
    score of the checkpointing callback."""
    validation = None
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("current_score") is not None:
            validation = {"monitor": str(state["monitor"]), "score": float(state["current_score"])}
            break
    return {"global_step": int(ckpt.get("global_step", 0)), "epoch": int(ckpt.get("epoch", 0)),
            "lightning_version": str(ckpt.get("pytorch-lightning_version", "")), "validation": validation}


def write_pretrained(ckpt: dict[str, Any], folder: str | Path, overwrite: bool = False,
                     test_metrics: Mapping[str, float] | None = None) -> Path:
    """Write a checkpoint dictionary as a router folder: config.json, model.safetensors and README.md.

    All three files are written into a temporary folder beside ``folder`` first. A new or empty ``folder`` is then
    replaced by it in one rename; an existing folder (``overwrite``) gets the new set of files with
    :func:`~barp.atomic.replace_file_set` (config.json last, so a folder is complete exactly when it has its
    config.json), and its other files (e.g. a Hub clone's ``.git``) are left alone.

    Raises:
        ConfigError: ``folder`` is a file, or a folder that already holds files while ``overwrite`` is False; see
            :func:`pretrained_files`.
    """
    from safetensors.torch import save

    out = Path(folder).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"save_pretrained: {str(folder)!r} is a file; a router is saved as a folder")
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(f"save_pretrained: {str(folder)!r} already holds files ({', '.join(existing[:4])}"
                          f"{', ...' if len(existing) > 4 else ''}): choose a new or empty folder, or pass "
                          "overwrite=True to replace its router files")
    config, tensors = pretrained_files(ckpt, test_metrics)
    files = {
        CONFIG_FILE: (json.dumps(config, indent=1, allow_nan=False) + "\n").encode(),
        WEIGHTS_FILE: save(tensors, metadata={"format": "pt"}),  # one entry: the header's bytes stay the same
        CARD_FILE: model_card(config, out.resolve().name).encode(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if existing:
            replace_file_set(staging, out, list(files), marker=CONFIG_FILE)
        else:
            for name in files:
                fsync_path(staging / name)
            if out.is_dir():
                out.rmdir()  # empty
            staging.replace(out)
            fsync_path(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def model_card(config: dict[str, Any], name: str) -> str:
    """The README.md of a router folder: the Hugging Face model-card YAML header (``library_name: barp``, tags), then
    the models, the intended use, the preference knob with an example, the data, the recipe, the results."""
    models, hp, data = config["models"], config["hyper_parameters"], config["data"]
    record, training = data.get("record"), config["training"]
    lines = ["---", "library_name: barp", "tags:", "- barp", "- llm-router", "- model-routing", "- bandit-feedback",
             "- pytorch-lightning", "---", "", f"# {name}: a barp router", "",
             f"A `{config['router_class'].rpartition('.')[2]}` that routes each prompt to one of {len(models)} LLMs "
             f"at a preference set per request, trained with barp {config['barp_version']} (LLM routers from bandit "
             "feedback, a PyTorch Lightning framework).", "", "## Models", ""]
    lines += [f"{i}. `{m}`" for i, m in enumerate(models)]
    encoder = config["encoder"]
    lines += ["", "## Intended use", "",
              "Choose, per prompt, which of these models should answer, trading quality against cost. It routes only "
              "among the models above, with the prompt encoder below (the same name, maximum length, truncation side "
              "and dtype), and was trained on the data described below: on prompts unlike them it may route poorly "
              f"(its shift guard, {'on' if config['shift_guard'] else 'off'}, falls back to the best model on "
              "average for prompts far from the training prompts). It predicts nothing about the models' answers "
              "themselves.", "",
              f"Encoder: `{encoder['name']}` (max length {encoder['max_length']}, truncation side "
              f"{encoder['truncation_side']}, dtype {encoder['dtype']}; weights identity `{encoder['identity']}`).",
              "", "## The preference knob", "",
              f"The preference is `w = {PREFERENCE['w']}`, with {PREFERENCE['w_c']}. The policy maximises the reward "
              f"`{PREFERENCE['reward']}`, with tau = {config['tau']:.4g} USD ({PREFERENCE['units']}).", "",
              "```python", "from barp.models.trained import TrainedRouter", "",
              f'router = TrainedRouter.from_pretrained("OWNER/{name}", revision="<commit sha>")  # or a local folder',
              'router.route(["Write a haiku about rain."], w_c=0.2)   # mostly quality',
              'router.route(["Write a haiku about rain."], w_c=0.8)   # mostly cost', "```", "",
              "Serve it over HTTP: `barp serve --router FOLDER_OR_REPO --revision SHA`; find the w_c that meets a "
              "budget: `barp calibrate --router FOLDER_OR_REPO --output runs/calibration --target.cost_per_1k 0.5`.",
              "", "## Data", ""]
    if record is not None:
        lines += [f"Trained on {record['train_prompts']} prompts (fingerprint `sha256:{record['fingerprint'][:16]}`: "
                  "the SHA-256 of their sorted 64-bit row hashes); its evaluation splits held "
                  f"{record['eval_prompts']} prompts. Tasks: {', '.join(record['task_names']) or 'none recorded'}. "
                  "model.safetensors holds "
                  "the rows' hashes (no text), so that `barp ope` and `barp calibrate` refuse to evaluate on training "
                  "prompts."]
    else:
        lines.append("The checkpoint recorded no training data.")
    if data.get("hyper_parameters") is not None:
        lines += ["", "Data settings (`barp fit --data ...`):", "", "```json",
                  json.dumps(data["hyper_parameters"], indent=1), "```"]
    lines += ["", "## Recipe", "", "The module's hyperparameters (`model.init_args`):", "", "```json",
              json.dumps(hp, indent=1), "```", "",
              f"Trained for {training['global_step']} steps ({training['epoch'] + 1} epochs) with Lightning "
              f"{training['lightning_version'] or '(unknown)'}.", "", "## Results", ""]
    if training.get("validation"):
        lines.append(f"Validation `{training['validation']['monitor']}`: {training['validation']['score']:.4f}.")
        lines.append("")
    if config["test_metrics"]:
        lines += ["| test metric | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4f} |" for k, v in config["test_metrics"].items()]
    else:
        lines.append("No test results were recorded. Produce them with `barp test --config RECIPE --ckpt_path CKPT` "
                     "on the Lightning checkpoint this folder was saved from, and record them with "
                     "`router.save_pretrained(folder, test_metrics={...}, overwrite=True)`; or estimate the router on "
                     "served traffic with `barp ope --log LOG --router FOLDER --output runs/ope`.")
    lines += ["", "## Files", "",
              f"`{CONFIG_FILE}` (format {config['format_version']}): the router class, models, tau, encoder, "
              f"preference convention, hyperparameters, data record. `{WEIGHTS_FILE}`: the weights and, under "
              f"`{RESERVED}`, the training-prompt hashes and the shift guard's tensors. Loading reads only these two "
              "files (safetensors and JSON): it never runs code from them.", ""]
    return "\n".join(lines)


def push_to_hub(ckpt: dict[str, Any], repo_id: str, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, test_metrics: Mapping[str, float] | None = None) -> str:
    """Publish a router on the Hugging Face Hub: :func:`write_pretrained` into a temporary folder, then
    ``HfApi().create_repo(exist_ok=True)`` and ``HfApi().upload_folder``. Needs network and a token with write
    access (``hf auth login``, or ``HF_TOKEN``).

    Args:
        ckpt: The checkpoint dictionary.
        repo_id: ``owner/name``.
        private: Create the repository private (None: the Hub's default); an existing one keeps its visibility.
        revision: The branch to commit to (default ``main``).
        commit_message: The commit's message.
        test_metrics: See :func:`pretrained_files`.

    Returns:
        The commit's sha: pin it when loading (``from_pretrained(repo_id, revision=sha)``).

    Raises:
        ConfigError: ``repo_id`` is not ``owner/name``; offline (``HF_HUB_OFFLINE``); the Hub refused or could not be
            reached (nothing was committed then).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not REPO_ID.fullmatch(str(repo_id)):
        raise ConfigError(f"push_to_hub: repo_id must be 'owner/name', got {repo_id!r}")
    with tempfile.TemporaryDirectory(prefix="barp-push-") as tmp:
        folder = write_pretrained(ckpt, Path(tmp) / repo_id.split("/")[1], test_metrics=test_metrics)
        api = HfApi(library_name="barp")
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                     commit_message=commit_message or "Upload barp router")
        except OfflineModeIsEnabled:
            raise ConfigError(f"push_to_hub {repo_id!r}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it "
                              "(and log in: `hf auth login` or HF_TOKEN), or save_pretrained a folder and upload it "
                              "later with `hf upload`") from None
        except (HfHubHTTPError, OSError) as err:
            raise ConfigError(f"push_to_hub {repo_id!r}: the upload failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return str(getattr(info, "oid", ""))


# ---------------------------------------------------------------------------------------------- reading
def read_pretrained(folder: str | Path, where: str) -> dict[str, Any]:
    """Read a router folder as the checkpoint dictionary ``load_checkpoint`` returns (weights, hyperparameters,
    data settings, records, guard), without running code: JSON and safetensors only.

    Args:
        folder: The folder.
        where: The option and value that named it, for error messages.

    Raises:
        ConfigError: One per problem: config.json or model.safetensors missing or unreadable, a field missing or of
            the wrong type, a format version newer than this barp reads, tau not a finite number > 0, model names
            that differ between fields, tensors missing or foreign.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise ConfigError(f"{where} is a folder without {CONFIG_FILE}: neither a checkpoint file written by barp fit "
                          "nor a router folder written by save_pretrained")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: {CONFIG_FILE} is not readable JSON ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: {CONFIG_FILE} must hold a JSON object, got {type(config).__name__}")
    cfg = _Fields(config, f"{where}: {CONFIG_FILE}")
    version = cfg.get("format_version", int)
    if version < 1 or version > FORMAT_VERSION:
        raise ConfigError(f"{where}: {CONFIG_FILE} has format_version {version}, and this barp reads versions 1 to "
                          f"{FORMAT_VERSION}" + (": upgrade barp" if version > FORMAT_VERSION else ""))
    router_class = cfg.get("router_class", str)
    models = cfg.get("models", list)
    if len(models) < 2 or not all(isinstance(m, str) and m for m in models) or len(set(models)) != len(models):
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'models' must list at least 2 distinct model names, got "
                          f"{models!r:.200}")
    tau = cfg.get("tau", float)
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'tau' must be a finite number > 0 (USD), got {tau!r}")
    hp = dict(cfg.get("hyper_parameters", dict))
    hidden = sorted(k for k in hp if str(k).startswith("_"))
    if hidden:
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'hyper_parameters' holds {hidden}: a router folder's "
                          "hyperparameters are the module's options only (the class is 'router_class')")
    arms = hp.get("arms")
    named = arms.get("model_names") if isinstance(arms, dict) else None
    if named != models:
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'hyper_parameters.arms.model_names' must equal 'models' "
                          f"({models!r:.200}), got {named!r:.200}")
    encoder = _Fields(cfg.get("encoder", dict), f"{where}: {CONFIG_FILE} field 'encoder'")
    spec = {"name": encoder.get("name", str), "max_length": encoder.get("max_length", int),
            "truncation_side": encoder.get("truncation_side", str), "dtype": encoder.get("dtype", str)}
    if spec["max_length"] < 1 or spec["truncation_side"] not in ("left", "right"):
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'encoder' needs max_length >= 1 and truncation_side left "
                          f"or right, got {spec['max_length']!r} and {spec['truncation_side']!r}")
    identity = encoder.get("identity", str, optional=True)
    data = _Fields(cfg.get("data", dict), f"{where}: {CONFIG_FILE} field 'data'")
    data_hp = data.get("hyper_parameters", dict, optional=True)
    record = data.get("record", dict, optional=True)
    guard = cfg.get("shift_guard", dict, optional=True)
    training = _Fields(cfg.get("training", dict), f"{where}: {CONFIG_FILE} field 'training'")
    global_step = training.get("global_step", int)
    validation = training.get("validation", dict, optional=True)
    if validation is not None:
        checked = _Fields(validation, f"{where}: {CONFIG_FILE} field 'training.validation'")
        for key, kind in (("monitor", str), ("score", float)):
            checked.get(key, kind)
    test_metrics = cfg.get("test_metrics", dict, optional=True) or {}

    if not weights_path.is_file():
        raise ConfigError(f"{where} holds no {WEIGHTS_FILE}: the folder is incomplete (copy every file "
                          "save_pretrained wrote)")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{where}: {WEIGHTS_FILE} is not a readable safetensors file (truncated or damaged: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    state = {k: v for k, v in tensors.items() if not k.startswith(RESERVED)}
    extra = {k[len(RESERVED):]: v for k, v in tensors.items() if k.startswith(RESERVED)}
    known = {"record/train_rows", "record/eval_rows", *(f"guard/{k}" for k in _GUARD_TENSORS)}
    if unknown := sorted(set(extra) - known):
        raise ConfigError(f"{where}: {WEIGHTS_FILE} holds tensors this barp does not know: "
                          f"{[RESERVED + k for k in unknown]}")
    saved_tau = state.get("tau")
    if saved_tau is None or saved_tau.numel() != 1 or not math.isclose(float(saved_tau), tau, rel_tol=1e-6):
        raise ConfigError(f"{where}: {CONFIG_FILE} field 'tau' ({tau!r}) differs from the weights' tau "
                          f"({None if saved_tau is None else saved_tau.tolist()!r}): the files do not belong together")

    ckpt: dict[str, Any] = {
        "state_dict": state,
        "hyper_parameters": {"_class_path": router_class, **hp},
        "pytorch-lightning_version": str(training.get("lightning_version", str, optional=True) or "2"),
        "global_step": global_step,
        "epoch": training.get("epoch", int, optional=True) or 0,
        ENCODER_KEY: spec,
        PRETRAINED_KEY: {"training": cfg.raw["training"], "test_metrics": test_metrics},
    }
    if data_hp is not None:
        ckpt["datamodule_hyper_parameters"] = data_hp
    if record is not None:
        rows = {k: extra.get(f"record/{k}") for k in ("train_rows", "eval_rows")}
        if any(v is None or v.dtype != torch.int64 or v.dim() != 1 for v in rows.values()):
            raise ConfigError(f"{where}: {WEIGHTS_FILE} lacks the training-prompt hashes ({RESERVED}record/train_rows "
                              f"and eval_rows, int64) that {CONFIG_FILE} field 'data.record' announces")
        tasks = _Fields(record, f"{where}: {CONFIG_FILE} field 'data.record'").get("task_names", list)
        ckpt[RECORD_KEY] = {"version": int(record.get("version", 1)), "model_names": list(models),
                            "task_names": tasks, "encoder": {**spec, "identity": identity}, **rows}
    if guard is not None:
        numbers = _Fields(guard, f"{where}: {CONFIG_FILE} field 'shift_guard'")
        values = {"threshold": numbers.get("threshold", float), "neighbours": numbers.get("neighbours", int),
                  "quantile": numbers.get("quantile", float), "count": numbers.get("count", int)}
        if not math.isfinite(values["threshold"]):
            raise ConfigError(f"{where}: {CONFIG_FILE} field 'shift_guard.threshold' must be a finite number, got "
                              f"{values['threshold']!r}")
        parts = {k: extra.get(f"guard/{k}") for k in _GUARD_TENSORS}
        if any(parts[k] is None for k in ("reference", "quality", "cost")):
            raise ConfigError(f"{where}: {WEIGHTS_FILE} lacks the shift guard's tensors ({RESERVED}guard/reference, "
                              f"quality, cost) that {CONFIG_FILE} field 'shift_guard' announces")
        ckpt[GUARD_KEY] = {**values, **parts}
    return ckpt


class _Fields:
    """Typed access to a JSON object's fields, with one ConfigError per missing or mistyped field."""

    _NAMES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}

    def __init__(self, raw: Any, where: str) -> None:
        self.raw, self.where = raw, where

    def get(self, key: str, kind: type, optional: bool = False) -> Any:
        if key not in self.raw or (optional and self.raw[key] is None):
            if optional:
                return None
            raise ConfigError(f"{self.where} lacks the field {key!r}: not written by save_pretrained, or edited")
        value = self.raw[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            raise ConfigError(f"{self.where}: field {key!r} must be {self._NAMES[kind]}, got {value!r:.80}")
        return value
