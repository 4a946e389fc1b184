"""Deployment rounds: replay a full-information table as traffic and learn from what was served, round by round.

Example::

    python tools/rounds.py --recipe configs/experiments/synthetic.yaml --output runs/rounds

The table stands in for real traffic (SIMULATED: every request is a training-split prompt, and only the served
model's outcome is revealed). Each round serves the same requests (every training prompt once, each at its own
cost weight, drawn uniformly from [0, 1] once for the whole run) in a new random order, so that rounds are
comparable:

- **BaRP**: round 0 serves a uniform policy (nothing is known yet) and logs it with propensities; every later round
  first trains a fresh BaRP (the recipe's model section) from all logs so far (``data.train_log``: off-policy), then
  serves it exploring (``--temperature``, ``--epsilon``) and logs that round too.
- **LinUCB** and **linear Thompson sampling** serve the same requests online, updating after every batch.

Per round it reports the mean served reward, the greedy policy's mean test reward on the ID test split (at w_c =
0.2, 0.5, 0.8) after the round, and the cumulative regret against the oracle (the best model per request at its
w). Writes ``rounds.csv``, ``rounds.json`` and ``rounds.png`` into ``--output`` (atomically) and prints the table.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from barp.atomic import atomic_path, atomic_write_text
from barp.errors import ConfigError, run_tool

Bandit = Literal["linucb", "linear_ts"]
TEST_W_C = (0.2, 0.5, 0.8)


def _recipe(recipe: str) -> dict:
    try:
        return yaml.safe_load(Path(recipe).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--recipe {recipe}: cannot be read ({type(exc).__name__}: {exc})") from None


def _rewards(scores: np.ndarray, costs: np.ndarray, w_c: np.ndarray, tau: float) -> np.ndarray:
    """Reward of every model per request, shape (R, K): ``(1 - w_c) q - w_c min(c / tau, 1)``."""
    return (1 - w_c)[:, None] * scores - w_c[:, None] * np.minimum(costs / tau, 1.0)


def _test_reward(route, emb: torch.Tensor, scores: np.ndarray, costs: np.ndarray, tau: float) -> float:
    """Mean reward of greedy routing on the test rows, averaged over :data:`TEST_W_C`."""
    from barp.learning.rl import preference_tensor

    values = []
    for w_c in TEST_W_C:
        with torch.no_grad():
            arms = route(emb, preference_tensor(w_c, len(emb))).argmax(-1).numpy()
        values.append(_rewards(scores, costs, np.full(len(arms), w_c), tau)[np.arange(len(arms)), arms].mean())
    return float(np.mean(values))


def _fit_barp(recipe: dict, data_args: dict, log_path: Path, tau: float, steps: int, seed: int):
    """Train a fresh BaRP from the log (off-policy), without validation or checkpoints; return the module."""
    import lightning as L

    from barp.data.datamodule import RoutingDataModule
    from barp.models.barp import BaRPModule
    from barp.models.parts import arms_from_data

    L.seed_everything(seed, verbose=False)
    dm = RoutingDataModule(**{**data_args, "train_log": str(log_path)})
    model_args = dict((recipe.get("model") or {}).get("init_args") or {})
    model_args["reward"] = {**(model_args.get("reward") or {}), "tau": tau}
    module = BaRPModule(arms=arms_from_data(dm), **model_args)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, deterministic=True, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    return module.eval()


def _bandit(name: Bandit, dm, tau: float, train_emb: torch.Tensor):
    from barp.models.parts import Reward, arms_from_data
    from barp.models.registry import METHOD_CLASSES

    cls = METHOD_CLASSES[name]
    module = cls(arms=arms_from_data(dm), reward=Reward(tau=tau))
    module.fit_pca(train_emb)
    return module


def rounds(
    recipe: str = "configs/experiments/synthetic.yaml",
    output: str = "runs/rounds",
    num_rounds: int = 5,
    steps: int = 300,
    temperature: float = 1.0,
    epsilon: float = 0.1,
    bandits: list[Bandit] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    data: dict | None = None,
) -> list[dict]:
    """Replay the recipe's training prompts as traffic for ``num_rounds`` rounds (see the module docstring).

    Args:
        recipe: Experiment config (as given to ``barp fit --config``): its data and model sections are used.
        output: Folder for ``rounds.csv``, ``rounds.json``, ``rounds.png`` and the logs of each round.
        num_rounds: Rounds (round 0 serves a uniform policy).
        steps: Optimiser steps of each round's BaRP fit.
        temperature: Softmax temperature of BaRP's exploring routing.
        epsilon: Uniform exploration share of BaRP's routing.
        bandits: Online linear bandits served on the same stream (default LinUCB and linear TS).
        batch_size: Requests per batch of the bandits' updates.
        seed: Seed of the traffic, of exploration and of training.
        data: Overrides of the recipe's ``data.init_args``, a part's options one by one (e.g.
            ``{"synthetic": {"num_prompts": 600}}``).

    Returns:
        One dict per (round, method): served reward, test reward, cumulative regret.
    """
    from barp.data.datamodule import RoutingDataModule
    from barp.data.parts import merge_options
    from barp.data.sources.logs import LoggedFeedback
    from barp.learning.rl import exploration_probabilities

    if num_rounds < 2:
        raise ConfigError(f"--num_rounds must be >= 2 (round 0 only logs), got {num_rounds}")
    config = _recipe(recipe)
    data_args = merge_options((config.get("data") or {}).get("init_args") or {}, data)
    out = Path(output)
    dm = RoutingDataModule(**data_args)
    dm.prepare_data()
    dm.setup("fit")
    table, train, test = dm.table, dm.splits.train, dm.splits.test
    emb_all = torch.as_tensor(dm._embeddings)
    env = dm.train_environment()
    tau = env.cost_percentile(95.0)
    k = table.num_models
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    test_emb = emb_all[test]
    test_args = (test_emb, table.scores[test], table.costs[test], tau)
    methods = ["barp", *(bandits if bandits is not None else ["linucb", "linear_ts"])]
    learners = {m: _bandit(m, dm, tau, emb_all[train]) for m in methods if m != "barp"}
    logs: list[dict] = []
    results: list[dict] = []
    regret = dict.fromkeys(methods, 0.0)
    barp_module = None
    request_w_c = rng.uniform(0, 1, len(train))  # each training prompt's cost weight, the same in every round
    for r in range(num_rounds):
        shuffle = rng.permutation(len(train))
        order, w_c = train[shuffle], request_w_c[shuffle]
        all_rewards = _rewards(table.scores[order], table.costs[order], w_c, tau)
        oracle = all_rewards.max(axis=1)
        w = torch.as_tensor(np.stack([1 - w_c, w_c], axis=1), dtype=torch.float32)
        emb = emb_all[order]
        # BaRP: uniform in round 0, then the policy trained on all earlier rounds' logs, exploring
        if barp_module is None:
            serving = np.full((len(order), k), 1.0 / k)
        else:
            with torch.no_grad():
                serving = exploration_probabilities(barp_module.route(emb, w), temperature, epsilon).double().numpy()
        serving = serving / serving.sum(axis=1, keepdims=True)
        arms = np.array([rng.choice(k, p=p) for p in serving])
        served = {"barp": all_rewards[np.arange(len(order)), arms]}
        logs.append({"prompts": [table.prompts[i] for i in order], "actions": arms,
                     "propensity": serving[np.arange(len(order)), arms], "score": table.scores[order, arms],
                     "cost": table.costs[order, arms], "w_c": w_c})
        # the linear bandits, online on the same requests
        for name, bandit in learners.items():
            chosen = []
            for start in range(0, len(order), batch_size):
                sl = slice(start, start + batch_size)
                z, picked = bandit.explore(emb[sl], w[sl])
                rew = torch.as_tensor(all_rewards[sl][np.arange(len(picked)), picked.numpy()])
                bandit.update(z, picked, rew)
                chosen.append(picked.numpy())
            served[name] = all_rewards[np.arange(len(order)), np.concatenate(chosen)]
        # after the round: BaRP trains on every log so far; every method's greedy policy is tested
        log_path = out / "logs" / f"round{r}.parquet"
        _write_logs(logs, table.models, log_path, LoggedFeedback)
        barp_module = _fit_barp(config, data_args, log_path, tau, steps, seed + r)
        for name in methods:
            route = barp_module.route if name == "barp" else learners[name].route
            regret[name] += float((oracle - served[name]).sum())
            results.append({"round": r, "method": name, "requests": len(order),
                            "served_reward": float(served[name].mean()), "oracle_reward": float(oracle.mean()),
                            "test_reward": _test_reward(route, *test_args), "cumulative_regret": regret[name]})
        print(_format([x for x in results if x["round"] == r]), flush=True)
    _write_outputs(results, out, recipe)
    return results


def _write_logs(logs: list[dict], models: list[str], path: Path, feedback_cls) -> None:
    """All rounds' requests so far as one served-request log (simulated), written atomically."""
    cat = {key: np.concatenate([np.asarray(part[key]) for part in logs]) for key in logs[0] if key != "prompts"}
    log = feedback_cls(prompts=[p for part in logs for p in part["prompts"]], models=list(models),
                       actions=cat["actions"], propensity=cat["propensity"], score=cat["score"], cost=cat["cost"],
                       w_c=cat["w_c"], notes=["simulated: tools/rounds.py replay"])
    log.write(path)


