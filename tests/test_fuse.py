"""BatchNorm folding (xception_core.fuse): same logits, no BatchNorm left, original untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support import SMALL, calibrate_batchnorm, photo_batch
from torch import nn

from xception_core.fuse import fuse_for_inference, is_fused
from xception_core.model import Xception, XceptionConfig


def _calibrated(config: XceptionConfig, photos, size: int) -> tuple[Xception, torch.Tensor]:
    torch.manual_seed(0)
    model = Xception(config)
    batch = photo_batch(photos, size)
    calibrate_batchnorm(model, batch)
    # Non-trivial affine parameters too (the init leaves gamma=1, beta=0).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), batch


def _check_equivalent(model: Xception, batch: torch.Tensor) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    with torch.inference_mode():
        expected = model(batch)
        actual = fused(batch.contiguous(memory_format=torch.channels_last))
    # The comparison only means something if the logits depend on the input.
    assert expected.std(dim=0).max() > 1e-3
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert torch.equal(actual.argmax(1), expected.argmax(1))
    # The original is untouched: same weights, still has its BatchNorms.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not is_fused(model)


@pytest.mark.parametrize(
    "config",
    [
        SMALL,
        dataclasses.replace(SMALL, intermediate_activation="relu"),
        dataclasses.replace(SMALL, intermediate_activation="elu", residual=False),
    ],
    ids=["small", "small-relu", "small-elu-noresidual"],
)
def test_fused_logits_match_small(config, photos):
    model, batch = _calibrated(config, photos, 96)
    _check_equivalent(model, batch)


@pytest.mark.slow
def test_fused_logits_match_paper_size(photos):
    model, batch = _calibrated(XceptionConfig(), photos, 299)
    _check_equivalent(model, batch)


def test_fused_model_structure(photos):
    model, _ = _calibrated(SMALL, photos, 96)
    model.train()  # the original's mode is kept
    fused = fuse_for_inference(model)
    assert model.training and not fused.training
    assert is_fused(fused)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    with_bias = {n for n, m in fused.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None}
    # Stem convs, every pointwise and every skip got a bias; depthwise convs did not.
    assert with_bias == {
        n for n, m in fused.named_modules()
        if isinstance(m, nn.Conv2d) and (n.endswith(("pointwise", "skip")) or ".block1.conv" in n)
    }
    assert not any(n.endswith("depthwise") for n in with_bias)
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs if m.weight.dim() == 4)
    assert not any(p.requires_grad for p in fused.parameters())
    # Layer names are kept.
    assert list(fused.separable_layers()) == list(model.separable_layers())


def test_fuse_rejects_other_models():
    with pytest.raises(TypeError):
        fuse_for_inference(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))


@pytest.mark.parametrize("fuse", [True, False])
def test_api_predicts_with_the_fused_model(photos, fuse):
    """``fuse_batchnorm``: the micro-batched predictions use the folded copy (same logits);
    captures and attributions keep the original model."""
    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings
    from xception_core.transform import PreprocessConfig

    model, batch = _calibrated(SMALL, photos, 96)
    names = [f"class {i}" for i in range(SMALL.num_classes)]
    registry = ModelRegistry.from_models([InMemoryModel("tiny", model, names, PreprocessConfig(input_size=96))], device="cpu")
    app = create_app(Settings(fuse_batchnorm=fuse, log_json=False, access_log=False), registry=registry)
    entry = app.state.registry.get("tiny")
    assert entry.model is model and entry.fused is fuse
    assert (entry.predict_model is not entry.model) is fuse
    assert is_fused(entry.predict_model) is fuse
    assert any(isinstance(m, nn.BatchNorm2d) for m in entry.model.modules())
    out = app.state.features.predictions.run_batch(entry, list(batch))
    with torch.inference_mode():
        expected = model(batch)
    actual = torch.stack([logits for logits, _ in out])
    assert [p for _, p in out] == ["fp32"] * len(batch)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_registry_choice_wins_over_the_setting(photos):
    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings
    from xception_core.engine import EngineOptions
    from xception_core.transform import PreprocessConfig

    model, _ = _calibrated(SMALL, photos, 96)
    names = [f"class {i}" for i in range(SMALL.num_classes)]
    registry = ModelRegistry.from_models(
        [InMemoryModel("tiny", model, names, PreprocessConfig(input_size=96))], device="cpu", engine=EngineOptions(fuse_batchnorm=False)
    )
    app = create_app(Settings(fuse_batchnorm=True, log_json=False, access_log=False), registry=registry)
    assert app.state.registry.get("tiny").predict_model is model


INPUT_METHODS = {
    "integrated_gradients": {"n_steps": 8, "internal_batch_size": 8},
    "saliency": {},
    "smoothgrad": {"nt_samples": 4},
    "gradient_shap": {"n_samples": 4},
    "deeplift": {},
    "guided_backprop": {},
    "input_x_gradient": {},
    "occlusion": {"window": 32, "stride": 32},
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(INPUT_METHODS))
def test_input_attributions_of_the_fused_model_equal_the_original(photos, method):
    """What lets the API attribute to the input with a folded replica: the same function of
    the image gives the same attributions (DeepLift and guided backprop too: a BatchNorm is
    affine, so their rules pass through it as its gradient does)."""
    from xception_core.attributions import Attributor

    model, batch = _calibrated(SMALL, photos, 96)
    x = batch[2:3]
    original = Attributor(model).attribute(x, method, target=1, auc_steps=0, **INPUT_METHODS[method])
    fused = Attributor(fuse_for_inference(model)).attribute(x, method, target=1, auc_steps=0, **INPUT_METHODS[method])
    scale = float(original.attribution.abs().max())
    assert scale > 0
    torch.testing.assert_close(fused.attribution, original.attribution, atol=1e-4 * scale, rtol=0)
    assert fused.probability == pytest.approx(original.probability, rel=1e-4)
