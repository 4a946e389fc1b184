"""A built-in, seeded, SYNTHETIC routing benchmark shaped like RouterBench (no download needed).

The outcomes are SYNTHETIC: no LLM was ever queried. They come from a hand-set generative model meant to be plausible
and learnable, not from real measurements, so results on this table say nothing about the real models.

Generative model (all draws come from ``numpy`` generators seeded with ``seed``: one stream for the text, one for
the outcomes):

1. Rows are stratified over :data:`TASKS` (each family gets ``num_prompts // 8`` rows, the remainder going to the first
   families) and shuffled. Each row gets a visible difficulty ``d ~ U(0, 1)``.
2. The prompt text is built from the family's templates (:mod:`barp.data.synthetic.text`) so that ``d`` shows in the
   wording (harder prompts use advanced vocabulary, more steps or constraints and are longer), and the prompt gets a
   subject domain (stem, humanities, writing, code or everyday) that shows in its topic.
3. A hidden shift ``h ~ N(0, 0.12)`` per row keeps the outcome from being perfectly predictable from the text, and
   1.5% of the exact-answer items are "flawed" (a wrong reference answer): every model scores 0 on them.
4. Model ``j``'s latent margin on row ``i`` of family ``f`` and domain ``g`` is
   ``y = slope[f] * sharpness[j] * (skill[j, f] + domain_skill[j, g] - d - h) + e`` with standard logistic noise
   ``e``, so the success probability is ``sigmoid(slope * sharpness * (skill + domain_skill - d - h))``. The shared
   ``d + h`` correlates the models (easy prompts are solved by most of them). The hand-set :data:`SKILL` matrix
   follows each model's reputation (GPT-4 strongest on most families, Code Llama best at code, Claude v2 best at chat
   and summarization, Mistral-7B weakest, Mixtral good value); :data:`DOMAIN_SKILL` adds topical strengths and
   :data:`SHARPNESS` makes GPT-4 degrade gracefully on hard prompts while small models collapse. A router can thus
   learn from the text which family, topic and difficulty a prompt has, and from that the cheapest adequate model.
5. Scores: ``y > 0`` for the exact-answer families (mmlu, mbpp, hellaswag, winogrande, arc-challenge); partial credit
   in {0, .25, .5, .75, 1} for gsm8k; judge-style 0.1..1.0 steps for mt-bench and summarization (never 0).
6. Cost in USD = (input_tokens * price_in + output_tokens * price_out) / 1e6 with :data:`PRICES` (RouterBench's list
   prices), input_tokens = 1.3 * words * the model's tokenizer factor, and output_tokens = a family base length
   * (0.6 + 0.8 d) * the model's verbosity * log-normal noise.

With the defaults (3000 prompts, seed 0) GPT-4 is the best single model on mean score (about 0.75, Claude v2 about
0.70), the per-prompt oracle reaches about 0.95, and no model scores above 0 on about 3% of the prompts.
"""

from __future__ import annotations

import numbers

import numpy as np

from barp.data.synthetic.text import BUILDERS, DOMAINS
from barp.data.table import OutcomeTable
from barp.errors import ConfigError

MODELS: list[str] = [
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
]

#: USD per 1M (input, output) tokens, RouterBench's implied list prices.
PRICES: dict[str, tuple[float, float]] = {
    "WizardLM/WizardLM-13B-V1.2": (0.3, 0.3),
    "claude-instant-v1": (0.8, 2.4),
    "claude-v1": (8.0, 24.0),
    "claude-v2": (8.0, 24.0),
    "gpt-3.5-turbo-1106": (1.0, 2.0),
    "gpt-4-1106-preview": (10.0, 30.0),
    "meta/code-llama-instruct-34b-chat": (0.776, 0.776),
    "meta/llama-2-70b-chat": (0.9, 0.9),
    "mistralai/mistral-7b-chat": (0.2, 0.2),
    "mistralai/mixtral-8x7b-chat": (0.6, 0.6),
    "zero-one-ai/Yi-34B-Chat": (0.8, 0.8),
}

TASKS: list[str] = ["mmlu", "gsm8k", "mbpp", "hellaswag", "winogrande", "mt-bench", "arc-challenge", "summarization"]

#: Families held out as out-of-distribution by default.
DEFAULT_OOD_TASKS: list[str] = ["arc-challenge", "summarization"]

