"""Our model against timm's legacy_xception, the reference implementation.

Every timm model here has random BatchNorm weights and biases and running
statistics calibrated on real photographs (``calibrate_batchnorm(..., seed=)``):
with timm's defaults every BatchNorm is the same function, and a conversion
that mixed up two of them would give the same logits.
"""

import dataclasses
import importlib
import re

import pytest
import timm
import torch
from torch import nn

from support import calibrate_batchnorm, photo_batch
from xception_core.convert import BN_KEYS, StateDictMismatch, check_shapes, infer_timm_config, ours_to_timm, timm_to_ours
from xception_core.model import Xception, XceptionConfig

SMALL_INPUT = 80  # the paper model at 80 px: the whole comparison takes about a second
TOLERANCE = 1e-4


def _timm_legacy_xception(photos, size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    reference = timm.create_model("legacy_xception", pretrained=False)
    calibrate_batchnorm(reference, photo_batch(photos, size), seed=seed)
    return reference


@pytest.fixture(scope="module")
def timm_small_input(photos):
    return _timm_legacy_xception(photos, SMALL_INPUT, seed=0)


@pytest.fixture(scope="module")
def calibrated_timm(photos):
    return _timm_legacy_xception(photos, 299, seed=1)


def _ours(reference: nn.Module, config: XceptionConfig | None = None) -> Xception:
    config = config or infer_timm_config(reference.state_dict())
    ours = Xception(config).eval()
    ours.load_state_dict(timm_to_ours(reference.state_dict(), config))
    return ours


def _assert_same_logits(ours: nn.Module, reference: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        expected = reference(batch)
        actual = ours(batch)
    # The comparison only means something if the logits depend on the input.
    assert (expected[0] - expected[1]).abs().max() > 1000 * TOLERANCE
    assert (actual - expected).abs().max().item() <= TOLERANCE
    return expected


def _swap_batchnorms(state: dict[str, torch.Tensor], a: str, b: str) -> dict[str, torch.Tensor]:
    swapped = dict(state)
    for key in BN_KEYS:
        swapped[f"{a}.{key}"], swapped[f"{b}.{key}"] = state[f"{b}.{key}"], state[f"{a}.{key}"]
    return swapped


def test_logits_match_timm_at_a_small_input(timm_small_input, photos):
    ours = _ours(timm_small_input)
    batch = photo_batch(photos, SMALL_INPUT)
    expected = _assert_same_logits(ours, timm_small_input, batch)
    # and the comparison sees a conversion that swaps two BatchNorms of one middle block
    state = _swap_batchnorms(ours.state_dict(), "middle.block9.bn1", "middle.block9.bn2")
    ours.load_state_dict(state)
    with torch.no_grad():
        assert (ours(batch) - expected).abs().max() > 100 * TOLERANCE


def _narrow_timm(num_classes: int, stem: tuple, entry: tuple, middle: int, exit_: tuple) -> nn.Module:
    """timm's own legacy_xception classes at narrow widths.

    timm builds only the paper widths, so its modules are replaced by narrower
    instances of its own ``Block`` and ``SeparableConv2d``; its forward (8 middle
    blocks, written out) runs unchanged.
    """
    tx = importlib.import_module("timm.models.xception")
    with torch.device("meta"):  # the paper-sized modules are thrown away
        model = tx.Xception(num_classes=num_classes)
    model.conv1, model.bn1 = nn.Conv2d(3, stem[0], 3, 2, 0, bias=False), nn.BatchNorm2d(stem[0])
    model.conv2, model.bn2 = nn.Conv2d(stem[0], stem[1], 3, bias=False), nn.BatchNorm2d(stem[1])
    model.block1 = tx.Block(stem[1], entry[0], 2, 2, start_with_relu=False)
    model.block2 = tx.Block(entry[0], entry[1], 2, 2)
    model.block3 = tx.Block(entry[1], entry[2], 2, 2)
    for i in range(4, 12):
        setattr(model, f"block{i}", tx.Block(middle, middle, 3, 1))
    model.block12 = tx.Block(middle, exit_[0], 2, 2, grow_first=False)
    model.conv3, model.bn3 = tx.SeparableConv2d(exit_[0], exit_[1], 3, 1, 1), nn.BatchNorm2d(exit_[1])
    model.conv4, model.bn4 = tx.SeparableConv2d(exit_[1], exit_[2], 3, 1, 1), nn.BatchNorm2d(exit_[2])
    model.fc = nn.Linear(exit_[2], num_classes)
    assert not any(t.is_meta for t in model.state_dict().values())
    return model


def test_logits_match_timm_code_at_a_small_configuration(photos):
    """A narrow configuration through timm's own forward: config inference and renaming at other widths."""
    torch.manual_seed(0)
    reference = _narrow_timm(7, (8, 16), (16, 24, 32), 32, (40, 48, 56))
    calibrate_batchnorm(reference, photo_batch(photos, 96), seed=2)
    config = infer_timm_config(reference.state_dict())
    assert config == XceptionConfig(
        num_classes=7, stem_channels=(8, 16), entry_channels=(16, 24, 32), middle_repeats=8, exit_channels=(40, 48, 56)
    )
    ours = _ours(reference, config)
    for size in (96, 71):
        _assert_same_logits(ours, reference, photo_batch(photos, size))


@pytest.mark.slow
@pytest.mark.parametrize("size", [299, 150])
def test_logits_match_timm_on_real_photos(calibrated_timm, photos, size):
    _assert_same_logits(_ours(calibrated_timm), calibrated_timm, photo_batch(photos, size))


def test_conversion_back_gives_timms_state_dict_exactly(timm_small_input):
    state = timm_small_input.state_dict()
    config = infer_timm_config(state)
    back = ours_to_timm(timm_to_ours(state, config), config)
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("in_chans", [3, 1])
def test_small_configuration_round_trips_through_timm_layout(small_config, in_chans):
    config = dataclasses.replace(small_config, in_chans=in_chans)  # 1: not the 3 of the kernel size
    model = Xception(config)
    timm_state = ours_to_timm(model.state_dict(), config)
    assert infer_timm_config(timm_state) == config
    assert timm_to_ours(timm_state, config).keys() == model.state_dict().keys()


def test_the_config_is_read_off_timms_block_keys_only(small_config):
    """A foreign key whose name has digits where a block's number would be (``stage12.``) or a
    ``block`` prefix without one (``blocks.``) does not change the architecture read off the
    state dict (timm_to_ours refuses such keys later, naming them)."""
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    extra = {"stage12.weight": torch.zeros(1), "blocks.scale": torch.zeros(1)}
    assert infer_timm_config({**state, **extra}) == small_config


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
    assert all(int(converted[k]) == 0 for k in converted if k.endswith("num_batches_tracked"))
    Xception(small_config).load_state_dict(converted, strict=True)
    # and the other way: our state dict without them converts too (the exact inverse)
    ours = {k: v for k, v in Xception(small_config).state_dict().items() if not k.endswith("num_batches_tracked")}
    back = ours_to_timm(ours, small_config)
    assert back.keys() == state.keys()
    assert all(int(back[k]) == 0 for k in back if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("change, message", [
    ({"residual": False}, "timm's legacy_xception layout has residual connections; residual=False has no timm form"),
    ({"intermediate_activation": "relu"}, "timm's legacy_xception has no activation between depthwise and pointwise"),
    ({"segments": 8}, "timm's legacy_xception is the depthwise separable point (segments C, depthwise-first); "
                      "segments=8, depthwise-first has no timm form"),
    ({"order": "pointwise-first"}, "timm's legacy_xception is the depthwise separable point (segments C, "
                                   "depthwise-first); segments=C, pointwise-first has no timm form"),
])
def test_configurations_without_a_timm_form_are_refused(small_config, change, message):
    config = dataclasses.replace(small_config, **change)
    for convert in (timm_to_ours, ours_to_timm):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):  # the whole message
            convert({}, config)


def test_mismatch_messages_list_eight_keys_and_count_the_rest(small_config):
    """Keys in the checkpoint's order, eight of each kind, then how many more."""
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    keys = [k for k in state if not k.endswith("num_batches_tracked")]
    for n_missing, n_extra in ((10, 9), (8, 8), (1, 0), (0, 2)):
        broken = {k: v for k, v in state.items() if k not in keys[:n_missing]}
        extra = [f"extra{i}.weight" for i in range(n_extra)]
        broken.update({k: torch.zeros(1) for k in extra})
        parts = []
        if n_missing:
            more = f" (+{n_missing - 8} more)" if n_missing > 8 else ""
            parts.append("missing keys: " + ", ".join(keys[:min(n_missing, 8)]) + more)
        if n_extra:
            more = f" (+{n_extra - 8} more)" if n_extra > 8 else ""
            parts.append("unexpected keys: " + ", ".join(extra[:8]) + more)
        with pytest.raises(StateDictMismatch) as err:
            timm_to_ours(broken, small_config)
        assert str(err.value) == "; ".join(parts)


def test_check_shapes_names_every_difference(small_config):
    reference = Xception(small_config).state_dict()
    check_shapes(dict(reference), reference)  # equal: no error
    convs = [k for k, v in reference.items() if v.dim() == 4][:10]
    lines = [f"{k}: checkpoint {(1, *reference[k].shape[1:])} vs model {tuple(reference[k].shape)}" for k in convs]
    for n, more in ((10, " (+2 more)"), (9, " (+1 more)"), (8, "")):  # eight listed, then a count
        wrong = {**reference, **{k: torch.zeros(1, *reference[k].shape[1:]) for k in convs[:n]}}
        with pytest.raises(StateDictMismatch) as err:
            check_shapes(wrong, reference)
        assert str(err.value) == "shape mismatch: " + "; ".join(lines[:8]) + more
    with pytest.raises(StateDictMismatch) as err:
        check_shapes({**reference, convs[0]: torch.zeros(1, *reference[convs[0]].shape[1:])}, reference)
    assert str(err.value) == "shape mismatch: " + lines[0]
    missing = {k: v for k, v in reference.items() if k != "fc.bias"}
    with pytest.raises(StateDictMismatch, match=r"^missing keys: fc\.bias$"):
        check_shapes(missing, reference)
    with pytest.raises(StateDictMismatch, match=r"^unexpected keys: head\.extra$"):
        check_shapes({**reference, "head.extra": torch.zeros(1)}, reference)


def test_infer_timm_config_names_what_it_could_not_find(small_config):
    state = ours_to_timm(Xception(small_config).state_dict(), small_config)
    for key in ("conv1.weight", "fc.weight", "block2.skip.weight", "conv4.pointwise.weight"):
        with pytest.raises(StateDictMismatch, match=rf"^not a legacy_xception state dict \(could not find '{re.escape(key)}'\); expected keys like"):
            infer_timm_config({k: v for k, v in state.items() if k != key})
