"""A matrix-factorization offline router in the style of RouteLLM's MF router.

Source: Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data" (arXiv 2406.18665, ICLR 2025), section
4.1 "Matrix factorization": a bilinear scoring function ``s(m, q) = w2^T (v_m * (W1 v_q + b))`` between a learned
model embedding ``v_m`` and a projection of the prompt's text embedding ``v_q``, trained with a Bradley-Terry loss on
pairwise comparisons; it was RouteLLM's strongest router.

barp's K-model version (ours, honest about the differences): RouteLLM routes between two models on pairwise human
preferences. Here the table holds every model's score per prompt, so the same factorization is trained with
(1) RouteLLM's Bradley-Terry loss on every pair of models whose scores differ on a prompt and (2) a pointwise binary
cross-entropy against the score, added because a cost-quality trade-off needs calibrated scores, not only a ranking.
Cost gets a second factorization over the same prompt projection. Routing is the offline routers' rule
``argmax_k w_q q_hat_k - w_c min(c_hat_k / tau, 1)``, so one trained model serves every preference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from barp.errors import ConfigError
from barp.models.baselines.offline import OfflineRouterModule


class MatrixFactorization(nn.Module):
    """Per-model logits ``w2^T (v_m * (W1 x + b)) + b_m`` for two targets (score, cost) over a shared projection.

    Args:
        embed_dim: Prompt embedding size.
        num_models: Number of candidate models K.
        dim: Latent dimension of the factorization.
    """

    def __init__(self, embed_dim: int, num_models: int, dim: int = 128) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, dim)
        self.model_emb = nn.Parameter(torch.randn(2, num_models, dim) * dim**-0.5)
        self.out = nn.Parameter(torch.randn(2, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(2, num_models))

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score logits and raw cost outputs, each of shape (B, K)."""
        z = self.proj(emb)
        logits = torch.einsum("bd,tkd,td->tbk", z, self.model_emb, self.out) + self.bias.unsqueeze(1)
        return logits[0], logits[1]


def bradley_terry_loss(score_logit: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(s_i - s_j)`` over all model pairs (i, j) with ``score_i > score_j`` on the same prompt.

    Args:
        score_logit: Predicted logits, shape (B, K).
        scores: True scores, shape (B, K).
    """
    diff = score_logit.unsqueeze(-1) - score_logit.unsqueeze(-2)
    wins = (scores.unsqueeze(-1) > scores.unsqueeze(-2)).float()
    return (F.softplus(-diff) * wins).sum() / wins.sum().clamp_min(1.0)


class MFRouter(OfflineRouterModule):
    """RouteLLM-style matrix-factorization router, extended to K models and to cost (see the module docstring).

    Args:
        dim: Latent dimension of the factorization (RouteLLM uses 128).
        pairwise_weight: Weight of the Bradley-Terry pairwise loss (RouteLLM's objective).
        pointwise_weight: Weight of the pointwise score cross-entropy (calibration; ours).
        cost_weight: Weight of the cost loss (squared error in units of tau).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    def __init__(self, dim: int = 128, pairwise_weight: float = 1.0, pointwise_weight: float = 1.0,
                 cost_weight: float = 1.0, lr: float = 1e-3, weight_decay: float = 1e-5, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if lr <= 0 or dim < 1:
            raise ConfigError(f"model.lr must be > 0 and model.dim >= 1, got {lr!r}, {dim!r}")
        if min(pairwise_weight, pointwise_weight, cost_weight) < 0:
            raise ConfigError("model.pairwise_weight, pointwise_weight and cost_weight must be >= 0")
        self.mf = MatrixFactorization(self.embed_dim, len(self.model_names), dim)

    def predict_outcomes(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score_logit, cost_raw = self.mf(emb)
        return torch.sigmoid(score_logit), F.softplus(cost_raw) * self.tau_value

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One full-information step: pairwise + pointwise score losses and the cost loss."""
        scores, costs = self._targets(batch)
        hp = self.hparams
        score_logit, cost_raw = self.mf(batch["emb"])
        pair = bradley_terry_loss(score_logit, scores)
        point = F.binary_cross_entropy_with_logits(score_logit, scores)
        cost = F.mse_loss(F.softplus(cost_raw), costs / self.tau_value)
        loss = hp.pairwise_weight * pair + hp.pointwise_weight * point + hp.cost_weight * cost
        self.log_dict({"train/loss": loss, "train/pairwise_loss": pair, "train/score_loss": point,
                       "train/cost_loss": cost}, on_step=False, on_epoch=True, batch_size=len(scores))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.mf.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
