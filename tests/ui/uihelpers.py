"""Helpers of the UI tests (imported as ``uihelpers``): a tiny model, a real API server.

The model is a small Xception (random weights, BatchNorm statistics calibrated on
real photographs and generated samples so that its outputs depend on the image)
with the 20 classes of the generated dataset, at a 96-px input. The API serves it
over real HTTP on 127.0.0.1 (uvicorn in a thread), injected through
:meth:`api.registry.ModelRegistry` -- the same hook the API tests use.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from support import calibrate_batchnorm
from xception_core import synthetic
from xception_core.model import Xception, XceptionConfig
from xception_core.transform import PreprocessConfig, eval_transform

MODEL_ID = "tiny-ui"
INPUT_SIZE = 96
PREPROCESS = PreprocessConfig(input_size=INPUT_SIZE)
TINY_CONFIG = XceptionConfig(
    num_classes=synthetic.NUM_CLASSES,
    stem_channels=(8, 16),
    entry_channels=(16, 24, 32),
    middle_repeats=1,
    exit_channels=(40, 48, 56),
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo_png(index: int = 1, width: int = 160) -> bytes:
    """A real photograph (chelsea the cat by default), ``width`` px wide, as PNG bytes."""
    img = Image.fromarray(photos()[index])
    img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.BICUBIC)
    return encode(img)


def tiny_model() -> Xception:
    torch.manual_seed(0)
    model = Xception(TINY_CONFIG)
    images = [Image.fromarray(p) for p in photos()]
    images += [Image.fromarray(synthetic.make_sample(i, 7, 96)[0]) for i in range(8)]
    calibrate_batchnorm(model, torch.stack([eval_transform(img.convert("RGB"), PREPROCESS) for img in images]))
    return model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_tiny_api(model: Xception, home: Path, **settings) -> Iterator[str]:
    """The real API on 127.0.0.1:<free port> (uvicorn in a thread), hosting ``model``
    as ``MODEL_ID`` (the default) beside the weights cache in ``home`` (empty: the
    bundled model and ``xception-imagenet`` are listed with their weights status).
    Yields the base URL."""
    import uvicorn

    from api.main import create_app
    from api.registry import InMemoryModel, ModelRegistry
    from api.settings import Settings

    registry = ModelRegistry(
        home=home,
        device="cpu",
        models=[InMemoryModel(MODEL_ID, model, list(synthetic.CLASS_NAMES), PREPROCESS, "tiny UI test model")],
        default_model=MODEL_ID,
        include_weights=True,
        max_replicas=2,
    )
    base = {"inference_workers": 1, "attribution_workers": 1, "access_log": False, "log_json": False, "home": home}
    base.update(settings)
    app = create_app(Settings(**base), registry=registry)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="ui-test-api", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, 120)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def wait_ready(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url + "/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text[:200]
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"the API at {url} was not ready within {timeout:.0f} s: {last}")


def import_tiny_model(home: Path, name: str = MODEL_ID) -> str:
    """Store the tiny model in the weights cache ``home`` as ``name`` (what
    ``xception-demo weights import`` does) so that a separate API process can serve it."""
    from safetensors.torch import save_file

    from xception_core.weights import CardOverrides, import_weights

    checkpoint = home / "tiny.safetensors"
    home.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tiny_model().state_dict().items()}, str(checkpoint))
    import_weights(
        checkpoint, name, format="ours", labels=list(synthetic.CLASS_NAMES), home=home,
        card=CardOverrides(config=TINY_CONFIG, preprocess=PREPROCESS, description="tiny end-to-end test model"),
    )
    return name


# AppTest: the pages, and what every page test asks of a run
PREDICT = "views/predict.py"
ARCHITECTURE = "views/architecture.py"
EXPLORER = "views/layer_explorer.py"
ATLAS = "views/atlas.py"
ATTRIBUTIONS = "views/attributions.py"


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def assert_clean(at) -> None:
    """No traceback and no error message on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, texts(at.error)


def tile_captions(at) -> list[list[str]]:
    """The caption lists of the image grids (one list per st.image call)."""
    return [list(img.captions) for img in at.image]


def with_photo(at, png: bytes):
    at.run()
    at.file_uploader(key="uploader").upload("chelsea.png", png, "image/png")
    return at.run()
