"""The mutation-testing table ([tool.mutation.modules.*] in pyproject.toml) names code that exists.

``make mutation`` reads the table as data: a module moved or a function renamed would leave an
entry that mutates nothing (mutmut reports 0 mutants, which reads as "nothing survived"), and a
test file that moved would be left out of the run without a word. So every entry is checked here:
the file to mutate exists, every named function or ``Class.method`` is defined in it and is one
mutmut can mutate (mutmut 3 skips functions with decorators other than staticmethod/classmethod),
every test path and node id (``--deselect`` ones too) exists.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONS_WITH_VALUE = {"-m", "-k", "-p"}  # their value is not a path


def _mutation_tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _mutable(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    names = [d.id for d in node.decorator_list if isinstance(d, ast.Name)]
    return not node.decorator_list or (len(node.decorator_list) == 1 and names in (["staticmethod"], ["classmethod"]))


def _defined(tree: ast.Module, dotted: str) -> str | None:
    """None when ``name`` / ``Class.method`` is a top-level function / method that mutmut mutates, else why not."""
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    body = tree.body
    *owner, name = dotted.split(".")
    if len(owner) > 1:
        return "nested names are not mutated separately"
    if owner:
        classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == owner[0]]
        if not classes:
            return f"no class {owner[0]}"
        body = classes[0].body
    found = [n for n in body if isinstance(n, functions) and n.name == name]
    if not found:
        return "not defined"
    if not _mutable(found[-1]):
        return "decorated: mutmut does not mutate it"
    return None


def _test_problems(args: tuple[str, ...]) -> list[str]:
    problems = []
    for before, arg in zip(("",) + args, args):
        if arg.startswith("-") or before in OPTIONS_WITH_VALUE:
            continue
        path, _, node = arg.partition("::")
        if not (ROOT / path).exists():
            problems.append(f"test path {path} does not exist")
            continue
        if node:
            tree = ast.parse((ROOT / path).read_text())
            why = _defined(tree, node.split("[")[0].replace("::", "."))
            if why == "not defined" or (why and why.startswith("no class")):
                problems.append(f"test {arg}: {why}")
    return problems


def table_problems(pyproject: Path) -> list[str]:
    """Every way the table at ``pyproject`` names code that is not there."""
    _shared, test_args, modules = _mutation_tool().load_table(pyproject)
    problems = [f"test_args: {p}" for p in _test_problems(tuple(test_args))]
    for m in modules:
        source = ROOT / m.mutate
        if not source.is_file():
            problems.append(f"{m.name}: mutate = {m.mutate} does not exist")
            continue
        tree = ast.parse(source.read_text())
        for f in m.functions:
            if f != "*" and (why := _defined(tree, f)):
                problems.append(f"{m.name}: {m.mutate}: {f}: {why}")
        if not m.tests:
            problems.append(f"{m.name}: no tests")
        problems += [f"{m.name}: {p}" for p in _test_problems(m.tests)]
    return problems


def test_every_entry_of_the_mutation_table_exists():
    assert table_problems(ROOT / "pyproject.toml") == []


def test_every_module_of_the_issue_is_in_the_table():
    """Issue 16's list: conversion, decomposition, preprocessing, limits, attribution quality, training."""
    _shared, _args, modules = _mutation_tool().load_table(ROOT / "pyproject.toml")
    files = {m.mutate for m in modules}
    assert {
        "xception_core/convert.py", "xception_core/introspect.py", "xception_core/decode.py",
        "xception_core/transform.py", "api/limits.py", "xception_core/attributions/faithfulness.py",
        "xception_core/attributions/localisation.py", "xception_core/train.py",
    } <= files


def test_a_stale_entry_is_reported(tmp_path):
    """The check can fail: the table as it was before the restructuring (issue 16's first version)."""
    stale = """
[tool.mutation]
test_args = ["-m", "not slow"]
[tool.mutation.mutmut]
source_paths = ["xception_core"]
[tool.mutation.modules.preprocess]
mutate = "xception_core/preprocess.py"
tests = ["tests/test_preprocess.py"]
[tool.mutation.modules.attribution-quality]
mutate = "xception_core/attributions/faithfulness.py"
functions = ["deletion_insertion_auc", "Attributor._infidelity", "gone", "CurveOptions.nothing"]
tests = ["tests/test_attributions.py", "--deselect", "tests/test_attributions.py::test_no_such_test"]
[tool.mutation.modules.train]
mutate = "xception_core/train.py"
functions = ["_to_input", "TrainConfig.resize", "to_input"]
tests = ["tests/test_train.py"]
"""
    (tmp_path / "pyproject.toml").write_text(stale)
    problems = table_problems(tmp_path / "pyproject.toml")
    assert problems == [
        "preprocess: mutate = xception_core/preprocess.py does not exist",
        "attribution-quality: xception_core/attributions/faithfulness.py: Attributor._infidelity: no class Attributor",
        "attribution-quality: xception_core/attributions/faithfulness.py: gone: not defined",
        "attribution-quality: xception_core/attributions/faithfulness.py: CurveOptions.nothing: not defined",
        "attribution-quality: test tests/test_attributions.py::test_no_such_test: not defined",
        "train: xception_core/train.py: _to_input: not defined",
        "train: xception_core/train.py: TrainConfig.resize: not defined",
    ]


def test_a_decorated_function_is_reported_as_not_mutated(tmp_path):
    """mutmut skips ``@property`` and the like: naming one would measure nothing."""
    (tmp_path / "pyproject.toml").write_text("""
[tool.mutation.mutmut]
[tool.mutation.modules.transform]
mutate = "xception_core/transform.py"
functions = ["PreprocessConfig.resize_size", "PreprocessConfig.from_dict", "eval_transform"]
tests = ["tests/test_transform.py"]
""")
    assert table_problems(tmp_path / "pyproject.toml") == [
        "transform: xception_core/transform.py: PreprocessConfig.resize_size: decorated: mutmut does not mutate it",
    ]
