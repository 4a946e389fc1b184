"""barp's one registry of router names and classes, and how evaluation trains the comparison methods: the same
Lightning loop as ``barp fit``, on the same datamodule (same split, same embeddings), with the same tau as the router
they are compared with. ``barp sweep``'s method names and its ``model.class_path`` check derive from
:data:`ROUTER_CLASSES`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import yaml

from barp.errors import ConfigError
from barp.models.barp import BaRPModule
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
from barp.models.parts import Arms, Reward, part, plain

#: Method name (as in result files) -> its RouterModule class (as in ``configs/model/<name>.yaml``): BaRP, then the
#: comparison methods in the order ``barp sweep`` reports them. The one table of names and classes.
ROUTER_CLASSES: dict[str, type[RouterModule]] = {
    "barp": BaRPModule,
    "knn": KNNRouter,
    "mlp": MLPRouter,
    "mf": MFRouter,
    "linucb": LinUCBRouter,
    "linear_ts": LinearTSRouter,
    "epsilon_greedy": EpsilonGreedyRouter,
    "graphrouter": GraphRouter,
    "routerdc": RouterDC,
}
#: The comparison methods evaluation trains itself: every router but BaRP.
METHOD_CLASSES: dict[str, type[RouterModule]] = {name: cls for name, cls in ROUTER_CLASSES.items() if name != "barp"}


def router_class(class_path: str | None, option: str = "model.class_path") -> type[RouterModule]:
    """The router class a config names by ``class_path`` (its last dotted part is the class name; None: BaRPModule).

    Raises:
        ConfigError: No router class of :data:`ROUTER_CLASSES` has that name.
    """
    name = str(class_path or BaRPModule.__name__).rsplit(".", 1)[-1]
    classes = {cls.__name__: cls for cls in ROUTER_CLASSES.values()}
    if name not in classes:
        raise ConfigError(f"{option}: {name!r} is not a barp router class; expected one of {sorted(classes)}")
    return classes[name]


def method_name(router: type[RouterModule]) -> str:
    """The method name (:data:`ROUTER_CLASSES`) of a router class or of a subclass of one: ``barp`` for BaRPModule.

    Raises:
        ConfigError: ``router`` derives from no registered class.
    """
    for name, cls in ROUTER_CLASSES.items():
        if issubclass(router, cls):
            return name
    raise ConfigError(f"{router.__name__} is not a barp router class; expected a subclass of one of "
                      f"{sorted(c.__name__ for c in ROUTER_CLASSES.values())}")

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
        reward = part(Reward, {**plain(args.pop("reward", None) or {}), "tau": tau}, "model.reward")
        # the embedding size of the embeddings at hand (no encoder config to read)
        arms = Arms(list(datamodule.model_names), list(datamodule.task_names), int(datamodule.embeddings().shape[1]),
                    datamodule.encoder_spec.name)
        module = METHOD_CLASSES[method](arms=arms, reward=reward, **args)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0, deterministic=True, callbacks=[])
        trainer.fit(module, datamodule=datamodule)
    return module.eval()
