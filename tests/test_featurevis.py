"""Feature visualisation: determinism, the objective rises, truncation, batching, bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import SMALL
from xception_core.featurevis import (
    MAX_CHANNELS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    VisualisationCancelled,
    VisualisationError,
    VisualisationRequest,
    native_bf16,
    visualise,
)
from xception_core.introspect import UnknownLayerError, capture, run_until_captured
from xception_core.model import Xception
from xception_core.synthetic import generate
from xception_core.weights import BUNDLED_ID, load_model

LAYER = "entry.block3.sep1"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> Xception:
    torch.manual_seed(0)
    return Xception(SMALL).eval()


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED_ID)


def request(**kw) -> VisualisationRequest:
    base = dict(layer=LAYER, part="pointwise", channels=(3,), steps=12, size=72, seed=5, precision="fp32")
    base.update(kw)
    return VisualisationRequest(**base)


def test_same_seed_same_image_and_other_seed_differs(model):
    a = visualise(model, request())
    b = visualise(model, request())
    c = visualise(model, request(seed=6))
    assert a.image.dtype == np.uint8 and a.image.shape == (72, 72, 3)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.images[0].objective_final == b.images[0].objective_final
    assert np.abs(a.image.astype(int) - c.image.astype(int)).max() > 0


@pytest.mark.parametrize(
    "layer,part,channels,objective",
    [
        ("entry.block3.sep1", "pointwise", (2, 3), "mean"),
        ("entry.block3.sep1", "depthwise", (1,), "mean"),  # its channel 7 is dead (always 0)
        ("middle.block6.sep2", "pointwise", (1, 4), "mean"),
        ("entry.block3.sep1", "pointwise", (3,), "centre"),
    ],
)
def test_objective_rises_past_data_examples(bundled, layer, part, channels, objective):
    """The bundled model: the image ends above its start and above 16 generated images."""
    model, card = bundled
    req = request(layer=layer, part=part, objective=objective, steps=64, lr=0.1, size=96, channels=channels)
    result = visualise(model, req, card.preprocess)
    images, _, _ = generate(16, seed=3, size=96)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad(), capture(model, [layer], [part]) as kept:
        model.forward_features(x)
    maps = kept[layer][part][:, list(channels)]
    values = maps[..., maps.shape[2] // 2, maps.shape[3] // 2] if objective == "centre" else maps.mean(dim=(2, 3))
    for i, image in enumerate(result.images):
        assert image.objective_final > image.objective_start, image
        assert image.objective_final > values[:, i].max(), (image, values[:, i])


def test_objective_is_the_spatial_mean_of_the_part(model):
    """objective_final is the channel's spatial mean on the returned image (atlas units)."""
    result = visualise(model, request(part="depthwise", channels=(4,), steps=6))
    x = torch.from_numpy(result.image).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    with torch.no_grad(), capture(model, [LAYER], ["depthwise"]) as kept:
        model.forward_features(x)
    expected = kept[LAYER]["depthwise"][0, 4].mean().item()
    # the result is measured before rounding to 8 bits
    assert result.images[0].objective_final == pytest.approx(expected, abs=0.05 * abs(expected) + 0.02)


def test_a_channel_does_not_depend_on_its_batch_mates(model):
    alone = visualise(model, request(channels=(3,)))
    batch = visualise(model, request(channels=(0, 3, 5)))
    assert [c.channel for c in batch.images] == [0, 3, 5]
    diff = np.abs(alone.image.astype(int) - batch.images[1].image.astype(int))
    assert diff.max() <= 2  # equal up to floating-point rounding of batched kernels


def test_truncated_forward_stops_at_the_layer(model):
    seen = []
    handle = model.exit.register_forward_pre_hook(lambda *a: seen.append("exit"))
    try:
        x = torch.zeros(1, 3, 72, 72)
        with capture(model, [LAYER], ["depthwise"], stop_after=True) as kept:
            run_until_captured(model, x)
    finally:
        handle.remove()
    assert seen == [] and set(kept[LAYER]) == {"depthwise"}


