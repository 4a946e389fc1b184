"""Helpers shared by the tests: paths, small tables, command lines and the tiny fake encoder."""

import importlib.util
from pathlib import Path
from types import ModuleType

#: The repository root.
ROOT = Path(__file__).resolve().parents[2]
#: The shipped recipes the tests start from.
SYNTHETIC_RECIPE = str(ROOT / "configs" / "experiments" / "synthetic.yaml")
ROUTERBENCH_RECIPE = str(ROOT / "configs" / "experiments" / "routerbench.yaml")


def load_script(path: Path) -> ModuleType:
    """A script outside the package (``tools/<name>.py``, ``tests/fixtures/make_fixtures.py``) as a module."""
    spec = importlib.util.spec_from_file_location(f"barp_script_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module."""
    return load_script(ROOT / "tools" / f"{name}.py")
