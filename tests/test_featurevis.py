"""Feature visualisation: determinism, the objective rises, truncation, batching, bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import SMALL
from xception_core import featurevis
from xception_core.featurevis import (
    MAX_CHANNELS,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    VisualisationCancelled,
    VisualisationError,
    VisualisationRequest,
    visualise,
)
from xception_core.introspect import UnknownLayerError, capture, run_until_captured
from xception_core.model import Xception
from xception_core.synthetic import generate
from xception_core.frozen import MATMUL_ROWS, Pointwise
from xception_core.visnets import RedirectedReLU, visualisation_nets
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
    "layer,part,channels,objective,precision",
    [
        ("entry.block3.sep1", "pointwise", (2, 3), "mean", "fp32"),
        ("entry.block3.sep1", "depthwise", (1,), "mean", "fp32"),  # its channel 7 is dead (always 0)
        ("middle.block6.sep2", "pointwise", (1, 4), "mean", "fp32"),
        ("entry.block3.sep1", "pointwise", (3,), "centre", "fp32"),
        ("middle.block6.sep2", "pointwise", (1, 4), "mean", "bf16"),  # the bf16 copy (matrix products)
    ],
)
def test_objective_rises_past_data_examples(bundled, layer, part, channels, objective, precision):
    """The bundled model: the image ends above its start and above 16 generated images."""
    model, card = bundled
    req = request(layer=layer, part=part, objective=objective, steps=64, lr=0.1, size=96, channels=channels, precision=precision)
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


def test_a_channel_does_not_depend_on_its_batch_mates(model, bundled):
    """Alone or with others, a channel gets the same image up to rounding. Long runs on the
    bundled model; on the small random model only 2 steps: its objective is near zero, and
    Adam, which divides each gradient component by its size, amplifies the rounding of
    near-zero components (batched kernels round differently) over longer runs."""
    alone = visualise(model, request(channels=(3,), steps=2))
    batch = visualise(model, request(channels=(0, 3, 5), steps=2))
    assert [c.channel for c in batch.images] == [0, 3, 5]
    assert np.abs(alone.image.astype(int) - batch.images[1].image.astype(int)).max() <= 2
    net, card = bundled
    alone = visualise(net, request(channels=(3,), steps=32, size=96), card.preprocess)
    batch = visualise(net, request(channels=(0, 3, 5), steps=32, size=96), card.preprocess)
    assert np.abs(alone.image.astype(int) - batch.images[1].image.astype(int)).max() <= 2


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
    assert visualise(model, request(steps=2, precision="bf16")).precision == "bf16"
    assert visualise(model, request(steps=2, precision="auto")).precision in ("fp32", "bf16")


def test_auto_precision_is_the_faster_one_timed_once(model, monkeypatch):
    """``auto``: fp32 without native bf16 (nothing timed); with it, the faster of the two on the
    first request of a kind (layer, part, size, channels), remembered for the next ones."""
    timed = []

    def faster(steps, device=None):
        timed.append(sorted(steps))
        return winner

    monkeypatch.setattr(featurevis, "_faster", faster)
    monkeypatch.setattr(featurevis, "native_bf16", lambda device: False)
    assert visualise(model, request(steps=2, precision="auto")).precision == "fp32" and timed == []
    monkeypatch.setattr(featurevis, "native_bf16", lambda device: True)
    for winner, size in (("fp32", 73), ("bf16", 74)):
        assert visualise(model, request(steps=2, size=size, precision="auto")).precision == winner
        assert timed[-1] == ["bf16", "fp32"]
        count = len(timed)
        assert visualise(model, request(steps=3, size=size, precision="auto", seed=1)).precision == winner
        assert len(timed) == count  # remembered


def test_faster_picks_the_quicker_step_after_a_warm_up():
    now, calls = [0.0], []

    def step(name, seconds):
        def run():
            calls.append(name)
            now[0] += seconds
        return run

    steps = {"fp32": step("fp32", 2.0), "bf16": step("bf16", 1.0)}
    assert featurevis._faster(steps, clock=lambda: now[0]) == "bf16"
    assert calls == ["fp32", "bf16"] * 3
    steps = {"fp32": step("fp32", 1.0), "bf16": step("bf16", 3.0)}
    assert featurevis._faster(steps, clock=lambda: now[0]) == "fp32"


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


def test_the_visualisation_nets_share_a_frozen_copy_and_leave_the_model_alone(model):
    plain, redirected = visualisation_nets(model, LAYER)
    again, _ = visualisation_nets(model, LAYER)

    def rest(net: torch.nn.Module) -> list[torch.Tensor]:
        return [p for n, p in net.named_parameters() if ".block3.sep1." not in n]

    assert all(a is b for a, b in zip(rest(plain), rest(redirected)))  # the twin shares the copy
    assert all(a is b for a, b in zip(rest(plain), rest(again)))  # cached
    assert again is plain  # the layer spliced in once per (layer, dtype), not per request
    assert not any(a is b for a, b in zip(rest(plain), model.parameters()))
    assert not any(p.requires_grad for p in plain.parameters())  # input gradients only
    assert sum(type(m) is torch.nn.ReLU for m in redirected.modules()) == 0
    assert sum(type(m) is torch.nn.ReLU for m in plain.modules()) > 0
    assert sum(type(m) is torch.nn.ReLU for m in model.modules()) > 0
    assert all(p.requires_grad for p in model.parameters())


def test_the_copy_is_built_again_when_the_weights_change():
    torch.manual_seed(1)
    net = Xception(SMALL).eval()
    x = torch.rand(1, 3, 72, 72)

    def objective() -> float:
        plain, _ = visualisation_nets(net, "middle.block5.sep1")
        with torch.no_grad(), capture(plain, ["middle.block5.sep1"], ["pointwise"], stop_after=True) as kept:
            run_until_captured(plain, x)
        return kept["middle.block5.sep1"]["pointwise"][0, 2].mean().item()

    before = objective()
    with torch.no_grad():
        net.entry["block1"].bn1.weight.mul_(3.0)
    with torch.no_grad(), capture(net, ["middle.block5.sep1"], ["pointwise"]) as kept:
        net.forward_features(x)
    assert objective() != pytest.approx(before, rel=1e-3)
    assert objective() == pytest.approx(kept["middle.block5.sep1"]["pointwise"][0, 2].mean().item(), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("layer", ["entry.block2.sep1", "entry.block4.sep2", "middle.block6.sep2", "exit.block9.sep2"])
@pytest.mark.parametrize("part", ["depthwise", "pointwise"])
def test_the_folded_copy_gives_the_models_objective(bundled, layer, part):
    """BatchNorm folded everywhere before the layer; the layer itself keeps its unfolded weights,
    so its parts are read before its BatchNorm, as on the model (atlas units)."""
    net, _ = bundled
    images, _, _ = generate(4, seed=3, size=96)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), capture(net, [layer], [part]) as kept:
        net.forward_features(x)
    expected = kept[layer][part]
    for folded in visualisation_nets(net, layer):
        with torch.no_grad(), capture(folded, [layer], [part], stop_after=True) as got:
            run_until_captured(folded, x)
        torch.testing.assert_close(got[layer][part], expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_redirected_relu_gradient():
    """Batch element 0 has a live ReLU (true gradient); element 1 is dead on its input, so the
    gradient passes where it raises the input (d loss < 0) and is cut where it would lower it."""
    x = torch.tensor([[[[1.0, -1.0], [2.0, -3.0]]], [[[-1.0, -2.0], [0.0, -4.0]]]]).requires_grad_(True)
    y = RedirectedReLU()(x)
    assert torch.equal(y, x.clamp(min=0))
    grad = torch.tensor([[[[-1.0, -2.0], [3.0, 4.0]]], [[[-1.0, 2.0], [-3.0, 4.0]]]])
    (dx,) = torch.autograd.grad(y, x, grad)
    assert torch.equal(dx, torch.tensor([[[[-1.0, 0.0], [3.0, 0.0]]], [[[-1.0, 0.0], [-3.0, 0.0]]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_as_a_matrix_product_equals_the_convolution(dtype):
    """The bf16 copy's 1x1 convolutions: a matrix product over channels_last maps of at most
    MATMUL_ROWS pixels (batch included), the convolution on larger maps; the same values."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 40, 1).to(dtype, memory_format=torch.channels_last)
    layer = Pointwise(conv)
    for shape in [(1, 24, 8, 8), (2, 24, 16, 16), (1, 24, 31, 31)]:
        x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = layer(x)
        expected = conv(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, expected)
        (g,) = torch.autograd.grad(y.float().square().sum(), [x])
        (g_expected,) = torch.autograd.grad(expected.float().square().sum(), [x])
        torch.testing.assert_close(g, g_expected)
    assert shape[0] * shape[2] * shape[3] > MATMUL_ROWS >= 2 * 16 * 16


def test_the_bf16_copy_runs_its_1x1_convolutions_through_pointwise(model):
    plain, redirected = visualisation_nets(model, LAYER, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in plain.parameters())
    for net in (plain, redirected):
        pointwise = [m for m in net.modules() if type(m) is Pointwise]
        assert len(pointwise) == len(model.separable_layers()) and all(m.weight.shape[2:] == (1, 1) for m in pointwise)
        assert not any(type(m) is torch.nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) for m in net.modules())
