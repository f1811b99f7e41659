"""The architecture, checked: layers import only downwards, and no module imports itself in a circle.

docs/ARCHITECTURE.md draws the layers; this test is their definition. Every ``import`` in
``src/transferkit`` counts, including those inside functions (a lazy import is still a
dependency). A module belongs to the layer of the longest prefix listed in ``LAYERS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("transferkit._version", "transferkit.errors"),
    ("transferkit.constraints", "transferkit.defaults", "transferkit.evaluation", "transferkit.files", "transferkit.lines"),
    ("transferkit.data", "transferkit.backbones"),
    ("transferkit.training",),
    ("transferkit.strategies",),
    ("transferkit.selection",),
    ("transferkit.advise",),
    ("transferkit.estimator", "transferkit.card"),
    ("transferkit.persistence",),
    ("transferkit.report", "transferkit.export", "transferkit.info"),
    ("transferkit.audit",),
    ("transferkit.serve",),
    ("transferkit.cli",),
    ("transferkit",),
]
"""Each line may import the lines above it. Units on one line (e.g. ``data`` and ``backbones``)
do not import each other; a unit's own modules may import each other (without circles)."""


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SRC / "transferkit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The transferkit modules ``name`` imports (``from a.b import c`` is a.b.c when c is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {target for target in found if target in MODULES and target != name}


def _unit(module: str) -> tuple[int, str]:
    """(layer index, unit prefix) of a module: the longest matching prefix in LAYERS."""
    best = None
    for index, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and docs/ARCHITECTURE.md)"
    return best


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _violations() -> list[str]:
    bad = []
    for module, targets in GRAPH.items():
        layer, unit = _unit(module)
        for target in sorted(targets):
            target_layer, target_unit = _unit(target)
            if target_layer > layer or (target_layer == layer and target_unit != unit):
                bad.append(f"{module} (layer {layer}, {unit}) imports {target} (layer {target_layer}, {target_unit})")
    return bad


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return result


def test_every_module_belongs_to_a_layer():
    for module in MODULES:
        _unit(module)


def test_no_layer_imports_a_higher_one():
    assert _violations() == []


def test_there_are_no_import_circles():
    assert _cycles() == []


@pytest.mark.parametrize(
    "module, imported, expected",
    [
        ("transferkit.data.sources", "transferkit.training.loop", "imports transferkit.training.loop"),
        ("transferkit.data.sources", "transferkit.backbones.spec", "imports transferkit.backbones.spec"),
        ("transferkit.advise.rules", "transferkit.estimator", "imports transferkit.estimator"),
    ],
)
def test_the_check_catches_an_upward_or_sideways_import(module, imported, expected, monkeypatch):
    monkeypatch.setitem(GRAPH, module, GRAPH[module] | {imported})
    assert any(expected in line for line in _violations())


def test_the_check_catches_a_circle(monkeypatch):
    monkeypatch.setitem(GRAPH, "transferkit.data.sources", GRAPH["transferkit.data.sources"] | {"transferkit.data.builtin"})
    assert ["transferkit.data.builtin", "transferkit.data.sources"] in _cycles()
