import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import calibrate_batchnorm, photo_batch
from xception_core.introspect import UnknownLayerError, capture, decompose, forward_with_capture
from xception_core.model import SeparableConv2d, Xception, XceptionConfig


@pytest.fixture(scope="module")
def model(small_config, photos):
    torch.manual_seed(0)
    m = Xception(small_config)
    calibrate_batchnorm(m, photo_batch(photos, 96))
    return m


def _layer_input(model, name, x):
    with capture(model, [name], parts=["input"]) as kept, torch.no_grad():
        model(x)
    return kept[name]["input"]


def test_depthwise_and_pointwise_are_the_convolutions_of_their_inputs(model, photos):
    x = photo_batch(photos[:2], 96)
    for name, layer in model.separable_layers().items():
        with torch.no_grad():
            logits, kept = forward_with_capture(model, x, [name])
            expected_logits = model(x)
        inp = _layer_input(model, name, x)
        c = inp.shape[1]
        depthwise = F.conv2d(inp, layer.depthwise.weight, groups=c, padding=1)
        torch.testing.assert_close(kept[name]["depthwise"], depthwise, atol=1e-5, rtol=1e-4)
        pointwise = F.conv2d(kept[name]["depthwise"], layer.pointwise.weight)
        torch.testing.assert_close(kept[name]["pointwise"], pointwise, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, expected_logits)


def test_only_what_was_asked_is_kept(model, photos):
    x = photo_batch(photos[:1], 96)
    with torch.no_grad():
        _, kept = forward_with_capture(model, x, ["middle.block5.sep2"], parts=["depthwise"])
    assert list(kept) == ["middle.block5.sep2"]
    assert list(kept["middle.block5.sep2"]) == ["depthwise"]
    with torch.no_grad():
        model(x)  # outside a capture nothing is recorded anywhere
    assert list(kept) == ["middle.block5.sep2"]


def test_unknown_layer_and_part_list_the_choices(model):
    with pytest.raises(UnknownLayerError, match="entry.block2.sep1"):
        forward_with_capture(model, torch.zeros(1, 3, 80, 80), ["entry.block99.sep1"])
    with pytest.raises(UnknownLayerError, match="depthwise, pointwise"):
        forward_with_capture(model, torch.zeros(1, 3, 80, 80), ["entry.block2.sep1"], parts=["spatial"])


