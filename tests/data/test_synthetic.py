"""Tests of the built-in synthetic routing benchmark (barp.data.synthetic)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import barp.data.synthetic.generator as synthetic
from barp.data.synthetic import (
    DEFAULT_OOD_TASKS,
    MODELS,
    PRICES,
    TASKS,
    generate_synthetic,
)
from barp.data.synthetic.text import BUILDERS, DOMAINS
from barp.data.table import OutcomeTable
from barp.errors import ConfigError

GPT4 = "gpt-4-1106-preview"
CLAUDE2 = "claude-v2"
MISTRAL = "mistralai/mistral-7b-chat"
CHEAP_UPGRADES = ("mistralai/mixtral-8x7b-chat", "WizardLM/WizardLM-13B-V1.2")


@pytest.fixture(scope="module")
def table() -> OutcomeTable:
    return generate_synthetic()


def _col(name: str) -> int:
    return MODELS.index(name)


def _rewards(table: OutcomeTable, w_c: float) -> np.ndarray:
    """BaRP reward per (prompt, model) with tau = 95th percentile of all costs."""
    tau = np.quantile(table.costs, 0.95)
    return (1.0 - w_c) * table.scores - w_c * np.minimum(table.costs / tau, 1.0)


def _best_choice(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Per row, the model with the highest value, cheapest among ties."""
    return np.where(values == values.max(axis=1, keepdims=True), costs, np.inf).argmin(axis=1)


def _family_means(table: OutcomeTable, values: np.ndarray) -> dict[str, np.ndarray]:
    tasks = np.array(table.tasks)
    return {t: values[tasks == t].mean(axis=0) for t in TASKS}


# ------------------------------------------------------------------------------------------------ interface
def test_constants_match_routerbench() -> None:
    assert MODELS == [
        "WizardLM/WizardLM-13B-V1.2", "claude-instant-v1", "claude-v1", "claude-v2", "gpt-3.5-turbo-1106",
        "gpt-4-1106-preview", "meta/code-llama-instruct-34b-chat", "meta/llama-2-70b-chat",
        "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
    ]
    assert set(PRICES) == set(MODELS)
    assert PRICES[GPT4] == (10.0, 30.0)
    assert PRICES[CLAUDE2] == PRICES["claude-v1"] == (8.0, 24.0)
    assert PRICES[MISTRAL] == (0.2, 0.2)
    assert min(PRICES, key=lambda m: sum(PRICES[m])) == MISTRAL
    assert TASKS == ["mmlu", "gsm8k", "mbpp", "hellaswag", "winogrande", "mt-bench", "arc-challenge", "summarization"]
    assert DEFAULT_OOD_TASKS == ["arc-challenge", "summarization"]
    for per_model in (synthetic.SKILL, synthetic.DOMAIN_SKILL, synthetic.SHARPNESS, synthetic.STYLE):
        assert set(per_model) == set(MODELS)
    assert all(len(row) == len(TASKS) for row in synthetic.SKILL.values())
    assert all(len(row) == len(DOMAINS) for row in synthetic.DOMAIN_SKILL.values())
    assert set(BUILDERS) == set(TASKS)


def test_table_shape_ids_and_source(table: OutcomeTable) -> None:
    assert isinstance(table, OutcomeTable)
    assert table.num_prompts == 3000 and table.models == MODELS
    assert table.scores.shape == table.costs.shape == (3000, len(MODELS))
    assert table.source == "synthetic(num_prompts=3000, seed=0)"
    assert len(set(table.prompt_ids)) == 3000
    for pid, task in zip(table.prompt_ids, table.tasks):
        assert re.fullmatch(r"[a-z0-9-]+\.\d{5}", pid), pid
        assert pid.rsplit(".", 1)[0] == task
    assert "mmlu.00042" in table.prompt_ids


def test_families_are_stratified() -> None:
    tasks = generate_synthetic(803, seed=1).tasks
    assert [tasks.count(t) for t in TASKS] == [101] * 3 + [100] * 5
    smallest = generate_synthetic(16, seed=2)
    assert {t: smallest.tasks.count(t) for t in TASKS} == dict.fromkeys(TASKS, 2)


def test_rows_are_shuffled(table: OutcomeTable) -> None:
    assert len(set(table.tasks[:40])) >= 5


def test_same_seed_same_table_and_different_seed_differs() -> None:
    first, again = generate_synthetic(400, seed=7), generate_synthetic(400, seed=np.int64(7))
    assert again.prompts == first.prompts and again.prompt_ids == first.prompt_ids and again.tasks == first.tasks
    np.testing.assert_array_equal(again.scores, first.scores)
    np.testing.assert_array_equal(again.costs, first.costs)
    other = generate_synthetic(400, seed=8)
    assert other.prompts != first.prompts and other.tasks != first.tasks
    assert not np.array_equal(other.scores, first.scores) and not np.array_equal(other.costs, first.costs)