def _format(rows: list[dict]) -> str:
    return "\n".join(f"round {x['round']}  {x['method']:10s} served {x['served_reward']:.4f} (oracle "
                     f"{x['oracle_reward']:.4f})  test {x['test_reward']:.4f}  cumulative regret "
                     f"{x['cumulative_regret']:.1f}" for x in rows)


def _write_outputs(results: list[dict], out: Path, recipe: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(results[0]))
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(out / "rounds.csv", buf.getvalue())
    atomic_write_text(out / "rounds.json", json.dumps({"recipe": recipe, "test_w_c": TEST_W_C, "rows": results},
                                                      indent=2) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(x["method"] for x in results):
        rows = [x for x in results if x["method"] == name]
        style = {"color": "tab:red", "linewidth": 2.5} if name == "barp" else {}
        axes[0].plot([x["round"] for x in rows], [x["served_reward"] for x in rows], marker="o", label=name, **style)
        axes[1].plot([x["round"] for x in rows], [x["test_reward"] for x in rows], marker="o", label=name, **style)
    oracle = [x["oracle_reward"] for x in results if x["method"] == "barp"]
    axes[0].plot(range(len(oracle)), oracle, "k--", label="oracle")
    axes[0].set(title="served reward per round (simulated traffic)", xlabel="round", ylabel="mean reward")
    axes[1].set(title="greedy test reward after the round (ID, w_c 0.2/0.5/0.8)", xlabel="round")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(out / "rounds.png", suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {out / 'rounds.csv'}, rounds.json, rounds.png")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one message and exits with code 2."""
    return run_tool(rounds, argv)


if __name__ == "__main__":
    sys.exit(main())