def _reference_energies(weights: np.ndarray, a: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Brute force in float64, one depthwise channel at a time: the maps ``W[j, i] * a_i``
    and their energies, the sum of squares of each map."""
    maps = [float(w) * a[i].astype(np.float64) for i, w in enumerate(weights)]
    return maps, np.array([float((m * m).sum()) for m in maps])


def _assert_matches_reference(d, weights: np.ndarray, a: np.ndarray, top: int) -> None:
    maps, energy = _reference_energies(weights, a)
    ranked = sorted(range(len(maps)), key=lambda i: (-energy[i], i))[:top]  # ties in channel order
    order = d.order.tolist()
    np.testing.assert_array_equal(d.weights.numpy(), weights)
    # the top channels by energy, largest first; two energies within float32 rounding of each
    # other may come in either order, so the comparison goes through the reference energies
    np.testing.assert_allclose(energy[order], energy[ranked], rtol=1e-5)
    for mine, theirs in zip(order, ranked):
        if energy[mine] == energy[theirs]:  # exactly equal energies: channel order
            assert mine == theirs, (order, ranked)
    np.testing.assert_allclose(d.energy.numpy(), energy[order], rtol=1e-5)
    np.testing.assert_allclose(d.contributions.numpy(), np.stack([maps[i] for i in order]), rtol=1e-5, atol=1e-6)
    total = np.sum(maps, axis=0)
    rest = np.sum([m for i, m in enumerate(maps) if i not in order] or [np.zeros_like(total)], axis=0)
    np.testing.assert_allclose(d.total.numpy(), total, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.rest.numpy(), rest, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["entry.block3.sep2", "middle.block5.sep1", "exit.block7.sep2"])
def test_decomposition_matches_a_brute_force_reference(model, photos, name):
    """Weights, order, energies (sum of squares), contributions, rest and total, channel by channel."""
    x = photo_batch(photos[:1], 96)
    with torch.no_grad():
        _, kept = forward_with_capture(model, x, [name])
    layer = model.separable_layers()[name]
    depthwise = kept[name]["depthwise"][0]
    w = layer.pointwise.weight[:, :, 0, 0].detach().numpy()
    for channel, top in ((0, 4), (5, 1), (w.shape[0] - 1, 6), (2, w.shape[1] + 3)):
        d = decompose(layer, depthwise, channel, top=top)
        _assert_matches_reference(d, w[channel], depthwise.numpy(), min(top, w.shape[1]))
        assert d.layer == name and d.channel == channel
        # the sum over every channel is the layer's pointwise output
        torch.testing.assert_close(d.total, kept[name]["pointwise"][0, channel], atol=1e-4, rtol=1e-4)
    # the documented default: the top 8 channels
    assert w.shape[1] > 8 and len(decompose(layer, depthwise, 0).order) == 8
    # the errors name the valid range
    with pytest.raises(ValueError, match=rf"^channel must be in 0\.\.{w.shape[0] - 1}, got {w.shape[0]}$"):
        decompose(layer, depthwise, w.shape[0])
    with pytest.raises(ValueError, match=r"^channel must be in 0\.\.\d+, got -1$"):
        decompose(layer, depthwise, -1)
    with pytest.raises(ValueError, match="^top must be >= 1$"):
        decompose(layer, depthwise, 0, top=0)
    with pytest.raises(ValueError, match=r"^depthwise must be one image's \[C, H, W\] output$"):
        decompose(layer, kept[name]["depthwise"], 0)


def test_decomposition_ranks_equal_energies_in_channel_order():
    layer = SeparableConv2d(6, 2, "test.sep1")
    m = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    depthwise = torch.stack([m, m, m, m, -m, torch.zeros(5, 5)])
    with torch.no_grad():
        layer.pointwise.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0, 0.5, 0.0, 1.0, 3.0])
    # energies |m|^2 x (1, 1, 0.25, 0, 1, 0): ties between 0, 1 and 4, and between 3 and 5
    assert decompose(layer, depthwise, 0, top=6).order.tolist() == [0, 1, 4, 2, 3, 5]
    assert decompose(layer, depthwise, 0, top=2).order.tolist() == [0, 1]
    d = decompose(layer, depthwise, 0, top=3)
    _assert_matches_reference(d, layer.pointwise.weight[0, :, 0, 0].detach().numpy(), depthwise.numpy(), 3)


def test_decomposition_ranks_many_equal_energies_in_channel_order():
    """64 channels in three energy levels: an unstable sort (torch's default from 64 values on)
    would order the ties differently."""
    layer = SeparableConv2d(64, 1, "test.sep1")
    m = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    depthwise = torch.stack([m if i % 2 else -m for i in range(64)])
    weights = torch.tensor([(1.0, -1.0, 0.0, 0.5)[i % 4] for i in range(64)])
    with torch.no_grad():
        layer.pointwise.weight[0, :, 0, 0] = weights
    level = [abs(float(w)) for w in weights]  # energy = w^2 |m|^2: ranks as |w|
    expected = sorted(range(64), key=lambda i: (-level[i], i))
    assert decompose(layer, depthwise, 0, top=64).order.tolist() == expected


@pytest.mark.parametrize("activation", ["elu", "relu"])
def test_decomposition_with_an_intermediate_activation(small_config, activation):
    """The contributions are built from the activated depthwise maps, the pointwise input."""
    cfg = XceptionConfig(**{**small_config.to_dict(), "intermediate_activation": activation})
    torch.manual_seed(0)
    model = Xception(cfg).eval()
    name = "middle.block5.sep1"
    with torch.no_grad():
        _, kept = forward_with_capture(model, torch.randn(1, 3, 80, 80), [name])
    layer = model.separable_layers()[name]
    depthwise = kept[name]["depthwise"][0].numpy().astype(np.float64)
    activated = np.where(depthwise > 0, depthwise, np.expm1(depthwise) if activation == "elu" else 0.0)
    assert (depthwise < 0).mean() > 0.2  # the activation changes something
    d = decompose(layer, kept[name]["depthwise"][0], 3, top=5)
    _assert_matches_reference(d, layer.pointwise.weight[3, :, 0, 0].detach().numpy(), activated, 5)
    torch.testing.assert_close(d.total, kept[name]["pointwise"][0, 3], atol=1e-4, rtol=1e-4)


def test_concurrent_threads_get_independent_captures(model, photos):
    """Two threads capture different layers of one shared model at the same time."""
    x = photo_batch(photos, 96)
    names = ["entry.block2.sep1", "exit.block8.sep2"]
    with torch.no_grad():
        _, expected = forward_with_capture(model, x, names)
    results: dict[int, list] = {0: [], 1: []}
    barrier = threading.Barrier(2)
    errors = []

    def work(i):
        try:
            barrier.wait()
            for _ in range(5):
                with torch.no_grad():
                    _, kept = forward_with_capture(model, x[i::2], [names[i]])
                results[i].append(kept)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in (0, 1):
        for kept in results[i]:
            assert list(kept) == [names[i]]
            for part in ("depthwise", "pointwise"):
                torch.testing.assert_close(kept[names[i]][part], expected[names[i]][part][i::2], atol=1e-5, rtol=1e-4)
