"""Helpers of the browser tests (imported as ``e2ehelpers``): ``run_up`` in a child process,
Debian's Chromium driven by Playwright, the app's pages.

No browser is downloaded: Playwright drives ``/usr/bin/chromium`` (apt package ``chromium``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "ui"))
sys.path.insert(0, str(REPO_ROOT / "tests"))  # support.py

from uihelpers import MODEL_ID, free_port, import_tiny_model  # noqa: E402

CHROMIUM = os.environ.get("XCEPTION_E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
BUNDLED_WEIGHTS = REPO_ROOT / "xception_core" / "data" / "bundled" / "xception-mini-synthetic.safetensors"
READY_LINE = "is ready: open "


@dataclass
class Demo:
    """``run_up`` running in a child process: the URL to open and its output so far."""

    process: subprocess.Popen
    ui_url: str
    api_url: str
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise
        return self.process.returncode


def demo_environment(home: Path) -> dict[str, str]:
    """The bundled model when its weights exist, else the tiny test model imported into ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XCEPTION_")}
    env.update(XCEPTION_HOME=str(home), XCEPTION_DEVICE="cpu", XCEPTION_LOG_LEVEL="WARNING", XCEPTION_ACCESS_LOG="false",
               XCEPTION_TORCH_THREADS="2", PYTHONUNBUFFERED="1")
    if not BUNDLED_WEIGHTS.exists():
        env["XCEPTION_DEFAULT_MODEL"] = import_tiny_model(home, MODEL_ID)
    return env


