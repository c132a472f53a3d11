"""Shared state of the app and cached API calls.

State (``st.session_state``, shared by every page):

* ``image``: the :class:`ImageInput` being analysed (bytes, name, sha256 = the API's ``image_id``;
  opened from a shared link: the id alone);
* ``model_id``: the model picked in the sidebar (``None``: the service's default);
* ``_stored_images``: what ``POST /v1/images`` answered for each image this session stored -- an
  image is uploaded once, and every request after that names it by its id.

API answers are cached with ``st.cache_data`` by everything that determines them
(API URL, model, image sha256, parameters), so moving between pages or widgets
does not ask the API twice; errors are never cached.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from .client import ActivationsQuery, ApiClient, ApiError, AttributionQuery, Channel, ImageRef
from .config import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL

IMAGE_KEY = "image"
MODEL_KEY = "model_id"
STORED_KEY = "_stored_images"  # image_id -> what POST /v1/images answered (None: the API stores no images)


def api_url() -> str:
    """The API base URL (``$XCEPTION_UI_API_URL``, default ``http://127.0.0.1:8000``)."""
    return (os.environ.get(API_URL_ENV) or "").strip().rstrip("/") or DEFAULT_API_URL


@st.cache_resource(show_spinner=False)
def _client(url: str, api_key: str | None) -> ApiClient:
    return ApiClient(url, api_key=api_key)


def client(url: str | None = None) -> ApiClient:
    return _client(url or api_url(), (os.environ.get(API_KEY_ENV) or "").strip() or None)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class ImageInput:
    """The image every page analyses: its bytes as the user gave them (the API decodes them), or --
    opened from a shared link -- only its id in the API's image store."""

    data: bytes | None = field(repr=False)
    name: str
    source: str  # "upload", a sample's kind ("photo", "generated"), or "link" (only its id is known)
    true_index: int | None = None  # generated samples know their class
    true_label: str | None = None
    image_id: str = ""
    sample_id: str | None = None  # samples: GET /v1/samples/{sample_id}?variant=...
    variant: int = 0

    def __post_init__(self) -> None:
        if self.data is not None:
            object.__setattr__(self, "image_id", hashlib.sha256(self.data).hexdigest())
        elif not self.image_id:
            raise ValueError("an image needs its bytes or its image_id")

    @property
    def ref(self) -> ImageRef:
        """What requests send: the id (the API's store has the bytes), and the bytes when the app has them."""
        return ImageRef(self.image_id, self.data)


def current_image() -> ImageInput | None:
    image = st.session_state.get(IMAGE_KEY)
    return image if isinstance(image, ImageInput) else None


def set_image(image: ImageInput) -> None:
    """Make ``image`` the current one and store it on the server once (``POST /v1/images``):
    every later request of this session names it by its id instead of sending the bytes again."""
    st.session_state[IMAGE_KEY] = image
    stored: dict[str, dict[str, Any] | None] = st.session_state.setdefault(STORED_KEY, {})
    if image.data is None or image.source == "link" or image.image_id in stored:  # a link's image is on the server
        return
    try:
        stored[image.image_id] = client().upload_image(image.data, image.name)
    except ApiError:
        pass  # not an image the API takes: the analysis requests say why


def stored_facts(image: ImageInput) -> dict[str, Any] | None:
    """What ``POST /v1/images`` answered for the image (size, format, expiry), if it was stored."""
    return st.session_state.get(STORED_KEY, {}).get(image.image_id)


def forget_image() -> None:
    st.session_state.pop(IMAGE_KEY, None)


def current_model() -> str | None:
    return st.session_state.get(MODEL_KEY)


# --------------------------------------------------------------------------- catalogue (cached)


@st.cache_data(ttl=10, show_spinner=False)
def models(url: str) -> dict[str, Any]:
    """GET /v1/models (short-lived: weights may be downloaded meanwhile)."""
    return client(url).models()


@st.cache_data(ttl=10, show_spinner=False)
def engine(url: str, model: str) -> dict[str, Any] | None:
    """How the server computes the model's predictions (``engine`` of GET /v1/models/{id});
    None while it is not loaded. Short-lived: a backend can fall back at run time."""
    return client(url).model(model).get("engine")


@st.cache_data(ttl=5, show_spinner=False)
def readiness(url: str) -> dict[str, Any]:
    return client(url).ready()


@st.cache_data(ttl=3600, show_spinner=False)
def layers(url: str, model: str) -> dict[str, Any]:
    return client(url).layers(model)


@st.cache_data(ttl=3600, show_spinner=False)
def classes(url: str, model: str) -> list[str]:
    return [c["label"] for c in client(url).classes(model)["classes"]]


@st.cache_data(ttl=3600, show_spinner=False)
def spectrum(url: str, model: str, layer: str) -> dict[str, Any]:
    return client(url).spectrum(model, layer)


@st.cache_data(ttl=3600, show_spinner=False)
def spectrum_results(url: str) -> dict[str, Any]:
    return client(url).spectrum_results()


@st.cache_data(ttl=3600, show_spinner=False)
def samples(url: str) -> list[dict[str, Any]]:
    return client(url).samples()


@st.cache_data(max_entries=64, show_spinner=False)
def sample_image(url: str, sample: dict[str, Any], variant: int = 0) -> ImageInput:
    """A sample as the image to analyse (``sample`` as GET /v1/samples lists it; the bytes never change)."""
    data = client(url).sample(sample["id"], variant=variant)
    extension = mimetypes.guess_extension(sample["media_type"]) or ""
    name = sample["id"] if sample["variants"] == 1 else f"{sample['id']}-{variant}"
    return ImageInput(
        data, name + extension, sample["kind"], true_index=sample.get("class_index"), true_label=sample.get("label"),
        sample_id=sample["id"], variant=variant,
    )


@st.cache_data(ttl=3600, show_spinner=False)
def methods(url: str) -> list[dict[str, Any]]:
    return list(client(url).methods()["methods"])


@st.cache_data(ttl=3600, show_spinner=False)
def colormaps(url: str) -> list[str]:
    return client(url).colormaps()


# --------------------------------------------------------------------------- channel atlas (cached)
# A channel is passed as (model, layer, part, channel): plain values hash in st.cache_data's key.


def channel_ref(model: str, layer: str, part: str, channel: int) -> Channel:
    return Channel(model, layer, part, int(channel))  # type: ignore[arg-type]


@st.cache_data(max_entries=128, show_spinner=False)
def visualisation(url: str, ref: tuple[str, str, str, int], steps: int, seed: int) -> dict[str, Any]:
    return client(url).visualisation(channel_ref(*ref), steps=steps, seed=seed)  # type: ignore[return-value]


@st.cache_data(max_entries=128, show_spinner=False)
def atlas(url: str, ref: tuple[str, str, str, int], k: int = 9) -> dict[str, Any]:
    return client(url).atlas(channel_ref(*ref), k=k)


@st.cache_data(max_entries=256, show_spinner=False)
def channel_weights(url: str, ref: tuple[str, str, str, int]) -> dict[str, Any]:
    return client(url).channel_weights(channel_ref(*ref))


@dataclass(frozen=True)
class Limits:
    """Bounds of request parameters, as the service documents them (its OpenAPI schema)."""

    max_top_k: int = 100
    max_channels: int = 64
    max_tile_px: int = 256
    max_decomposition_top: int = 64
    max_visualisation_steps: int = 512


def _maximum(schema: dict[str, Any], path: str, name: str, default: int) -> int:
    try:
        operation = schema["paths"][path]
        for p in (operation.get("post") or operation["get"])["parameters"]:
            if p.get("name") == name:
                s = p.get("schema", {})
                for option in [s, *s.get("anyOf", [])]:
                    if "maximum" in option:
                        return int(option["maximum"])
    except (KeyError, TypeError, ValueError):
        pass
    return default


@st.cache_data(ttl=3600, show_spinner=False)
def limits(url: str) -> Limits:
    try:
        schema = client(url).openapi()
    except ApiError:
        return Limits()  # the service may hide its schema (docs_enabled=false): the defaults
    d = Limits()
    return Limits(
        max_top_k=_maximum(schema, "/v1/predict", "top_k", d.max_top_k),
        max_channels=_maximum(schema, "/v1/activations", "top", d.max_channels),
        max_tile_px=_maximum(schema, "/v1/activations", "tile_px", d.max_tile_px),
        max_decomposition_top=_maximum(schema, "/v1/decomposition", "top", d.max_decomposition_top),
        max_visualisation_steps=_maximum(schema, VISUALISATION_PATH, "steps", d.max_visualisation_steps),
    )


VISUALISATION_PATH = "/v1/models/{model_id}/layers/{layer}/parts/{part}/channels/{channel}/visualisation"


# --------------------------------------------------------------------------- analysis (cached)


def _freeze(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Parameters as a hashable, order-independent key."""
    out = []
    for key, value in sorted(params.items()):
        if isinstance(value, dict):
            value = ("__dict__", tuple(sorted(value.items())))
        elif isinstance(value, list):
            value = tuple(value)
        out.append((key, value))
    return tuple(out)


def _thaw(params: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params:
        if isinstance(value, tuple) and value[:1] == ("__dict__",):
            value = dict(value[1])
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


#: The endpoints whose query the client takes as one object.
_QUERIES = {"activations": ActivationsQuery, "attributions": AttributionQuery}


def _send(url: str, endpoint: str, image: ImageRef, params: dict[str, Any]) -> Any:
    query = _QUERIES.get(endpoint)
    if query is None:
        return getattr(client(url), endpoint)(image, **params)
    fields = dict(params)
    model = fields.pop("model", None)
    if isinstance(fields.get("channels"), list):
        fields["channels"] = tuple(fields["channels"])
    return getattr(client(url), endpoint)(image, query(**fields), model=model)


@st.cache_data(max_entries=256, show_spinner=False)
def _analysis(url: str, endpoint: str, image_id: str, _image: ImageRef, params: tuple[tuple[str, Any], ...]) -> Any:
    # image_id stands for the image in the cache key
    return _send(url, endpoint, _image, _thaw(params))


def _call(endpoint: str, image: ImageInput, **params: Any) -> Any:
    url = api_url()
    if params.get("format", "json") != "json":
        # files (PNG montages, arrays) are fetched when a download button is pressed, outside
        # the script run: straight from the API, not through the cache
        return _send(url, endpoint, image.ref, params)
    return _analysis(url, endpoint, image.image_id, image.ref, _freeze(params))


def predict(image: ImageInput, model: str | None, top_k: int = 5) -> dict[str, Any]:
    return _call("predict", image, model=model, top_k=top_k)


def activations(image: ImageInput, model: str | None, **params: Any) -> Any:
    """POST /v1/activations (``params`` as :meth:`ApiClient.activations` takes them)."""
    return _call("activations", image, model=model, **params)


def decomposition(image: ImageInput, model: str | None, **params: Any) -> Any:
    return _call("decomposition", image, model=model, **params)


def attribution(image: ImageInput, model: str | None, **params: Any) -> Any:
    return _call("attributions", image, model=model, **params)


def prediction_or_none(image: ImageInput, model: str | None) -> dict[str, Any] | None:
    """The top-5 prediction, or ``None`` when the API cannot give one (pages still render)."""
    try:
        return predict(image, model, 5)
    except ApiError:
        return None


@st.cache_data(ttl=3600, show_spinner=False)
def pattern_model(url: str, model: str) -> bool:
    """Whether ``model`` knows only the generated patterns (the bundled offline model, or one trained
    like it): its card says it was trained on ``xception_core.synthetic`` data, or its classes are
    exactly the classes of the API's generated samples. ``False`` when the API cannot say."""
    try:
        card = client(url).model(model)
        data = (card.get("extra") or {}).get("data") or {}
        if isinstance(data, dict) and "synthetic" in str(data.get("generator", "")):
            return True
        generated = {s.get("label") for s in samples(url) if s.get("kind") == "generated"}
        return bool(generated) and set(classes(url, model)) == generated
    except (ApiError, KeyError, TypeError, AttributeError):
        return False
