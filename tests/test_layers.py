"""The layers point down: the ground package (cxr/, less cxr/cli/ on top) imports nothing else of
ours, and the parts above it (export, gateway, indexing, training) do not import each other."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
OURS = {"cxr", "export", "gateway", "indexing", "training", "benchmarks"}
PARTS = ("export", "gateway", "indexing", "training")
ROOF = "cxr/cli"  # the command line, the demo and the supervisor: on top of everything
# Known debt, to be paid as files move: training builds its towers with export's checkpoint loaders.
ALLOWED = {("training", "export")}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "retrieval" not in p.parts)


@pytest.mark.parametrize("path", [p for p in _modules("cxr") if not str(p.relative_to(ROOT)).startswith(ROOF)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_ground_imports_nothing_of_ours(path):
    assert _imports(path) <= {"cxr"}


@pytest.mark.parametrize("path", [p for part in PARTS for p in _modules(part)], ids=lambda p: str(p.relative_to(ROOT)))
def test_a_part_stands_on_the_ground_only(path):
    part = path.relative_to(ROOT).parts[0]
    sideways = _imports(path) - {"cxr", part}
    assert {(part, other) for other in sideways} <= ALLOWED, f"{path.relative_to(ROOT)} imports {sideways}"
