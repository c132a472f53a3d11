"""End to end in a real browser: ``run_up`` starts the API and the app, headless Chromium (Debian's
package, driven by Playwright) uploads a photo, waits for the predictions, opens the layer explorer
and checks that depthwise and pointwise maps are drawn, then opens the view's URL (changed to another
layer) in a new session and sees that view restored. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import socket
import time
from typing import NoReturn

import httpx
import numpy as np
import pytest
from e2ehelpers import (
    ARTIFACTS,
    CHROMIUM,
    DOCS_OPERATIONS_JS,
    atlas_drawn,
    block_the_internet,
    drawn_tiles,
    launch_browser,
    open_atlas_from_explorer,
    open_page,
    start_up,
    upload_and_predict,
    wait_until_idle,
)
from uihelpers import photo_png, serve_tiny_api, tiny_model

pytestmark = pytest.mark.slow


def _port_open(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def _first_separable_layer(api_url: str) -> dict:
    model = httpx.get(f"{api_url}/readyz", timeout=10).json()["default_model"]
    return httpx.get(f"{api_url}/v1/models/{model}/layers", timeout=30).json()["separable_layers"][0]


#: what every selectbox shows (its text, or its input's value where the value sits in an input)
SELECTBOX_VALUES_JS = """() => [...document.querySelectorAll('[data-testid="stSelectbox"]')].map(box => {
  const input = box.querySelector('input');
  const value = input && input.value ? input.value : '';
  const text = [...box.querySelectorAll('[data-baseweb="select"] div')].map(d => d.textContent.trim()).find(t => t) || '';
  return (value || text).trim();
})"""


def _shared_view(url: str, api_url: str) -> dict:
    """``url`` (the app's address bar) with another layer (the model's last separable one) and 4 channels."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    model = httpx.get(f"{api_url}/readyz", timeout=10).json()["default_model"]
    layer = httpx.get(f"{api_url}/v1/models/{model}/layers", timeout=30).json()["separable_layers"][-1]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    changed = {**{k: v[-1] for k, v in query.items()}, "layer": layer["name"], "top": "4"}
    return {"url": urlunsplit(parts._replace(query=urlencode(changed))), "query": query, "layer": layer}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def browser_unavailable(reason: str) -> NoReturn:
    """Fail in CI (set ``CI``; ``.ci/run`` installs Chromium, ``.[test]`` Playwright), skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI is set, so the browser test must run: {reason}", pytrace=False)
    pytest.skip(reason)


def sync_playwright_api():
    """``playwright.sync_api``, once both Playwright and the Chromium it drives are there."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        browser_unavailable(f"Playwright is not installed ({exc}); pip install -e '.[test]' installs it (no browser download)")
    if not os.access(CHROMIUM, os.X_OK):
        browser_unavailable(
            f"no Chromium executable at {CHROMIUM}; apt-get install chromium (or set XCEPTION_E2E_CHROMIUM to one)"
        )
    return sync_api


