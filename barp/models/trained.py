"""Route new prompts with a trained checkpoint: the deployable form of a barp router.

    router = TrainedRouter.from_checkpoint("runs/synthetic/version_0/checkpoints/last.ckpt")
    router.route(["Write a haiku about rain."], w_c=0.3)   # -> [Decision(model=..., probability=...)]
    router.route(prompts, w_c=0.3, temperature=1.0, epsilon=0.05, seed=7)   # exploring: Decision.propensity < 1

The checkpoint holds the policy, tau and the encoder settings (name, max length, truncation side, dtype) the
policy was trained on; the module rebuilds its frozen encoder from them, never stored in the checkpoint.
Checkpoints are read without running code from them (:func:`barp.models.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.models import serving
from barp.models.base import RouterModule
from barp.models.checkpoints import check_encoder, load_checkpoint
from barp.models.compat import load_module, upgrade_checkpoint
from barp.models.serving import Decision


def module_class(ckpt: dict[str, Any], option: str = "--ckpt_path") -> type:
    """The :class:`~barp.models.base.RouterModule` subclass that wrote a checkpoint (from its ``_class_path``).

    Only barp's own modules, or modules the process has already imported, are looked up: a checkpoint never makes
    barp import arbitrary code. Checkpoints written before barp's modules moved into layers (``barp.module``,
    ``barp.routers.*``) still load.
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


class TrainedRouter:
    """A trained router read from a checkpoint and checked, for routing raw prompt text.

    The :class:`~barp.models.base.RouterModule` owns its frozen encoder and its policy; this class routes raw prompt
    text with them (:mod:`barp.models.serving`: greedy, or exploring through the one exploring sampler) and adds
    the safe, checked loading.

    Args:
        module: A trained :class:`~barp.models.base.RouterModule` (e.g. BaRP).
        encoder: An already built encoder with the module's settings (default: the module builds its own).
    """

    def __init__(self, module: RouterModule, encoder: SentenceEncoder | None = None) -> None:
        self.module = module.eval()
        if encoder is not None:
            serving.attach_encoder(self.module, encoder)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> TrainedRouter:
        """Load a checkpoint written by ``barp fit`` (any RouterModule subclass).

        Args:
            path: Checkpoint file.
            device: Device for the policy and the encoder.
        """
        path = Path(path)
        ckpt = load_checkpoint(path, "checkpoint")
        router_class = module_class(ckpt, "checkpoint")
        module = load_module(router_class, ckpt, map_location=device)
        if not module._trained:
            raise ConfigError(f"checkpoint {str(path)!r} holds an untrained router (no training step)")
        # e.g. the encoder's weights changed since training
        check_encoder(ckpt, ckpt.get("datamodule_hyper_parameters", {}), f"checkpoint {str(path)!r}")
        return cls(module)

    @property
    def encoder(self) -> SentenceEncoder:
        """The module's frozen encoder, with the settings used in training."""
        return self.module.encoder

    @property
    def models(self) -> list[str]:
        """Candidate model names, in the policy's order."""
        return list(self.module.model_names)

    def route_prompts(self, prompts: Sequence[str], w_c: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prompt at preference ``(1 - w_c, w_c)``: the policy's distribution over models (N, K) and the greedy
        choice (N,) (the argmax, or the shift guard's fallback), from one embedding pass."""
        return serving.route_prompts(self.module, prompts, w_c)

    def probabilities(self, prompts: Sequence[str], w_c: float) -> torch.Tensor:
        """The policy's distribution over models per prompt at preference ``(1 - w_c, w_c)``, shape (N, K)."""
        return serving.route_prompts(self.module, prompts, w_c)[0]

    def route(self, prompts: Sequence[str], w_c: float = 0.5, temperature: float | None = None,
              epsilon: float = 0.0, seed: int | None = None) -> list[Decision]:
        """Route each prompt at cost weight ``w_c``: greedily, or exploring (``temperature`` given, or ``epsilon > 0``:
        the decision's ``propensity`` is the served model's probability); see :func:`barp.models.serving.decide`."""
        return serving.decide(self.module, prompts, w_c, temperature, epsilon, seed)
