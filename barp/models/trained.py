"""Route new prompts with a trained checkpoint: the deployable form of a barp router.

    router = TrainedRouter.from_checkpoint("runs/synthetic/version_0/checkpoints/last.ckpt")
    router.route(["Write a haiku about rain."], w_c=0.3)   # -> [Decision(model=..., probability=...)]
    router.route(prompts, w_c=0.3, temperature=1.0, epsilon=0.05, seed=7)   # exploring: Decision.propensity < 1
    router.save_pretrained("routers/synthetic")                        # config.json, model.safetensors, README.md
    TrainedRouter.from_pretrained("routers/synthetic")                 # or "owner/name", revision="<commit sha>"

The checkpoint holds the policy, tau and the encoder settings (name, max length, truncation side, dtype) the
policy was trained on; the module rebuilds its frozen encoder from them, never stored in the checkpoint.
Checkpoints and router folders are read without running code from them (:func:`barp.models.hub.load_router`); the
folder format and the Hub are :mod:`barp.models.hub`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from barp.encoders import SentenceEncoder
from barp.errors import ConfigError
from barp.models import hub, serving
from barp.models.base import RouterModule
from barp.models.checkpoints import check_encoder
from barp.models.compat import load_module
from barp.models.hub import module_class
from barp.models.serving import Decision

__all__ = ["TrainedRouter", "module_class"]

#: What a loaded checkpoint holds beyond the module that ``save_pretrained`` writes again: the data's settings and
#: what is known of the training run (steps, the checkpointing callback's validation score, recorded results).
KEPT_KEYS = ("datamodule_hyper_parameters", "global_step", "epoch", "pytorch-lightning_version", "callbacks",
             hub.PRETRAINED_KEY)


class TrainedRouter:
    """A trained router read from a checkpoint and checked, for routing raw prompt text.

    The :class:`~barp.models.base.RouterModule` owns its frozen encoder and its policy; this class routes raw prompt
    text with them (:mod:`barp.models.serving`: greedy, or exploring through the one exploring sampler) and adds
    the safe, checked loading.

    Args:
        module: A trained :class:`~barp.models.base.RouterModule` (e.g. BaRP).
        encoder: An already built encoder with the module's settings (default: the module builds its own).
    """

    def __init__(self, module: RouterModule, encoder: SentenceEncoder | None = None,
                 checkpoint: Mapping[str, Any] | None = None) -> None:
        self.module = module.eval()
        if encoder is not None:
            serving.attach_encoder(self.module, encoder)
        self._kept = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint} if checkpoint is not None else {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", revision: str | None = None,
                        option: str = "checkpoint") -> TrainedRouter:
        """Load a router: a checkpoint written by ``barp fit`` (any RouterModule subclass), a folder written by
        :meth:`save_pretrained`, or a Hugging Face Hub repository id (:func:`barp.models.hub.load_router`).

        Args:
            path: Checkpoint file, router folder or ``owner/name``.
            device: Device for the policy and the encoder.
            revision: The Hub revision of a repository id (pin a commit sha).
            option: What named ``path``, for error messages (e.g. ``--ckpt_path``).
        """
        ckpt, _ = hub.load_router(path, option, revision)
        return cls.from_loaded(ckpt, f"{option} {str(path)!r}", device)

    @classmethod
    def from_pretrained(cls, name_or_folder: str | Path, revision: str | None = None,
                        device: str = "cpu") -> TrainedRouter:
        """Load a router saved by :meth:`save_pretrained`: a local folder, or a Hub repository id downloaded through
        ``huggingface_hub.snapshot_download`` (or read from the local Hugging Face cache).

        Args:
            name_or_folder: A folder, or ``owner/name`` on the Hub (a checkpoint file is also accepted).
            revision: The Hub revision: pin a commit sha (None loads the main branch as it is now, with a warning).
            device: Device for the policy and the encoder.

        Raises:
            ConfigError: Offline (``HF_HUB_OFFLINE=1`` or no network) and not in the local cache: the message names
                the repository and where to put the files; a bad folder: one error naming the file and field.
        """
        return cls.from_checkpoint(name_or_folder, device, revision, option="from_pretrained")

    @classmethod
    def from_loaded(cls, ckpt: dict[str, Any], where: str, device: str = "cpu") -> TrainedRouter:
        """The router of an already read checkpoint dictionary (:func:`barp.models.hub.load_router`), checked: trained,
        its weights fit its class, its encoder's weights are the ones it was trained with.

        Args:
            ckpt: The checkpoint dictionary.
            where: The option and value that named it, for error messages.
            device: Device for the policy and the encoder.
        """
        router_class = module_class(ckpt, where)
        hp = ckpt["hyper_parameters"]
        if "_instantiator" not in hp:  # built without Lightning's CLI (a router folder): the class is known
            ckpt = {**ckpt, "hyper_parameters": {k: v for k, v in hp.items() if k != "_class_path"}}
        try:
            module = load_module(router_class, ckpt, map_location=device)
        except (RuntimeError, TypeError) as err:  # e.g. a state_dict of other shapes or keys than the class builds
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{where}: its weights and hyperparameters do not build a {router_class.__name__} "
                              f"({first})") from None
        if not module._trained:
            raise ConfigError(f"{where} holds an untrained router (no training step)")
        # e.g. the encoder's weights changed since training
        check_encoder(ckpt, ckpt.get("datamodule_hyper_parameters", {}), where)
        return cls(module, checkpoint=ckpt)

    def checkpoint(self) -> dict[str, Any]:
        """The router as a checkpoint dictionary (weights, hyperparameters, the module's records), with what its
        checkpoint held beyond the module (:data:`KEPT_KEYS`); what :meth:`save_pretrained` writes."""
        import lightning

        module = self.module
        cls = type(module)
        ckpt: dict[str, Any] = {"global_step": int(module._trained), "epoch": 0,
                                "pytorch-lightning_version": lightning.__version__, **self._kept}
        ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        ckpt["hyper_parameters"] = {**dict(module.hparams), "_class_path": f"{cls.__module__}.{cls.__qualname__}"}
        module.on_save_checkpoint(ckpt)  # the data record, the encoder settings, the shift guard
        return ckpt

    def save_pretrained(self, folder: str | Path, overwrite: bool = False,
                        test_metrics: Mapping[str, float] | None = None) -> Path:
        """Write the router as a folder: ``model.safetensors`` (weights and records), ``config.json`` (format version,
        class, hyperparameters, models, tau, encoder identity, preference convention, data) and a generated model
        card ``README.md`` (:mod:`barp.models.hub`), all at once (a temporary folder, then a rename).

        Args:
            folder: The folder (created; one that already holds files is refused unless ``overwrite``).
            overwrite: Replace the router files of a folder that already holds files (others are left alone).
            test_metrics: Test results to record in config.json and the card (name -> number), e.g. from ``barp
                test``; default: those the router's checkpoint recorded, if any.

        Returns:
            The folder.
        """
        return hub.write_pretrained(self.checkpoint(), folder, overwrite=overwrite, test_metrics=test_metrics)

    def push_to_hub(self, repo_id: str, private: bool | None = None, revision: str | None = None,
                    commit_message: str | None = None, test_metrics: Mapping[str, float] | None = None) -> str:
        """Publish the router on the Hugging Face Hub (:meth:`save_pretrained` into a temporary folder, then
        ``HfApi().upload_folder``; needs network and a write token: ``hf auth login`` or ``HF_TOKEN``).

        Returns:
            The commit sha, to pin when loading: ``TrainedRouter.from_pretrained(repo_id, revision=sha)``.

        Raises:
            ConfigError: Offline (``HF_HUB_OFFLINE``), or the Hub refused or could not be reached.
        """
        return hub.push_to_hub(self.checkpoint(), repo_id, private=private, revision=revision,
                               commit_message=commit_message, test_metrics=test_metrics)

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
