"""Pieces every page uses: the sidebar (API status, model picker, current image), error
messages, the image guard, tile grids, download buttons, layer grouping."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image, ImageOps

from . import session, urlstate
from .client import IMAGE_GONE, ApiError, ImageRef, image_gone, problem_json

IMAGENET_ID = "xception-imagenet"
IMAGENET_COMMAND = f"xception-demo weights download {IMAGENET_ID}"
IMAGENET_FILE = "xception-43020ad28.pth"
IMAGENET_OFFLINE_COMMAND = f"{IMAGENET_COMMAND} --file {IMAGENET_FILE}"
FLOW_TITLES = {"entry": "Entry flow", "middle": "Middle flow", "exit": "Exit flow", "head": "Head"}
PREDICT_PAGE = "views/predict.py"
PREDICT_SOURCE_KEY = "_predict_source"  # the Predict page's image source (its radio starts from it)


# --------------------------------------------------------------------------- errors


def show_error(error: ApiError, where: Any = st) -> None:
    """An API error as a readable message (never a traceback); the problem details on demand."""
    if image_gone(error):
        where.warning(f"{IMAGE_GONE} (Predict page: upload it or pick a sample.)", icon=":material/cloud_off:")
        return
    where.error(error.message, icon=":material/error:")
    if error.problem:
        with where.expander("Problem details"):
            st.code(problem_json(error), language="json")


@contextmanager
def api_errors(where: Any = st) -> Iterator[None]:
    """Run a block; an :class:`ApiError` inside it is shown as a message and the block ends there."""
    try:
        yield
    except ApiError as error:
        show_error(error, where)


# --------------------------------------------------------------------------- numbers and images


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for suffix in ("", " K", " M", " G", " T"):
        if abs(n) < 1000 or suffix == " T":
            text = f"{n:,.0f}" if suffix == "" else f"{n:.3g}"
            return f"{text}{suffix}{unit}"
        n /= 1000
    return str(n)


def b64(png: str) -> bytes:
    return base64.b64decode(png)


@st.cache_data(max_entries=32, show_spinner=False)
def kernel_png(kernel: list[list[float]], cell_px: int = 16) -> bytes:
    """A small depthwise kernel as a PNG: white at 0, red positive, blue negative, symmetric scale."""
    k = np.asarray(kernel, dtype=np.float32)
    t = np.abs(k) / max(float(np.abs(k).max()), 1e-12)
    fade = (255 * (1 - t)).astype(np.uint8)
    full = np.full_like(fade, 255)
    rgb = np.where((k >= 0)[..., None], np.stack([full, fade, fade], -1), np.stack([fade, fade, full], -1))
    image = Image.fromarray(rgb.astype(np.uint8)).resize((k.shape[1] * cell_px, k.shape[0] * cell_px), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def preview_png(image_id: str, _data: bytes | None, max_side: int = 640) -> tuple[bytes, str] | None:
    """A PNG preview of the uploaded bytes and a description (format, size), or ``None`` when
    Pillow cannot read them (the API then says what is wrong) or the app has only the image's id."""
    if _data is None:
        return None
    try:
        with Image.open(io.BytesIO(_data)) as img:
            fmt, (w, h), mode = img.format or "?", img.size, img.mode
            if w * h > 80_000_000:
                return None
            img.seek(0)
            frame = img.convert("RGBA" if "A" in mode or mode == "P" else "RGB")
        frame.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        return buf.getvalue(), f"{fmt} {w}x{h} {mode}"
    except Exception:  # noqa: BLE001 - any undecodable upload: no preview
        return None


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnail(key: str, _data: bytes, size: tuple[int, int] = (240, 180)) -> bytes:
    """A centre-cropped PNG thumbnail of fixed size (a gallery of even tiles)."""
    with Image.open(io.BytesIO(_data)) as img:
        thumb = ImageOps.fit(img.convert("RGB"), size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return buf.getvalue()


def tile_grid(images: list[bytes], captions: list[str], width: int) -> None:
    if images:
        st.image(images, caption=captions, width=width, output_format="PNG")


def download(label: str, data: Callable[[], bytes] | bytes, file_name: str, mime: str, key: str) -> None:
    """A download button; ``data`` may be a callable, called only when the button is pressed."""
    st.download_button(label, data=data, file_name=file_name, mime=mime, key=key, on_click="ignore", icon=":material/download:")


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:80]


