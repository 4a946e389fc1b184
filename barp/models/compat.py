"""Checkpoints written by earlier versions of barp, read as today's.

Router classes that lived elsewhere (``barp.module``, ``barp.routers.*``: :data:`FORMER_MODULES`) are named by their
module of today. Checkpoints written before the module's options became parts have FLAT hyperparameters
(``model_names``, ``tau``, ``eval_w_c``, ``fallback_quantile``, BaRP's ``baseline: batch_mean``, ``critic: neighbours``,
...) read as the grouped form of today (``arms``, ``reward``, ``evaluation``, ``predict``, ``guard``; BaRP's
``policy``, ``training``, ``baseline``, ``critic``, ``off_policy``).

Every loader calls :func:`upgrade_checkpoint` on the checkpoint dictionary before it reads the hyperparameters or
hands them to Lightning (which builds ``cls(**hyper_parameters)``): ``load_checkpoint``, ``TrainedRouter``, ``barp
sweep``, the CLI's ``--ckpt_path`` and the module's own ``on_load_checkpoint``. It is idempotent.
"""

from __future__ import annotations

import io
from typing import Any

import lightning as L
import torch

from barp.data.compat import upgrade_data_hparams

#: Where router classes lived before barp's modules moved into layers -> where they live now.
FORMER_MODULES = {
    "barp.module": "barp.models.barp",
    "barp.routers.bandits": "barp.models.baselines.bandits",
    "barp.routers.offline": "barp.models.baselines.offline",
    "barp.routers.mf": "barp.models.baselines.mf",
}
#: Where the strategies live (their ``class_path``).
STRATEGIES = "barp.learning.strategies"
#: BaRP's former ``baseline`` names -> strategy class.
BASELINES = {"batch_mean": "BatchMean", "batch_linear": "BatchLinear", "moving_average": "MovingAverage",
             "leave_one_out": "LeaveOneOut", "none": "NoBaseline"}

#: Flat option -> (part, field), for every router.
ROUTER_FIELDS = {
    "model_names": ("arms", "model_names"), "task_names": ("arms", "task_names"),
    "embed_dim": ("arms", "embed_dim"), "encoder": ("arms", "encoder"),
    "tau": ("reward", "tau"), "tau_percentile": ("reward", "tau_percentile"),
    "eval_w_c": ("evaluation", "w_c"), "extra_eval_w_c": ("evaluation", "extra_w_c"),
    "predict_w_c": ("predict", "w_c"), "predict_temperature": ("predict", "temperature"),
    "predict_epsilon": ("predict", "epsilon"),
}
#: BaRP's flat options -> (part, field).
BARP_FIELDS = {
    "head": ("policy", "head"), "hidden_dim": ("policy", "hidden_dim"), "pref_dim": ("policy", "pref_dim"),
    "preference_features": ("policy", "features"),
    "lr": ("training", "lr"), "weight_decay": ("training", "weight_decay"), "beta": ("training", "beta"),
    "beta_final": ("training", "beta_final"), "samples_per_prompt": ("training", "samples_per_prompt"),
    "cost_power": ("training", "cost_power"), "explore": ("training", "explore"),
}


def _is_barp(hp: dict[str, Any]) -> bool:
    class_path = hp.get("_class_path")
    if class_path is not None:
        return str(class_path).rpartition(".")[2] == "BaRPModule"
    return "baseline" in hp or "critic" in hp or "head" in hp  # saved outside the CLI: BaRP's own options


def _is_graphrouter(hp: dict[str, Any]) -> bool:
    class_path = hp.get("_class_path")
    if class_path is not None:
        return str(class_path).rpartition(".")[2] == "GraphRouter"
    return "task_link" in hp and "mask_rate" in hp  # saved outside the CLI: GraphRouter's own options


def upgrade_module_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """A module's hyperparameters in the grouped form; new-form dicts are returned unchanged.

    Only the options present move (a missing one takes today's default); options of a comparison router that are
    its own (``k``, ``hidden_dim`` of an MLP, ...) stay as they are. A GraphRouter saved before ``query_state``
    existed scored edges from the query's final state: it keeps ``query_state: final``.
    """
    if _is_graphrouter(hp) and "query_state" not in hp:
        hp = {**hp, "query_state": "final"}
    if "arms" in hp or "model_names" not in hp:
        return hp
    flat = dict(hp)
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    fields = {**ROUTER_FIELDS, **(BARP_FIELDS if _is_barp(flat) else {})}
    for key, (group, field) in fields.items():
        if key in flat:
            groups.setdefault(group, {})[field] = flat.pop(key)
    quantile = flat.pop("fallback_quantile", None)
    neighbours = flat.pop("fallback_neighbours", None)
    guard = None if quantile is None else {"quantile": quantile, **({} if neighbours is None
                                                                    else {"neighbours": neighbours})}
    if _is_barp(hp):
        baseline = flat.pop("baseline", "batch_mean")
        momentum = flat.pop("baseline_momentum", None)
        args = {"momentum": momentum} if baseline == "moving_average" and momentum is not None else {}
        out["baseline"] = {"class_path": f"{STRATEGIES}.{BASELINES.get(baseline, baseline)}", "init_args": args}
        critic = flat.pop("critic", "none")
        critic_args = {field: flat.pop(f"critic_{field}") for field in ("neighbours", "prior", "residual")
                       if f"critic_{field}" in flat}
        out["critic"] = None if critic == "none" else {"class_path": f"{STRATEGIES}.Neighbours",
                                                       "init_args": critic_args}
        if "importance_clip" in flat:
            out["off_policy"] = {"class_path": f"{STRATEGIES}.SelfNormalisedIS",
                                 "init_args": {"clip": flat.pop("importance_clip")}}
    first = {k: flat.pop(k) for k in ("_class_path",) if k in flat}
    return {**first, **groups, "guard": guard, **out, **flat}


def upgrade_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a checkpoint dictionary in place (and return it): the module's hyperparameters
    (:func:`upgrade_module_hparams`) and, where barp has it, the data module's
    (:func:`barp.data.compat.upgrade_data_hparams`)."""
    if not isinstance(ckpt, dict):
        return ckpt
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, dict):
        hp = upgrade_module_hparams(hp)
        module, _, name = str(hp.get("_class_path", "")).rpartition(".")
        if module in FORMER_MODULES:
            hp = {**hp, "_class_path": f"{FORMER_MODULES[module]}.{name}"}
        ckpt["hyper_parameters"] = hp
    data = ckpt.get("datamodule_hyper_parameters")
    if isinstance(data, dict):
        ckpt["datamodule_hyper_parameters"] = upgrade_data_hparams(data)
    return ckpt


def checkpoint_buffer(ckpt: dict[str, Any]) -> io.BytesIO:
    """An (upgraded) checkpoint dictionary as a file object for Lightning's ``load_from_checkpoint``, which builds
    the module from the hyperparameters it reads."""
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return buffer


def load_module(cls: type[L.LightningModule], ckpt: dict[str, Any], map_location: Any = "cpu"):
    """``cls.load_from_checkpoint`` of an already read checkpoint dictionary, upgraded first (weights-only)."""
    return cls.load_from_checkpoint(checkpoint_buffer(upgrade_checkpoint(ckpt)), map_location=map_location,
                                    weights_only=True)
