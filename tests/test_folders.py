"""Image folders laid out one sub-folder per class (xception_core.folders)."""

from __future__ import annotations

import pytest
from PIL import Image

from xception_core.folders import list_class_folder


def test_lists_images_by_sorted_class_folder_and_skips_the_rest(tmp_path):
    for cls in ("b-second", "a-first"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / cls / "y.JPG")
        Image.new("RGB", (4, 4)).save(tmp_path / cls / "x.png")
        Image.new("L", (4, 4)).save(tmp_path / cls / "x.mask.png")
        (tmp_path / cls / "notes.txt").write_text("not an image")
        Image.new("RGB", (4, 4)).save(tmp_path / cls / ".hidden.png")
        (tmp_path / cls / "folder.png").mkdir()
    (tmp_path / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".cache" / "y.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "top.png")
    classes, samples = list_class_folder(tmp_path)
    assert classes == ["a-first", "b-second"]
    assert [(p.parent.name, p.name, c) for p, c in samples] == [
        ("a-first", "x.png", 0), ("a-first", "y.JPG", 0), ("b-second", "x.png", 1), ("b-second", "y.JPG", 1),
    ]


def test_an_empty_class_folder_keeps_its_index(tmp_path):
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "c" / "1.png")
    classes, samples = list_class_folder(tmp_path)
    assert classes == ["a", "b", "c"] and [c for _, c in samples] == [2]


@pytest.mark.parametrize("layout,message", [
    ("missing", "is not a folder; expected one sub-folder per class"),
    ("file", "is not a folder; expected one sub-folder per class"),
    ("flat", "has no class sub-folders"),
    ("no images", "has class folders but no images"),
])
def test_says_what_is_wrong_with_the_folder(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("not a folder")
    elif layout == "flat":
        root.mkdir()
        Image.new("RGB", (4, 4)).save(root / "x.png")
    elif layout == "no images":
        (root / "cat").mkdir(parents=True)
        (root / "cat" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=message):
        list_class_folder(root)