#: Skill of each model per family (columns in :data:`TASKS` order), on the difficulty scale: a model solves a prompt of
#: (visible + hidden) difficulty equal to its skill half of the time.
SKILL: dict[str, tuple[float, ...]] = {
    #                                    mmlu gsm8k  mbpp  hella  wino   chat   arc   summ
    "WizardLM/WizardLM-13B-V1.2":        (0.50, 0.35, 0.35, 0.55, 0.50, 0.60, 0.55, 0.55),
    "claude-instant-v1":                 (0.62, 0.58, 0.52, 0.66, 0.58, 0.72, 0.75, 0.75),
    "claude-v1":                         (0.66, 0.62, 0.54, 0.75, 0.62, 0.78, 0.80, 0.82),
    "claude-v2":                         (0.70, 0.66, 0.58, 0.78, 0.68, 0.93, 0.83, 0.95),
    "gpt-3.5-turbo-1106":                (0.68, 0.60, 0.58, 0.68, 0.60, 0.76, 0.80, 0.76),
    "gpt-4-1106-preview":                (0.89, 0.80, 0.66, 0.92, 0.88, 0.88, 0.96, 0.86),
    "meta/code-llama-instruct-34b-chat": (0.46, 0.38, 0.68, 0.42, 0.50, 0.52, 0.50, 0.50),
    "meta/llama-2-70b-chat":             (0.60, 0.46, 0.36, 0.62, 0.56, 0.68, 0.66, 0.68),
    "mistralai/mistral-7b-chat":         (0.46, 0.28, 0.30, 0.48, 0.48, 0.56, 0.50, 0.52),
    "mistralai/mixtral-8x7b-chat":       (0.66, 0.54, 0.50, 0.68, 0.60, 0.74, 0.76, 0.72),
    "zero-one-ai/Yi-34B-Chat":           (0.70, 0.52, 0.42, 0.72, 0.66, 0.70, 0.80, 0.68),
}  # fmt: skip

#: Per model, a skill offset per subject domain (columns in :data:`~barp.data.synthetic.text.DOMAINS` order), added
#: to the family skill: Claude models are stronger on humanities and writing, GPT models and Code Llama on STEM and
#: code, small models hold up best on everyday prompts. So the best model varies within a family, visibly by topic.
DOMAIN_SKILL: dict[str, tuple[float, ...]] = {
    #                                     stem   human  write   code  everyday
    "WizardLM/WizardLM-13B-V1.2":        (-0.06, -0.02,  0.10, -0.06,  0.08),
    "claude-instant-v1":                 (-0.05,  0.10,  0.10, -0.05,  0.02),
    "claude-v1":                         (-0.05,  0.10,  0.10, -0.05,  0.00),
    "claude-v2":                         (-0.05,  0.14,  0.12, -0.03,  0.00),
    "gpt-3.5-turbo-1106":                ( 0.07, -0.04, -0.04,  0.08,  0.00),
    "gpt-4-1106-preview":                ( 0.06, -0.04, -0.06,  0.04, -0.03),
    "meta/code-llama-instruct-34b-chat": ( 0.03, -0.12, -0.12,  0.15, -0.05),
    "meta/llama-2-70b-chat":             (-0.08,  0.02,  0.14, -0.08,  0.05),
    "mistralai/mistral-7b-chat":         (-0.05, -0.04,  0.02, -0.02,  0.12),
    "mistralai/mixtral-8x7b-chat":       ( 0.05, -0.02, -0.02,  0.06,  0.03),
    "zero-one-ai/Yi-34B-Chat":           (-0.02,  0.10, -0.06, -0.08,  0.02),
}  # fmt: skip

#: Per model, a factor on the family's slope: how abruptly success falls around the model's skill. GPT-4 degrades
#: gracefully on hard prompts; small models are reliable on easy prompts and collapse on hard ones, so which model is
#: best for quality depends on a prompt's (visible) difficulty, not only on its family.
SHARPNESS: dict[str, float] = {
    "WizardLM/WizardLM-13B-V1.2": 1.3,
    "claude-instant-v1": 1.0,
    "claude-v1": 1.0,
    "claude-v2": 0.8,
    "gpt-3.5-turbo-1106": 1.1,
    "gpt-4-1106-preview": 0.65,
    "meta/code-llama-instruct-34b-chat": 1.1,
    "meta/llama-2-70b-chat": 1.0,
    "mistralai/mistral-7b-chat": 1.3,
    "mistralai/mixtral-8x7b-chat": 1.0,
    "zero-one-ai/Yi-34B-Chat": 1.2,
}

