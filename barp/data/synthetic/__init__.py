"""The built-in benchmark: a SYNTHETIC, seeded, RouterBench-shaped outcome table with generated prompts.

No download is needed.
"""

from barp.data.synthetic.generator import (
    DEFAULT_OOD_TASKS,
    MODELS,
    PRICES,
    TASKS,
    generate_synthetic,
)

__all__ = ["DEFAULT_OOD_TASKS", "MODELS", "PRICES", "TASKS", "generate_synthetic"]