def test_upload_predict_and_layer_maps_in_chromium(tmp_path):
    sync_api = sync_playwright_api()  # in the test, not a fixture: in CI a missing browser is a failure, not an error
    ARTIFACTS.mkdir(exist_ok=True)
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(photo_png(1, 320))
    demo = start_up(tmp_path / "home")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = launch_browser(playwright)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
                page.goto(demo.ui_url)
                upload_and_predict(page, photo)
                wait_until_idle(page)
                assert page.locator('[data-testid="stMetricLabel"]:has-text("Device")').count() == 1
                assert "%" in page.locator("[data-testid=stMain] h3").first.inner_text()  # "<top class> — 12.3%"
                # a photograph on a model that knows only generated patterns: said, with the way to ImageNet weights
                warning = page.locator('[data-testid="stAlertContentWarning"]').filter(has_text="generated patterns")
                assert warning.count() == 1 and "xception-demo weights download xception-imagenet" in warning.inner_text()
                page.screenshot(path=str(ARTIFACTS / "e2e-predict.png"))

                open_page(page, "Layer explorer")
                first = _first_separable_layer(demo.api_url)  # what the explorer opens with
                expected = {part: min(16, first[f"{side}_channels"]) for part, side in (("depthwise", "in"), ("pointwise", "out"))}
                depthwise = drawn_tiles(page, "Depthwise 3×3 · spatial", expected["depthwise"])
                pointwise = drawn_tiles(page, "Pointwise 1×1 · cross-channel", expected["pointwise"])
                wait_until_idle(page)
                page.screenshot(path=str(ARTIFACTS / "e2e-layer-explorer.png"))
                assert len(depthwise) == expected["depthwise"], depthwise
                assert len(pointwise) == expected["pointwise"], pointwise
                errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                assert not errors, errors
                # what is shown can be downloaded: the depthwise maps as a [16, H, W] array
                with page.expect_download(timeout=60_000) as download:
                    page.get_by_role("button", name="Maps (npy)").first.click()
                maps = np.load(download.value.path(), allow_pickle=False)
                assert maps.shape == (expected["depthwise"], *first["output_size"]), maps.shape
                assert download.value.suggested_filename.endswith(".npy")

                # the address bar is a link to this view: changed to another layer and 4 channels, opened
                # in a new session (another person), it shows that view of the same image
                shared = _shared_view(page.url, demo.api_url)
                assert shared["query"]["page"] == ["layer_explorer"] and len(shared["query"]["image"][0]) == 64, page.url
                other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
                other.goto(shared["url"])
                other.wait_for_selector('h1:has-text("Layer explorer")', timeout=120_000)
                layer = shared["layer"]
                expected = min(4, layer["in_channels"]), min(4, layer["out_channels"])
                depthwise = drawn_tiles(other, "Depthwise 3×3 · spatial", expected[0])
                pointwise = drawn_tiles(other, "Pointwise 1×1 · cross-channel", expected[1])
                wait_until_idle(other)
                other.screenshot(path=str(ARTIFACTS / "e2e-shared-view.png"))
                assert (len(depthwise), len(pointwise)) == expected, (depthwise, pointwise)
                short = layer["name"].split(".", 1)[-1]
                shown = other.evaluate(SELECTBOX_VALUES_JS)
                assert any(v.startswith(short + " ") for v in shown), shown
                assert "upload it again" not in other.locator("[data-testid=stMain]").inner_text()
                errors = other.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                assert not errors, errors
                # one click on a pointwise tile's link opens the channel atlas with that channel
                channel = open_atlas_from_explorer(page, "Pointwise 1×1 · cross-channel")
                headings = page.locator("[data-testid=stMain] h3").all_inner_texts()
                assert any(h.startswith(f"Pointwise 1×1 · cross-channel · #{channel}") for h in headings), headings
                assert any(h.startswith("Depthwise 3×3 · spatial · #") for h in headings), headings
                assert atlas_drawn(page) == {"visualisations": 2, "examples": 18}
                assert f"channel={channel}" in page.url and "part=pointwise" in page.url  # the view can be shared
                errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                assert not errors, errors
                page.screenshot(path=str(ARTIFACTS / "e2e-atlas.png"))
            finally:
                browser.close()
    finally:
        status = demo.stop()
        (ARTIFACTS / "e2e-up.log").write_text(demo.log())
    assert status == 0, demo.log()
    time.sleep(0.5)
    assert not _port_open(demo.ui_url) and not _port_open(demo.api_url), "a server outlived run_up"


def test_api_docs_list_every_operation_without_internet(tmp_path):
    """/docs on a machine without internet: every request that leaves the machine is aborted, and
    Swagger UI (its script and stylesheet served by the API itself) still lists every operation."""
    sync_api = sync_playwright_api()
    ARTIFACTS.mkdir(exist_ok=True)
    with serve_tiny_api(tiny_model(), tmp_path / "home") as url:
        spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
        expected = sorted(
            [method.upper(), path, f"operations-{op['tags'][0]}-{op['operationId']}"]
            for path, item in spec["paths"].items()
            for method, op in item.items()
        )
        with sync_api.sync_playwright() as playwright:
            browser = launch_browser(playwright)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                aborted = block_the_internet(page)
                page.goto(f"{url}/docs", wait_until="networkidle", timeout=60_000)
                assert not aborted, f"/docs reached out of the machine: {aborted}"
                page.wait_for_selector(".opblock", timeout=60_000)
                shown = sorted(page.evaluate(DOCS_OPERATIONS_JS))
                page.screenshot(path=str(ARTIFACTS / "e2e-docs-offline.png"))
            finally:
                browser.close()
    assert shown == expected
    assert not aborted, aborted
