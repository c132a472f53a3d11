"""HTTP client of the Xception Explorer API -- the only module of the UI that talks to the network.

Every method maps one endpoint (parameter names as the API spells them) and
returns the decoded JSON (``dict``) or, for binary formats, the raw bytes.
Every failure -- an error answer (``application/problem+json``), an unreachable
service, a timeout, an answer that is not what the API sends -- is raised as
:class:`ApiError`, whose :attr:`~ApiError.message` is fit to show to a person.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

__all__ = [
    "ActivationsQuery", "ApiClient", "ApiError", "AttributionQuery", "Channel", "ImageRef", "Normalization", "Part", "Sign",
    "SortKey", "image_gone",
]

#: A separable layer's parts (its own: ``parts`` in GET /v1/models/{id}/layers) or its input.
Part = Literal["conv", "depthwise", "grouped", "pointwise", "input"]
SortKey = Literal["mean", "max", "attribution"]
Normalization = Literal["channel", "layer"]
Sign = Literal["positive", "negative", "absolute", "all"]
Quality = Literal["none", "auc", "full"]

#: What the app says when an image id is no longer in the server's image store and the app has no bytes to send again.
IMAGE_GONE = "This image is no longer stored on the server — upload it again."


@dataclass(frozen=True)
class ImageRef:
    """The image of an analysis request: its id in the server's image store (``POST /v1/images``),
    its bytes, or both. With both, the id is sent and the bytes only when the server has forgotten it."""

    image_id: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.image_id is None and self.data is None:
            raise ValueError("an image needs an image_id or its bytes")


def image_gone(error: ApiError) -> bool:
    """Whether ``error`` says that an ``image_id`` is unknown to the server (evicted or never stored)."""
    if error.status != 404:
        return False
    if error.problem.get("parameter") == "image_id" or "image" in error.slug:
        return True
    return error.slug not in ("unknown-model",) and "upload" in error.detail.lower()


@dataclass(frozen=True)
class ActivationsQuery:
    """The query of ``POST /v1/activations`` (names as the API spells them)."""

    layer: str
    part: Part = "depthwise"
    channels: tuple[int, ...] | None = None
    top: int = 16
    sort: SortKey = "mean"
    target: int | None = None
    format: Literal["json", "png", "npy"] = "json"
    normalize: Normalization = "channel"
    colormap: str = "viridis"
    tile_px: int = 64
    columns: int | None = None

    def params(self) -> dict[str, Any]:
        chosen = bool(self.channels)
        return {
            "layer": self.layer,
            "part": self.part,
            "channels": ",".join(str(int(c)) for c in self.channels) if chosen else None,
            "top": None if chosen else self.top,
            "sort": None if chosen else self.sort,
            "target": self.target if self.sort == "attribution" and not chosen else None,
            "format": self.format,
            "normalize": self.normalize,
            "colormap": self.colormap,
            "tile_px": self.tile_px,
            "columns": self.columns,
        }


@dataclass(frozen=True)
class AttributionQuery:
    """The query of ``POST /v1/attributions``: the request's own parameters and the method's (``method_params``)."""

    method: str
    target: int | None = None
    layer: str | None = None
    part: Literal["conv", "depthwise", "grouped", "pointwise"] | None = None
    method_params: Mapping[str, Any] = field(default_factory=dict)
    format: Literal["json", "png", "npy"] = "json"
    array: Literal["attribution", "heatmap"] = "attribution"
    sign: Sign = "positive"
    opacity: float = 0.5
    colormap: str | None = None
    quality: Quality | None = None  # None: the server's default (every figure)

    def params(self) -> dict[str, Any]:
        query: dict[str, Any] = {
            "method": self.method,
            "quality": self.quality,
            "target": self.target,
            "layer": self.layer,
            "part": self.part,
            "format": self.format,
            "array": self.array if self.format == "npy" else None,
            "sign": self.sign,
            "opacity": self.opacity,
            "colormap": self.colormap,
        }
        for key, value in self.method_params.items():
            if key in query:
                raise ValueError(f"method parameter {key!r} clashes with a request parameter")
            query[key] = value
        return query


@dataclass(frozen=True)
class Channel:
    """One channel of one part of a separable layer of a model: what the atlas endpoints are about."""

    model: str
    layer: str
    part: Literal["depthwise", "pointwise"]
    channel: int

    def path(self) -> str:
        return f"/v1/models/{self.model}/layers/{self.layer}/parts/{self.part}/channels/{int(self.channel)}"


#: Attributions of a 299-px image on a CPU can take a minute; everything else is quick.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=300.0, write=60.0, pool=10.0)
UNREACHABLE = 0  # ApiError.status when no HTTP answer came back


class ApiError(Exception):
    """A failed API call, with the problem details (RFC 9457) the service sent."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.request_id = request_id
        self.problem = problem or {}

    @property
    def slug(self) -> str:
        """The last part of the problem type (``unknown-layer``, ``weights-missing``...)."""
        return self.type.rsplit(":", 1)[-1] if self.type.startswith("urn:") else ""

    @property
    def message(self) -> str:
        """One readable sentence or two: what went wrong and, where the API says it, how to fix it."""
        if self.status == UNREACHABLE:
            return f"{self.title}: {self.detail}"
        return f"{self.title} (HTTP {self.status}): {self.detail}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        request_id = response.headers.get("x-request-id")
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            return cls(
                int(body.get("status") or response.status_code),
                str(body.get("title") or response.reason_phrase or "Error"),
                body["detail"],
                type=str(body.get("type") or "about:blank"),
                request_id=str(body.get("request_id") or request_id or "") or None,
                problem=body,
            )
        text = " ".join(response.text.split())[:300] if response.content else ""
        detail = text or "the service gave no explanation"
        return cls(response.status_code, response.reason_phrase or "Error", detail, request_id=request_id)


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """Drop unset parameters; booleans as the API reads them."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = ("true" if value else "false") if isinstance(value, bool) else value
    return out


class ApiClient:
    """Typed access to the REST API (``/v1``) at ``base_url``.

    ``api_key`` is sent as ``X-API-Key`` when the service requires one. ``transport``
    lets tests hand in an in-process transport.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Accept": "application/json, application/problem+json, */*", "User-Agent": "xception-explorer-ui"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        #: Whether the API keeps uploaded images (``POST /v1/images``): None until an upload says.
        self.stores_images: bool | None = None
        self._unstorable: set[str] = set()  # ids of images larger than the whole store

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, image: bytes | None = None, image_name: str = "image"
    ) -> httpx.Response:
        files = {"image": (image_name, image, "application/octet-stream")} if image is not None else None
        try:
            response = self._http.request(method, path, params=_query(params or {}), files=files)
        except httpx.TimeoutException:
            raise ApiError(
                504, "Timed out", f"the API at {self.base_url} did not answer {method} {path} in time; try again, or ask for less work (fewer steps or samples)"
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(
                UNREACHABLE,
                "API unreachable",
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc or 'no answer'}). "
                "Is it running? Start it with `xception-demo serve`, or API and UI together with `xception-demo up`.",
            ) from None
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._decode(self._request(method, path, **kwargs), method, path)

    def _decode(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(502, "Unexpected answer", f"{method} {path} did not answer with JSON (is {self.base_url} the Xception Explorer API?)") from None
        if not isinstance(body, dict):
            raise ApiError(502, "Unexpected answer", f"{method} {path} answered with JSON that is not an object")
        return body

    def _with_image(self, path: str, image: bytes | ImageRef, params: dict[str, Any]) -> httpx.Response:
        """POST an analysis: by ``image_id`` when the server stores images (the bytes go again only
        when it has forgotten them), else with the bytes."""
        ref = image if isinstance(image, ImageRef) else ImageRef(data=image)
        if ref.image_id is not None and ref.data is not None and self.stores_images is None:
            self.upload_image(ref.data)  # learns whether the API stores images
        if ref.image_id is None or (ref.data is not None and (not self.stores_images or ref.image_id in self._unstorable)):
            return self._request("POST", path, params=params, image=ref.data)
        try:
            return self._request("POST", path, params={**params, "image_id": ref.image_id})
        except ApiError as error:
            if not image_gone(error):
                raise
            if ref.data is None:
                raise ApiError(404, "Image no longer stored", IMAGE_GONE, type=error.type, request_id=error.request_id, problem=error.problem) from None
        stored = self.upload_image(ref.data)  # evicted meanwhile: store it again, once
        if stored is None:
            return self._request("POST", path, params=params, image=ref.data)
        return self._request("POST", path, params={**params, "image_id": stored["image_id"]})

    def _analysis(self, path: str, image: bytes | ImageRef, params: dict[str, Any], fmt: str) -> dict[str, Any] | bytes:
        response = self._with_image(path, image, params)
        if fmt != "json":
            return response.content
        body = self._decode(response, "POST", path)
        if "x-cache" in response.headers:
            body.setdefault("x_cache", response.headers["x-cache"])
        return body

    # ------------------------------------------------------------------ service

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """``{"status": "ready", "default_model", "device", "loaded_models"}``; ApiError 503 until ready."""
        return self._json("GET", "/readyz")

    def openapi(self) -> dict[str, Any]:
        return self._json("GET", "/openapi.json")

    # ------------------------------------------------------------------ models

    def models(self) -> dict[str, Any]:
        """``{"default_model", "device", "models": [{"id", "status", "source", "num_classes", ...}]}``."""
        return self._json("GET", "/v1/models")

    def model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}")

    def layers(self, model_id: str) -> dict[str, Any]:
        """``{"layers": [...], "separable_layers": [...], "total_params", "total_macs", "input_size"}``."""
        return self._json("GET", f"/v1/models/{model_id}/layers")

    def classes(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}/classes")

    def spectrum(self, model_id: str, layer: str, *, points: int = 4) -> dict[str, Any]:
        """The paper's spectrum for one separable layer: ``{"layer", "in_channels", "out_channels",
        "output_size", "points": [{"segments", "kind", "label", "params", "macs"}]}``."""
        return self._json("GET", f"/v1/models/{model_id}/layers/{layer}/spectrum", params={"points": points})

    def spectrum_results(self, *, curves: bool = False) -> dict[str, Any]:
        """The paper's spectrum trained (the committed run): ``{"source", "settings", "machine",
        "timing", "points": [{"key", "segments", "order", "kind", "label", "params", "macs",
        "val_top1", "infer_ms", ...}]}``."""
        return self._json("GET", "/v1/spectrum/results", params={"curves": str(curves).lower()})

    # ------------------------------------------------------------------ samples

    def samples(self) -> list[dict[str, Any]]:
        """Sample images: ``[{"id", "kind" (photo | generated), "title", "media_type", "variants", ...}]``."""
        return list(self._json("GET", "/v1/samples").get("samples", []))

    def sample(self, sample_id: str, *, variant: int = 0) -> bytes:
        """The image bytes of one sample (JPEG or PNG)."""
        return self._request("GET", f"/v1/samples/{sample_id}", params={"variant": variant}).content

    def methods(self) -> dict[str, Any]:
        """The attribution methods with their parameters (kinds, defaults, ranges)."""
        return self._json("GET", "/v1/methods")

    def colormaps(self) -> list[str]:
        return list(self._json("GET", "/v1/colormaps").get("colormaps", []))

    # ------------------------------------------------------------------ images

    def upload_image(self, data: bytes, name: str = "image") -> dict[str, Any] | None:
        """``POST /v1/images``: store the image once; later requests name it by ``image_id``.

        Returns ``{"image_id", "width", "height", "format", "bytes", ...}``, or ``None`` when the API
        does not store images (404/405: an older service) or not this one (larger than its whole
        store: 413 ``image-store-too-small``) -- then the bytes go with every request."""
        try:
            stored = self._json("POST", "/v1/images", image=data, image_name=name)
        except ApiError as error:
            if error.status in (404, 405) and not image_gone(error):
                self.stores_images = False
                return None
            if error.slug == "image-store-too-small":  # this one does not fit the store: its bytes go each time
                self._unstorable.add(hashlib.sha256(data).hexdigest())
                return None
            raise
        self.stores_images = True
        return stored

    def image(self, image_id: str) -> bytes | None:
        """``GET /v1/images/{image_id}``: a stored image's bytes, or ``None`` when the API no longer
        has it (404: evicted or never stored) or cannot give images back (an older API); other
        errors are raised."""
        try:
            data = self._request("GET", f"/v1/images/{image_id}").content
        except ApiError as error:
            if error.status in (404, 405, 422):
                return None
            raise
        if hashlib.sha256(data).hexdigest() != image_id:
            return None
        self.stores_images = True  # it has just given one back
        return data

    # ------------------------------------------------------------------ analysis

    def predict(self, image: bytes | ImageRef, *, model: str | None = None, top_k: int = 5) -> dict[str, Any]:
        """``{"image_id", "model", "device", "predictions": [{"index", "label", "probability"}], "timing_ms", ...}``."""
        return self._analysis("/v1/predict", image, {"model": model, "top_k": top_k}, "json")  # type: ignore[return-value]

    def activations(self, image: bytes | ImageRef, query: ActivationsQuery, *, model: str | None = None) -> dict[str, Any] | bytes:
        """Maps of one part of a separable layer: JSON (statistics and PNG tiles), a PNG montage or an NPY array."""
        return self._analysis("/v1/activations", image, {"model": model, **query.params()}, query.format)

    def decomposition(
        self,
        image: bytes | ImageRef,
        *,
        layer: str,
        channel: int,
        model: str | None = None,
        top: int = 8,
        format: Literal["json", "png", "npz"] = "json",
        colormap: str = "RdBu_r",
        tile_px: int = 64,
    ) -> dict[str, Any] | bytes:
        """How pointwise channel ``channel`` is built from the depthwise channels (1x1 weights, contributions, sum)."""
        params = {"model": model, "layer": layer, "channel": channel, "top": top, "format": format, "colormap": colormap, "tile_px": tile_px}
        return self._analysis("/v1/decomposition", image, params, format)

    def visualisation(
        self, channel: Channel, *, steps: int = 256, size: int | None = None, seed: int = 0, objective: str = "mean", format: str = "json"
    ) -> dict[str, Any] | bytes:
        """The channel's feature visualisation: ``{"objective_start", "objective_final", "steps", "seconds",
        "precision", "png", ...}`` (JSON), or the PNG / NPY bytes."""
        params = {"steps": steps, "size": size, "seed": seed, "objective": objective, "format": format}
        if format == "json":
            return self._json("GET", channel.path() + "/visualisation", params=params)
        return self._request("GET", channel.path() + "/visualisation", params=params).content

    def atlas(self, channel: Channel, *, k: int = 9, thumb_px: int = 96, bins: int = 24) -> dict[str, Any]:
        """The channel's top data-set examples (``examples``: ``objective``, ``max``, ``argmax``, ``box``,
        ``png``), its ``stats`` and ``histogram``."""
        return self._json("GET", channel.path() + "/atlas", params={"k": k, "thumb_px": thumb_px, "bins": bins})

    def channel_weights(self, channel: Channel) -> dict[str, Any]:
        """Depthwise: ``kernel`` (3x3) and ``used_by``; pointwise: ``weights`` over the depthwise channels and ``top``."""
        return self._json("GET", channel.path() + "/weights")

    def attributions(self, image: bytes | ImageRef, query: AttributionQuery, *, model: str | None = None) -> dict[str, Any] | bytes:
        """An attribution map for ``query.target`` (default: the predicted class) with its quality figures."""
        return self._analysis("/v1/attributions", image, {"model": model, **query.params()}, query.format)


def problem_json(error: ApiError) -> str:
    """The problem details as pretty JSON (for a 'details' expander)."""
    return json.dumps(error.problem or {"status": error.status, "title": error.title, "detail": error.detail}, indent=2)
