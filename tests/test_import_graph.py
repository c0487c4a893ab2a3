"""The package's import graph: no cycles, and the layering of docs/architecture.md.

Every ``import``/``from ... import`` of a ``dmformer_jax`` module counts, also those
inside functions: a lazy import still ties the two modules together.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dmformer_jax"

# package -> packages it must never import (docs/architecture.md, "Layering").
FORBIDDEN = {
    "dmformer_jax.models": ("dmformer_jax.train", "dmformer_jax.data", "dmformer_jax.tasks",
                            "dmformer_jax.checkpoint", "dmformer_jax.api", "dmformer_jax.metrics"),
    "dmformer_jax.data": ("dmformer_jax.models", "dmformer_jax.train", "dmformer_jax.tasks",
                          "dmformer_jax.checkpoint", "dmformer_jax.api", "dmformer_jax.metrics"),
    "dmformer_jax.metrics": ("dmformer_jax.models", "dmformer_jax.train", "dmformer_jax.data",
                             "dmformer_jax.tasks", "dmformer_jax.checkpoint", "dmformer_jax.api"),
    "dmformer_jax.checkpoint": ("dmformer_jax.train", "dmformer_jax.data", "dmformer_jax.tasks",
                                "dmformer_jax.api"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the dmformer_jax modules it imports (submodules resolved)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                # `import a.b.c` imports a, a.b and a.b.c: the deepest known module stands for it.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_finder_sees_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_lazy_and_relative_imports(tmp_path, monkeypatch):
    graph = import_graph()
    assert "dmformer_jax.models.registry" in graph["dmformer_jax.models"]
    assert len(graph) > 20


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module == package or module.startswith(package + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[package])
    )
    assert not bad, "; ".join(bad)
