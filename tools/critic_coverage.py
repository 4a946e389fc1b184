"""How well did a trained BaRP checkpoint's neighbour critic see the models? An offline diagnosis.

    python tools/critic_coverage.py --ckpt_path runs/llmrouter/version_0/checkpoints/best-epoch=13.ckpt

The critic (``model.critic: Neighbours``) estimates each model's score on a training prompt from the outcomes PULLED
on its nearest training prompts. A policy that has settled stops pulling the models it dropped, so their estimates
rest on a few prompts the policy chose, which biases them. This tool rebuilds the checkpoint's data (from the
settings saved in it; relative paths are read from the current folder), recomputes the critic's estimates from the
memory saved in the checkpoint and compares them with what the full training table (which the learner never saw)
says about the same neighbours. Per model: the share of training prompts whose outcome was pulled, and the mean
estimate minus the full-information neighbour mean. Overall, at w_c = 0 (quality only): how often the critic's best
model is the full-information best, and the true score lost by following the critic. Run it on checkpoints trained
with and without ``model.explore`` to see what the uniform pulls change (docs/method.md, "Top-end quality").
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from barp.errors import ConfigError, run_tool


def coverage(ckpt_path: str) -> dict:
    """The critic's coverage and bias for a checkpoint (printed, and returned as a dict).

    Args:
        ckpt_path: A checkpoint written by ``barp fit`` with ``model.critic: Neighbours``.

    Raises:
        ConfigError: The checkpoint is unreadable or holds no neighbour critic.
    """
    from barp.learning.critic import NeighbourCritic
    from barp.models.checkpoints import datamodule_from_checkpoint, load_checkpoint, model_order

    ckpt = load_checkpoint(ckpt_path)
    memory = ckpt.get("neighbour_critic")
    if memory is None:
        raise ConfigError(f"--ckpt_path {ckpt_path!r}: the checkpoint holds no neighbour critic (trained with "
                          "model.critic: null?)")
    hp = ckpt.get("hyper_parameters") or {}
    dm = datamodule_from_checkpoint(ckpt, "fit")
    names = list(hp["arms"]["model_names"])
    neighbours = (hp.get("critic") or {}).get("init_args") or {}
    order = model_order(names, list(dm.model_names), f"--ckpt_path {ckpt_path!r}")
    cols = np.arange(len(names)) if order is None else np.asarray(order)
    train = np.asarray(dm.splits.train)
    truth_scores = torch.as_tensor(np.asarray(dm.table.scores)[train][:, cols], dtype=torch.float64)
    critic = NeighbourCritic(torch.as_tensor(dm.train_embeddings()), len(names), int(neighbours.get("neighbours", 40)),
                             float(neighbours.get("prior", 1.0)))
    critic.load_state_dict(memory)  # refuses a memory of another shape than the rebuilt training split
    estimate, _ = critic.estimates(torch.arange(len(train)))
    truth = truth_scores[critic.neighbours].mean(1)  # what every neighbour's outcome says (never seen by the learner)
    seen = critic.seen.double()
    chosen = estimate.argmax(1)
    best = truth.max(1).values
    result = {
        "checkpoint": str(ckpt_path),
        "explore": float((hp.get("training") or {}).get("explore", 0.0)),
        "models": names,
        "pulled_share": seen.mean(0).tolist(),
        "estimate_bias": (estimate - truth).mean(0).tolist(),
        "agree_at_wc0": float((chosen == truth.argmax(1)).double().mean()),
        "score_lost_at_wc0": float((best - truth.gather(1, chosen[:, None]).squeeze(1)).mean()),
    }
    width = max(len(n) for n in names)
    print(f"{ckpt_path} (explore {result['explore']}): {len(train)} training prompts, "
          f"{neighbours.get('neighbours', 40)} neighbours each")
    print(f"{'model':{width}}  pulled share  estimate - full-information mean")
    for name, share, bias in zip(names, result["pulled_share"], result["estimate_bias"]):
        print(f"{name:{width}}  {share:12.2f}  {bias:+.3f}")
    print(f"at w_c = 0 the critic's best model is the full-information best on {result['agree_at_wc0']:.1%} of the "
          f"training prompts; following it loses {result['score_lost_at_wc0']:.4f} score per prompt")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one message and exits with code 2."""
    return run_tool(coverage, argv)


if __name__ == "__main__":
    sys.exit(main())

