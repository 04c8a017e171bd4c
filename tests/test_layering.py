"""The package's imports run one way, and none of them makes a circle.

    cli -> inference / ensemble / training / hub / baselines / planning -> models -> recipe
        -> data / evaluation -> utils / schema / config

Every import counts, including the lazy ones inside functions (they keep ``--help`` fast, but a model
that imports the engine inside a function still depends on it). Edges are read from the source with
``ast``, so the test needs no heavy imports.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmser"

#: The first matching prefix gives a module's layer; a module may import its own layer or lower ones.
LAYERS: list[tuple[str, int]] = [
    ("llmser.cli", 6), ("llmser.__main__", 6),
    ("llmser.inference", 5), ("llmser.ensemble", 5), ("llmser.training", 5), ("llmser.hub", 5),
    ("llmser.baselines", 5), ("llmser.planning", 5),
    ("llmser.models", 4),
    ("llmser.recipe", 3),
    ("llmser.data", 2), ("llmser.evaluation", 2),
    ("llmser.utils", 1), ("llmser.schema", 1), ("llmser.config", 1), ("llmser", 0),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """llmser modules ``path`` imports (absolute or relative, top-level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from llmser.x import y` may name a submodule y
            found |= {f"{target}.{alias.name}" for alias in node.names if _is_module(f"{target}.{alias.name}")}
    return {m for m in found if m == "llmser" or m.startswith("llmser.")}


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer(module: str) -> int:
    return next(rank for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + "."))


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    return {module_name(p): frozenset(imported_modules(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    for module in import_graph():
        layer(module)


@pytest.mark.parametrize("module", sorted(import_graph()))
def test_imports_run_one_way(module):
    graph = import_graph()
    upward = sorted(dep for dep in graph[module] if layer(dep) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_circles():
    graph = {m: {d for d in deps if d in import_graph() and d != m} for m, deps in import_graph().items()}
    # a package's __init__ re-exporting its submodules is not a circle with them
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not (module.startswith(d + ".") and _is_package(d))}
    cycles = _cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _is_package(name: str) -> bool:
    return (PACKAGE.parent.joinpath(*name.split(".")) / "__init__.py").is_file()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_lazy_upward_imports(tmp_path):
    """The rule would be empty if the parser missed imports inside functions."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from llmser.training.engine import Trainer\n    return Trainer\n")
    tree_imports = {n.module for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.ImportFrom)}
    assert "llmser.training.engine" in tree_imports
    assert layer("llmser.training.engine") > layer("llmser.models.wavlm.model")


def test_readme_layout_names_every_package():
    """The README's layout section shows each subpackage of llmser/ (a new folder must be added there)."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.parent.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)
    missing = [name for name in packages if f"{name.rsplit('/', 1)[-1]}/" not in layout]
    assert not missing, f"README.md's Layout section does not show {missing}"
