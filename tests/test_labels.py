from __future__ import annotations

import ast
from pathlib import Path

import pytest

from xception_core.labels import (
    IMAGENET_NUM_CLASSES,
    LabelsFileError,
    imagenet_class_names,
    load_class_names,
)

CORE = Path(__file__).resolve().parents[1] / "xception_core"


def test_imagenet_names_count_and_known_indices():
    names = imagenet_class_names()
    assert len(names) == IMAGENET_NUM_CLASSES == 1000
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[2] == "great white shark"
    assert names[999] == "toilet tissue"
    assert all(n and n == n.strip() for n in names)


def test_imagenet_names_match_timm_first_lemmas():
    timm_data = pytest.importorskip("timm.data")
    info = timm_data.ImageNetInfo()
    expected = [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
    assert imagenet_class_names() == expected


def test_imagenet_names_returns_a_copy():
    names = imagenet_class_names()
    names[0] = "changed"
    assert imagenet_class_names()[0] == "tench"


def test_runtime_modules_do_not_import_timm():
    for module in ("labels.py", "decode.py", "transform.py"):
        tree = ast.parse((CORE / module).read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert "timm" not in imported, module


def test_load_class_names_ok(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\n  dog \nbird\n\n".encode("utf-8"))
    assert load_class_names(path) == ["cat", "dog", "bird"]
    assert load_class_names(str(path), expected=3) == ["cat", "dog", "bird"]


@pytest.mark.parametrize("content,pattern", [
    (b"cat\n\ndog\n", r"line 2 is blank"),
    (b"cat\n   \ndog", r"line 2 is blank"),
    (b"", r"no class names"),
    (b"\n\n", r"no class names"),
    (b"caf\xe9\n", r"not UTF-8"),
])
def test_load_class_names_rejects_bad_files(tmp_path, content, pattern):
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(LabelsFileError, match=pattern) as info:
        load_class_names(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_class_names_count_mismatch(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=r"found 2 class names but the model has 3 classes"):
        load_class_names(path, expected=3)


def test_load_class_names_missing_or_directory(tmp_path):
    with pytest.raises(LabelsFileError, match="not found"):
        load_class_names(tmp_path / "nope.txt")
    with pytest.raises(LabelsFileError, match="directory"):
        load_class_names(tmp_path)
