"""The reduced-precision net of the input attributions: float32 first blocks, bf16 rest."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from support import NATIVE_BF16, photo_batch
from xception_core.attributions import Attributor, AttributorOptions, fast
from xception_core.attributions.fast import CHECK_IG_IMAGES, CHECK_IG_STEPS, PrecisionCheck, choose_attribution_precision
from xception_core.attributions.reduced import FLOAT32_FLOWS, ReducedNet, reduced_net
from xception_core.frozen import Pointwise
from xception_core.fuse import fuse_for_inference
from xception_core.model import FLOWS

SIZE = 72  # photo_model's
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def x(photos):
    return photo_batch(photos[1:2], SIZE).contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def model(photo_model):
    return photo_model


def test_all_blocks_in_float32_is_the_folded_model(model, x):
    """Every block and the head, in order: with no block reduced it is the folded model itself."""
    folded = fuse_for_inference(model)
    net = ReducedNet(folded, float32_flows=FLOWS, dtype=torch.float32)
    assert len(net.float32) == len(list(folded.blocks()))
    with torch.no_grad():
        torch.testing.assert_close(net(x), folded(x), rtol=0, atol=0)
        torch.testing.assert_close(ReducedNet(folded, (), dtype=torch.float32)(x), folded(x), rtol=0, atol=0)
    for flows in [("middle",), ("entry", "exit"), ("entry", "flow")]:
        with pytest.raises(ValueError, match="float32_flows must be the first of"):
            ReducedNet(folded, float32_flows=flows)


def test_the_first_blocks_stay_float32_and_shared_the_rest_is_a_frozen_bf16_copy(model, x):
    folded = fuse_for_inference(model)
    net = ReducedNet(folded)
    entry = [b for name, b in folded.blocks() if name.startswith("entry.")]
    assert FLOAT32_FLOWS == ("entry",) and len(net.float32) == len(entry) == 4
    assert all(a is b for a, b in zip(net.float32, entry))  # a served replica's own modules
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in net.reduced.parameters())
    assert not any(p.data_ptr() == q.data_ptr() for p in net.reduced.parameters() for q in folded.parameters())
    assert any(type(m) is Pointwise for m in net.reduced.modules())
    seen = []
    handle = net.reduced.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    xg = x.clone().requires_grad_()
    out = net(xg)
    handle.remove()
    with torch.no_grad():
        expected = x
        for block in entry:
            expected = block(expected)
    assert torch.equal(seen[0], expected.to(torch.bfloat16))  # float32 up to the split, exactly
    assert out.dtype == torch.float32
    with torch.no_grad():
        reference = folded(x)
    assert (out - reference).abs().max() < 0.05 * reference.abs().max()  # bf16 rounding, not another function
    (grad,) = torch.autograd.grad(out[0, 3], xg)
    assert grad.dtype == torch.float32 and grad.abs().sum() > 0


def test_an_unfolded_model_is_folded_first_and_left_alone(model, x):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = ReducedNet(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(a is b for a, b in zip(net.float32, (b for _, b in model.blocks())))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_reduced_net_is_cached_until_the_weights_change(model):
    folded = fuse_for_inference(model)
    first = reduced_net(folded)
    assert reduced_net(folded) is first
    with torch.no_grad():
        folded.fc.bias.add_(1.0)
    rebuilt = reduced_net(folded)
    assert rebuilt is not first
    torch.testing.assert_close(rebuilt.reduced[-1].bias.float(), folded.fc.bias, atol=0.02, rtol=0.01)


def test_bf16_input_methods_run_on_the_reduced_net(model, x):
    """The Attributor's bf16 integrated gradients are Captum's on the reduced net, with no
    autocast around them; its float32 ones Captum's on the model."""
    folded = fuse_for_inference(model)
    r = Attributor(folded, AttributorOptions(precision="bf16")).attribute(x, "integrated_gradients", target=3, n_steps=4, auc_steps=0)
    with torch.enable_grad():
        expected = IntegratedGradients(reduced_net(folded)).attribute(x.clone().requires_grad_(), baselines=torch.zeros_like(x), target=3, n_steps=4, internal_batch_size=16)
    assert r.precision == "bf16"
    torch.testing.assert_close(r.attribution, expected[0], rtol=0, atol=0)
    fp32 = Attributor(folded).attribute(x, "integrated_gradients", target=3, n_steps=4, auc_steps=0)
    assert not torch.equal(fp32.attribution, r.attribution)


@pytest.mark.parametrize("method", ["layer_gradcam", "guided_gradcam"])
def test_bf16_layer_methods_keep_autocast_on_the_model(model, x, method):
    """Layer methods need the unfolded model's parts (Guided Grad-CAM too, whose map is at the
    input): bf16 there is autocast on the model itself."""
    layer = list(model.separable_layers())[-1]
    r = Attributor(model, AttributorOptions(precision="bf16")).attribute(x, method, target=3, layer=layer, part="pointwise", auc_steps=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = Attributor(model).attribute(x, method, target=3, layer=layer, part="pointwise", auc_steps=0)
    torch.testing.assert_close(r.attribution, again.attribution, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_before_forward_runs_ahead_of_every_forward_and_can_stop_the_method(model, x, precision):
    folded = fuse_for_inference(model)
    calls: list[int] = []
    options = AttributorOptions(precision=precision, before_forward=lambda: calls.append(1))
    Attributor(folded, options).attribute(x, "integrated_gradients", target=3, n_steps=6, internal_batch_size=2, auc_steps=0)
    assert len(calls) >= 3  # three batches of two path points (and the convergence delta's forward)

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    with pytest.raises(Stop):
        Attributor(folded, AttributorOptions(precision=precision, before_forward=stop)).attribute(x, "saliency", target=3, auc_steps=0)
    # a wrapper per call: nothing is left on the model or its reduced net for other callers
    for m in (*folded.modules(), *reduced_net(folded).modules()):
        assert not m._forward_pre_hooks and not m._forward_hooks
    with torch.enable_grad():
        plain = Saliency(folded).attribute(x.clone().requires_grad_(), target=3)
    assert plain.abs().sum() > 0


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU computes bfloat16 by emulation")
def test_the_check_runs_integrated_gradients_briefly_on_folded_copies(model, monkeypatch):
    """Integrated Gradients is judged with CHECK_IG_STEPS points on CHECK_IG_IMAGES images, the
    others on every image; the input methods on a folded copy, fp32 against the reduced net, the
    layer method on the model."""
    seen = []
    original = Attributor.attribute

    def spy(self, x, method, **kwargs):
        seen.append((method, self.options.precision, getattr(self.model, "is_fused", False), kwargs.get("n_steps")))
        return original(self, x, method, **kwargs)

    monkeypatch.setattr(Attributor, "attribute", spy)
    choice = choose_attribution_precision(model, PrecisionCheck(images=2, size=SIZE, threshold=0.5))
    assert ("integrated_gradients", "fp32", True, CHECK_IG_STEPS) in seen and ("integrated_gradients", "bf16", True, CHECK_IG_STEPS) in seen
    assert ("saliency", "bf16", True, None) in seen and ("layer_gradcam", "bf16", False, None) in seen
    assert [m for m, *_ in seen].count("integrated_gradients") == 2 * CHECK_IG_IMAGES == 2
    assert [m for m, *_ in seen].count("saliency") == [m for m, *_ in seen].count("layer_gradcam") == 4
    assert CHECK_IG_STEPS == 8
    assert choice.integrated == "bf16" and 0.5 <= choice.agreement["integrated_gradients"] <= 1
    assert fast.FAMILIES["integrated"][0] == "integrated_gradients"
