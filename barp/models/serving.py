"""Routing raw prompt text with a router module: its frozen encoder, greedy and exploring decisions.

:class:`~barp.models.trained.TrainedRouter` (and through it ``barp serve``, ``barp ope`` and the Python API) routes
raw prompts here; :class:`~barp.models.base.RouterModule` delegates its ``encoder``, ``embed`` and ``predict_step``
here. :func:`sample_exploring` is the one exploring sampler: ``predict``, :func:`decide` and ``barp serve``
all draw through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.learning.rl import check_w_c, exploration_probabilities, preference_tensor
from barp.models.protocols import Router


@dataclass(frozen=True)
class Decision:
    """The routed model for one prompt, the policy's probability of it, and the probability that it was served.

    ``propensity`` is 1 for greedy routing (the argmax is always served); when exploring it is the probability of
    the served model under the exploring distribution, the value a served-request log records.
    """

    model: str
    probability: float
    propensity: float = 1.0


def check_prompts(prompts: Sequence[str]) -> list[str]:
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


def sample_exploring(logits: torch.Tensor, temperature: float, epsilon: float,
                     seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one exploring sampler: each row's model drawn from ``(1 - epsilon) softmax(logits / temperature) +
    epsilon / K`` (:func:`~barp.learning.rl.exploration_probabilities`).

    Args:
        logits: The policy's scores, shape (N, K).
        temperature: Softmax temperature (> 0).
        epsilon: Share of uniform exploration in [0, 1].
        seed: Seed of the draws (None: PyTorch's global generator).

    Returns:
        The drawn model per row (N,) and the exploring distribution (N, K) (a drawn model's entry is its
        propensity).

    Raises:
        ConfigError: ``temperature`` or ``epsilon`` out of range, or together they give no valid distribution.
    """
    serving = exploration_probabilities(logits, temperature, epsilon)
    if not bool(torch.isfinite(serving).all()) or bool((serving.sum(dim=-1) <= 0).any()):
        raise ConfigError(f"temperature {temperature!r} and epsilon {epsilon!r} give no valid probabilities")
    generator = None if seed is None else torch.Generator(device=serving.device).manual_seed(int(seed))
    return torch.multinomial(serving, 1, generator=generator).squeeze(-1), serving


def frozen_encoder(module: Router) -> SentenceEncoder:
    """The module's frozen sentence encoder, built on first use from its ``encoder_settings`` on its device."""
    built = module.__dict__.get("_frozen_encoder")  # (settings, device, encoder)
    settings, device = dict(module.encoder_settings), str(module.device)
    if built is None or built[:2] != (settings, device):
        encoder = SentenceEncoder(**settings, device=device)
        built = (settings, device, encoder)
        module.__dict__["_frozen_encoder"] = built
    return built[2]


def attach_encoder(module: Router, encoder: SentenceEncoder) -> None:
    """Use an already built frozen encoder (its settings must be the module's) instead of building one."""
    module.__dict__["_frozen_encoder"] = (dict(module.encoder_settings), str(module.device), encoder)


def embed(module: Router, prompts: Sequence[str]) -> torch.Tensor:
    """Embeddings of raw prompt texts with the module's frozen encoder, shape (N, D), on the module's device."""
    prompts = check_prompts(prompts)
    if not prompts:
        return torch.zeros(0, module.embed_dim, device=module.device)
    return torch.as_tensor(module.encoder.encode(prompts), device=module.device)


@torch.inference_mode()
def route_prompts(module: Router, prompts: Sequence[str], w_c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt at preference ``(1 - w_c, w_c)``: the policy's distribution over models (N, K) and the greedy
    choice (N,) (the module's ``greedy``: the argmax, or the shift guard's fallback), from one embedding pass."""
    emb = module.embed(prompts)
    w = preference_tensor(check_w_c(w_c), len(emb), emb.device)
    if not len(emb):
        return torch.zeros(0, len(module.model_names)), torch.zeros(0, dtype=torch.long)
    logits = module.route(emb, w)
    return torch.softmax(logits, dim=-1), module.greedy(emb, w, logits)


def decide(module: Router, prompts: Sequence[str], w_c: float = 0.5, temperature: float | None = None,
           epsilon: float = 0.0, seed: int | None = None) -> list[Decision]:
    """Route raw prompts at cost weight ``w_c``: greedily (the default), or exploring.

    Exploring (``temperature`` given, or ``epsilon > 0``) samples each prompt's model with :func:`sample_exploring`
    and reports the sampled model's probability under the exploring distribution as the decision's
    ``propensity``, so that the served requests can be evaluated and trained on off-policy (``barp ope``,
    ``data.train_log``).

    Args:
        module: The router module.
        prompts: Prompt texts (a list, even for one prompt).
        w_c: Cost weight in [0, 1] (quality weight is ``1 - w_c``).
        temperature: Softmax temperature of exploring routing (default 1 when only ``epsilon`` is given).
        epsilon: Share of uniform exploration in [0, 1].
        seed: Seed of the exploration draws (None: PyTorch's global generator).
    """
    if temperature is None and not epsilon:
        probs, idx = route_prompts(module, prompts, w_c)
        return [Decision(module.model_names[i], float(probs[r, i])) for r, i in enumerate(idx.tolist())]
    emb = module.embed(prompts)
    if not len(emb):
        return []
    with torch.inference_mode():
        logits = module.route(emb, preference_tensor(check_w_c(w_c), len(emb), emb.device))
    chosen, serving = sample_exploring(logits, 1.0 if temperature is None else temperature, epsilon, seed)
    policy = torch.softmax(logits, dim=-1)
    return [Decision(module.model_names[a], float(policy[i, a]), float(serving[i, a]))
            for i, a in enumerate(chosen.tolist())]


def predict(module: Router, batch: dict[str, torch.Tensor]) -> dict:
    """A router module's ``predict_step``: per prompt at ``predict_w_c``, the greedy choice and its probability
    (softmax of ``route``); when exploring (``predict_exploration``: temperature, epsilon), a sampled choice
    (:func:`sample_exploring`), its policy probability and its ``propensity`` (probability of being served)."""
    w = preference_tensor(module.predict_w_c, len(batch["emb"]), batch["emb"].device)
    logits = module.route(batch["emb"], w)
    probs = torch.softmax(logits, dim=-1)
    out: dict[str, Any] = {"row": batch["row"], "split": batch["split"], "w_c": module.predict_w_c}
    if module.predict_exploration is None:
        out["action"] = module.greedy(batch["emb"], w, logits)
        out["probability"] = probs.gather(-1, out["action"].unsqueeze(-1)).squeeze(-1)
        return out
    action, serving = sample_exploring(logits, *module.predict_exploration)
    out["action"] = action
    out["probability"] = probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    out["propensity"] = serving.gather(-1, action.unsqueeze(-1)).squeeze(-1)
    return out
