"""The generated pattern x colour dataset (xception_core.synthetic)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from xception_core import synthetic as S
from xception_core.folders import list_class_folder

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec.601, PIL's convert("L")
N_PATTERNS = len(S.PATTERNS)
N_SCHEMES = len(S.COLOUR_SCHEMES)


# --------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------


def test_class_list_is_the_full_cross_product():
    assert S.NUM_CLASSES == len(S.CLASS_NAMES) >= 12
    assert len(set(S.CLASS_NAMES)) == S.NUM_CLASSES
    assert S.NUM_CLASSES == N_PATTERNS * N_SCHEMES
    seen = set()
    for label in range(S.NUM_CLASSES):
        pattern, scheme = S.class_factors(label)
        assert S.CLASS_NAMES[label] == f"{scheme} {pattern}"
        assert S.class_index(pattern, scheme) == label
        seen.add((pattern, scheme))
    assert len(seen) == S.NUM_CLASSES
    with pytest.raises(IndexError):
        S.class_factors(S.NUM_CLASSES)


def test_folder_names_sort_in_class_order():
    names = [S.folder_name(c) for c in range(S.NUM_CLASSES)]
    assert sorted(names) == names
    assert names[0].startswith("00-") and " " not in "".join(names)


def test_palette_is_luminance_matched():
    """Greyscale (Rec.601) cannot tell the schemes apart: all dark colours share one
    luma, all light colours another, and the two are far apart (the pattern stays visible)."""
    darks = np.array([d for d, _ in S.COLOUR_SCHEMES.values()], dtype=np.float32)
    lights = np.array([li for _, li in S.COLOUR_SCHEMES.values()], dtype=np.float32)
    assert np.all(np.abs(darks @ LUMA - S.DARK_LUMA) <= 1.0)
    assert np.all(np.abs(lights @ LUMA - S.LIGHT_LUMA) <= 1.0)
    assert S.LIGHT_LUMA - S.DARK_LUMA >= 80
    # ... while the colours themselves are far apart
    colours = np.concatenate([darks, lights])
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert dist[~np.eye(len(colours), dtype=bool)].min() > 60


# --------------------------------------------------------------------------
# determinism, shapes, balance
# --------------------------------------------------------------------------


def test_generate_shapes_and_dtypes():
    images, labels, masks = S.generate(5, seed=1, size=64)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (5,) and labels.dtype == np.int64
    assert masks.shape == (5, 64, 64) and masks.dtype == np.bool_
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_deterministic_for_a_seed():
    a = S.generate(6, seed=7, size=64)
    b = S.generate(6, seed=7, size=64)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = S.generate(6, seed=8, size=64)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])
    # different images within one seed
    assert not np.array_equal(a[0][0], a[0][1])


def test_make_sample_equals_generate_and_depends_only_on_seed_and_index():
    images, labels, masks = S.generate(4, seed=3, size=64, start=40)
    for k, i in enumerate(range(40, 44)):
        img, label, mask = S.make_sample(i, seed=3, size=64)
        np.testing.assert_array_equal(img, images[k])
        np.testing.assert_array_equal(mask, masks[k])
        assert label == labels[k] == i % S.NUM_CLASSES
    # order of generation does not matter
    late = S.make_sample(43, 3, 64)[0]
    S.make_sample(41, 3, 64)
    np.testing.assert_array_equal(S.make_sample(43, 3, 64)[0], late)


def test_labels_are_balanced():
    for n in (S.NUM_CLASSES * 3, S.NUM_CLASSES * 50 + 7, 13):
        counts = np.bincount(S.SyntheticDataset(n, seed=0).targets, minlength=S.NUM_CLASSES)
        assert counts.max() - counts.min() <= 1
        assert counts.sum() == n
    labels = S.generate(S.NUM_CLASSES + 3, seed=0, size=32)[1]
    counts = np.bincount(labels, minlength=S.NUM_CLASSES)
    assert counts.max() - counts.min() <= 1


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        S.make_sample(-1, 0)
    with pytest.raises(ValueError):
        S.make_sample(0, -5)
    with pytest.raises(ValueError):
        S.make_sample(0, 0, size=8)


# --------------------------------------------------------------------------
# masks match the drawn objects
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
    return S.generate(2 * S.NUM_CLASSES, seed=21, size=128)


def _near(pixels: np.ndarray, colour, tol: float) -> np.ndarray:
    return np.linalg.norm(pixels.astype(np.float32) - np.asarray(colour, np.float32), axis=-1) <= tol


def _near_segment(pixels: np.ndarray, a, b, tol: float) -> np.ndarray:
    """Pixels within ``tol`` of the RGB segment a-b (the two colours and their anti-aliased blends)."""
    p = pixels.astype(np.float32)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    t = np.clip((p - a) @ (b - a) / float((b - a) @ (b - a)), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * (b - a)), axis=-1) <= tol


def test_object_size_and_position(batch):
    _, _, masks = batch
    size = masks.shape[-1]
    for m in masks:
        ys, xs = np.nonzero(m)
        assert len(ys) > 0
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert 0.15 * size <= extent <= 0.72 * size
        area = m.mean()
        assert 0.02 <= area <= 0.45


def test_inside_the_mask_the_class_colours_alternate(batch):
    """Inside the mask the pixels take the class's two colours, about half each;
    the luma inside shows the two matched levels."""
    images, labels, masks = batch
    for img, label, m in zip(images, labels, masks):
        _, scheme = S.class_factors(int(label))
        dark, light = S.COLOUR_SCHEMES[scheme]
        inside = img[m]
        assert _near_segment(inside, dark, light, 30).mean() > 0.95, S.CLASS_NAMES[label]
        near_dark = _near(inside, dark, 40)
        near_light = _near(inside, light, 40)
        assert (near_dark | near_light).mean() > 0.6, S.CLASS_NAMES[label]
        assert 0.2 < near_dark.mean() < 0.8
        assert 0.2 < near_light.mean() < 0.8
        luma = inside.astype(np.float32) @ LUMA
        core_dark, core_light = _near(inside, dark, 20), _near(inside, light, 20)
        assert abs(np.median(luma[core_dark]) - S.DARK_LUMA) < 12
        assert abs(np.median(luma[core_light]) - S.LIGHT_LUMA) < 12
        # the other schemes' colour pairs do not fill the object
        for other, (d2, l2) in S.COLOUR_SCHEMES.items():
            if other != scheme:
                assert _near_segment(inside, d2, l2, 30).mean() < 0.3, (S.CLASS_NAMES[label], other)


def test_the_class_pattern_does_not_appear_outside_the_mask(batch):
    """Outside the object, pixels rarely alternate between the two class colours:
    the share of outside pixels near either class colour is much lower than inside."""
    images, labels, masks = batch
    for img, label, m in zip(images, labels, masks):
        _, scheme = S.class_factors(int(label))
        dark, light = S.COLOUR_SCHEMES[scheme]
        share_out = _near_segment(img[~m], dark, light, 30).mean()
        share_in = _near_segment(img[m], dark, light, 30).mean()
        assert share_out < 0.5 * share_in


def test_mask_matches_the_pattern_edges(batch):
    """The pattern makes the object a region of strong local contrast: the mean
    luma gradient inside the mask exceeds the one in the background."""
    images, _, masks = batch
    ratios = []
    for img, m in zip(images, masks):
        g = img.astype(np.float32) @ LUMA
        gx = np.abs(np.diff(g, axis=1))[:-1, :]
        gy = np.abs(np.diff(g, axis=0))[:, :-1]
        grad = gx + gy
        inner = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:]
        ratios.append(grad[inner].mean() / max(grad[~m[:-1, :-1]].mean(), 1e-6))
    assert np.median(ratios) > 2.0


# --------------------------------------------------------------------------
# torch Dataset
# --------------------------------------------------------------------------


def test_dataset_items_masks_and_indexing():
    ds = S.SyntheticDataset(30, seed=5, size=64)
    assert len(ds) == 30 and ds.classes == list(S.CLASS_NAMES)
    x, y = ds[7]
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 64, 64)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    img, label, mask = S.make_sample(7, 5, 64)
    assert y == label == 7 % S.NUM_CLASSES == ds.label(7)
    expected = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0
    torch.testing.assert_close(x, expected)
    np.testing.assert_array_equal(ds.mask(7), mask)
    torch.testing.assert_close(ds[-1][0], ds[29][0])
    with pytest.raises(IndexError):
        ds[30]


def test_dataset_offset_transform_and_pickling():
    base = S.SyntheticDataset(10, seed=2, size=48)
    shifted = S.SyntheticDataset(5, seed=2, size=48, offset=5)
    torch.testing.assert_close(shifted[0][0], base[5][0])
    assert shifted[0][1] == base[5][1]
    flipped = S.SyntheticDataset(10, seed=2, size=48, transform=lambda t: t.flip(-1))
    torch.testing.assert_close(flipped[3][0], base[3][0].flip(-1))
    # DataLoader workers receive a pickled copy: it must produce the same samples
    clone = pickle.loads(pickle.dumps(base))
    torch.testing.assert_close(clone[4][0], base[4][0])


# --------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------


def test_write_folder_round_trip(tmp_path):
    from PIL import Image

    n = S.NUM_CLASSES + 4
    out = S.write_folder(tmp_path / "set", n=n, seed=9, size=48)
    class_dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert class_dirs == [S.folder_name(c) for c in range(S.NUM_CLASSES)]
    # the class folders hold images only
    for d in class_dirs:
        assert all(p.suffix == ".png" and not p.name.endswith(".mask.png") for p in (out / d).iterdir())
    classes, items = list_class_folder(out)
    assert classes == class_dirs and len(items) == n
    masks = S.read_folder_masks(out)
    assert len(masks) == n
    for path, cls in items:
        index = int(path.stem)
        img, label, mask = S.make_sample(index, 9, 48)
        assert cls == label
        np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), img)
        np.testing.assert_array_equal(masks[f"{path.parent.name}/{path.stem}"], mask)
    assert (out / "manifest.json").is_file()


def test_a_folder_without_masks_has_none(tmp_path):
    assert S.read_folder_masks(tmp_path) == {}


# --------------------------------------------------------------------------
# neither colour alone nor pattern alone suffices
# --------------------------------------------------------------------------

N_TRAIN, N_TEST = 1200, 600


@pytest.fixture(scope="module")
def split():
    train = S.generate(N_TRAIN, seed=101, size=128)
    test = S.generate(N_TEST, seed=202, size=128)
    return train[:2], test[:2]


def _colour_features(images: np.ndarray, chunk: int = 200) -> dict[str, np.ndarray]:
    """Colour statistics without any spatial information."""
    means, stds, hists = [], [], []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk]
        n = len(x)
        flat = x.reshape(n, -1, 3).astype(np.float32)
        means.append(flat.mean(1))
        stds.append(flat.std(1))
        q = (x >> 6).astype(np.int64).reshape(n, -1, 3)  # 4 levels per channel
        idx = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
        hist = np.bincount((idx + 64 * np.arange(n)[:, None]).ravel(), minlength=64 * n).reshape(n, 64)
        hists.append(hist / idx.shape[1])
    mean, std = np.concatenate(means), np.concatenate(stds)
    return {
        "mean RGB": mean,
        "mean+std RGB": np.concatenate([mean, std], 1),
        "RGB histogram": np.concatenate(hists),
    }


def _greyscale_features(images: np.ndarray, chunk: int = 200) -> np.ndarray:
    """Luma histogram + gradient-orientation histogram + gradient-magnitude histogram."""
    out = []
    for i in range(0, len(images), chunk):
        g = images[i : i + chunk].astype(np.float32) @ LUMA
        n = len(g)
        offs = np.arange(n)[:, None]

        def hist(bins, k, weights=None):
            b = bins.reshape(n, -1)
            w = None if weights is None else weights.reshape(n, -1).ravel()
            h = np.bincount((b + k * offs).ravel(), weights=w, minlength=k * n).reshape(n, k)
            return h / (h.sum(1, keepdims=True) + 1e-9)

        gx = g[:, 1:-1, 2:] - g[:, 1:-1, :-2]
        gy = g[:, 2:, 1:-1] - g[:, :-2, 1:-1]
        mag = np.sqrt(gx * gx + gy * gy)
        ang = np.mod(np.arctan2(gy, gx), np.pi)
        out.append(
            np.concatenate(
                [
                    hist(np.minimum((g * (16 / 256)).astype(np.int64), 15), 16),
                    hist(np.minimum((ang * (12 / np.pi)).astype(np.int64), 11), 12, weights=mag),
                    hist(np.minimum((mag * (8 / 200)).astype(np.int64), 7), 8),
                ],
                1,
            )
        )
    return np.concatenate(out)


@pytest.fixture(autouse=False)
def one_torch_thread():
    """Tiny problems: a second intra-op thread only spins (50x slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logistic_regression(f_train, y_train, f_test, n_classes: int) -> np.ndarray:
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.tensor((f_train - mu) / sd, dtype=torch.float32)
    b = torch.tensor((f_test - mu) / sd, dtype=torch.float32)
    y = torch.as_tensor(y_train)
    w = torch.zeros(a.shape[1], n_classes, requires_grad=True)
    c = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + c, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w + c).argmax(1).numpy()


