"""The shape of the house, from the syntax tree: layers only point down, no import cycles, no private names
crossing modules, project modules imported at the top (in-function imports only for optional heavy libraries)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Each layer may import itself and the layers listed; anything else of the project is above it.
LAYERS = {
    "core": set(),
    "formats": {"core"},
    "security": {"core", "formats"},
}

#: In-function imports of project modules that are there on purpose: the module imported pulls in an optional
#: heavy library (torch, transformers, llama_cpp) at import time, so it is loaded only when asked for.
LAZY_ON_PURPOSE = {
    ("modelport.gguf.iq_grid", "modelport.gguf.iq_grid_jit"),  # numba (0.5 s), only when a grid IQ type quantizes
    ("modelport.runtime", "modelport.runtime.hf_engine"),      # torch + transformers
    ("modelport.runtime", "modelport.runtime.llama_engine"),   # llama_cpp
    ("modelport.serving", "modelport.serving.app"),            # fastapi + uvicorn (the serve extra)
    ("modelport.gguf.quants", "modelport.gguf.legacy_jit"),    # numba (the unweighted legacy kernels)
    ("modelport.gguf.iq_grid", "modelport.gguf.iq1"),          # numba (0.5 s): only when an IQ1 kernel runs
    ("modelport.gguf.quants", "modelport.gguf.k_jit"),         # numba (0.5 s): only when Q3_K quantizes
}


@dataclass
class Graph:
    edges: dict[str, set[str]] = field(default_factory=dict)
    lazy: set[tuple[str, str]] = field(default_factory=set)          # (importer, imported) inside a function
    private: list[str] = field(default_factory=list)                # "importer: name" for a private name imported


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def import_graph(root: Path, package: str = "modelport") -> Graph:
    """Every import of a project module, resolved to the module it loads, from the syntax tree alone."""
    files = {module_name(root, p): p for p in (root / package).rglob("*.py")}
    graph = Graph({m: set() for m in files})

    def add(importer: str, target: str, nested: bool) -> None:
        if target == importer:
            return
        graph.edges[importer].add(target)
        if nested:
            graph.lazy.add((importer, target))

    for mod, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        nested_nodes = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(f) if n is not f}
        aliases: dict[str, str] = {}   # local name -> project module it is bound to
        for node in ast.walk(tree):
            nested = id(node) in nested_nodes
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == package:
                        target = a.name if a.name in files else a.name.rsplit(".", 1)[0]
                        add(mod, target, nested)
                        if any(is_private(p) for p in a.name.split(".")):
                            graph.private.append(f"{mod}: {a.name}")
                        aliases[a.asname or a.name.split(".")[0]] = a.name
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != package:
                    continue
                if any(is_private(p) for p in target.split(".")):
                    graph.private.append(f"{mod}: {target}")
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in files:
                        add(mod, sub, nested)
                        aliases[a.asname or a.name] = sub
                    else:
                        add(mod, target, nested)
                    if is_private(a.name):
                        graph.private.append(f"{mod}: {target}.{a.name}")
        for node in ast.walk(tree):   # module._name on an imported project module
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and is_private(node.attr)):
                graph.private.append(f"{mod}: {aliases[node.value.id]}.{node.attr}")
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, targets in sorted(edges.items()):
        layer = layer_of(mod)
        if layer is None:
            continue
        allowed = LAYERS[layer] | {layer}
        for t in sorted(targets):
            if layer_of(t) not in allowed:
                bad.append(f"{mod} -> {t}")
    return bad


def check(root: Path) -> list[str]:
    """Every problem with the tree at `root`, one line each."""
    graph = import_graph(root)
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(graph.edges)]
    problems += [f"layer: {v}" for v in layer_violations(graph.edges)]
    problems += [f"private name: {p}" for p in sorted(set(graph.private))]
    problems += [f"in-function import: {a} -> {b}" for a, b in sorted(graph.lazy - LAZY_ON_PURPOSE)]
    return problems


def test_the_tree_has_no_cycle_no_layer_break_no_private_import():
    assert check(SRC) == []


def test_the_checker_catches_what_it_is_for(tmp_path):
    """A copy of the tree with a cycle, a layer break, a private import and a lazy import added on purpose."""
    root = tmp_path / "src"
    shutil.copytree(SRC / "modelport", root / "modelport", ignore=shutil.ignore_patterns("__pycache__"))
    before = set(check(root))
    with open(root / "modelport" / "core" / "dtypes.py", "a") as f:
        f.write("\nfrom ..formats import registry  # noqa\n")     # core -> formats: a layer break and a cycle
    with open(root / "modelport" / "writing.py", "a") as f:
        f.write("\nfrom .opening import _hidden  # noqa\n"
                "def later():\n    from .formats import registry  # noqa\n")
    problems = set(check(root)) - before
    assert any(p.startswith("cycle:") and "modelport.core.dtypes" in p for p in problems), problems
    assert "layer: modelport.core.dtypes -> modelport.formats.registry" in problems
    assert "private name: modelport.writing: modelport.opening._hidden" in problems
    assert "in-function import: modelport.writing -> modelport.formats.registry" in problems


def _loaded_after(code: str) -> list[str]:
    """The numba/llvmlite modules a fresh interpreter has loaded after running `code` on this tree."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(SRC)}).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


def test_the_cli_starts_without_numba():
    """numba costs 0.5 s to import: the CLI with every command registered must not load it (the kernels that need it
    are imported when they first run, the LAZY_ON_PURPOSE route); importing a kernel module does load it."""
    assert _loaded_after("import modelport.cli.main as m\nm.build()") == []
    assert "numba" in _loaded_after("import modelport.gguf.jit_math")


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
])
def test_cycle_finder(edges, expected):
    assert cycles(edges) == expected
