"""Classic linear contextual bandits trained under the SAME bandit feedback as BaRP: LinUCB, linear Thompson
sampling and epsilon-greedy.

Like BaRP, each training row draws a fresh preference w uniformly on the simplex, picks one model, and learns only
from :meth:`~barp.data.environment.BanditEnvironment.pull` of that model (one pass over the training batches per
epoch). The preference is part of the context, so one model serves every preference.

Context (ours, documented): the prompt embedding is reduced by PCA, fitted on the training split's embeddings
(unlabelled, so no outcome is read) and whitened, plus a constant: ``phi(x) = [pca(x); 1]``. With
``context="outer"`` (default) the context is ``z = [w_q * phi(x); w_c * phi(x)]``. The true expected reward
``w_q E[q_k | x] - w_c E[min(c_k / tau, 1) | x]`` is linear in this z whenever score and capped cost are linear in
phi(x), so a per-arm linear model can represent the whole trade-off. ``context="concat"`` uses the plainer
``z = [phi(x); w]``, which cannot express prompt-preference interactions.

Each arm k keeps ridge statistics ``A_k = ridge * I + sum z z^T`` and ``b_k = sum r z`` (float64); the reward
estimate is ``theta_k = A_k^{-1} b_k``. Updates are batched: all rows of a batch are chosen with the statistics of
the previous batch, then added. Evaluation routes greedily by the mean estimate ``z^T theta_k`` (no exploration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from barp.errors import ConfigError
from barp.learning.rl import reward, sample_preferences
from barp.models.base import RouterModule
from barp.models.baselines.common import count_step, step_counter


class BanditContext(NamedTuple):
    """One ``context`` choice: the width of z for a PCA width p, and z from ``phi = [pca(x); 1]`` (B, p + 1) and
    the preferences w (B, 2)."""

    width: Callable[[int], int]
    build: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


ContextKind = Literal["outer", "concat"]
CONTEXTS: dict[str, BanditContext] = {
    "outer": BanditContext(lambda p: 2 * (p + 1), lambda phi, w: torch.cat([w[:, :1] * phi, w[:, 1:] * phi], dim=-1)),
    "concat": BanditContext(lambda p: p + 3, lambda phi, w: torch.cat([phi, w], dim=-1)),
}


class LinearBanditModule(RouterModule):
    """Base of the linear contextual bandits: context, per-arm ridge statistics, batched updates.

    Subclasses implement the exploration rule :meth:`select`.

    Args:
        pca_dim: Number of whitened principal components of the embedding in the context; None keeps all.
        context: ``outer`` (``[w_q phi; w_c phi]``) or ``concat`` (``[phi; w]``); see the module docstring.
        ridge: Ridge (prior precision) of each arm's linear model.
        **parts: The parts of :class:`~barp.models.base.RouterModule` (``arms``, ``reward``, ``evaluation``,
            ``predict``, ``guard``).
    """

    pca_mean: torch.Tensor  # buffers
    pca_components: torch.Tensor
    pca_fitted: torch.Tensor
    A: torch.Tensor
    b: torch.Tensor

    def __init__(self, pca_dim: int | None = 32, context: ContextKind = "outer", ridge: float = 1.0,
                 **parts) -> None:
        super().__init__(**parts)
        if context not in CONTEXTS:
            raise ConfigError(f"model.context must be outer or concat, got {context!r}")
        if pca_dim is not None and not 1 <= pca_dim <= self.embed_dim:
            raise ConfigError(f"model.pca_dim must be in [1, {self.embed_dim}] or null, got {pca_dim!r}")
        if not ridge > 0:
            raise ConfigError(f"model.ridge must be > 0, got {ridge!r}")
        self.automatic_optimization = False
        self.context_kind = context
        p = pca_dim or self.embed_dim
        dim = CONTEXTS[context].width(p)
        k = len(self.model_names)
        self.register_buffer("pca_mean", torch.zeros(self.embed_dim))
        self.register_buffer("pca_components", torch.zeros(self.embed_dim, p))
        self.register_buffer("pca_fitted", torch.tensor(False))
        self.register_buffer("A", ridge * torch.eye(dim, dtype=torch.float64).repeat(k, 1, 1))
        self.register_buffer("b", torch.zeros(k, dim, dtype=torch.float64))

    # ------------------------------------------------------------------ context
    def fit_pca(self, train_emb: torch.Tensor) -> None:
        """Fit the whitened PCA on training embeddings (no outcomes involved)."""
        x = train_emb.double()
        mean = x.mean(dim=0)
        cov = (x - mean).T @ (x - mean) / max(len(x) - 1, 1)
        eigval, eigvec = torch.linalg.eigh(cov)
        p = self.pca_components.shape[1]
        top = eigval.flip(0)[:p].clamp_min(1e-12)
        self.pca_mean.copy_(mean.float())
        self.pca_components.copy_((eigvec.flip(1)[:, :p] / top.sqrt()).float())
        self.pca_fitted.fill_(True)

    def context(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The bandit context z(x, w), shape (B, D), float64."""
        phi = (emb - self.pca_mean) @ self.pca_components
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1).double()
        return CONTEXTS[self.context_kind].build(phi, w.double())

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-arm ``A^{-1}`` (K, D, D) and ``theta = A^{-1} b`` (K, D)."""
        eye = torch.eye(self.A.shape[-1], dtype=self.A.dtype, device=self.A.device)
        a_inv = torch.linalg.solve(self.A, eye.expand_as(self.A))  # batched solve: far faster than inv on CPU
        return a_inv, (a_inv @ self.b.unsqueeze(-1)).squeeze(-1)

    def route(self, emb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Mean estimated reward of every model, shape (B, K) (greedy, no exploration)."""
        _, theta = self.posterior()
        return (self.context(emb, w) @ theta.T).float()

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        """Base-class setup, then fit the PCA on the training split's embeddings (unlabelled)."""
        super().setup(stage)
        dm = self.router_data()
        if stage == "fit" and dm is not None and not bool(self.pca_fitted):
            self.fit_pca(torch.as_tensor(dm.embeddings(dm.splits.train)).to(self.device))

    def select(self, z: torch.Tensor, a_inv: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The exploration rule: one arm per row of contexts z (B, D); returns (B,) long."""
        raise NotImplementedError

    def explore(self, emb: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Contexts and the arms the exploration rule picks for them with the current statistics."""
        z = self.context(emb, w)
        a_inv, theta = self.posterior()
        return z, self.select(z, a_inv, theta)

    def update(self, z: torch.Tensor, arms: torch.Tensor, r: torch.Tensor) -> None:
        """Add the observed rewards ``r`` of the chosen ``arms`` at contexts ``z`` to those arms' statistics."""
        self.A.index_add_(0, arms, z.unsqueeze(-1) * z.unsqueeze(-2))
        self.b.index_add_(0, arms, r.double().unsqueeze(-1) * z)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Choose arms by the exploration rule, pull them, add (z, r) to the chosen arms' statistics."""
        if self.env is None:
            raise RuntimeError(f"{type(self).__name__} needs a datamodule with train_environment() to train")
        if not bool(self.pca_fitted):
            raise RuntimeError(f"{type(self).__name__}: fit_pca() before training")
        emb, rows = batch["emb"], batch["row"]
        w = sample_preferences(len(emb), device=emb.device)
        z, arms = self.explore(emb, w)
        feedback = self.env.pull(rows, arms)
        r = reward(feedback.score, feedback.cost, w, self.tau_value)
        self.update(z, arms, r)
        count_step(self)
        self.log_dict({"train/reward": r.mean(), "train/score": feedback.score.mean(),
                       "train/cost": feedback.cost.mean()}, on_step=False, on_epoch=True, batch_size=len(emb))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return step_counter()


class LinUCBRouter(LinearBanditModule):
    """LinUCB (Li et al., WWW 2010, disjoint model): pick ``argmax_k z^T theta_k + alpha sqrt(z^T A_k^{-1} z)``.

    Args:
        alpha: Width of the upper confidence bound.
        **parts: Context options of :class:`LinearBanditModule` and the parts of
            :class:`~barp.models.base.RouterModule`.
    """

    def __init__(self, alpha: float = 0.5, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if alpha < 0:
            raise ConfigError(f"model.alpha must be >= 0, got {alpha!r}")

    def select(self, z: torch.Tensor, a_inv: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        width = torch.einsum("bd,kde,be->bk", z, a_inv, z).clamp_min(0).sqrt()
        return (z @ theta.T + self.hparams.alpha * width).argmax(dim=-1)


class LinearTSRouter(LinearBanditModule):
    """Linear Thompson sampling (Agrawal and Goyal, ICML 2013): per row, draw
    ``theta_k ~ N(A_k^{-1} b_k, v^2 A_k^{-1})`` for every arm and pick the best sampled reward.

    Args:
        v: Scale of the posterior samples (exploration).
        **parts: Context options of :class:`LinearBanditModule` and the parts of
            :class:`~barp.models.base.RouterModule`.
    """

    def __init__(self, v: float = 0.2, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if v < 0:
            raise ConfigError(f"model.v must be >= 0, got {v!r}")

    def select(self, z: torch.Tensor, a_inv: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        chol = torch.linalg.cholesky(0.5 * (a_inv + a_inv.transpose(-1, -2)))
        eps = torch.randn(len(z), *theta.shape, device=z.device).double()
        samples = theta + self.hparams.v * torch.einsum("kde,bke->bkd", chol, eps)
        return torch.einsum("bd,bkd->bk", z, samples).argmax(dim=-1)


class EpsilonGreedyRouter(LinearBanditModule):
    """Epsilon-greedy with a per-arm ridge-regression reward model: a uniformly random arm with probability
    epsilon, else the arm with the best estimated reward.

    Args:
        epsilon: Exploration probability.
        **parts: Context options of :class:`LinearBanditModule` and the parts of
            :class:`~barp.models.base.RouterModule`.
    """

    def __init__(self, epsilon: float = 0.1, **parts) -> None:
        super().__init__(**parts)
        self.save_hyperparameters()
        if not 0 <= epsilon <= 1:
            raise ConfigError(f"model.epsilon must be in [0, 1], got {epsilon!r}")

    def select(self, z: torch.Tensor, a_inv: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        greedy = (z @ theta.T).argmax(dim=-1)
        explore = torch.rand(len(z), device=z.device) < self.hparams.epsilon
        random_arms = torch.randint(theta.shape[0], (len(z),), device=z.device)
        return torch.where(explore, random_arms, greedy)