#: How fast success falls with difficulty, per family.
SLOPE: dict[str, float] = {"mmlu": 6.0, "gsm8k": 6.0, "mbpp": 6.0, "hellaswag": 6.0, "winogrande": 6.0,
                           "mt-bench": 5.0, "arc-challenge": 6.0, "summarization": 5.0}

#: How a latent margin becomes a score: "binary" (0/1), "quarter" (0, .25, ..., 1) or "tenth" (0.1, 0.2, ..., 1).
SCORE_KIND: dict[str, str] = {"mmlu": "binary", "gsm8k": "quarter", "mbpp": "binary", "hellaswag": "binary",
                              "winogrande": "binary", "mt-bench": "tenth", "arc-challenge": "binary",
                              "summarization": "tenth"}

#: Typical answer length in tokens per family (before the difficulty and verbosity factors).
OUTPUT_TOKENS: dict[str, float] = {"mmlu": 35.0, "gsm8k": 110.0, "mbpp": 100.0, "hellaswag": 25.0,
                                   "winogrande": 15.0, "mt-bench": 210.0, "arc-challenge": 35.0,
                                   "summarization": 80.0}

#: Per model: (tokenizer factor on input tokens, answer verbosity).
STYLE: dict[str, tuple[float, float]] = {
    "WizardLM/WizardLM-13B-V1.2": (1.10, 1.30),
    "claude-instant-v1": (1.05, 0.90),
    "claude-v1": (1.05, 1.00),
    "claude-v2": (1.05, 1.10),
    "gpt-3.5-turbo-1106": (1.00, 0.80),
    "gpt-4-1106-preview": (1.00, 1.00),
    "meta/code-llama-instruct-34b-chat": (1.10, 1.20),
    "meta/llama-2-70b-chat": (1.10, 1.60),
    "mistralai/mistral-7b-chat": (1.12, 1.60),
    "mistralai/mixtral-8x7b-chat": (1.12, 1.10),
    "zero-one-ai/Yi-34B-Chat": (1.08, 1.40),
}

HIDDEN_NOISE = 0.12  # std of the per-prompt difficulty shift the text does not show
FLAWED_RATE = 0.015  # share of exact-answer items whose reference answer is wrong (every model scores 0)
OUTPUT_NOISE = 0.35  # std of the log of the per-answer length factor


def _check_arguments(num_prompts: object, seed: object) -> None:
    minimum = 2 * len(TASKS)
    if isinstance(num_prompts, bool) or not isinstance(num_prompts, numbers.Integral):
        raise ConfigError(f"synthetic data: num_prompts must be an integer, got {num_prompts!r}")
    if num_prompts < minimum:
        raise ConfigError(
            f"synthetic data: num_prompts must be at least {minimum} (2 per task family x {len(TASKS)} families), "
            f"got {num_prompts}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")


