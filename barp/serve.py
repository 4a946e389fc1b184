"""Route new prompts with a trained checkpoint: the deployable form of a barp router.

    router = TrainedRouter.from_checkpoint("runs/synthetic/version_0/checkpoints/last.ckpt")
    router.route(["Write a haiku about rain."], w_c=0.3)   # -> [Decision(model=..., probability=...)]

The checkpoint holds the policy, tau and the encoder settings (name, max length, truncation side) the
policy was trained on; the frozen encoder is rebuilt from them, never stored in the checkpoint.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.rl import preference_tensor
from barp.router_module import RouterModule


@dataclass(frozen=True)
class Decision:
    """The routed model for one prompt and the policy's probability of it."""

    model: str
    probability: float


class TrainedRouter:
    """A trained router plus the frozen encoder it expects, for routing raw prompt text.

    Args:
        module: A trained :class:`~barp.router_module.RouterModule` (e.g. BaRP).
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
        if not path.is_file():
            raise ConfigError(f"checkpoint {str(path)!r} does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        class_path = ckpt.get("hyper_parameters", {}).get("_class_path", "barp.module.BaRPModule")
        module_name, _, class_name = class_path.rpartition(".")
        module_class = getattr(importlib.import_module(module_name), class_name)
        module = module_class.load_from_checkpoint(path, map_location=device)
        data_hp = ckpt.get("datamodule_hyper_parameters", {})
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

    @torch.inference_mode()
    def probabilities(self, prompts: Sequence[str], w_c: float) -> torch.Tensor:
        """The policy's distribution over models per prompt at preference ``(1 - w_c, w_c)``, shape (N, K)."""
        emb = torch.as_tensor(self.encoder.encode(list(prompts)), device=self.module.device)
        w = preference_tensor(w_c, len(emb), emb.device)
        return torch.softmax(self.module.route(emb, w), dim=-1)

    def route(self, prompts: Sequence[str], w_c: float = 0.5) -> list[Decision]:
        """Greedy routing: the most probable model per prompt at cost weight ``w_c``.

        Args:
            prompts: Prompt texts.
            w_c: Cost weight in [0, 1] (quality weight is ``1 - w_c``).
        """
        probs = self.probabilities(prompts, w_c)
        best, idx = probs.max(dim=-1)
        return [Decision(self.models[i], float(p)) for i, p in zip(idx.tolist(), best.tolist())]
