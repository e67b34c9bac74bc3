"""The package's import graph, read from the source (imports inside functions included):
the public API dispatches to the backends, the backends reach the kernels, the shared
rules (op table, input rules, layout plans) import nothing of the package, and no module
imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "numbasoftmax"

# modules that state a rule once; everything may use them, they use nothing of ours
RULES = {"numbasoftmax._ops", "numbasoftmax._inputs", "numbasoftmax._layout",
         "numbasoftmax._config"}
# the backends, entered from the public API only
BACKENDS = {"numbasoftmax._cpu_path", "numbasoftmax._dask", "numbasoftmax._dask_features",
            "numbasoftmax._cuda"}
# numba code, and what it may import
KERNELS = {"numbasoftmax._cpu_kernels", "numbasoftmax._row_kernel", "numbasoftmax._lane_kernel",
           "numbasoftmax._simd", "numbasoftmax._vmem", "numbasoftmax._vmath",
           "numbasoftmax._markers", "numbasoftmax._serial_call"}


def _module_name(path):
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path):
    """Package modules that ``path`` imports (``from . import a`` counts as module a)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("numbasoftmax"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("numbasoftmax"):
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if (PKG.parent / Path(*sub.split("."))).with_suffix(".py")
                          .exists() or (PKG.parent / Path(*sub.split("."))).is_dir()
                          else mod)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph():
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _in(module, group):
    return any(module == g or module.startswith(g + ".") for g in group)


def test_no_import_cycle(graph):
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join(path + [node])
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_rule_modules_import_nothing_of_the_package(graph):
    for module in RULES:
        assert graph[module] == set(), (module, graph[module])


def test_kernels_import_only_kernels_and_settings(graph):
    """Kernels, the settings and the locked disk cache their decorator comes from."""
    allowed = KERNELS | {"numbasoftmax._config", "numbasoftmax._disk_cache"}
    for module in KERNELS:
        assert graph[module] <= allowed, (module, graph[module])


def test_the_disk_cache_imports_nothing_of_the_package(graph):
    assert graph["numbasoftmax._disk_cache"] == set()


def test_backends_are_entered_from_the_public_api_only(graph):
    for module, deps in graph.items():
        if module == "numbasoftmax._api" or _in(module, BACKENDS):
            continue
        entered = {d for d in deps if _in(d, BACKENDS)}
        assert not entered, f"{module} imports backend(s) {sorted(entered)}"


def test_public_api_reaches_every_backend(graph):
    api = graph["numbasoftmax._api"]
    assert {"numbasoftmax._cpu_path", "numbasoftmax._dask"} <= api
    assert any(_in(d, {"numbasoftmax._cuda"}) for d in api)
