"""Plain ``nn.Module`` parts of the BaRP policy: the preference encoder phi and the decision heads g.

``pi(a | x, w) = softmax(g([h(x); phi(w)]))`` where h(x) is a frozen sentence embedding (see
:mod:`barp.encoders`). Sizes are ours (the paper does not give them): phi 2 -> 64 -> 64, MLP head
(dim + 64) -> 256 -> K.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Head = Literal["mlp", "linear", "bilinear"]


PreferenceFeatures = Literal["raw", "log_ratio"]

#: Floor of the log-ratio feature: w_c / w_q below about 1e-3 all look alike.
LOG_RATIO_EPS = 1e-3


def log_ratio(w: torch.Tensor, eps: float = LOG_RATIO_EPS) -> torch.Tensor:
    """``log((w_c + eps) / (w_q + eps)) / log(1 / eps)``: the trade-off rate on a log scale, in about [-1, 1]."""
    return torch.log((w[..., 1] + eps) / (w[..., 0] + eps)) / math.log(1.0 / eps)


class PreferenceEncoder(nn.Module):
    """phi: a small MLP from the preference (w_q, w_c) to a ``dim``-d feature.

    Args:
        dim: Output (and hidden) width.
        features: ``raw`` feeds (w_q, w_c) (the paper). ``log_ratio`` adds :func:`log_ratio` (ours): the best
            model depends on w only through lambda = w_c / w_q, and the lambdas at which it changes are
            score gaps over cost gaps, which spread over orders of magnitude (most of them at small w_c).
            On the raw scale those switches crowd into w_c < 0.1, where a small network resolves them poorly.
    """

    def __init__(self, dim: int = 64, features: PreferenceFeatures = "raw") -> None:
        super().__init__()
        if features not in ("raw", "log_ratio"):
            raise ValueError(f"preference_features must be raw or log_ratio, got {features!r}")
        self.features = features
        in_dim = 3 if features == "log_ratio" else 2
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.features == "log_ratio":
            w = torch.cat([w, log_ratio(w).unsqueeze(-1)], dim=-1)
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
        preference_features: Input features of the preference encoder (see :class:`PreferenceEncoder`).
        dropout: Share of the prompt embedding's features zeroed in training (0: none).
    """

    def __init__(
        self, embed_dim: int, num_models: int, head: Head = "mlp", hidden_dim: int = 256, pref_dim: int = 64,
        preference_features: PreferenceFeatures = "raw", dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(dropout, bool) or not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.pref = PreferenceEncoder(pref_dim, preference_features)
        in_dim = embed_dim + pref_dim
        if head == "mlp":
            self.head: nn.Module = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                                 nn.Linear(hidden_dim, num_models))
        elif head == "linear":
            self.head = nn.Linear(in_dim, num_models)
        elif head == "bilinear":
            self.head = BilinearHead(embed_dim, pref_dim, num_models)
        else:
            raise ValueError(f"head must be one of mlp, linear, bilinear; got {head!r}")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, K) for embeddings ``x`` (B, D) and preferences ``w`` (B, 2)."""
        p = self.pref(w)
        if self.dropout and self.training:  # none at all when 0: no random numbers drawn, results as without it
            x = F.dropout(x, self.dropout, training=True)
        if isinstance(self.head, BilinearHead):
            return self.head(x, p)
        return self.head(torch.cat([x, p], dim=-1))
