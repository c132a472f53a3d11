"""The prediction engine's options: built once from the settings (``Settings.engine_options``),
handed to the registry by the app, and from there to every loaded model's predictor."""

from __future__ import annotations

from dataclasses import fields

import pytest

from api.main import create_app
from api.registry import InMemoryModel, ModelRegistry
from api.settings import Settings
from apihelpers import CLASS_NAMES, MODEL_ID, PREPROCESS, make_app, make_registry, make_settings
from xception_core.engine import EngineOptions
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures

#: Each engine option, the setting that drives it and a value other than the default.
DRIVEN = [
    ("backend", "predict_backend", "eager"),
    ("precision", "predict_precision", "bf16"),
    ("fuse_batchnorm", "fuse_batchnorm", False),
    ("margin", "mixed_precision_margin", 0.3),
    ("guard_top", "mixed_precision_guard_top", 2),
    ("mixed_precision", "predict_mixed_precision", False),
]


def test_every_option_has_its_setting():
    assert sorted(option for option, _, _ in DRIVEN) == sorted(f.name for f in fields(EngineOptions))


@pytest.mark.parametrize("option, setting, value", DRIVEN)
def test_each_setting_drives_its_option_and_no_other(option, setting, value):
    default = Settings(_env_file=None).engine_options()
    changed = Settings(_env_file=None, **{setting: value}).engine_options()
    assert getattr(changed, option) == value != getattr(default, option)
    assert {f.name for f in fields(EngineOptions) if getattr(changed, f.name) != getattr(default, f.name)} == {option}


def test_the_services_defaults_are_the_engines_but_float16_on_cuda():
    """One definition of each default: the settings take the engine's, and differ only in turning
    float16 on for CUDA (the library leaves it off, so that ``precision`` means what it says)."""
    assert Settings(_env_file=None).engine_options() == EngineOptions(mixed_precision=True)
    assert EngineOptions().mixed_precision is False


def test_every_engine_setting_reaches_the_predictor(tiny_model):
    values = {setting: value for _, setting, value in DRIVEN}
    app = make_app(tiny_model, **values)
    entry = app.state.registry.get(MODEL_ID)
    expected = make_settings(**values).engine_options()
    assert app.state.registry.engine == expected
    assert entry.predictor.options == expected
    info = entry.predictor.info()
    assert info.requested_backend == "eager" and info.requested_precision == "bf16"
    assert entry.fused is False and entry.predict_model is entry.model


def test_a_registrys_own_choices_win_and_the_app_fills_the_rest(tiny_model):
    own = EngineOptions(backend="eager", guard_top=3)
    chosen = create_app(make_settings(mixed_precision_guard_top=1), registry=make_registry(tiny_model, engine=own, max_replicas=5))
    assert chosen.state.registry.engine is own and chosen.state.registry.max_replicas == 5
    assert chosen.state.registry.get(MODEL_ID).predictor.options is own
    settings = make_settings(inference_workers=3, attribution_workers=2)
    open_ = create_app(settings, registry=make_registry(tiny_model))
    assert open_.state.registry.engine == settings.engine_options() and open_.state.registry.max_replicas == 5


def test_a_registry_without_an_app_uses_the_engines_defaults(tiny_model):
    registry = ModelRegistry.from_models([InMemoryModel(MODEL_ID, tiny_model, CLASS_NAMES, PREPROCESS)])
    assert registry.engine is None and registry.get(MODEL_ID).predictor.options == EngineOptions()
