"""The house rules of the code base, checked on the source (no module is imported here).

- no import circle between the project's modules, imports inside functions included;
- no module of ``xception_core`` or ``api`` over 500 lines;
- no function with more than 8 parameters, except FastAPI route signatures (``api/routers``),
  whose parameters are the documented query parameters;
- no import inside a function in ``xception_core`` and ``api``, except of optional heavy
  packages (the command line imports lazily on purpose: it is installed in both images).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xception_core", "api", "ui", "xception_demo", "deploy")
MAX_LINES = 500
MAX_PARAMS = 8
#: Packages a function may import when it needs them: optional extras, or slow to import.
LAZY_OK = {"onnx", "onnxruntime", "matplotlib", "skimage", "uvicorn", "scipy"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> Iterator[str]:
    """The project modules an import statement loads (a name of a package that is a submodule counts as that submodule)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in MODULES:
                yield alias.name
        return
    if node.level:
        base = module.split(".") if _is_package(module) else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in MODULES:
        return
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        yield sub if sub in MODULES else target


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(m for m in _resolve(name, node) if m != name)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle_not_even_inside_functions():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_circle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] in ("xception_core", "api")))
def test_no_module_of_the_core_or_the_api_is_over_500_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it by job"


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _param_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def _is_route(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("get", "post", "put", "delete", "patch")
        for d in fn.decorator_list
    )


def test_no_function_takes_more_than_8_parameters_outside_route_signatures():
    offenders = []
    for name, path in MODULES.items():
        for fn in _functions(_tree(path)):
            if _param_count(fn) > MAX_PARAMS and not (name.startswith("api.routers") and _is_route(fn)):
                offenders.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({_param_count(fn)} parameters)")
    assert not offenders, "use a request or options object: " + "; ".join(offenders)


def test_the_core_and_the_api_import_at_module_level():
    offenders = []
    for name, path in MODULES.items():
        if name.split(".")[0] not in ("xception_core", "api"):
            continue
        for fn in _functions(_tree(path)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    roots = {"." if node.level else (node.module or "").split(".")[0]}
                else:
                    continue
                if not roots <= LAZY_OK:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} in {fn.name}")
    assert not offenders, "import at the top of the module: " + "; ".join(offenders)
