"""The UI talks HTTP only: no module of ``ui`` (pages included) imports PyTorch or ``xception_core``
-- sample images and the paper's spectrum come from the API -- so the UI image needs neither."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from uihelpers import REPO_ROOT

from ui.client import ApiClient

# Runs in a fresh interpreter: imports every module of the package, then runs every page of the app
# (AppTest executes the page scripts in this process) against an API that is not there.
_PROBE = r"""
import json, pkgutil, importlib, sys
from pathlib import Path
import ui
scripts = {"ui.app"} | {f"ui.views.{m.name}" for m in pkgutil.iter_modules([str(Path(ui.__file__).parent / "views")])}
modules = [m.name for m in pkgutil.walk_packages(ui.__path__, "ui.") if m.name not in scripts]
for name in modules:
    importlib.import_module(name)
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(str(Path(ui.__file__).parent / "app.py"), default_timeout=60).run()
pages = []
for page in sorted(scripts - {"ui.app"}):
    at.switch_page("views/" + page.rsplit(".", 1)[1] + ".py").run()
    pages.append([page, [str(t.value) for t in at.title], [str(e.value) for e in at.exception]])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "xception_core", "torchvision", "captum"})
print(json.dumps({"modules": modules, "pages": pages, "heavy": heavy}))
"""


def test_no_ui_module_or_page_imports_torch_or_the_core():
    env = {"XCEPTION_UI_API_URL": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin", "HOME": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"ui.client", "ui.session", "ui.widgets", "ui.config"} <= set(report["modules"])
    titles = {page: title for page, title, _ in report["pages"]}
    assert titles == {"ui.views.predict": ["Predict"], "ui.views.architecture": ["Architecture"],
                      "ui.views.layer_explorer": ["Layer explorer"], "ui.views.attributions": ["Attributions"],
                      "ui.views.atlas": ["Channel atlas"]}, report["pages"]
    assert all(not errors for _, _, errors in report["pages"]), report["pages"]
    assert report["heavy"] == [], f"the UI imported {report['heavy']}"


def _client(handler) -> ApiClient:
    return ApiClient("http://api.test", transport=httpx.MockTransport(handler))


def test_client_asks_the_api_for_samples_and_the_spectrum():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.url.params)))
        if request.url.path == "/v1/samples/generated-03":
            return httpx.Response(200, content=b"\x89PNG...", headers={"content-type": "image/png"})
        if request.url.path == "/v1/samples":
            return httpx.Response(200, json={"samples": [{"id": "chelsea"}]})
        return httpx.Response(200, json={"points": []})

    assert _client(handler).sample("generated-03", variant=7) == b"\x89PNG..."
    assert _client(handler).samples() == [{"id": "chelsea"}]
    assert _client(handler).spectrum("m", "middle.block5.sep1", points=2) == {"points": []}
    assert seen == [("/v1/samples/generated-03", {"variant": "7"}), ("/v1/samples", {}),
                    ("/v1/models/m/layers/middle.block5.sep1/spectrum", {"points": "2"})]
