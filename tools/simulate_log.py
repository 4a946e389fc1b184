"""Simulate a served-request log from a recipe's full-information table (a stand-in for real traffic).

Example::

    python tools/simulate_log.py --recipe configs/experiments/synthetic.yaml --passes 4 \\
        --output runs/logs/uniform.parquet
    barp fit --config configs/experiments/synthetic.yaml --data.init_args.train_log runs/logs/uniform.parquet

It builds the recipe's data (its ``data.init_args``, with ``--data`` overrides), takes one split of the table (the
training split by default, so that a policy trained from the log is tested on the same held-out prompts as one
trained online), and serves each prompt ``--passes`` times under a logging policy (``uniform``, or
``epsilon_greedy`` around ``--model``), revealing only the served model's outcome (:mod:`barp.ope.simulate`).
Every row's ``note`` says the log is simulated. The file is written atomically (CSV, JSON lines or parquet by suffix).
An ``--output`` that is one of the tool's inputs (the recipe, or a file its data section names) is refused before
any work.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from barp.data.parts import merge_options
from barp.data.sources.files import check_not_input
from barp.errors import ConfigError, run_tool

#: Data options that name files the tool reads (an --output equal to one of them is refused before any work).
INPUT_OPTIONS = ("path", "val_path", "test_path", "prices")  # of data.source; and data.train_log


def simulate_log(
    recipe: str,
    output: str,
    policy: Literal["uniform", "epsilon_greedy"] = "uniform",
    passes: int = 1,
    split: Literal["train", "val", "test", "ood"] = "train",
    seed: int = 0,
    model: str | None = None,
    epsilon: float = 0.1,
    data: dict | None = None,
    prompts: int | None = None,
    requests: int | None = None,
) -> dict:
    """Write a simulated log of ``split`` served by ``policy`` and print its size and per-model counts.

    Args:
        recipe: Experiment config whose ``data`` section names the table (as given to ``barp fit --config``).
        output: The log file to write (``.parquet``, ``.jsonl`` or ``.csv``); refused if it is one of the inputs.
        policy: Logging policy: ``uniform`` or ``epsilon_greedy`` (``model`` with probability 1 - ``epsilon``).
        passes: Requests per prompt.
        split: Which split of the table to serve.
        seed: Seed of the simulation.
        model: The default model of ``epsilon_greedy``.
        epsilon: Exploration share of ``epsilon_greedy``.
        data: Overrides of the recipe's ``data.init_args``, a part's options one by one (e.g.
            ``{"synthetic": {"num_prompts": 600}}``).
        prompts: Serve only the split's first ``prompts`` prompts (None: all of them).
        requests: Write exactly this many requests: the prompts are served in passes (as many as it takes; the
            last one partly) instead of ``passes``. A million requests over 100,000 prompts:
            ``--data '{"synthetic": {"num_prompts": 200000}}' --prompts 100000 --requests 1000000``.

    Returns:
        A summary: rows, prompts and requests per model.
    """
    from barp.data.datamodule import RoutingDataModule
    from barp.ope.simulate import simulate

    check_not_input(output, {"--recipe": recipe}, option=f"--output {output!r}")
    for name, value in (("--prompts", prompts), ("--requests", requests)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1 (or left out), got {value!r}")
    if requests is not None and passes != 1:
        raise ConfigError(f"give --passes ({passes}) or --requests ({requests}), not both: --requests serves the "
                          "prompts in as many passes as it takes")
    try:
        section = yaml.safe_load(Path(recipe).read_text())["data"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--recipe {recipe}: cannot read its data section ({type(exc).__name__}: {exc})") from None
    args = merge_options(section.get("init_args") or {}, data)
    source = args.get("source") or {}
    inputs = {f"data.source.{key}": source.get(key) for key in INPUT_OPTIONS if isinstance(source.get(key), str)}
    if isinstance(args.get("train_log"), str):
        inputs["data.train_log"] = args["train_log"]
    check_not_input(output, inputs, option=f"--output {output!r}")
    dm = RoutingDataModule(**args)
    rows = getattr(dm.splits, split)
    if len(rows) == 0:
        raise ConfigError(f"--split {split}: the recipe's {split} split is empty")
    if prompts is not None:
        if prompts > len(rows):
            raise ConfigError(f"--prompts {prompts}: the recipe's {split} split has only {len(rows)} prompts; "
                              "make the table larger (--data '{\"synthetic\": {\"num_prompts\": ...}}') or ask "
                              "for fewer")
        rows = rows[:prompts]
    table = dm.table.subset(rows)
    if requests is not None:
        passes = -(-requests // len(rows))
    log = simulate(table, policy, model=model, epsilon=epsilon, seed=seed, passes=passes)
    if requests is not None and requests < len(log):
        log = log.subset(np.arange(requests))  # rows come pass by pass: the last pass is cut short
    log.write(output)
    counts = dict(zip(log.models, map(int, log.model_counts())))
    per_prompt = f"{passes} per prompt" if requests is None else f"{requests} requests in {passes} passes"
    print(f"{log.num_rows} requests on {len(rows)} prompts of the {split} split ({policy}, {per_prompt}; "
          f"SIMULATED from {dm.table.source}); per model: {counts}\nwrote {output}")
    return {"rows": log.num_rows, "prompts": len(rows), "per_model": counts, "output": output}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one message and exits with code 2."""
    return run_tool(simulate_log, argv)


if __name__ == "__main__":
    sys.exit(main())
