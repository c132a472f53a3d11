"""Our model against timm's legacy_xception, the reference implementation."""

import pytest
import timm
import torch

from support import calibrate_batchnorm, photo_batch
from xception_core.convert import StateDictMismatch, infer_timm_config, ours_to_timm, timm_to_ours
from xception_core.model import Xception


@pytest.fixture(scope="module")
def calibrated_timm(photos):
    torch.manual_seed(0)
    reference = timm.create_model("legacy_xception", pretrained=False)
    calibrate_batchnorm(reference, photo_batch(photos, 299))
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("size", [299, 150])
def test_logits_match_timm_on_real_photos(calibrated_timm, photos, size):
    config = infer_timm_config(calibrated_timm.state_dict())
    ours = Xception(config).eval()
    ours.load_state_dict(timm_to_ours(calibrated_timm.state_dict(), config))
    batch = photo_batch(photos, size)
    with torch.no_grad():
        expected = calibrated_timm(batch)
        actual = ours(batch)
    # The comparison only means something if the logits depend on the input.
    assert (expected[0] - expected[1]).abs().max() > 0.1  # 1000x the tolerance
    assert (actual - expected).abs().max().item() <= 1e-4


def test_conversion_back_gives_timms_state_dict_exactly(calibrated_timm):
    state = calibrated_timm.state_dict()
    config = infer_timm_config(state)
    back = ours_to_timm(timm_to_ours(state, config), config)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype
        assert torch.equal(back[key], value), key


def test_small_configuration_round_trips_through_timm_layout(small_config):
    model = Xception(small_config)
    timm_state = ours_to_timm(model.state_dict(), small_config)
    assert infer_timm_config(timm_state) == small_config
    assert timm_to_ours(timm_state, small_config).keys() == model.state_dict().keys()


def test_mismatches_name_the_keys(small_config):
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    broken = dict(state)
    del broken["block2.rep.1.conv1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(StateDictMismatch, match=r"missing keys: block2\.rep\.1\.conv1\.weight.*unexpected keys: extra\.weight"):
        timm_to_ours(broken, small_config)
    with pytest.raises(StateDictMismatch, match="not a legacy_xception"):
        infer_timm_config({"layer1.weight": torch.zeros(1)})


def test_old_checkpoints_without_num_batches_tracked_load(small_config):
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    converted = timm_to_ours(old, small_config)
    Xception(small_config).load_state_dict(converted, strict=True)
