"""Names of the trainable comparison methods and how evaluation trains them: the same Lightning loop as ``barp fit``,
on the same datamodule (same split, same embeddings), with the same tau as the router they are compared with."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import yaml

from barp.errors import ConfigError
from barp.models.base import RouterModule
from barp.models.baselines.bandits import (
    EpsilonGreedyRouter,
    LinearTSRouter,
    LinUCBRouter,
)
from barp.models.baselines.graphrouter import GraphRouter
from barp.models.baselines.mf import MFRouter
from barp.models.baselines.offline import KNNRouter, MLPRouter
from barp.models.baselines.routerdc import RouterDC
from barp.models.parts import Arms, arms_from_data, plain

#: Method name (as in result files) -> its RouterModule class (as in ``configs/model/<name>.yaml``).
METHOD_CLASSES: dict[str, type[RouterModule]] = {
    "knn": KNNRouter,
    "mlp": MLPRouter,
    "mf": MFRouter,
    "linucb": LinUCBRouter,
    "linear_ts": LinearTSRouter,
    "epsilon_greedy": EpsilonGreedyRouter,
    "graphrouter": GraphRouter,
    "routerdc": RouterDC,
}

# The part of RouterModule that evaluation sets itself (linked from the data); ``reward.tau`` is shared with the
# compared router.
_LINKED = {"arms"}


def read_method_configs(paths: list[str] | None) -> dict[str, dict]:
    """Read ``model`` sections of YAML files (like ``configs/model/knn.yaml``) into init_args per method name.

    Args:
        paths: YAML files, each with ``model: {class_path: <class>, init_args: {...}}``.

    Returns:
        ``{method: init_args}``; options evaluation sets itself (``arms``, ``reward.tau``) are dropped.
    """
    by_class = {cls.__name__: name for name, cls in METHOD_CLASSES.items()}
    out: dict[str, dict] = {}
    for path in paths or []:
        try:
            model = (yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"method config {path}: cannot read it ({err})") from None
        cls_name = str(model.get("class_path", "")).rsplit(".", 1)[-1]
        if cls_name not in by_class:
            raise ConfigError(f"method config {path}: field 'model.class_path' = {model.get('class_path')!r} is "
                              f"not a comparison method; expected one of {sorted(by_class)}")
        args = {k: v for k, v in (model.get("init_args") or {}).items() if k not in _LINKED}
        if isinstance(args.get("reward"), dict):
            args["reward"] = {k: v for k, v in args["reward"].items() if k != "tau"}
        out[by_class[cls_name]] = args
    return out


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines and expected warnings while evaluation trains comparison methods."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train_method(method: str, datamodule, tau: float, seed: int, max_epochs: int,
                 init_args: dict | None = None) -> RouterModule:
    """Train one comparison method through Lightning on the datamodule's train split, on CPU.

    Args:
        method: A key of :data:`METHOD_CLASSES`.
        datamodule: A :class:`~barp.data.datamodule.RoutingDataModule` (set up or not).
        tau: The reward's cost scale, shared with the compared router.
        seed: Seed set right before building the method, so results do not depend on the order of methods.
        max_epochs: Training epochs (bandits: one pass over the training batches per epoch).
        init_args: The method's hyperparameters (default: the class defaults, as in ``configs/model/``).
    """
    if method not in METHOD_CLASSES:
        raise ConfigError(f"unknown comparison method {method!r}; expected one of {sorted(METHOD_CLASSES)}")
    if max_epochs < 1:
        raise ConfigError(f"max_epochs must be >= 1, got {max_epochs!r}")
    datamodule.setup("fit")
    with quiet_lightning():
        L.seed_everything(seed, workers=True, verbose=False)
        args = dict(init_args or {})
        reward = {**plain(args.pop("reward", None) or {}), "tau": tau}
        arms = arms_from_data(datamodule)
        arms = Arms(arms.model_names, arms.task_names, int(datamodule.embeddings().shape[1]), arms.encoder)
        module = METHOD_CLASSES[method](arms=arms, reward=reward, **args)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0, deterministic=True, callbacks=[])
        trainer.fit(module, datamodule=datamodule)
    return module.eval()