def start_up(home: Path, timeout: float = 300.0) -> Demo:
    """``run_up`` on two free ports of 127.0.0.1 (``python -m xception_demo up``), once it says it is ready."""
    api_port, ui_port = free_port(), free_port()
    command = [sys.executable, "-m", "xception_demo", "up", "--host", "127.0.0.1", "--api-port", str(api_port), "--ui-port", str(ui_port)]
    process = subprocess.Popen(
        command, env=demo_environment(home), cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    demo = Demo(process, f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{api_port}")
    reader = threading.Thread(target=lambda: demo.lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(READY_LINE in line for line in demo.lines):
            return demo
        if process.poll() is not None:
            raise RuntimeError(f"run_up exited with status {process.returncode}:\n{demo.log()}")
        time.sleep(0.2)
    demo.stop()
    raise TimeoutError(f"run_up was not ready after {timeout:.0f} s:\n{demo.log()}")


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def upload_and_predict(page, image: Path, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector("text=Image source", timeout=timeout_ms)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(image))
    page.wait_for_selector('[data-testid="stMetricLabel"]:has-text("Latency")', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=timeout_ms)


def choose_generated_sample(page, class_name: str, timeout_ms: int = 120_000) -> None:
    """On the Predict page: a generated image of ``class_name``, and its prediction."""
    page.wait_for_selector("text=Image source", timeout=timeout_ms)
    page.get_by_text("Generated sample", exact=True).click()
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Class").locator("input")
    box.click()
    box.fill(class_name)
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Use this image").click()
    page.wait_for_selector('[data-testid="stMain"] :text("True class")', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stMetricLabel"]:has-text("Latency")', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=timeout_ms)


def open_page(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title).click()
    page.wait_for_selector(f'h1:has-text("{title}")', timeout=60_000)


DRAWN_TILES_JS = """(heading) => {
  // the column whose heading is `heading`: its image tiles that are loaded and drawn, with captions "#<channel> · <score>"
  const columns = [...document.querySelectorAll('[data-testid="stColumn"]')]
    .filter(c => [...c.querySelectorAll('h3')].some(h => h.textContent.includes(heading)));
  const column = columns[columns.length - 1];
  if (!column) return [];
  return [...column.querySelectorAll('[data-testid="stImageContainer"]')]
    .filter(el => {
      const img = el.querySelector('img');
      const caption = el.querySelector('[data-testid="stImageCaption"]');
      return img && img.complete && img.naturalWidth > 0 && caption && /^#\\d+ · /.test(caption.textContent.trim());
    })
    .map(el => el.querySelector('[data-testid="stImageCaption"]').textContent.trim());
}"""


def drawn_tiles(page, heading: str, expected: int, timeout_s: float = 60.0) -> list[str]:
    """Captions of the loaded map tiles under ``heading``, once there are ``expected`` of them."""
    deadline = time.monotonic() + timeout_s
    tiles: list[str] = []
    while time.monotonic() < deadline:
        tiles = page.evaluate(DRAWN_TILES_JS, heading)
        if len(tiles) >= expected:
            return tiles
        page.wait_for_timeout(250)
    return tiles


def wait_until_idle(page, timeout_ms: int = 120_000) -> None:
    """Until Streamlit has no script run in progress (its status widget gone) and spinners are gone."""
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]') && !document.querySelector('[data-testid="stSpinner"]')""",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(500)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def block_the_internet(page) -> list[str]:
    """Abort every request of ``page`` that leaves this machine (as on a machine without internet);
    returns the list the aborted URLs are added to."""
    aborted: list[str] = []

    def handle(route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname not in LOCAL_HOSTS:
            aborted.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route("**/*", handle)
    return aborted


#: what Swagger UI shows: one block per operation, its element id ``operations-<tag>-<operationId>``
DOCS_OPERATIONS_JS = """() => [...document.querySelectorAll('.opblock')].map(b => [
  b.querySelector('.opblock-summary-method').textContent.trim(),
  b.querySelector('.opblock-summary-path').getAttribute('data-path'),
  b.id,
])"""


ATLAS_LINK_JS = """(heading) => {
  // the first atlas link (a page link "#<channel>") in the column whose heading is `heading`
  const columns = [...document.querySelectorAll('[data-testid="stColumn"]')]
    .filter(c => [...c.querySelectorAll('h3')].some(h => h.textContent.includes(heading)));
  const column = columns[columns.length - 1];
  const link = column && [...column.querySelectorAll('a')].find(a => /^#\\d+$/.test(a.textContent.trim()));
  return link ? link.textContent.trim() : null;
}"""


def open_atlas_from_explorer(page, heading: str, timeout_ms: int = 300_000) -> int:
    """On the Layer explorer: click the first atlas link under ``heading``; the atlas page opens with
    that channel. Returns the channel."""
    label = page.evaluate(ATLAS_LINK_JS, heading)
    if label is None:
        raise AssertionError(f"no atlas link under {heading!r}")
    column = page.locator('[data-testid="stColumn"]').filter(has=page.locator(f'h3:has-text("{heading}")')).last
    column.get_by_role("link", name=label, exact=True).first.click()
    page.wait_for_selector('h1:has-text("Channel atlas")', timeout=60_000)
    try:
        wait_for_atlas(page, timeout_ms)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "e2e-atlas-timeout.png"))
        raise
    return int(label.removeprefix("#"))


ATLAS_DRAWN_JS = """() => {
  const images = [...document.querySelectorAll('[data-testid="stImageContainer"]')]
    .filter(el => { const img = el.querySelector('img'); return img && img.complete && img.naturalWidth > 0; });
  const caption = el => (el.querySelector('[data-testid="stImageCaption"]') || {}).textContent || '';
  return {
    visualisations: images.filter(el => caption(el).trim() === 'feature visualisation').length,
    examples: images.filter(el => / · max /.test(caption(el))).length,
  };
}"""


def atlas_drawn(page) -> dict[str, int]:
    """How many feature visualisations and data-set examples the atlas page shows, loaded."""
    return page.evaluate(ATLAS_DRAWN_JS)


def wait_for_atlas(page, timeout_ms: int = 300_000) -> None:
    """Until both parts show their visualisation and their 9 examples (the first visit may build the atlas)."""
    page.wait_for_function(f"() => ({ATLAS_DRAWN_JS})().visualisations >= 2 && ({ATLAS_DRAWN_JS})().examples >= 18", timeout=timeout_ms)
    wait_until_idle(page, timeout_ms)
