"""Route new prompts with a trained checkpoint: the deployable form of a barp router.

    router = TrainedRouter.from_checkpoint("runs/synthetic/version_0/checkpoints/last.ckpt")
    router.route(["Write a haiku about rain."], w_c=0.3)   # -> [Decision(model=..., probability=...)]

The checkpoint holds the policy, tau and the encoder settings (name, max length, truncation side) the
policy was trained on; the frozen encoder is rebuilt from them, never stored in the checkpoint. Checkpoints are read
without running code from them (:func:`barp.checkpoints.load_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from barp.checkpoints import check_encoder, load_checkpoint, module_class
from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.rl import check_w_c, preference_tensor
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

    def route(self, prompts: Sequence[str], w_c: float = 0.5) -> list[Decision]:
        """Greedy routing: the most probable model per prompt at cost weight ``w_c``.

        Args:
            prompts: Prompt texts (a list, even for one prompt).
            w_c: Cost weight in [0, 1] (quality weight is ``1 - w_c``).
        """
        probs = self.probabilities(prompts, w_c)
        best, idx = probs.max(dim=-1)
        return [Decision(self.models[i], float(p)) for i, p in zip(idx.tolist(), best.tolist())]
