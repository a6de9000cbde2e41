"""The package's import graph, read from the source, has no cycle.

Every import of a ``gllim_sk`` module by another counts, at module level or inside a
function (a lazy import still makes the two modules depend on each other).
"""

import ast
from pathlib import Path

import gllim_sk

PACKAGE = Path(gllim_sk.__file__).parent


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules):
    """The package's modules that ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from . import _engine" imports a module; "from ._gllim import X" one too.
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules)
    found.discard(name)
    return found


def import_graph():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph):
    """One cycle of ``graph`` as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for succ in sorted(graph[node]):
            if state.get(succ) == "open":
                return stack[stack.index(succ):] + [succ]
            if succ not in state:
                cycle = visit(succ)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert {"gllim_sk._engine", "gllim_sk._init"} <= graph["gllim_sk._dask"]
    assert {"gllim_sk._dask", "gllim_sk._init"} <= graph["gllim_sk._gllim"]
    assert "gllim_sk._init" in graph["gllim_sk.deep._deep_gllim"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_graph_is_acyclic():
    # Packages' __init__ re-export their modules: the edges from a package to its own
    # submodules are how Python imports them, not a dependency of the code.
    graph = {name: {m for m in deps if not m.startswith(name + ".")}
             for name, deps in import_graph().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