@pytest.mark.parametrize("num_prompts", [15, 0, -8, 3.5, "100", None, True])
def test_bad_num_prompts_raises_config_error(num_prompts: object) -> None:
    with pytest.raises(ConfigError, match="num_prompts"):
        generate_synthetic(num_prompts, seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [1.5, "0", None, -1, False])
def test_bad_seed_raises_config_error(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed"):
        generate_synthetic(100, seed=seed)  # type: ignore[arg-type]


def test_generation_is_fast() -> None:
    start = time.perf_counter()
    generate_synthetic(3000, seed=3)
    assert time.perf_counter() - start < 3.0


def test_docstrings_say_the_data_are_synthetic() -> None:
    assert "SYNTHETIC" in synthetic.__doc__
    doc = generate_synthetic.__doc__
    assert "SYNTHETIC" in doc and "not real LLM outcomes" in doc
    assert "Args:" in doc and "Returns:" in doc


# ------------------------------------------------------------------------------------------------ prompt text
def test_family_prompt_styles(table: OutcomeTable) -> None:
    by_task: dict[str, list[str]] = {t: [] for t in TASKS}
    for task, text in zip(table.tasks, table.prompts):
        by_task[task].append(text)
    checks = {
        "mmlu": lambda p: "multiple choice" in p and "\nD. " in p,
        "gsm8k": lambda p: p.rstrip().endswith("?") and re.search(r"\d", p),
        "mbpp": lambda p: "Write a Python function" in p and "assert " in p,
        "hellaswag": lambda p: "continuation" in p and "\nD. " in p,
        "winogrande": lambda p: " _ " in p and "Option 2:" in p,
        "mt-bench": lambda p: "Answer choices" not in p and "assert " not in p,
        "arc-challenge": lambda p: p.startswith("Question:") and "(D)" in p,
        "summarization": lambda p: p.startswith("Article:") and ("Summarize" in p or "summary" in p),
    }
    for task, texts in by_task.items():
        assert all(checks[task](p) for p in texts), task
        assert len(set(texts)) >= 0.6 * len(texts), f"{task} prompts repeat too often"
    words = np.array([len(p.split()) for p in table.prompts])
    assert words.min() >= 5 and words.max() <= 260
    assert np.percentile(words, 90) > 2 * np.percentile(words, 10)


@pytest.mark.parametrize("task", TASKS)
def test_difficulty_shows_in_the_text(task: str) -> None:
    rng = np.random.default_rng(0)
    easy = [BUILDERS[task](rng, 0.05) for _ in range(60)]
    hard = [BUILDERS[task](rng, 0.95) for _ in range(60)]
    assert all(p.domain in DOMAINS for p in easy + hard)
    easy_words = {w for p in easy for w in p.text.lower().split()}
    hard_only = {w for p in hard for w in p.text.lower().split()} - easy_words
    assert len(hard_only) >= 15, "hard prompts should use vocabulary that easy prompts do not"
    if task != "mmlu":  # mmlu's length is dominated by its random few-shot examples
        assert np.mean([len(p.text.split()) for p in hard]) > 1.2 * np.mean([len(p.text.split()) for p in easy])


def test_hard_prompts_use_advanced_keywords() -> None:
    rng = np.random.default_rng(1)
    keywords = {
        "gsm8k": "%",
        "mbpp": "dynamic programming|Kadane|divide-and-conquer",
        "mt-bench": "Requirements:",
        "mmlu": "algebra|physics|machine learning|law|jurisprudence|accounting",
    }
    for task, pattern in keywords.items():
        hard = sum(bool(re.search(pattern, BUILDERS[task](rng, 0.97).text)) for _ in range(50))
        easy = sum(bool(re.search(pattern, BUILDERS[task](rng, 0.03).text)) for _ in range(50))
        assert hard >= 30 and easy <= 5, (task, hard, easy)


# ------------------------------------------------------------------------------------------------ scores
def test_score_scales_per_family(table: OutcomeTable) -> None:
    tasks = np.array(table.tasks)
    for task in ("mmlu", "mbpp", "hellaswag", "winogrande", "arc-challenge"):
        assert set(np.unique(table.scores[tasks == task])) == {0.0, 1.0}, task
    gsm = np.unique(table.scores[tasks == "gsm8k"])
    assert set(gsm) == {0.0, 0.25, 0.5, 0.75, 1.0}
    for task in ("mt-bench", "summarization"):
        values = table.scores[tasks == task]
        assert values.min() >= 0.1 - 1e-12 and values.max() <= 1.0
        np.testing.assert_allclose(values * 10, np.round(values * 10), atol=1e-9)
        assert len(np.unique(values)) >= 8


def test_no_single_model_is_best_on_every_family(table: OutcomeTable) -> None:
    best = {t: MODELS[int(np.argmax(m))] for t, m in _family_means(table, table.scores).items()}
    assert len(set(best.values())) >= 3, best
    assert best["mbpp"] == "meta/code-llama-instruct-34b-chat"
    assert best["mt-bench"] == CLAUDE2 and best["summarization"] == CLAUDE2
    assert sum(model == GPT4 for model in best.values()) >= 4


def test_gpt4_best_single_model_but_not_by_much(table: OutcomeTable) -> None:
    mean = table.scores.mean(axis=0)
    assert MODELS[int(np.argmax(mean))] == GPT4
    assert 0.0 < mean[_col(GPT4)] - mean[_col(CLAUDE2)] < 0.08
    assert 0.70 <= mean[_col(GPT4)] <= 0.85
    assert mean[_col(MISTRAL)] == pytest.approx(mean.min(), abs=0.03)


def test_oracle_beats_best_single_model(table: OutcomeTable) -> None:
    oracle = table.scores.max(axis=1).mean()
    assert oracle - table.scores.mean(axis=0).max() >= 0.08


def test_some_rows_have_no_correct_model(table: OutcomeTable) -> None:
    share = (table.scores.max(axis=1) == 0).mean()
    assert 0.01 <= share <= 0.06


def test_easy_and_hard_prompts_correlate_across_models(table: OutcomeTable) -> None:
    solved = (table.scores > 0.5).sum(axis=1)
    exact = np.isin(np.array(table.tasks), ["mmlu", "mbpp", "hellaswag", "winogrande", "arc-challenge"])
    counts = np.bincount(solved[exact], minlength=len(MODELS) + 1) / exact.sum()
    assert counts[len(MODELS)] > 0.10  # many prompts every model solves
    assert counts[0] > 0.01  # some that no model solves


def test_cheapest_correct_model_varies(table: OutcomeTable) -> None:
    choice = _best_choice(table.scores, table.costs)
    shares = np.bincount(choice, minlength=len(MODELS)) / len(choice)
    assert (shares >= 0.03).sum() >= 4, dict(zip(MODELS, shares.round(3)))
    assert shares.max() < 0.6


# ------------------------------------------------------------------------------------------------ costs
def test_cost_magnitudes_like_routerbench(table: OutcomeTable) -> None:
    mean = table.costs.mean(axis=0)
    assert 1.5e-3 <= mean[_col(GPT4)] <= 5e-3
    assert 2e-5 <= mean[_col(MISTRAL)] <= 1.2e-4
    assert MODELS[int(np.argmax(mean))] == GPT4 and MODELS[int(np.argmin(mean))] == MISTRAL
    assert (table.costs > 0).all()


def test_costs_follow_prices_and_prompt_length(table: OutcomeTable) -> None:
    words = np.array([len(p.split()) for p in table.prompts], dtype=np.float64)
    for model in MODELS:
        price_in, _ = PRICES[model]
        input_only = np.round(1.3 * words) * price_in / 1e6
        assert (table.costs[:, _col(model)] > input_only * 0.999).all(), model
    mmlu = np.array(table.tasks) == "mmlu"
    assert np.corrcoef(words[mmlu], table.costs[mmlu, _col(GPT4)])[0, 1] > 0.3
    chat = np.array(table.tasks) == "mt-bench"
    assert table.costs[chat, _col(GPT4)].mean() > table.costs[~chat, _col(GPT4)].mean()


# ------------------------------------------------------------------------------------------------ learning signal
def test_quality_only_a_router_can_beat_gpt4(table: OutcomeTable) -> None:
    rewards = _rewards(table, 0.0)
    family_best = {t: int(np.argmax(m)) for t, m in _family_means(table, rewards).items()}
    in_distribution = [t for t in TASKS if t not in DEFAULT_OOD_TASKS]
    assert any(MODELS[family_best[t]] != GPT4 for t in in_distribution)
    routed = np.array([rewards[i, family_best[t]] for i, t in enumerate(table.tasks)]).mean()
    assert routed > rewards[:, _col(GPT4)].mean() + 0.015


def test_balanced_preference_best_choice_varies(table: OutcomeTable) -> None:
    rewards = _rewards(table, 0.5)
    choice = _best_choice(rewards, table.costs)
    shares = np.bincount(choice, minlength=len(MODELS)) / len(choice)
    cheapest = np.argmin(table.costs, axis=1)
    assert (choice == cheapest).mean() < 0.6
    assert shares[_col(GPT4)] < 0.05
    assert (shares >= 0.03).sum() >= 5
    best_single = rewards.mean(axis=0).max()
    assert MODELS[int(np.argmax(rewards.mean(axis=0)))] != GPT4
    assert rewards.max(axis=1).mean() > best_single + 0.08


def test_cost_averse_preference_pays_for_slightly_pricier_models(table: OutcomeTable) -> None:
    rewards = _rewards(table, 0.9)
    for model in CHEAP_UPGRADES:
        assert (rewards[:, _col(model)] > rewards[:, _col(MISTRAL)]).mean() > 0.15, model
    means = rewards.mean(axis=0)
    assert means[_col(GPT4)] < 0 < means[_col(MISTRAL)]
    assert rewards.max(axis=1).mean() > means.max() + 0.015
