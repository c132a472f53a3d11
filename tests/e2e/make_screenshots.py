"""Screenshots of every page for the README: ``docs/screenshots/<page>.png`` (each < 300 KB; the
channel atlas twice: ``atlas-pointwise.png`` and ``atlas-depthwise.png``).

    python tests/e2e/make_screenshots.py [--out docs/screenshots]

Starts ``run_up`` (the bundled model when its weights exist, else the tiny test model),
drives Debian's Chromium with Playwright, then trims and palette-compresses each shot.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2ehelpers import (  # noqa: E402
    BUNDLED_WEIGHTS,
    REPO_ROOT,
    choose_generated_sample,
    drawn_tiles,
    launch_browser,
    open_atlas_from_explorer,
    open_page,
    start_up,
    upload_and_predict,
    wait_for_atlas,
    wait_until_idle,
)
from uihelpers import photo_png  # noqa: E402

MAX_BYTES = 300_000
GENERATED_CLASS = "blue-yellow vertical stripes"
WIDTH = 1400


def save_compact(png: bytes, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Trim the empty bottom, reduce to a 256-colour palette (smaller widths if still too big)."""
    from PIL import Image, ImageChops

    image = Image.open(io.BytesIO(png)).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    if box:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
    for scale in (1.0, 0.85, 0.7, 0.6, 0.5):
        shot = image if scale == 1.0 else image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        data = io.BytesIO()
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(data, format="PNG", optimize=True)
        if data.tell() <= max_bytes:
            path.write_bytes(data.getvalue())
            return data.tell()
    raise RuntimeError(f"{path.name}: cannot get it under {max_bytes} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "chelsea.png"
        photo.write_bytes(photo_png(1, 451))
        demo = start_up(Path(tmp) / "home")
        try:
            with sync_playwright() as playwright:
                browser = launch_browser(playwright)
                page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
                page.goto(demo.ui_url)
                shots: dict[str, bytes] = {}

                if BUNDLED_WEIGHTS.exists():  # the bundled model knows the generated classes: show one
                    choose_generated_sample(page, GENERATED_CLASS)
                else:
                    upload_and_predict(page, photo)
                wait_until_idle(page)
                shots["predict"] = page.screenshot()

                open_page(page, "Architecture")
                page.set_viewport_size({"width": WIDTH, "height": 1900})
                wait_until_idle(page)
                page.wait_for_timeout(1500)
                shots["architecture"] = page.screenshot()

                open_page(page, "Layer explorer")
                page.set_viewport_size({"width": WIDTH, "height": 2100})
                drawn_tiles(page, "Pointwise 1×1 · cross-channel", 16)
                wait_until_idle(page)
                page.wait_for_timeout(1500)
                shots["layer_explorer"] = page.screenshot()

                # the channel atlas, reached from a pointwise tile; then its depthwise partner chosen
                page.set_viewport_size({"width": WIDTH, "height": 1950})
                open_atlas_from_explorer(page, "Pointwise 1×1 · cross-channel")
                page.wait_for_timeout(1500)
                shots["atlas-pointwise"] = page.screenshot()
                page.get_by_role("button", name="Choose depthwise").click()
                page.wait_for_function("() => new URL(location.href).searchParams.get('part') === 'depthwise'", timeout=60_000)
                wait_for_atlas(page)
                page.wait_for_timeout(1500)
                shots["atlas-depthwise"] = page.screenshot()

                open_page(page, "Attributions")
                page.set_viewport_size({"width": WIDTH, "height": 1720})
                page.get_by_role("button", name="Compute attributions").click()
                page.wait_for_selector("text=ms attribution", timeout=300_000)
                wait_until_idle(page, 300_000)
                page.wait_for_timeout(1500)
                shots["attributions"] = page.screenshot()
                browser.close()
        finally:
            demo.stop()
    for name, png in shots.items():
        size = save_compact(png, args.out / f"{name}.png")
        print(f"{args.out / f'{name}.png'}: {size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
