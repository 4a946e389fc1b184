"""Route new prompts with a trained checkpoint: the deployable form of a barp router.

    router = TrainedRouter.from_checkpoint("runs/synthetic/version_0/checkpoints/last.ckpt")
    router.route(["Write a haiku about rain."], w_c=0.3)   # -> [Decision(model=..., probability=...)]
    router.route(prompts, w_c=0.3, temperature=1.0, epsilon=0.05, seed=7)   # exploring: Decision.propensity < 1

The checkpoint holds the policy, tau and the encoder settings (name, max length, truncation side) the
policy was trained on; the frozen encoder is rebuilt from them, never stored in the checkpoint. Checkpoints are read
without running code from them (:func:`barp.models.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.learning.rl import check_w_c, exploration_probabilities, preference_tensor
from barp.models.base import RouterModule
from barp.models.checkpoints import check_encoder, load_checkpoint

#: Where router classes lived before barp's modules moved into layers; older checkpoints name these.
FORMER_MODULES = {
    "barp.module": "barp.models.barp",
    "barp.routers.bandits": "barp.models.baselines.bandits",
    "barp.routers.offline": "barp.models.baselines.offline",
    "barp.routers.mf": "barp.models.baselines.mf",
}


def module_class(ckpt: dict[str, Any], option: str = "--ckpt_path") -> type:
    """The :class:`~barp.models.base.RouterModule` subclass that wrote a checkpoint (from its ``_class_path``).

    Only barp's own modules, or modules the process has already imported, are looked up: a checkpoint never makes
    barp import arbitrary code. Checkpoints written before barp's modules moved into layers (``barp.module``,
    ``barp.routers.*``) still load.
    """
    class_path = str(ckpt["hyper_parameters"].get("_class_path", "barp.models.barp.BaRPModule"))
    module_name, _, class_name = class_path.rpartition(".")
    module_name = FORMER_MODULES.get(module_name, module_name)
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


@dataclass(frozen=True)
class Decision:
    """The routed model for one prompt, the policy's probability of it, and the probability that it was served.

    ``propensity`` is 1 for greedy routing (the argmax is always served); when exploring it is the probability of
    the served model under the exploring distribution, the value a served-request log records.
    """

    model: str
    probability: float
    propensity: float = 1.0


class TrainedRouter:
    """A trained router plus the frozen encoder it expects, for routing raw prompt text.

    Args:
        module: A trained :class:`~barp.models.base.RouterModule` (e.g. BaRP).
        encoder: The frozen sentence encoder with the settings used in training.
    """

    def __init__(self, module: RouterModule, encoder: SentenceEncoder) -> None:
        self.module = module.eval()
        self.encoder = encoder

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
        module = router_class.load_from_checkpoint(path, map_location=device, weights_only=True)
        if not module._trained:
            raise ConfigError(f"checkpoint {str(path)!r} holds an untrained router (no training step)")
        data_hp = ckpt.get("datamodule_hyper_parameters", {})
        check_encoder(ckpt, data_hp, f"checkpoint {str(path)!r}")  # e.g. the encoder's weights changed since
        encoder = SentenceEncoder(
            data_hp.get("encoder", module.encoder_name),
            max_length=data_hp.get("max_length", 256),
            truncation_side=data_hp.get("truncation_side", "left"),
            dtype=data_hp.get("encoder_dtype", "float32"),
            device=device,
        )
        return cls(module, encoder)

    @property
    def models(self) -> list[str]:
        """Candidate model names, in the policy's order."""
        return list(self.module.model_names)

    @staticmethod
    def _check_prompts(prompts: Sequence[str]) -> list[str]:
        """The prompts as a list of strings; a bare string or a non-string item is refused."""
        if isinstance(prompts, (str, bytes)):
            raise ConfigError(f"prompts must be a list of prompt texts, got one {type(prompts).__name__} "
                              f"({prompts[:40]!r}): pass [prompt] to route one prompt")
        try:
            items = list(prompts)
        except TypeError:
            raise ConfigError(f"prompts must be a list of prompt texts, got {type(prompts).__name__}") from None
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise ConfigError(f"prompts[{i}] must be a string, got {type(item).__name__} ({item!r:.40})")
        return items

    @torch.inference_mode()
    def probabilities(self, prompts: Sequence[str], w_c: float) -> torch.Tensor:
        """The policy's distribution over models per prompt at preference ``(1 - w_c, w_c)``, shape (N, K)."""
        prompts = self._check_prompts(prompts)
        if not prompts:
            check_w_c(w_c)
            return torch.zeros(0, len(self.models))
        emb = torch.as_tensor(self.encoder.encode(prompts), device=self.module.device)
        w = preference_tensor(w_c, len(emb), emb.device)
        return torch.softmax(self.module.route(emb, w), dim=-1)

    def route(self, prompts: Sequence[str], w_c: float = 0.5, temperature: float | None = None,
              epsilon: float = 0.0, seed: int | None = None) -> list[Decision]:
        """Route each prompt at cost weight ``w_c``: greedily (the default), or exploring.

        Exploring (``temperature`` given, or ``epsilon > 0``) samples each prompt's model from
        ``(1 - epsilon) softmax(logits / temperature) + epsilon / K`` and reports the sampled model's probability
        under it as the decision's ``propensity``, so that the served requests can be evaluated and trained on
        off-policy (``barp ope``, ``data.train_log``).

        Args:
            prompts: Prompt texts (a list, even for one prompt).
            w_c: Cost weight in [0, 1] (quality weight is ``1 - w_c``).
            temperature: Softmax temperature of exploring routing (default 1 when only ``epsilon`` is given).
            epsilon: Share of uniform exploration in [0, 1].
            seed: Seed of the exploration draws (None: PyTorch's global generator).
        """
        if temperature is None and not epsilon:
            probs = self.probabilities(prompts, w_c)
            best, idx = probs.max(dim=-1)
            return [Decision(self.models[i], float(p)) for i, p in zip(idx.tolist(), best.tolist())]
        prompts = self._check_prompts(prompts)
        if not prompts:
            return []
        emb = torch.as_tensor(self.encoder.encode(prompts), device=self.module.device)
        with torch.inference_mode():
            logits = self.module.route(emb, preference_tensor(check_w_c(w_c), len(emb), emb.device))
        serving = exploration_probabilities(logits, 1.0 if temperature is None else temperature, epsilon)
        generator = None if seed is None else torch.Generator(device=serving.device).manual_seed(int(seed))
        chosen = torch.multinomial(serving, 1, generator=generator).squeeze(-1)
        policy = torch.softmax(logits, dim=-1)
        return [Decision(self.models[a], float(policy[i, a]), float(serving[i, a]))
                for i, a in enumerate(chosen.tolist())]
