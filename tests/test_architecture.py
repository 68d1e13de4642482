"""The package's shape: layers, no import cycles, no private imports, short functions.

The layer contracts live in ``pyproject.toml`` (import-linter) and the complexity limits there
too (ruff's C901 / PLR0912 / PLR0915); ``make lint`` runs both and ``make test`` calls it. This
module checks what those tools do not: cycles between modules, private names imported from
another module, and the length of functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_softseg"
#: Longest function body allowed, in lines, docstring excluded.
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(tree: ast.AST, module: str, is_package: bool):
    """(imported module, imported name or None, line) for every import of the package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_softseg"):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("napari_softseg"):
                for alias in node.names:
                    yield base, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for target, name, _ in _imports(tree, module, path.name == "__init__.py"):
            if name and f"{target}.{name}" in modules:
                target = f"{target}.{name}"
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    assert find_cycles(_graph()) == []


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        for target, name, line in _imports(tree, module, path.name == "__init__.py"):
            leaf = (name or target).split(".")[-1]
            if leaf.startswith("_") and not leaf.startswith("__"):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{leaf}")
    assert offenders == []


def _body_lines(node: ast.FunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > limit:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({_body_lines(node)} lines)")
    return out


def test_body_length_excludes_the_docstring():
    tree = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n    b = 2\n')
    assert _body_lines(tree.body[0]) == 2


def test_functions_are_short():
    assert long_functions() == []


@pytest.mark.parametrize("command", [["lint-imports"], ["ruff", "check", "--quiet", "napari_softseg"]])
def test_layer_contracts_and_complexity_limits_hold(command):
    """import-linter's layer contracts and ruff's complexity limits (``make lint``) pass."""
    exe = Path(sys.executable).parent / command[0]
    proc = subprocess.run([str(exe), *command[1:]], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