def _nearest_centroid(f_train, y_train, f_test, n_classes: int) -> np.ndarray:
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a, b = (f_train - mu) / sd, (f_test - mu) / sd
    centroids = np.stack([a[y_train == k].mean(0) for k in range(n_classes)])
    return ((b[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def _accuracies(f_train, y_train, f_test, y_test) -> dict[str, float]:
    """Best of the two classifiers, for the class, the scheme alone and the pattern alone."""
    torch.manual_seed(0)
    out = {}
    for what, k, to in (
        ("class", S.NUM_CLASSES, lambda y: y),
        ("scheme", N_SCHEMES, lambda y: y // N_PATTERNS),
        ("pattern", N_PATTERNS, lambda y: y % N_PATTERNS),
    ):
        out[what] = max(
            float((fit(f_train, to(y_train), f_test, k) == to(y_test)).mean())
            for fit in (_logistic_regression, _nearest_centroid)
        )
    return out


@pytest.mark.slow
def test_colour_alone_does_not_identify_the_class(split, one_torch_thread):
    """Chance is 1/20; a perfect scheme detector that knows nothing of the pattern
    gets 1/5.  Measured (1200 train / 600 test, 128 px): class 7 % (mean RGB),
    12 % (mean+std), 16 % (64-bin colour histogram); the histogram finds the
    scheme 89 % of the time but the pattern only at chance (20 %)."""
    (x_tr, y_tr), (x_te, y_te) = split
    f_tr, f_te = _colour_features(x_tr), _colour_features(x_te)
    for name in f_tr:
        acc = _accuracies(f_tr[name], y_tr, f_te[name], y_te)
        print(name, acc)
        assert acc["class"] <= 0.35, (name, acc)
        assert acc["pattern"] <= 0.32, (name, acc)  # chance 0.2
    # the colour cue itself is there: the histogram recognises the scheme
    assert _accuracies(f_tr["RGB histogram"], y_tr, f_te["RGB histogram"], y_te)["scheme"] >= 0.6


@pytest.mark.slow
def test_greyscale_alone_does_not_identify_the_class(split, one_torch_thread):
    """Chance is 1/20; a perfect pattern detector blind to colour gets 1/4.
    Measured: class 17 %, pattern 68 %, scheme 25 % (chance 25 %)."""
    (x_tr, y_tr), (x_te, y_te) = split
    f_tr, f_te = _greyscale_features(x_tr), _greyscale_features(x_te)
    acc = _accuracies(f_tr, y_tr, f_te, y_te)
    print("greyscale", acc)
    assert acc["class"] <= 0.35, acc
    assert acc["scheme"] <= 0.37, acc  # chance 0.25: greyscale carries (almost) no scheme information
    # the spatial cue itself is there: greyscale features recognise the pattern
    assert acc["pattern"] >= 0.5, acc