def forget_stale(key: str, options: list[Any]) -> None:
    """Drop a widget's remembered value that is no longer among its options (another model
    has other layers), so that the widget starts from its default instead of failing."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


# --------------------------------------------------------------------------- layers


def separable_by_flow(table: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The separable layers of a layer table, grouped by flow in forward order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in table["separable_layers"]:
        groups.setdefault(row["flow"], []).append(row)
    return groups


#: What each part of a separable layer is (title, meaning), by the names the API gives them.
PART_TITLES = {
    "depthwise": ("Depthwise 3×3 · spatial", "one 3×3 filter per channel: where each channel's spatial pattern occurs"),
    "grouped": ("Grouped 3×3 · per segment", "a 3×3 convolution within each of the k segments of channels: spatial, and cross-channel inside a segment"),
    "pointwise": ("Pointwise 1×1 · cross-channel", "each map a weighted sum over all channels entering the 1×1 convolution, at the same pixel"),
    "conv": ("Regular 3×3 · spatial and cross-channel", "k = 1: one 3×3 convolution over all channels at once"),
}


def part_channels(table: dict[str, Any], layer: str, part: str) -> int:
    """Channels of a separable layer's part, as the layer table's row of that convolution
    (``<layer>.<part>``) gives them."""
    name = f"{layer}.{part}"
    return next(r["out_channels"] for r in table["layers"] if r["name"] == name)


def layer_label(row: dict[str, Any]) -> str:
    h, w = row["output_size"]
    short = row["name"].split(".", 1)[-1]
    return f"{short}  ({row['in_channels']}→{row['out_channels']} ch, {h}×{w})"


# --------------------------------------------------------------------------- guards


def require_image() -> session.ImageInput:
    """The current image; without one, a way to get one, and the page stops here."""
    image = session.current_image()
    if image is not None:
        return image
    st.info("No image yet: upload one or pick a sample on the **Predict** page.", icon=":material/image:")
    with api_errors():
        photo = next((s for s in session.samples(session.api_url()) if s["kind"] == "photo"), None)
        if photo is not None and st.button(f"Use a sample photo ({photo['title']})", key="use_default_sample"):
            session.set_image(session.sample_image(session.api_url(), photo))
            st.rerun()
    st.page_link(PREDICT_PAGE, label="Go to Predict", icon=":material/arrow_forward:")
    st.stop()
    raise AssertionError("unreachable")


def model_table() -> dict[str, Any]:
    """The layer table of the current model (stops the page with a message when unavailable)."""
    model = session.current_model()
    if model is None:
        st.warning("No model: the API's model list is not available (see the sidebar).")
        st.stop()
    try:
        return session.layers(session.api_url(), model)
    except ApiError as error:
        show_error(error)
        st.stop()
        raise


def pattern_model_warning(model: str, image: session.ImageInput) -> None:
    """The model knows only generated patterns, and this image is not one of them: say so, and how
    to get a model that knows photographs."""
    what = "a photograph" if image.source == "photo" else "an image that is not one of the generated samples"
    st.warning(
        f"**{model}** was trained on generated patterns only — its classes are stripes, checkerboards, rings and dots "
        f"in four colour pairs — and this is {what}, so the answer below is the nearest pattern, not what the picture "
        f"shows. For photographs install the ImageNet weights (the paper's model): `{IMAGENET_COMMAND}` "
        f"(without internet: download `{IMAGENET_FILE}` elsewhere, then `{IMAGENET_OFFLINE_COMMAND}`), "
        f"then pick **{IMAGENET_ID}** in the sidebar.",
        icon=":material/warning:",
    )


# --------------------------------------------------------------------------- sidebar


def sidebar() -> None:
    url = session.api_url()
    with st.sidebar:
        st.markdown("### Xception Explorer")
        st.caption(
            "Depthwise (spatial) and pointwise (cross-channel) convolutions laid open — "
            "[Chollet, CVPR 2017](https://arxiv.org/abs/1610.02357)."
        )
        _model_picker(url)
        image = session.current_image()
        if image is not None:
            st.divider()
            preview = preview_png(image.image_id, image.data, 256)
            if preview is not None:
                st.image(preview[0], width=160)
            elif image.data is None:
                st.caption("Opened from a link: the image is on the server (no preview here).")
            label = f" · true class: {image.true_label}" if image.true_label else ""
            st.caption(f"**{image.name}**{label}  \n`{image.image_id[:12]}`")
        st.divider()
        _api_status(url)


def _api_status(url: str) -> None:
    try:
        ready = session.readiness(url)
        st.caption(f"API {url} · ready on {ready['device']}")
    except ApiError as error:
        if error.status == 503:
            st.caption(f"API {url} · {error.detail}")
        else:
            st.caption(f"API {url} · unreachable")


def _model_picker(url: str) -> None:
    try:
        catalogue = session.models(url)
    except ApiError as error:
        show_error(error)
        st.session_state.pop(session.MODEL_KEY, None)
        return
    cards = {m["id"]: m for m in catalogue["models"]}
    urlstate.restore("model", session.MODEL_KEY, cards, what="a model this API hosts")
    if st.session_state.get(session.MODEL_KEY) not in cards:
        st.session_state[session.MODEL_KEY] = catalogue["default_model"]

    def label(model_id: str) -> str:
        installed = cards[model_id]["status"] == "available"
        return f"✓ {model_id}" if installed else f"✗ {model_id} (weights missing)"

    st.selectbox("Model", list(cards), key=session.MODEL_KEY, format_func=label, help="Models the API can host (GET /v1/models): ✓ weights installed, ✗ weights missing.")
    chosen = cards[st.session_state[session.MODEL_KEY]]
    urlstate.publish("model", chosen["id"])
    st.caption(f"{chosen['num_classes']} classes · {chosen['input_size']} px input · {chosen['source'][:60]}")
    if chosen["status"] != "available":
        how = f"`{IMAGENET_COMMAND}`" if chosen["id"] == IMAGENET_ID else "see `xception-demo models`"
        st.warning(f"The weights of **{chosen['id']}** are not installed: {how}.", icon=":material/warning:")
    imagenet = cards.get(IMAGENET_ID)
    if imagenet is not None and imagenet["status"] != "available" and chosen["id"] != IMAGENET_ID:
        st.info(f"ImageNet weights (the paper's model) are not installed: `{IMAGENET_COMMAND}`", icon=":material/download:")


# --------------------------------------------------------------------------- shareable views


def restore_page(pages: dict[str, Any], current: Any) -> None:
    """A link's ``page=``: open that page (the other values of the link go with it)."""
    raw = urlstate.incoming("page")
    here = next(name for name, p in pages.items() if p is current)
    if raw is not None and raw != here:
        if raw in pages:
            st.switch_page(pages[raw], query_params=st.query_params.to_dict())
        urlstate.ignored("page", raw, f"not a page of this app ({', '.join(pages)})")
    urlstate.publish("page", here)


