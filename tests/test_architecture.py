"""The package's import structure: no cycles, no upward imports, no private names across modules,
no imports inside functions except of optional heavy dependencies.

Why a test: these rules keep the layers readable (docs/ARCHITECTURE.md) and are easy to break by
accident, most often with an import hidden inside a function to dodge a cycle. Every module of the
package is parsed with `ast` (nothing is imported), so the check sees function-level imports too.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = "onnxslim_compress"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: layer ranks, low to high: a module may import its own layer and the ones below it
#: (files: temporary and stale-file handling, stdlib only, beside errors at the bottom)
LAYERS = {"errors": 0, "version": 0, "files": 0, "graph": 1, "data": 2, "runtime": 3, "passes": 4, "jobs": 5, "search": 6, "cli": 7}
#: entry points and the public facade sit above every layer, and decide when the rest is imported
#: (a lazy facade, Ctrl-C held back until the CLI is loaded): both rules on layers and on imports
#: inside functions leave them out
EXEMPT_FROM_LAYERS = {PACKAGE, f"{PACKAGE}.__main__", f"{PACKAGE}.search.__main__"}
#: optional or slow-to-import third-party packages that may be imported lazily inside a function
#: (measured with python -X importtime: onnxslim 2.4 s, optuna 0.53 s, matplotlib 0.47 s,
#: onnxruntime 0.26 s; tqdm, 0.08 s, is imported at the top); each lazy import says why in a comment.
#: onnx_graphsurgeon / onnx_ir: optional, imported only to convert a model given in their form (graph/convert.py)
LAZY_OK = {"optuna", "matplotlib", "torch", "scipy", "sqlalchemy", "PIL", "onnxslim", "onnxruntime",
           "onnx_graphsurgeon", "onnx_ir"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name imported (for `from pkg import mod`, the submodule when it is one)
    names: tuple[str, ...]  # names taken with `from x import a, b` (empty for `import x`)
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_pkg else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, Path]) -> list[Import]:
    found: list[Import] = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, in_fn: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                if isinstance(child, ast.Import):
                    for a in child.names:
                        found.append(Import(mod, a.name, (), child.lineno, in_fn))
                elif isinstance(child, ast.ImportFrom):
                    target = _resolve(mod, is_pkg, child)
                    plain = [a.name for a in child.names if f"{target}.{a.name}" not in modules]
                    for a in child.names:  # `from pkg import submodule` imports the submodule
                        if f"{target}.{a.name}" in modules:
                            found.append(Import(mod, f"{target}.{a.name}", (), child.lineno, in_fn))
                    if plain or not child.names:
                        found.append(Import(mod, target, tuple(plain), child.lineno, in_fn))
                visit(child, fn)

        visit(tree, False)
    return found


def _internal(imp: Import) -> bool:
    return imp.target == PACKAGE or imp.target.startswith(PACKAGE + ".")


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph(modules: dict[str, Path], imports: list[Import]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for imp in imports:
        if _internal(imp) and imp.target in modules and imp.target != imp.importer:
            # importing a package runs its __init__; a package's own __init__ importing its
            # submodules is the usual facade, not a dependency of the submodules on it
            g.add_edge(imp.importer, imp.target)
    return g


@pytest.fixture(scope="module")
def scan() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    return modules, _imports(modules)


def _none(modules: dict[str, Path], bad: list[tuple[Import, str]]) -> None:
    """Fail listing every offending import as path:line and what is wrong with it."""
    lines = [f"{modules[i.importer].relative_to(ROOT.parent)}:{i.line} {why}" for i, why in bad]
    assert lines == [], "\n".join(lines)


def test_the_scan_sees_the_package(scan):
    modules, imports = scan
    assert len(modules) > 40
    assert f"{PACKAGE}.passes.prune.apply" in modules
    assert any(i.importer == f"{PACKAGE}.passes.prune.apply" and _internal(i) for i in imports)


def test_no_import_cycle(scan):
    modules, imports = scan
    g = _graph(modules, imports)
    # a package importing its own submodules (facade) and a submodule importing its package's
    # facade would close a loop through __init__; count only cycles among real modules
    cycles = [c for c in nx.simple_cycles(g) if len(c) > 1]
    assert cycles == [], "\n".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


def _upward(imp: Import) -> str | None:
    """Why `imp` breaks the layer order, or None."""
    src, dst = _layer(imp.importer), _layer(imp.target)
    if imp.importer in EXEMPT_FROM_LAYERS or not _internal(imp) or src == "report" or dst == "report":
        return None  # report/ has its own rule (stdlib only)
    if src not in LAYERS or dst not in LAYERS:
        return f"{imp.importer} imports {imp.target}: not in a layer"
    if LAYERS[dst] > LAYERS[src]:
        return f"{imp.importer} ({src}) imports {imp.target} ({dst})"
    return None


def test_no_upward_import(scan):
    modules, imports = scan
    _none(modules, [(i, why) for i in imports if (why := _upward(i)) is not None])


def test_report_is_stdlib_only(scan):
    modules, imports = scan
    stdlib = sys.stdlib_module_names | {"__future__"}
    _none(modules, [(i, f"report/ imports {i.target}") for i in imports
                    if _layer(i.importer) == "report" and i.target.split(".")[0] not in stdlib])


def test_no_private_name_across_modules(scan):
    modules, imports = scan
    _none(modules, [(i, f"from {i.target} import {n}") for i in imports if _internal(i) and i.target != i.importer
                    for n in i.names if n.startswith("_") and not n.startswith("__")])


def _heavy_modules(modules: dict[str, Path], imports: list[Import]) -> set[str]:
    """Package modules that import a LAZY_OK dependency at top level, directly or through another
    package module (search/* imports optuna): importing one of them lazily is lazy-loading that
    dependency, which is allowed."""
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    heavy_roots = set()
    for i in imports:
        if i.in_function:
            continue
        if i.target.split(".")[0] in LAZY_OK:
            heavy_roots.add(i.importer)
        elif _internal(i) and i.target in modules:
            g.add_edge(i.target, i.importer)  # importer is heavy if the target is
    return {m for r in heavy_roots for m in nx.descendants(g, r) | {r}}


def test_no_function_level_import_but_optional_heavy_ones(scan):
    modules, imports = scan
    heavy = _heavy_modules(modules, imports)

    def loads_heavy(target: str) -> bool:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = target.split(".")
        return any(".".join(parts[:k]) in heavy for k in range(1, len(parts) + 1))

    _none(modules, [(i, f"import {i.target} inside a function") for i in imports
                    if i.in_function and i.importer not in EXEMPT_FROM_LAYERS
                    and i.target.split(".")[0] not in LAZY_OK and not loads_heavy(i.target)])


def test_heavy_modules_are_what_the_lazy_rule_thinks(scan):
    modules, imports = scan
    heavy = _heavy_modules(modules, imports)
    assert f"{PACKAGE}.search.job" in heavy  # imports optuna at top level
    assert f"{PACKAGE}.graph.io" not in heavy and f"{PACKAGE}.passes.base" not in heavy
    assert f"{PACKAGE}.search" in heavy  # so search.space, light itself, loads optuna through the package
