"""The layers point down, and no modules import each other in a circle.

The layers, bottom up: the ground (cxr/) imports nothing else of ours; the parts (export, gateway,
indexing, training) stand on the ground and not on each other; the benchmarks on the parts; the roof
(cxr_cli/, the `cxr` command, the demo and the supervisor) on everything. A module may import its own
package and the packages of lower layers, nothing else.

Both tests read the source's AST, so they see an import wherever it is written. The layer test counts
imports inside functions too: a lazy import is still a dependency, only a later one. The circle test
counts them too, since a circle of lazy imports is still two modules that cannot be read, changed or
moved one without the other (benchmarks' quantization and tune were one). It leaves out only the edge
from a submodule to the package that holds it: importing `a.b` runs `a/__init__.py` first, and an
`__init__.py` that re-exports its submodules is not a circle anyone has to untangle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LAYERS = [("cxr",), ("export", "gateway", "indexing", "training"), ("benchmarks",), ("cxr_cli",)]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}
GENERATED = "cxr/retrieval"  # the gRPC stubs, made by `make protos` from protos/
# Known debt, to be paid as files move: training builds its towers with export's checkpoint loaders.
ALLOWED = {("training", "export")}


def _files() -> dict[str, Path]:
    """{dotted module name: file} over every package of ours, the generated stubs left out."""
    found = {}
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if not str(relative).startswith(GENERATED):
                parts = relative.with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _files()


def _imported(node: ast.AST) -> list[str]:
    """The modules of ours one import statement names: `from x import y` is x.y where y is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                 for alias in node.names]
    else:
        return []
    return [name for name in names if name.split(".")[0] in LAYER]


def _imports(module: str) -> set[str]:
    """Every module of ours that `module` imports, at module level or inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    return {name for node in ast.walk(tree) for name in _imported(node)}


def _package(module: str) -> str:
    return module.split(".")[0]


def _may_import(importer: str, imported: str) -> bool:
    below = LAYER[imported] < LAYER[importer]
    return importer == imported or below or (importer, imported) in ALLOWED


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_its_own_package_and_lower_layers_only(module):
    upward = {name for name in _imports(module) if not _may_import(_package(module), _package(name))}
    assert not upward, f"{MODULES[module].relative_to(ROOT)} (layer {LAYER[_package(module)]}) imports {sorted(upward)}"


def _graph() -> dict[str, set[str]]:
    """{module: the modules of ours it imports}, less the edge to the package a module sits in."""
    graph = {}
    for module in MODULES:
        targets = {name if name in MODULES else name.rsplit(".", 1)[0] for name in _imports(module)}
        graph[module] = {t for t in targets if t in MODULES and t != module and not module.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    circles = _circles(_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The client package (clients/python) is a distribution of its own: it imports nothing of ours (a client's
# environment has none of it), and of our packages only the roof (`cxr search`) imports it.
CLIENT = ROOT / "clients" / "python" / "cxr_client"
CLIENT_PACKAGE = "cxr_client"
ROOF = "cxr_cli"


def _top_level_imports(path: Path) -> set[str]:
    """The first dotted part of every absolute import in a file, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted(p for p in CLIENT.rglob("*.py") if p.parent.name != "_proto"),
                         ids=lambda p: str(p.relative_to(CLIENT)))
def test_the_client_package_imports_nothing_of_ours(path):
    ours = _top_level_imports(path) & set(LAYER)
    assert not ours, f"{path.relative_to(ROOT)} imports {sorted(ours)}: the client package stands alone"


def test_only_the_roof_imports_the_client_package():
    importers = sorted(module for module, path in MODULES.items()
                       if CLIENT_PACKAGE in _top_level_imports(path) and _package(module) != ROOF)
    assert not importers, f"{importers} import {CLIENT_PACKAGE}: only {ROOF} may (a part must not need a client)"
