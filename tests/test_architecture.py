"""The layers of docs/architecture.md hold: no import runs up a layer or across a layer, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "barp"

#: Top-level part of the package -> its layer (docs/architecture.md). A module may import its own part and lower
#: layers only.
LAYERS = {
    "errors": 0,
    "atomic": 1, "paths": 1, "loggers": 1, "metrics": 1, "commands": 1,
    "encoders": 2, "learning": 2, "wandb_report": 2,
    "data": 3,
    "models": 4,
    "sweep": 5, "ope": 5,
    "service": 6,
    "cli": 7, "integrations": 7,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``barp`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "barp" or node.module.startswith("barp."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "barp" or a.name.startswith("barp."))
    return found


def part(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else None


GRAPH = {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in GRAPH} - {None}
    assert parts <= set(LAYERS), f"parts without a layer in docs/architecture.md: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_runs_up_or_across_a_layer(module):
    own = part(module)
    if own is None:  # barp/__init__.py: the version only
        assert not GRAPH[module]
        return
    for target in GRAPH[module]:
        other = part(target)
        if other is None or other == own:
            continue
        assert LAYERS[other] < LAYERS[own], f"{module} imports {target}: layer {LAYERS[other]} from layer {LAYERS[own]}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over module -> imported module (packages resolve to their face)."""
    modules = set(GRAPH)
    edges = {m: {t for t in GRAPH[m] if t in modules and t != m} for m in GRAPH}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rules bite: a metrics module importing a model would be reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from barp.models.base import RouterModule\n")
    assert imports(bad) == {"barp.models.base"}
    assert LAYERS[part("barp.models.base")] > LAYERS[part("barp.metrics.aiq")]