def test_model_is_left_untouched(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    visualise(model, request(steps=3))
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cancel_is_checked_every_step(model):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(VisualisationCancelled) as info:
        visualise(model, request(steps=50), cancel=cancel)
    assert info.value.step == 4


def test_progress_reports_every_step(model):
    seen = []
    visualise(model, request(steps=5), progress=lambda s, n: seen.append((s, n)))
    assert seen == [(s, 5) for s in range(1, 6)]


def test_precision_is_reported(model):
    assert visualise(model, request(steps=2)).precision == "fp32"
    auto = visualise(model, request(steps=2, precision="auto"))
    assert auto.precision == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")
    assert visualise(model, request(steps=2, precision="bf16")).precision == "bf16"


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"steps": 0}, "steps"),
        ({"steps": MAX_STEPS + 1}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"size": MIN_SIZE - 1}, "size"),
        ({"size": MAX_SIZE + 1}, "size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"channels": ()}, "channels"),
        ({"channels": tuple(range(MAX_CHANNELS + 1))}, "channels"),
        ({"channels": (1, 1)}, "channels"),
        ({"channels": (-1,)}, "channel"),
        ({"channels": ("1",)}, "channel"),
        ({"objective": "max"}, "objective"),
        ({"lr": 0}, "lr"),
        ({"lr": 2.0}, "lr"),
        ({"precision": "fp16"}, "precision"),
        ({"layer": ""}, "layer"),
        ({"part": ""}, "part"),
    ],
)
def test_bounds_are_refused_with_the_parameter_named(kw, param):
    with pytest.raises(VisualisationError) as info:
        request(**kw)
    assert info.value.param == param
    assert param.rstrip("s") in str(info.value)


def test_single_int_channel_is_accepted():
    assert request(channels=7).channels == (7,)


def test_bounds_at_the_edges_are_accepted():
    request(steps=1, size=MIN_SIZE, channels=tuple(range(MAX_CHANNELS)), seed=2**32 - 1, lr=1.0)
    request(steps=MAX_STEPS, size=MAX_SIZE)


def test_errors_against_the_model(model):
    with pytest.raises(UnknownLayerError, match="separable layers are"):
        visualise(model, request(layer="entry.block99.sep1"))
    with pytest.raises(UnknownLayerError, match="parts of"):
        visualise(model, request(part="grouped"))
    with pytest.raises(VisualisationError, match="part must be one of"):
        visualise(model, request(part="input"))
    with pytest.raises(VisualisationError, match=r"channel must be in 0\.\.23") as info:
        visualise(model, request(channels=(24,)))  # entry.block3.sep1 pointwise: 24 channels
    assert info.value.param == "channel"
    with pytest.raises(VisualisationError, match=r"0\.\.15"):
        visualise(model, request(part="depthwise", channels=(16,)))  # its depthwise: 16
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            visualise(model, request())
    finally:
        model.eval()


def test_channel_weights(model):
    from xception_core.introspect import channel_weights

    layer = model.separable_layers()[LAYER]
    kernel = channel_weights(model, LAYER, "depthwise", 3)
    assert kernel.shape == (3, 3) and torch.equal(kernel, layer.depthwise.weight[3, 0])
    mix = channel_weights(model, LAYER, "pointwise", 5)
    assert mix.shape == (16,) and torch.equal(mix, layer.pointwise.weight[5, :, 0, 0])
    with pytest.raises(ValueError, match=r"channel must be in 0\.\.23"):
        channel_weights(model, LAYER, "pointwise", 24)
    with pytest.raises(UnknownLayerError):
        channel_weights(model, LAYER, "grouped", 0)
    with pytest.raises(UnknownLayerError, match="no weights"):
        channel_weights(model, LAYER, "input", 0)


def test_a_channel_dead_on_the_start_image_still_rises(bundled):
    """entry.block4.sep2 depthwise 127 reads an input channel that is 0 on the start image: only
    the redirected ReLU gradient gets the optimisation going."""
    model, card = bundled
    result = visualise(model, request(layer="entry.block4.sep2", part="depthwise", channels=(127,), steps=32, size=96), card.preprocess)
    assert result.images[0].objective_start == 0.0 and result.images[0].objective_final > 0.1


def test_the_redirecting_twin_shares_the_weights_and_leaves_the_model_alone(model):
    from xception_core.featurevis import _twin

    twin = _twin(model)
    assert _twin(model) is twin
    assert all(a is b for a, b in zip(model.parameters(), twin.parameters()))
    assert sum(type(m) is torch.nn.ReLU for m in twin.modules()) == 0
    assert sum(type(m) is torch.nn.ReLU for m in model.modules()) > 0