def _stratified_tasks(num_prompts: int, rng: np.random.Generator) -> np.ndarray:
    """Family index per row: ``num_prompts // len(TASKS)`` each, remainder to the first families, shuffled."""
    counts = np.full(len(TASKS), num_prompts // len(TASKS))
    counts[: num_prompts % len(TASKS)] += 1
    return rng.permutation(np.repeat(np.arange(len(TASKS)), counts))


def _prompt_ids(task_idx: np.ndarray) -> list[str]:
    """Ids like ``"mmlu.00042"``, numbered within each family in row order."""
    counters = dict.fromkeys(TASKS, 0)
    ids = []
    for t in task_idx:
        ids.append(f"{TASKS[t]}.{counters[TASKS[t]]:05d}")
        counters[TASKS[t]] += 1
    return ids


def _slopes(task_idx: np.ndarray) -> np.ndarray:
    """Family slope times model sharpness per (row, model)."""
    return np.array([SLOPE[t] for t in TASKS])[task_idx, None] * np.array([SHARPNESS[m] for m in MODELS])[None, :]


def _margins(task_idx: np.ndarray, domain_idx: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """Noise-free latent margin ``slope * sharpness * (skill + domain offset - difficulty)`` per (row, model)."""
    skill = np.array([SKILL[m] for m in MODELS]).T[task_idx] + np.array([DOMAIN_SKILL[m] for m in MODELS]).T[domain_idx]
    return _slopes(task_idx) * (skill - difficulty[:, None])


def _quantize(latent: np.ndarray, task_idx: np.ndarray) -> np.ndarray:
    """Scores from latent margins (N, K): 0/1, quarter credit or 0.1..1.0 steps, by each row's family."""
    kinds = np.array([SCORE_KIND[t] for t in TASKS])[task_idx, None]
    binary = (latent > 0).astype(np.float64)
    quarter = np.round(4.0 / (1.0 + np.exp(-1.5 * latent))) / 4.0
    tenth = np.clip(np.round(10.0 / (1.0 + np.exp(-0.6 * latent - 1.0))), 1, 10) / 10.0
    return np.where(kinds == "binary", binary, np.where(kinds == "quarter", quarter, tenth))


def _scores(margin: np.ndarray, task_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add the hidden difficulty shift and logistic noise to the margins, score them, zero the flawed items."""
    hidden = rng.normal(0.0, HIDDEN_NOISE, len(task_idx))
    latent = margin - _slopes(task_idx) * hidden[:, None] + rng.logistic(0.0, 1.0, size=margin.shape)
    scores = _quantize(latent, task_idx)
    exact = np.array([SCORE_KIND[t] != "tenth" for t in TASKS])[task_idx]
    scores[exact & (rng.random(len(task_idx)) < FLAWED_RATE)] = 0.0
    return scores


def _costs(words: np.ndarray, difficulty: np.ndarray, task_idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """USD cost per (row, model) from list prices, prompt length and a noisy answer length."""
    tokenizer, verbosity = (np.array([STYLE[m][i] for m in MODELS]) for i in (0, 1))
    price_in, price_out = (np.array([PRICES[m][i] for m in MODELS]) for i in (0, 1))
    input_tokens = np.round(1.3 * words[:, None] * tokenizer[None, :])
    base = np.array([OUTPUT_TOKENS[t] for t in TASKS])[task_idx] * (0.6 + 0.8 * difficulty)
    noise = rng.lognormal(0.0, OUTPUT_NOISE, size=input_tokens.shape)
    output_tokens = np.maximum(1.0, np.round(base[:, None] * verbosity[None, :] * noise))
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


def generate_synthetic(num_prompts: int = 3000, seed: int = 0) -> OutcomeTable:
    """Generate the built-in SYNTHETIC RouterBench-shaped outcome table (not real LLM outcomes).

    The data are not real LLM outcomes. Every prompt of one of the eight :data:`TASKS` families gets a difficulty
    in [0, 1] and a subject domain that show in its wording, and every one of the 11 :data:`MODELS` gets a score and
    a cost from a hand-set model: success probability
    ``sigmoid(slope * sharpness[model] * (skill[model, family] + domain_skill[model, domain] - difficulty - hidden))``,
    scored as 0/1, quarter credit (gsm8k) or 0.1..1.0 (mt-bench, summarization); cost from RouterBench's list prices,
    the prompt's length and a noisy, model-dependent answer length. See the module docstring for the full model.

    Args:
        num_prompts: Number of rows, at least 2 per family (16). Families get equal shares (stratified).
        seed: Non-negative integer seed; the same ``(num_prompts, seed)`` always gives the same table.

    Returns:
        An :class:`~barp.data.table.OutcomeTable` with ids like ``"mmlu.00042"``, rows in shuffled order and
        ``source="synthetic(num_prompts=..., seed=...)"``.

    Raises:
        ConfigError: If ``num_prompts`` is not an integer >= 16 or ``seed`` is not a non-negative integer.
    """
    _check_arguments(num_prompts, seed)
    num_prompts, seed = int(num_prompts), int(seed)
    text_rng, outcome_rng = np.random.default_rng(seed).spawn(2)

    task_idx = _stratified_tasks(num_prompts, outcome_rng)
    difficulty = outcome_rng.random(num_prompts)
    built = [BUILDERS[TASKS[t]](text_rng, float(d)) for t, d in zip(task_idx, difficulty)]
    domain_idx = np.array([DOMAINS.index(p.domain) for p in built])
    scores = _scores(_margins(task_idx, domain_idx, difficulty), task_idx, outcome_rng)
    words = np.array([len(p.text.split()) for p in built], dtype=np.float64)
    costs = _costs(words, difficulty, task_idx, outcome_rng)
    return OutcomeTable(
        prompt_ids=_prompt_ids(task_idx),
        prompts=[p.text for p in built],
        tasks=[TASKS[t] for t in task_idx],
        models=list(MODELS),
        scores=scores,
        costs=costs,
        source=f"synthetic(num_prompts={num_prompts}, seed={seed})",
    )
