"""Plain ``nn.Module`` parts of the BaRP policy: the preference encoder phi and the decision heads g.

``pi(a | x, w) = softmax(g([h(x); phi(w)]))`` where h(x) is a frozen sentence embedding (see
:mod:`barp.encoders`). Sizes are ours (the paper does not give them): phi 2 -> 64 -> 64, MLP head
(dim + 64) -> 256 -> K.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Head = Literal["mlp", "linear", "bilinear"]


class PreferenceEncoder(nn.Module):
    """phi: a small MLP from the 2-d preference (w_q, w_c) to a ``dim``-d feature.

    Args:
        dim: Output (and hidden) width.
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.net(w)


class BilinearHead(nn.Module):
    """logit_k = x^T W_k phi + u_k^T x + v_k^T phi + b_k: prompt-preference interactions without hidden layer."""

    def __init__(self, x_dim: int, p_dim: int, num_models: int) -> None:
        super().__init__()
        self.bilinear = nn.Bilinear(x_dim, p_dim, num_models)
        self.linear = nn.Linear(x_dim + p_dim, num_models, bias=False)

    def forward(self, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.bilinear(x, p) + self.linear(torch.cat([x, p], dim=-1))


class BaRPPolicy(nn.Module):
    """The trainable part of BaRP: preference encoder plus decision head, giving logits over K models.

    Args:
        embed_dim: Prompt embedding size (384 for all-MiniLM-L6-v2).
        num_models: Number of candidate models K.
        head: Decision head: ``mlp`` (default; the paper finds heads close), ``linear`` or ``bilinear``.
        hidden_dim: Hidden width of the MLP head.
        pref_dim: Width of the preference encoder.
    """

    def __init__(self, embed_dim: int, num_models: int, head: Head = "mlp", hidden_dim: int = 256, pref_dim: int = 64) -> None:
        super().__init__()
        self.head_kind = head
        self.pref = PreferenceEncoder(pref_dim)
        in_dim = embed_dim + pref_dim
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_models))
        elif head == "linear":
            self.head = nn.Linear(in_dim, num_models)
        elif head == "bilinear":
            self.head = BilinearHead(embed_dim, pref_dim, num_models)
        else:
            raise ValueError(f"head must be one of mlp, linear, bilinear; got {head!r}")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, K) for embeddings ``x`` (B, D) and preferences ``w`` (B, 2)."""
        p = self.pref(w)
        if isinstance(self.head, BilinearHead):
            return self.head(x, p)
        return self.head(torch.cat([x, p], dim=-1))
