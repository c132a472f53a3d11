"""Settings from the environment; the generated READMEs stay in step with the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import api.main
from api.settings import Settings, settings_table
from apifixtures import *  # noqa: F401,F403 -- the shared fixtures
from apihelpers import make_app

API_DIR = Path(__file__).resolve().parents[2] / "api"


def test_environment_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("XCEPTION_MAX_UPLOAD_BYTES", "5000")
    monkeypatch.setenv("XCEPTION_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("XCEPTION_API_KEY", "k")
    monkeypatch.setenv("XCEPTION_DEVICE", "CPU")
    monkeypatch.setenv("XCEPTION_HOME", str(tmp_path))
    s = Settings()
    assert s.max_upload_bytes == 5000 and s.cors_origins == ["http://a.example", "http://b.example"]
    assert s.api_key.get_secret_value() == "k" and s.device == "cpu" and s.home == tmp_path
    monkeypatch.setenv("XCEPTION_CORS_ORIGINS", '["http://c.example"]')
    monkeypatch.setenv("XCEPTION_API_KEY", "")
    s = Settings()
    assert s.cors_origins == ["http://c.example"] and s.api_key is None


@pytest.mark.parametrize("field, value", [("device", "tpu"), ("max_upload_bytes", 10), ("batch_max_size", 0), ("log_level", "LOUD")])
def test_invalid_settings_are_refused(field, value):
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_batch_limit_not_below_single_limit():
    with pytest.raises(ValidationError, match="max_batch_upload_bytes"):
        Settings(max_upload_bytes=2_000_000, max_batch_upload_bytes=1_000_000)


def test_settings_readme_lists_every_setting():
    text = (API_DIR / "README_SETTINGS.md").read_text(encoding="utf-8")
    assert settings_table() in text, "run: python -m api.settings"
    for name in Settings.model_fields:
        assert f"`XCEPTION_{name.upper()}`" in text


def test_api_readme_has_a_curl_example_for_every_endpoint(app):
    from api.examples import EXAMPLES
    from api.readme import readme_api

    text = (API_DIR / "README_API.md").read_text(encoding="utf-8")
    assert text == readme_api(), "run: python -m api.readme"
    documented = {(m, p) for m, p, _, _ in EXAMPLES}
    routes = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    assert routes == documented
    assert all(op.get("x-codeSamples") for item in app.openapi()["paths"].values() for op in item.values())


def test_main_readme_shows_every_curl_example_and_every_setting():
    from api.examples import EXAMPLES

    text = (API_DIR.parent / "README.md").read_text(encoding="utf-8")
    for method, path, _, curl in EXAMPLES:
        assert curl in text, f"README.md lacks the curl example of {method} {path}"
    assert settings_table() in text, "README.md's settings table is out of date"


@pytest.mark.parametrize("keep", [True, False])
def test_keep_freed_memory_is_applied_as_the_settings_say(monkeypatch, tiny_model, keep):
    """The process owner's decision: ``create_app`` calls ``keep_freed_memory`` only when asked."""
    calls = []
    monkeypatch.setattr(api.main, "keep_freed_memory", lambda: calls.append(1))
    make_app(tiny_model, keep_freed_memory=keep)
    assert calls == ([1] if keep else [])
