"""The package's import graph has no cycles, and importing the synthesis package stays light.

The graph counts every import statement, at module level or inside a function, as an
edge to the module it names (`from . import espeak` names `subspaces.synth.espeak`), and
to the packages above that module whose `__init__.py` the import runs (not the
importer's own packages: those are already being imported). Run this file as a script
to print the cycles: `python tests/test_structure.py`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "subspaces"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `src`, by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that running module `name` (file `path`) imports."""
    is_package = path.name == "__init__.py"
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            named.add(source)
            named.update(f"{source}.{alias.name}" for alias in node.names)
    own_packages = set(_ancestors(name)) | ({name} if is_package else set())
    targets = set()
    for target in named & modules:
        targets.add(target)
        targets.update(p for p in _ancestors(target) if p in modules and p not in own_packages)
    targets.discard(name)
    return targets


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    """Each module of `package` and the package modules it imports."""
    modules = module_names(src, package)
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles as paths that end where they start (at least one per cycle found by
    depth-first search; an empty list for an acyclic graph)."""
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles_among_subspaces_modules():
    graph = import_graph()
    assert "subspaces.synth.base" in graph["subspaces.synth.espeak"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_a_cycle_made_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_importing_synthesis_loads_no_neural_runtime():
    code = ("import sys, subspaces.synth; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


if __name__ == "__main__":
    found = find_cycles(import_graph())
    print("\n".join(" -> ".join(cycle) for cycle in found) or "no import cycles")
    sys.exit(1 if found else 0)
