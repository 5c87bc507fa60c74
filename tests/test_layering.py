"""The package's layering, read from the source (an AST walk, nothing imported): backends never import the layers
above them, library code never imports the CLI, nst3d modules import each other without cycles (function-level
imports count), and no module under nst3d/ or blender_addon/ passes 450 lines."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 450

#: what a backend (nst3d/backends/**) may not import: everything that orchestrates a run (the loop included)
ABOVE_BACKENDS = ("nst3d.eval", "nst3d.options", "nst3d.schema", "nst3d.pipelines", "nst3d.commands", "nst3d.cli",
                  "nst3d.batch", "nst3d.worker", "nst3d.integrations", "nst3d.stylize")
#: the command-line layer; only it (and python -m nst3d) may import it
CLI = ("nst3d.commands", "nst3d.cli")
CLI_SIDE = ("nst3d.commands", "nst3d.cli", "nst3d.__main__")

#: Upward imports that wait for the pipeline change (issue 20: the stylize_*_file functions move from
#: nst3d/commands into nst3d/pipelines, and the worker and batch jobs use them from there). Delete each line
#: when that change removes the import; the test fails on an entry whose import is gone.


def _module_name(root: Path, path: Path) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def modules(root: Path) -> dict[str, Path]:
    """Every module of the nst3d package under `root`, by dotted name (a package by its own name)."""
    return {_module_name(root, p): p for p in sorted((root / "nst3d").rglob("*.py"))}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The nst3d modules `path` imports, anywhere in it (module level or inside functions).

    `from a.b import c` counts a.b, and also a.b.c when that is a module; `import a.b.c` counts a.b.c only
    (the parent packages' __init__ run too, but importing a submodule directly is how a package's own
    modules avoid importing the package's re-exports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {m for m in out if m in known and m != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imported(name, path, known) for name, path in known.items()}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, imported) pairs that break a layering rule."""
    bad = set()
    for name, deps in graph.items():
        for dep in deps:
            if _within(name, ("nst3d.backends",)) and _within(dep, ABOVE_BACKENDS):
                bad.add((name, dep))
            if not _within(name, CLI_SIDE) and _within(dep, CLI):
                bad.add((name, dep))
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def test_the_walk_sees_module_level_lazy_and_relative_imports(tmp_path, graph):
    assert "nst3d.backends.base" in graph["nst3d.stylize"]  # module level
    assert "nst3d.backends.image" in graph["nst3d.eval"]  # inside a method
    pkg = tmp_path / "nst3d" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "nst3d" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("import nst3d.sub.a as a\nfrom nst3d import sub\n")
    small = import_graph(tmp_path)
    assert small["nst3d.sub"] == {"nst3d.sub.a"}
    assert small["nst3d.sub.a"] == {"nst3d.sub.b"}
    assert small["nst3d.sub.b"] == {"nst3d", "nst3d.sub", "nst3d.sub.a"}
    assert cycles(small) == [["nst3d.sub", "nst3d.sub.a", "nst3d.sub.b"]]


def test_the_rules_catch_upward_imports():
    graph = {"nst3d.backends.mesh.load": {"nst3d.eval", "nst3d.cameras"}, "nst3d.eval": {"nst3d.cli"},
             "nst3d.cli": {"nst3d.commands.mesh"}, "nst3d.commands.mesh": set(), "nst3d.cameras": set()}
    assert layer_violations(graph) == {("nst3d.backends.mesh.load", "nst3d.eval"), ("nst3d.eval", "nst3d.cli")}


def test_backends_and_library_code_import_only_downwards(graph):
    assert layer_violations(graph) == set()


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_module_over_450_lines():
    files = [*(REPO / "nst3d").rglob("*.py"), *(REPO / "blender_addon").rglob("*.py")]
    assert len(files) > 20
    long = {str(p.relative_to(REPO)): n for p in files if (n := len(p.read_text("utf8").splitlines())) > MAX_LINES}
    assert long == {}
