"""Helpers shared by the tests: paths, small tables, command lines and the tiny fake encoder."""

from pathlib import Path

#: The repository root.
ROOT = Path(__file__).resolve().parents[2]
#: The shipped recipes the tests start from.
SYNTHETIC_RECIPE = str(ROOT / "configs" / "experiments" / "synthetic.yaml")
ROUTERBENCH_RECIPE = str(ROOT / "configs" / "experiments" / "routerbench.yaml")
