"""What the documentation points at exists: the project's names that README code imports, and
the Markdown files that code, configuration and prose refer to."""

from __future__ import annotations

import ast
import importlib
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("xception_core", "xception_demo", "api", "ui", "deploy")
SKIP_DIRS = {".git", ".venv", "venv", ".pytest_cache", "node_modules", "test-artifacts", "__pycache__", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ".cfg", ".txt", ""}
# a path with at least one folder, ending in .md, not the tail of a longer path or of $VARIABLE/...
MD_REFERENCE = re.compile(r"(?<![\w$/.-])((?:[\w.-]+/)+[\w.-]+\.md)\b")


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _project_imports(code: str) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT_PACKAGES:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def _text_files() -> list[Path]:
    """The project's text files: the tree without virtual environments, caches and build output."""
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            if name == ".git":  # a worktree's pointer file
                continue
            if path.suffix in TEXT_SUFFIXES or name.startswith(("Dockerfile", "docker-compose")):
                files.append(path)
    return files


README_IMPORTS = _project_imports("\n".join(_python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))))


def test_the_readme_has_code_that_imports_the_project():
    assert ("xception_core.transform", "eval_transform") in README_IMPORTS


@pytest.mark.parametrize("module,name", README_IMPORTS)
def test_names_that_readme_code_imports_exist(module, name):
    assert hasattr(importlib.import_module(module), name), f"README imports {name} from {module}"


def test_markdown_files_that_are_referred_to_exist():
    missing = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for ref in MD_REFERENCE.findall(text):
            if not (ROOT / ref).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, missing


def _components_table() -> list[str]:
    """The first cells of README's Components table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Components\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def _table_paths() -> set[str]:
    """Every path the table names; ``a/b.py``, ``c.py`` in one cell share the folder of the first."""
    paths = set()
    for cell in _components_table():
        names = re.findall(r"`([^`]+)`", cell)
        folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0].rstrip("/") else ""
        for name in names:
            paths.add(name if "/" in name or name.startswith(("Dockerfile", "docker-")) else folder + name)
    return paths


def test_the_components_table_names_only_what_exists():
    missing = [p for p in _table_paths() if "*" not in p and not (ROOT / p).exists()]
    assert not missing, f"README's Components table names paths that do not exist: {missing}"


def test_every_module_has_a_row_in_the_components_table():
    """A module of the core, the API, the UI or the CLI is named by its own row, or lies in a
    folder named by one (``api/routers/``, ``ui/views/``, ``xception_core/synthetic/``)."""
    paths = _table_paths()
    folders = tuple(p for p in paths if p.endswith("/"))
    unnamed = []
    for package in ("xception_core", "api", "ui", "xception_demo"):
        for file in sorted((ROOT / package).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if rel in paths or rel.startswith(folders):
                continue
            if file.name in ("__init__.py", "__main__.py") and rel.rsplit("/", 1)[0].count("/") == 0:
                continue  # a top-level package's marker
            unnamed.append(rel)
    assert not unnamed, f"modules without a row in README's Components table: {unnamed}"
