"""The channel atlas: top-k against a brute-force scan, resuming, receptive fields, errors."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from support import SMALL
from xception_core import atlas as atlas_mod
from xception_core.atlas import AtlasBuildRequest, AtlasError, AtlasIndex, atlas_dir, build_atlas, open_atlas
from xception_core.introspect import capture, forward_with_capture
from xception_core.model import Xception
from xception_core.receptive import crop_to_field, receptive_fields
from xception_core.synthetic import write_folder
from xception_core.transform import PreprocessConfig, preprocess_bytes
from xception_core.weights import BUNDLED_ID, get_card, load_model

CFG = PreprocessConfig(input_size=80, crop_pct=1.0)
N = 22


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> Xception:
    torch.manual_seed(1)
    return Xception(SMALL).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("atlas-data"), N, seed=7, size=96)


@pytest.fixture(scope="module")
def index(model, folder, tmp_path_factory) -> AtlasIndex:
    out = tmp_path_factory.mktemp("atlas")
    return build_atlas(model, CFG, AtlasBuildRequest(folder, k=5, batch_size=4, sample=8), out, model_sha="abc")


def brute_force(model, folder, files):
    """Every image alone through the model: {(layer, part): [N, C] objectives}, maxima, argmax."""
    layers = list(model.separable_layers())
    obj, high, where = {}, {}, {}
    for i, name in enumerate(files):
        x = preprocess_bytes((folder / name).read_bytes(), CFG)[None]
        with torch.no_grad():
            _, kept = forward_with_capture(model, x, layers)
        for layer, parts in kept.items():
            for part, maps in parts.items():
                flat = maps[0].flatten(1)
                obj.setdefault((layer, part), []).append(flat.mean(dim=1).numpy())
                high.setdefault((layer, part), []).append(flat.max(dim=1).values.numpy())
                where.setdefault((layer, part), []).append(flat.argmax(dim=1).numpy())
    return ({k: np.stack(v) for k, v in d.items()} for d in (obj, high, where))


def test_top_k_equals_a_brute_force_scan(model, folder, index):
    files = atlas_mod.list_images(folder)
    assert index.files == files and len(files) == N
    obj, high, where = brute_force(model, folder, files)
    assert set(obj) == {(layer, part) for layer, parts in index.layers().items() for part in parts}
    assert len(obj) == 2 * len(model.separable_layers())
    for (layer, part), values in obj.items():
        width = index.meta["layers"][layer][part]["map"][1]
        for channel in range(values.shape[1]):
            entry = index.entry(layer, part, channel)
            expected = np.sort(values[:, channel])[::-1][:5]
            got = np.array([e.objective for e in entry.examples])
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
            for e in entry.examples:
                i = files.index(e.file)
                assert e.objective == pytest.approx(values[i, channel], rel=1e-4, abs=1e-5)
                assert e.max == pytest.approx(high[(layer, part)][i, channel], rel=1e-4, abs=1e-5)
                if e.max > e.objective + 1e-3:  # a unique maximum: the location must match
                    assert e.y * width + e.x == where[(layer, part)][i, channel]
            assert entry.count == N
            assert entry.mean == pytest.approx(values[:, channel].mean(), rel=1e-3, abs=1e-5)
            assert entry.max == pytest.approx(values[:, channel].max(), rel=1e-4, abs=1e-5)
            assert entry.min == pytest.approx(values[:, channel].min(), rel=1e-4, abs=1e-5)


def test_sample_holds_evenly_spaced_images(model, folder, index):
    files = atlas_mod.list_images(folder)
    obj, _, _ = brute_force(model, folder, files)
    picks = index.meta["sample_images"]
    assert len(picks) == 8 and picks[0] == 0 and picks[-1] == N - 1
    entry = index.entry("entry.block3.sep2", "pointwise", 3)
    np.testing.assert_allclose(entry.sample, obj[("entry.block3.sep2", "pointwise")][picks, 3], rtol=1e-4, atol=1e-5)


def test_resume_after_an_interruption_gives_the_same_index(model, folder, index, tmp_path):
    request = AtlasBuildRequest(folder, k=5, batch_size=4, checkpoint_every=1, sample=8)

    def stop_after_three(done, total):
        if done >= 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, CFG, request, tmp_path, model_sha="abc", progress=stop_after_three)
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert partial["done"] == 8  # the checkpoint before the interrupted batch's
    seen = []
    resumed = build_atlas(model, CFG, request, tmp_path, model_sha="abc", progress=lambda d, t: seen.append(d))
    assert seen[0] == 8 and seen[-1] == N
    assert not (tmp_path / "partial.json").exists()
    for name, array in index._arrays.items():
        np.testing.assert_array_equal(resumed._arrays[name], array, err_msg=name)


def test_a_checkpoint_of_other_settings_is_not_resumed(model, folder, tmp_path):
    def stop(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, CFG, AtlasBuildRequest(folder, k=5, batch_size=4, checkpoint_every=1), tmp_path, progress=stop)
    seen = []
    build_atlas(model, CFG, AtlasBuildRequest(folder, k=4, batch_size=4), tmp_path, progress=lambda d, t: seen.append(d))
    assert seen[0] == 0


def test_index_is_plain_arrays_and_json(index):
    with np.load(index.path / "atlas.npz", allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    json.loads((index.path / "atlas.json").read_text())


def test_receptive_field_matches_the_gradient_support(model):
    fields = receptive_fields(model)
    size = 80
    for layer, part in [("entry.block2.sep1", "depthwise"), ("entry.block2.sep2", "pointwise"), ("entry.block3.sep1", "depthwise")]:
        x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
        with capture(model.double(), [layer], [part], detach=False) as kept:
            model.forward_features(x)
        maps = kept[layer][part]
        y0, x0 = maps.shape[2] // 2, maps.shape[3] // 2
        (grad,) = torch.autograd.grad(maps[0, :, y0, x0].sum(), [x])
        rows = np.nonzero(grad[0].abs().sum(0).sum(1).numpy())[0]
        cols = np.nonzero(grad[0].abs().sum(0).sum(0).numpy())[0]
        top, left, bottom, right = fields[(layer, part)].box(y0, x0, size)
        assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (top, bottom, left, right), (layer, part)
    model.float()


def test_crop_to_field_is_the_box():
    field = receptive_fields(Xception(SMALL))[("entry.block2.sep1", "depthwise")]
    pixels = np.arange(80 * 80 * 3, dtype=np.uint8).reshape(80, 80, 3)
    top, left, bottom, right = field.box(5, 6, 80)
    np.testing.assert_array_equal(crop_to_field(pixels, field, 5, 6), pixels[top:bottom, left:right])


def test_examples_and_crops(index):
    entry = index.entry("entry.block3.sep1", "depthwise", 2, k=3)
    assert [e.rank for e in entry.examples] == [0, 1, 2]
    objectives = [e.objective for e in entry.examples]
    assert objectives == sorted(objectives, reverse=True)
    crop = index.crop(entry.examples[0])
    top, left, bottom, right = entry.examples[0].box
    assert crop.shape == (bottom - top, right - left, 3) and crop.dtype == np.uint8
    assert index.pixels(entry.examples[0].file).shape == (80, 80, 3)
    d = entry.to_dict()
    assert d["examples"][0]["file"].endswith(".png") and len(d["examples"]) == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (("entry.block99.sep1", "depthwise", 0), "unknown layer"),
        (("entry.block2.sep1", "grouped", 0), "unknown part"),
        (("entry.block2.sep1", "depthwise", 16), r"channel must be in 0\.\.15"),
        (("entry.block2.sep1", "depthwise", -1), "channel must be"),
        (("entry.block2.sep1", "depthwise", True), "channel must be"),
        (("entry.block2.sep1", "depthwise", 0, 0), r"k must be in 1\.\.5"),
        (("entry.block2.sep1", "depthwise", 0, 6), r"k must be in 1\.\.5"),
    ],
)
def test_entry_errors(index, args, message):
    with pytest.raises(AtlasError, match=message):
        index.entry(*args)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "00-red-cyan-horizontal-stripes/nope.png"])
def test_only_indexed_files_are_read(index, name):
    with pytest.raises(AtlasError, match="not an image of this atlas"):
        index.image_path(name)


@pytest.mark.parametrize(
    "kw,message",
    [({"k": 0}, "k must"), ({"k": 65}, "k must"), ({"batch_size": 0}, "batch_size"), ({"batch_size": 257}, "batch_size"),
     ({"checkpoint_every": 0}, "checkpoint_every"), ({"sample": -1}, "sample"), ({"k": 2.0}, "k must")],
)
def test_build_request_bounds(tmp_path, kw, message):
    with pytest.raises(AtlasError, match=message):
        AtlasBuildRequest(tmp_path, **kw)


def test_build_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        build_atlas(model, CFG, AtlasBuildRequest(tmp_path / "missing"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        build_atlas(model, CFG, AtlasBuildRequest(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(AtlasError, match="no atlas"):
        AtlasIndex.open(tmp_path / "out")


def test_an_undecodable_image_is_skipped(model, folder, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(atlas_mod.list_images(folder)[:5]):
        (data / f"{i}.png").write_bytes((folder / name).read_bytes())
    (data / "2b.png").write_bytes(b"not an image")
    built = build_atlas(model, CFG, AtlasBuildRequest(data, k=3, batch_size=4), tmp_path / "out")
    assert len(built.meta["skipped"]) == 1 and built.meta["skipped"][0].startswith("2b.png")
    entry = built.entry("entry.block2.sep1", "pointwise", 0)
    assert entry.count == 5 and "2b.png" not in [e.file for e in entry.examples]


def test_bundled_atlas_is_built_on_first_use_then_reused(monkeypatch):
    monkeypatch.setattr(atlas_mod, "BUNDLED_ATLAS_IMAGES", 12)
    model, card = load_model(BUNDLED_ID)
    seen = []
    first = open_atlas(card, model=model, progress=lambda d, t: seen.append(d))
    assert seen[-1] == 12 and first.path == atlas_dir(BUNDLED_ID)
    assert first.root == atlas_dir(BUNDLED_ID) / "data"
    again = open_atlas(card)  # no model needed once it is there
    assert again.meta["files"] == first.meta["files"]
    assert again.entry("exit.block9.sep2", "pointwise", 0).count == 12


def test_an_atlas_of_other_weights_is_refused(model, folder, tmp_path):
    card = dataclasses.replace(get_card(BUNDLED_ID), id="mine", sha256="0" * 64)
    with pytest.raises(AtlasError, match="has no atlas yet"):
        open_atlas(card, home=tmp_path)
    build_atlas(model, CFG, AtlasBuildRequest(folder, k=2), atlas_dir("mine", tmp_path), model_sha="1" * 64)
    with pytest.raises(AtlasError, match="other weights"):
        open_atlas(card, home=tmp_path)


def test_an_atlas_reads_what_an_image_folder_holds(tmp_path):
    """The samples of an image folder, as everywhere else: no hidden files, no object masks."""
    for name in ("a/cat.png", "a/cat.mask.png", "a/.hidden.png", "b/dog.JPG", "notes.txt", ".cache/x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert atlas_mod.list_images(tmp_path) == ["a/cat.png", "b/dog.JPG"]


def test_the_bundled_atlas_is_built_once_when_two_ask_at_the_same_time(monkeypatch):
    """Two callers (threads here; processes alike: the lock is a file's) on a fresh home: one
    builds, the other waits and opens what it built."""
    import threading

    monkeypatch.setattr(atlas_mod, "BUNDLED_ATLAS_IMAGES", 8)
    model, card = load_model(BUNDLED_ID)
    builds, real = [], atlas_mod.build_atlas

    def counting(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # the other caller arrives while this one builds
        return real(*args, **kwargs)

    monkeypatch.setattr(atlas_mod, "build_atlas", counting)
    results, errors = [], []

    def ask() -> None:
        try:
            results.append(open_atlas(card, model=model))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(builds) == 1 and len(results) == 2
    assert results[0].meta["files"] == results[1].meta["files"] and len(results[0].meta["files"]) == 8