def restore_image() -> None:
    """A link's image: a sample (``sample=``, ``variant=``) is fetched again; an uploaded image
    (``image=`` its id) is used while the API still stores it, else the app says so plainly."""
    sample, variant, image_id = urlstate.incoming("sample"), urlstate.incoming("variant"), urlstate.incoming("image")
    if sample is not None and _restore_sample(sample, variant):
        return
    if image_id is None:
        return
    current = session.current_image()
    if current is not None and current.image_id == image_id:
        return
    if not urlstate.SHA256.fullmatch(image_id):
        urlstate.ignored("image", image_id, "not an image id (64 hexadecimal digits)")
        return
    try:
        data = session.client().image(image_id)  # the bytes, to show the image; None: gone, or an older API
        if data is None:
            session.client().predict(ImageRef(image_id), top_k=1)  # cheap, and says whether the API still has it
    except ApiError as error:
        if error.status in (0, 401, 403, 429) or error.status >= 500:
            show_error(error)
        else:  # 404: evicted or never stored; 422: an API that keeps no images
            st.warning(f"{IMAGE_GONE} (Predict page: upload it or pick a sample.)", icon=":material/cloud_off:")
        return
    session.set_image(session.ImageInput(data, f"shared image {image_id[:12]}", "link", image_id=image_id))


def _restore_sample(sample_id: str, variant: str | None) -> bool:
    try:
        offered = {s["id"]: s for s in session.samples(session.api_url())}
    except ApiError as error:
        show_error(error)
        return False
    sample = offered.get(sample_id)
    if sample is None:
        urlstate.ignored("sample", sample_id, "not a sample of this API")
        return False
    number = 0
    if variant is not None:
        try:
            number = urlstate.parse_int(variant)
        except ValueError:
            number = -1
        if not 0 <= number < sample["variants"]:
            urlstate.ignored("variant", variant, f"{sample_id} has variants 0..{sample['variants'] - 1}")
            number = 0
    try:
        session.set_image(session.sample_image(session.api_url(), sample, number))
    except ApiError as error:
        show_error(error)
        return False
    # the Predict page opens on that sample's picker
    st.session_state[PREDICT_SOURCE_KEY] = "Generated sample" if sample["kind"] == "generated" else "Sample photo"
    if sample["kind"] == "generated":
        generated = [s["id"] for s in offered.values() if s["kind"] == "generated"]
        st.session_state["generated_class"] = generated.index(sample_id)
        st.session_state["generated_variant"] = number
    return True


def publish_image() -> None:
    image = session.current_image()
    urlstate.publish("image", image.image_id if image else None)
    sample = image.sample_id if image else None
    urlstate.publish("sample", sample)
    urlstate.publish("variant", image.variant if sample and image.variant else None)
