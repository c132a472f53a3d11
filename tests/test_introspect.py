import threading

import pytest
import torch
import torch.nn.functional as F

from support import calibrate_batchnorm, photo_batch
from xception_core.introspect import UnknownLayerError, capture, decompose, forward_with_capture
from xception_core.model import Xception, XceptionConfig


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


def test_decomposition_sums_back_to_the_pointwise_output(model, photos):
    x = photo_batch(photos[:1], 96)
    name = "entry.block3.sep2"
    with torch.no_grad():
        _, kept = forward_with_capture(model, x, [name])
    layer = model.separable_layers()[name]
    for channel in (0, 5, layer.pointwise.out_channels - 1):
        d = decompose(layer, kept[name]["depthwise"][0], channel, top=4)
        torch.testing.assert_close(d.total, kept[name]["pointwise"][0, channel], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(d.contributions.sum(0) + d.rest, d.total, atol=1e-4, rtol=1e-4)
        assert d.contributions.shape[0] == 4
        assert torch.all(d.energy[:-1] >= d.energy[1:])
        i = d.order[0]
        torch.testing.assert_close(d.contributions[0], d.weights[i] * kept[name]["depthwise"][0, i])
    with pytest.raises(ValueError, match="channel must be in"):
        decompose(layer, kept[name]["depthwise"][0], 10_000)


def test_decomposition_with_an_intermediate_activation(small_config):
    cfg = XceptionConfig(**{**small_config.to_dict(), "intermediate_activation": "elu"})
    model = Xception(cfg).eval()
    name = "middle.block5.sep1"
    with torch.no_grad():
        _, kept = forward_with_capture(model, torch.randn(1, 3, 80, 80), [name])
    d = decompose(model.separable_layers()[name], kept[name]["depthwise"][0], 3, top=2)
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
