"""The package's layers, read from its imports (every import statement, at module level
or inside a function): each layer imports only the layers below it, and no two modules
import each other, directly or round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = ("_runtime", "sae", "data", "formats", "training", "evaluation", "interpret", "report", "app")
"""From the bottom: a module may import its own layer and those before it (../shared/DESIGN.md)."""


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "saekit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The saekit modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("saekit"):
                continue
            for alias in node.names:  # `from .sae import registry` imports the module saekit.sae.registry
                out.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("saekit")}
    return {target for target in out if target in known}


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return len(LAYERS)  # the package's front door (saekit, python -m saekit) sits above the app
    if parts[1] not in LAYERS:
        raise AssertionError(f"{name} is in no layer; put it in one of {LAYERS}")
    return LAYERS.index(parts[1])


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_every_module_belongs_to_a_layer():
    for name in GRAPH:
        layer(name)
    top_level = [name for name in GRAPH if name.count(".") == 1 and name.split(".")[1] not in LAYERS]
    assert top_level == ["saekit.__main__"], top_level


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_imports_run_downwards(name):
    upward = sorted(target for target in GRAPH[name] if layer(target) > layer(name))
    assert not upward, (
        f"{name} ({LAYERS[layer(name)] if layer(name) < len(LAYERS) else 'front door'}) imports upward: {upward}"
    )


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if target == name or _is_parent_package(target, name):
                continue  # a module importing its own package's __init__ is resolved by Python, and counted below
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target) :] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    # and no module imports its own package (whose __init__ imports the module back)
    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if _is_parent_package(target, name) and name in GRAPH[target]
    )
    assert not offenders, offenders


def _is_parent_package(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_the_layers_test_sees_a_violation(tmp_path):
    """The check itself: an upward import in a module is found."""
    fake = {"saekit.sae.base": tmp_path / "base.py", "saekit.app.cli": tmp_path / "cli.py"}
    fake["saekit.sae.base"].write_text("def f():\n    from ..app.cli import main\n")
    fake["saekit.app.cli"].write_text("")
    found = imports("saekit.sae.base", fake["saekit.sae.base"], fake)
    assert found == {"saekit.app.cli"} and layer("saekit.app.cli") > layer("saekit.sae.base")
