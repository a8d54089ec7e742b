"""The shape of ``harness/`` (docs/architecture.md): no import cycle among its modules, no import of a plugin,
a short loop, and a public API that imports from the package root.

The import graph is read from the source with :mod:`ast`, so every import counts wherever it stands (at the top
of a module or inside a function), except those under ``if TYPE_CHECKING:``, which never run. ``from harness.x
import y`` is an edge to ``harness.x.y`` when that is a module, else to ``harness.x``.

The package root ``harness/__init__.py`` is the public facade: it re-exports the other modules (the torch-backed
ones on first use), so it stands above all of them and is not a node of the graph. A module inside ``harness``
never imports from the facade, except the ``__version__`` constant it defines before its first import.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.conftest import REPO

HARNESS = REPO / "harness"
FACADE = "harness"
LOOP_MAX_LINES = 250

#: The rooms of docs/architecture.md, top to bottom (module-name prefixes): a module imports only from its own row
#: or rows below it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness.cli", "harness.api", "harness.scale.sweep"),
    ("harness.loop",),
    ("harness.scale.executor", "harness.publish"),
    ("harness.engine",),
    ("harness.measure",),
    ("harness.specs", "harness.hookspecs", "harness.interfaces", "harness.imageset", "harness.errors",
     "harness.plugin"),
)
#: Upward imports the page names: the run directory's file I/O, used for image shards and FID's feature cache.
UPWARD = {("harness.imageset", "harness.engine.rundir"), ("harness.measure.fid", "harness.engine.rundir")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, *, type_checking: bool = False) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import statement of module ``name``, relative imports
    made absolute; ``type_checking``: also those under ``if TYPE_CHECKING:``."""
    path = modules()[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: list[tuple[str, str | None, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child) and not type_checking:
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, None, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package[: len(package) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                out.extend((base, a.name, child.lineno) for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return out


def edges(name: str) -> set[str]:
    """The harness modules that module ``name`` imports (the facade left out)."""
    known = modules()
    out = set()
    for module, imported, _ in imports(name):
        target = f"{module}.{imported}" if imported and f"{module}.{imported}" in known else module
        if target in known and target not in (name, FACADE):
            out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    return {name: edges(name) for name in modules() if name != FACADE}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            connect(v)
    return found


def layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name} is in no room of docs/architecture.md; add it to LAYERS and to the page")


def describe(component: list[str], g: dict[str, set[str]]) -> str:
    inside = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(g[m] & inside))}" for m in component)


# --------------------------------------------------------------------------------------------------- tests


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking():
    g = graph()
    assert "harness.engine.plan" in g["harness.loop"]  # a top-level import
    assert "harness.plugin.manager" in g["harness.cli.run"]  # an import inside a command body
    assert "harness.publish.results" not in g["harness.hookspecs"]  # only under TYPE_CHECKING
    assert "harness.publish.results" in {m for m, _, _ in imports("harness.hookspecs", type_checking=True)}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_harness_modules():
    g = graph()
    found = cycles(g)
    assert not found, "import cycles: " + " | ".join(describe(c, g) for c in found)


def test_imports_point_down_the_rooms():
    g = graph()
    up = sorted(f"{m} -> {d}" for m in g for d in g[m] if layer(d) < layer(m) and (m, d) not in UPWARD)
    assert not up, "imports against the rooms of docs/architecture.md: " + ", ".join(up)


def test_the_architecture_page_names_every_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    tree = page[page.index("## The tree"):page.index("## The rooms")]
    missing = [str(p.relative_to(REPO)) for p in sorted([*HARNESS.rglob("*.py"), *(REPO / "plugins").rglob("*.py")])
               if p.name != "__init__.py" and p.name not in tree]
    assert not missing, f"docs/architecture.md's tree misses {missing}"


def test_no_other_distribution_installs_our_top_level_names():
    """We keep the generic import names ``harness`` and ``plugins`` (docs/architecture.md): say so when another
    installed distribution provides one of them too and would overwrite our files."""
    import importlib.metadata as md

    owners = md.packages_distributions()
    for name in ("harness", "plugins"):
        assert set(owners.get(name, [])) == {"bench-bias-loops"}, f"{name!r} is also installed by {owners[name]}"


def test_harness_never_imports_a_plugin():
    """Not at the top, not in a function, not for type checking, not by name (importlib or a lazy string)."""
    bad = []
    for name, path in modules().items():
        for module, _, line in imports(name, type_checking=True):
            if module == "plugins" or module.startswith("plugins."):
                bad.append(f"{path.relative_to(REPO)}:{line}: {module}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                r"plugins(\.\w+)+(:\w+)?", node.value
            ):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not bad, "harness imports plugins: " + ", ".join(bad)


def test_modules_import_nothing_from_the_facade_but_the_version():
    known = modules()
    bad = []
    for name in known:
        if name == FACADE:
            continue
        for module, imported, line in imports(name, type_checking=True):
            if module == FACADE and imported is not None and f"{FACADE}.{imported}" not in known:
                if imported != "__version__":
                    bad.append(f"{name}:{line}: from harness import {imported}")
            elif module == FACADE and imported is None:
                bad.append(f"{name}:{line}: import harness")
    assert not bad, "import these from their own module: " + ", ".join(bad)


def test_the_facade_defines_the_version_before_any_import():
    tree = ast.parse((HARNESS / "__init__.py").read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    first_import = next(i for i, n in enumerate(body) if isinstance(n, ast.ImportFrom) and n.module != "__future__")
    assigned = [t.id for n in body[:first_import] if isinstance(n, ast.Assign) for t in n.targets]
    assert "__version__" in assigned


def test_the_loop_stays_short():
    lines = len((HARNESS / "loop.py").read_text().splitlines())
    assert lines < LOOP_MAX_LINES, f"harness/loop.py has {lines} lines; the plan and the stages live in engine/"


def test_the_public_api_imports_in_a_fresh_interpreter():
    code = ("from harness import Dataset, Generator, Classifier, Filter, Options, hookimpl, ImageSet, run, "
            "load_results, RunSpec, Runtime, FilterContext, DatasetBundle, BenchError, __version__")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
