"""Captum's module-rule methods need every nonlinearity to be its own module, used once."""

import copy
import warnings

import pytest
import torch
from captum.attr import DeepLift, GuidedBackprop, IntegratedGradients

from support import calibrate_batchnorm, photo_batch
from xception_core.model import Xception


@pytest.fixture(scope="module")
def model(small_config, photos):
    torch.manual_seed(0)
    m = Xception(small_config)
    calibrate_batchnorm(m, photo_batch(photos, 96))
    return m


@pytest.mark.parametrize("method", [IntegratedGradients, DeepLift, GuidedBackprop])
def test_captum_methods_run_without_reuse_errors_or_warnings(model, photos, method):
    x = photo_batch(photos[:2], 96).requires_grad_()
    kwargs = {"n_steps": 8} if method is IntegratedGradients else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # DeepLift and GuidedBackprop always announce their temporary hooks;
        # any other warning (module reuse, in-place ops) is an error.
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attribution = method(model).attribute(x, target=1, **kwargs)
    assert attribution.shape == x.shape
    assert torch.isfinite(attribution).all() and attribution.abs().sum() > 0


def test_deeplift_completeness_holds_for_every_relu(model, photos):
    """DeepLift's attributions sum to f(x) - f(baseline) only if its rules saw every ReLU.

    Captum's max-pool rule routes values with ``max_unpool`` and so drops part of
    them when windows overlap (captum#1276 and its follow-ups), as Xception's
    3x3/2 pools do; the check therefore swaps them for 2x2/2 pools, leaving
    every ReLU, BatchNorm, separable convolution and residual in place.
    """
    probe = copy.deepcopy(model)
    for _, block in probe.blocks():
        if getattr(block, "pool", None) is not None:
            block.pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
    x = photo_batch(photos[:1], 96)
    baseline = torch.zeros_like(x)
    attribution, delta = DeepLift(probe).attribute(x, baseline, target=2, return_convergence_delta=True)
    with torch.no_grad():
        gap = probe(x)[0, 2] - probe(baseline)[0, 2]
    assert abs(gap.item()) > 1e-2
    assert abs(delta.item()) < 1e-4 * max(1.0, abs(gap.item()))
    torch.testing.assert_close(attribution.sum(), gap, atol=1e-4, rtol=1e-4)
