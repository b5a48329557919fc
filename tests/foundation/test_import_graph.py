"""Layering: the project's modules import each other without cycles and without private names.

Every module of the three source roots (qcompiler/, passes/ as qcompiler.passes, codegen/ as
qcompiler.codegen) is parsed with `ast`; every import counts, including the ones inside
functions (a deferred import is still a dependency, it only hides the cycle until run time);
only `if TYPE_CHECKING:` imports, which never run, do not count.
`from qcompiler import formats` is an edge to the submodule; `from qcompiler.ir import x` is an
edge to the package qcompiler.ir (its __init__). The layers are described in docs/CONTRACTS.md.

Private names: a name starting with `_` belongs to its module. Importing one from another
module (`from qcompiler.capture import _program_meta`), reading one off an imported module
(`graph_match._val`), or calling the private torch.fx / Program helpers listed in PRIVATE_ATTRS
fails the test; make the helper public in its module, or use the public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = {"qcompiler": "qcompiler", "qcompiler.passes": "passes",
                "qcompiler.codegen": "codegen"}
# Imports that close a cycle, each with the move that removes it. Empty: every cycle has been
# removed by moving code to the layer it belongs to (the lazy-tensor readers into
# qcompiler/lazy_tensors.py, the manifest into qcompiler/manifest.py, capture's torch.export
# and HF helpers into qcompiler/torch_capture.py and qcompiler/export_archive.py). Keep it empty:
# break a new cycle the same way instead of listing it here.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}
# Private attributes of torch.fx and of our Program that passes used to reach for, with the
# public way to do the same.
PRIVATE_ATTRS = {
    "_rename": "Node._rename: create the node with graph.create_node(..., name=NAME), or "
               "copy the graph with qcompiler.graph_copy.copy_with_names",
    "_owner": "Program._owner: use Program.owner_of",
    "_erased": "Node._erased: keep a set of the nodes you erased",
    "_codegen": "Graph._codegen: use graph.set_codegen, or a fresh graph (qcompiler.graph_copy)",
}


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in SOURCE_ROOTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = project_modules()


def _known(name: str) -> str | None:
    """The project module `name` refers to: itself, or the nearest enclosing package."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except those under `if TYPE_CHECKING:` (annotations only: never
    imported at run time, so no dependency)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _imports(module: str, tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every project import in `tree`."""
    is_package = MODULES[module].name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target and alias.name.startswith("qcompiler"):
                    found.append((target, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if not base.startswith("qcompiler"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    found.append((full, None, node.lineno))
                elif _known(base):
                    found.append((_known(base), alias.name, node.lineno))  # type: ignore[arg-type]
    return found


def _module_aliases(module: str, tree: ast.AST) -> dict[str, str]:
    """Local names bound to project modules (`from qcompiler import capture`, `import x as y`)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qcompiler"):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    return aliases


def analyse() -> tuple[dict[str, set[str]], list[str]]:
    """The import graph, and every private-name violation as `path:line: message`."""
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        graph[module] = set()
        for target, name, line in _imports(module, tree):
            if target != module:
                graph[module].add(target)
                if name and name.startswith("_") and not name.startswith("__"):
                    problems.append(f"{where}:{line}: imports private {target}.{name}")
        aliases = _module_aliases(module, tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") \
                    or node.attr.startswith("__"):
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in aliases and aliases[owner] != module:
                problems.append(f"{where}:{node.lineno}: uses private {aliases[owner]}.{node.attr}")
            elif node.attr in PRIVATE_ATTRS and owner not in ("self", "cls"):
                problems.append(f"{where}:{node.lineno}: {PRIVATE_ATTRS[node.attr]}")
    return graph, problems


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_analysis_sees_function_level_imports():
    graph, _ = analyse()
    assert "qcompiler.dialect.registry" in graph["qcompiler.verifier"]
    assert len(MODULES) > 100


def test_no_import_cycles():
    graph = analyse()[0]
    for source, target in KNOWN_BACK_EDGES:
        graph.get(source, set()).discard(target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_known_back_edges_still_exist():
    graph = analyse()[0]
    gone = [f"{s} -> {t}" for s, t in KNOWN_BACK_EDGES if t not in graph.get(s, set())]
    assert not gone, "remove from KNOWN_BACK_EDGES (fixed): " + ", ".join(gone)


def test_no_private_names_across_modules():
    problems = analyse()[1]
    assert not problems, "\n".join(problems)
