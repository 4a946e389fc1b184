"""Small outcome tables and table files the tests train and evaluate on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from barp.data.table import OutcomeTable

#: The models of :func:`write_table`'s files (the first is the best and the most expensive).
MODELS = ["big", "mid", "small"]

SUBJECTS = ["apples", "trains", "coins", "marbles", "books", "eggs", "chairs", "pencils", "birds", "boats"]
THEMES = ["the sea", "autumn", "a lost friend", "the moon", "city lights", "winter", "a garden", "old letters"]


def make_table(n: int = 6, k: int = 3, seed: int = 0, source: str = "test.csv") -> OutcomeTable:
    """A small valid random table."""
    rng = np.random.default_rng(seed)
    return OutcomeTable(
        prompt_ids=[f"p{i}" for i in range(n)],
        prompts=[f"prompt number {i}" for i in range(n)],
        tasks=["a" if i % 2 else "b" for i in range(n)],
        models=[f"m{j}" for j in range(k)],
        scores=rng.random((n, k)),
        costs=rng.random((n, k)) * 1e-3,
        source=source,
    )


def structured_table(n: int = 60, seed: int = 0) -> OutcomeTable:
    """Model 0: good and expensive; model 1: fair and nearly free; model 2: dominated. Prompts as in make_table."""
    rng = np.random.default_rng(seed)
    base_s, base_c = np.array([0.9, 0.6, 0.2]), np.array([1e-3, 1e-5, 5e-4])
    return OutcomeTable(
        prompt_ids=[f"p{i}" for i in range(n)], prompts=[f"prompt number {i}" for i in range(n)],
        tasks=["a" if i % 2 else "b" for i in range(n)], models=["big", "small", "bad"],
        scores=np.clip(base_s + rng.normal(0, 0.05, (n, 3)), 0, 1),
        costs=base_c * rng.uniform(0.8, 1.2, (n, 3)), source="structured",
    )


def routing_problem(seed: int = 0) -> OutcomeTable:
    """Math prompts are solved by model 'math-small', poems by 'poet-small'; 'big' solves all at 20x the cost."""
    rng = np.random.default_rng(seed)
    prompts, tasks = [], []
    for _ in range(80):
        prompts.append(f"Tom has {rng.integers(2, 90)} {rng.choice(SUBJECTS)} and buys {rng.integers(2, 50)} more. "
                       "How many does he have now?")
        tasks.append("math")
        prompts.append(f"Write a short poem about {rng.choice(THEMES)} "
                       f"in the style of a {rng.choice(['sonnet', 'haiku', 'ballad'])}.")
        tasks.append("poetry")
    n = len(prompts)
    is_math = np.array([t == "math" for t in tasks])
    scores = np.stack([np.where(is_math, 0.7, 0.1), np.where(is_math, 0.1, 0.7), np.full(n, 1.0)], axis=1)
    costs = np.tile([1e-4, 1e-4, 2e-3], (n, 1))
    return OutcomeTable([f"q{i}" for i in range(n)], prompts, tasks, ["math-small", "poet-small", "big"],
                        scores, costs, source="routing_problem")


def write_table(path: Path, models: list[str] = MODELS, n: int = 36, seed: int = 0) -> Path:
    """A wide CSV of ``n`` short prompts in 3 tasks; the first model is the best and the most expensive."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"prompt_id": [f"q{i}" for i in range(n)],
                               "prompt": [f"Question {i}: what is {i} plus {i % 7}?" for i in range(n)],
                               "task": [("math", "trivia", "code")[i % 3] for i in range(n)]}
    for j, m in enumerate(models):
        data[m] = rng.random(n) * (1 - 0.2 * j)
    for j, m in enumerate(models):
        data[f"{m}|total_cost"] = np.full(n, 1e-3 / 10 ** min(j, 2))
    pd.DataFrame(data).to_csv(path, index=False)
    return path
