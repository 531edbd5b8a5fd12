r"""The package's layers, read from its import graph: every import (those inside
functions included) goes to the module's own layer or below, the graph has no cycle,
and only the adapters (and the scenes world, which builds its own model) import a model
family's library. Importing the package or building the command line's parser imports
none of the heavy libraries."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Dict, List, Set, Tuple

import pytest

import captum_clip_surgery

PACKAGE = "captum_clip_surgery"
ROOT = os.path.dirname(captum_clip_surgery.__file__)

#: layer of each part of the package, bottom (0) to top
LAYERS: Dict[str, int] = {
    "_validation": 0,
    "_lazy": 0,
    "adapters": 1,
    "core": 2,
    "methods": 3,
    "apps": 4,
    "scenes": 4,
    "evaluation": 5,
    "benchmark": 5,
    "explain": 5,
    "web": 6,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,
}

#: libraries of model families: only the adapters (and the scenes world) import them
FAMILY_LIBRARIES = ("open_clip", "transformers", "timm", "clip")
ALLOWED_FAMILY_IMPORTERS = ("adapters", "scenes")


def _modules() -> Dict[str, str]:
    r"""``{dotted module name: file path}`` of every module of the package."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join([PACKAGE] + rel)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: str, module: str, is_package: bool) -> List[str]:
    r"""Every module ``module`` imports at run time: top level and inside functions, the
    ``if TYPE_CHECKING:`` blocks (annotations only) left out."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found: List[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append(target)
                found.extend(f"{target}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _graph() -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]]]:
    r"""``(edges inside the package, third-party top-level names)`` per module."""
    modules = _modules()
    edges: Dict[str, Set[str]] = {m: set() for m in modules}
    external: Dict[str, Set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        for name in _imports(path, module, is_package):
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                if name in modules and name != module:
                    edges[module].add(name)
            elif name:
                external[module].add(name.split(".")[0])
    return edges, external


def _layer(module: str) -> Tuple[str, int]:
    parts = module.split(".")
    part = "__init__" if len(parts) == 1 else parts[1]
    assert part in LAYERS, f"{module}: no layer assigned to {part!r}"
    return part, LAYERS[part]


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_go_to_the_same_layer_or_below():
    edges, _ = _graph()
    breaches = [
        f"{a} ({_layer(a)[0]}) imports {b} ({_layer(b)[0]})"
        for a, targets in edges.items() for b in sorted(targets)
        if _layer(b)[1] > _layer(a)[1]
    ]
    assert breaches == []


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    r"""The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_the_import_graph_has_no_cycle():
    edges, _ = _graph()
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_only_adapters_and_scenes_import_model_family_libraries():
    _, external = _graph()
    offenders = [
        f"{m} imports {lib}" for m, libs in external.items() for lib in sorted(libs)
        if lib in FAMILY_LIBRARIES and _layer(m)[0] not in ALLOWED_FAMILY_IMPORTERS
    ]
    assert offenders == []


def test_import_finder_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import open_clip\n"
        "def f():\n    from captum_clip_surgery.cli import main\n    import timm.layers\n"
    )
    found = _imports(str(source), "captum_clip_surgery.core.m", False)
    assert "captum_clip_surgery.cli" in found and "captum_clip_surgery.cli.main" in found
    assert "timm.layers" in found and "open_clip" not in found


HEAVY = ("captum", "matplotlib", "open_clip", "transformers", "timm", "clip", "gradio")


@pytest.mark.slow
@pytest.mark.parametrize("code", [
    "import captum_clip_surgery",
    "from captum_clip_surgery.cli import build_parser; build_parser().format_help()",
    "import captum_clip_surgery.methods.registry as r; r.method_names()",
])
def test_light_imports_load_no_heavy_library(code):
    check = (f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
