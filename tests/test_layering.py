"""The package's import layering, read from the source with ``ast`` (nothing is imported).

Lower layers never import higher ones: nothing inside the package imports the package root (whose ``__init__``
imports everything), no two modules import each other (directly or round a loop), and the inference side
(:class:`~lightning_margin.FaceEmbedder` and its sibling modules) never reaches the training module. Imports under
``if TYPE_CHECKING:`` do not run and are not counted; imports inside functions run when called and are counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_margin"
ROOT = "lightning_margin"
# The inference side: loading and running an embedder must work without the training stack's module.
INFERENCE_MODULES = (
    "lightning_margin.embedder",
    "lightning_margin.embedder_hub",
    "lightning_margin.embedder_faces",
    "lightning_margin.align",
    "lightning_margin.align.folder",
    "lightning_margin.images",
    "lightning_margin.artifacts",
)


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for child in node.body for inner in ast.walk(child))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a package module in ``path``, resolved to a known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from a import b` imports the submodule a.b when there is one, else names of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith(ROOT):
                found.append((target, node.lineno))
    return found


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[tuple[str, int]]]:
    """Edges ``module -> imported modules``, and the imports of the package root from inside the package."""
    modules = module_names(package)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    root_imports = []
    for name, path in modules.items():
        for target, line in imports_of(name, path, modules):
            if target == ROOT and name != ROOT:
                root_imports.append((name, line))
            if target != name:
                edges[name].add(target)
    return edges, root_imports


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Groups of two or more modules that import each other round a loop (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module that importing ``start`` runs: its imports, transitively, and the packages they live in.

    The package root is left out as a parent: Python runs it before any submodule, whoever imports them, so what
    counts is whether the module's own chain of imports (sub-packages' ``__init__`` included) leads somewhere.
    """
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        parts = current.split(".")
        parents = {".".join(parts[:length]) for length in range(2, len(parts))}
        for following in (edges.get(current, set()) | parents) - seen:
            seen.add(following)
            todo.append(following)
    return seen


# ---- the checks themselves on fabricated packages: each failure condition is detected -------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / ROOT


def test_the_checks_find_a_root_import_a_cycle_and_a_reach_into_training(tmp_path):
    package = _package(
        tmp_path,
        {
            "__init__.py": "from lightning_margin.a import A\n",
            "a.py": "from lightning_margin import b\n",  # the root, then the submodule b
            "b.py": "import lightning_margin.c\n",
            "c.py": "from . import b\n",  # b -> c -> b
            "module.py": "",
            "sub/__init__.py": "from lightning_margin.module import X\n",
            "sub/leaf.py": "import typing\nif typing.TYPE_CHECKING:\n    from lightning_margin import module\n",
            "inference.py": "def f():\n    from lightning_margin.sub.leaf import g\n",
        },
    )
    edges, root_imports = import_graph(package)
    assert root_imports == [] and edges["lightning_margin.a"] == {"lightning_margin.b"}
    assert cycles(edges) == [["lightning_margin.b", "lightning_margin.c"]]
    # The leaf's TYPE_CHECKING import does not run, but its package's __init__ does.
    assert edges["lightning_margin.sub.leaf"] == set()
    assert "lightning_margin.module" in reachable(edges, "lightning_margin.inference")
    assert "lightning_margin.module" not in reachable(edges, "lightning_margin.c")

    (package / "a.py").write_text("import lightning_margin\n")
    assert import_graph(package)[1] == [("lightning_margin.a", 1)]


# ---- the package --------------------------------------------------------------------------------------------------


def test_nothing_inside_the_package_imports_the_package_root():
    _, root_imports = import_graph()
    assert root_imports == [], f"imports of {ROOT} (its __init__ imports everything) from inside: {root_imports}"


def test_no_import_cycles():
    edges, _ = import_graph()
    assert cycles(edges) == []


@pytest.mark.parametrize("name", INFERENCE_MODULES)
def test_the_inference_side_never_imports_the_training_module(name):
    edges, _ = import_graph()
    assert name in edges, f"{name} is not a module of the package any more; update INFERENCE_MODULES"
    assert "lightning_margin.module" not in reachable(edges, name)
    assert ROOT not in {target for target in edges[name]}
