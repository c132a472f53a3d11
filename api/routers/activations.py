"""POST /v1/activations, POST /v1/decomposition, GET /v1/colormaps."""


import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from xception_core import render

from ..deps import deadline, get_features, read_image
from ..errors import ApiError
from ..features import Features
from ..features.activations import ActivationsRequest
from ..features.decomposition import DecompositionRequest
from ..runtime import Upload
from ..schemas import ActivationsResponse, DecompositionResponse
from ..settings import Settings
from ..workers import Deadline
from .common import ANALYSIS_ERRORS, ImageField, ModelQuery, binary, binary_content, problems

Colormap = Literal[render.COLORMAPS]  # type: ignore[valid-type]
#: one channel index, with optional spaces (ASCII only: the same in Python and ECMAScript regexes)
_INDEX = " *[0-9]{1,6} *"
_CHANNELS = re.compile(f"{_INDEX}(,{_INDEX})*")


def channels_pattern(limit: int) -> str:
    """The schema's pattern for ``channels``: what :func:`parse_channels` accepts, count included."""
    return f"^{_INDEX}(,{_INDEX}){{0,{limit - 1}}}$"


def parse_channels(text: str | None, limit: int) -> tuple[int, ...] | None:
    if text is None:
        return None
    if not _CHANNELS.fullmatch(text):
        raise ApiError(
            422, "invalid-parameter", f"channels must be comma-separated channel indices such as 0,5,17 (got {text[:40]!r})", parameter="channels"
        )
    values = tuple(int(v) for v in text.split(","))
    if len(values) > limit:
        raise ApiError(
            422,
            "parameter-out-of-range",
            f"channels lists {len(values)} channels; at most {limit} per request",
            parameter="channels",
            allowed_range=[1, limit],
        )
    return values


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["activations"])
    max_ch = settings.max_channels
    TilePx = Annotated[
        int, Query(ge=16, le=settings.max_tile_px, description=f"Width of each PNG tile in pixels: 16..{settings.max_tile_px} (nearest-neighbour upsampling).")
    ]
    ColormapQ = Annotated[Colormap, Query(description="Colour map (matplotlib name): " + ", ".join(render.COLORMAPS) + ".")]
    LayerQ = Annotated[
        str,
        Query(
            max_length=100,
            description="Separable layer, e.g. `entry.block2.sep1` or `middle.block7.sep2` (the list: GET /v1/models/{id}/layers, `separable_layers`).",
        ),
    ]

    @router.get("/colormaps", summary="Colour maps", responses=problems(401))
    async def list_colormaps() -> dict[str, list[str]]:
        """The colour maps the `colormap` parameters accept."""
        return {"colormaps": render.colormap_names()}

    @router.post(
        "/activations",
        response_model=ActivationsResponse,
        summary="Feature maps of a separable layer",
        responses={200: {"content": binary_content(None, "image/png", "application/x-npy"), "description": "JSON, PNG montage or NPY array (per `format`)."}, **ANALYSIS_ERRORS},
    )
    async def activations(
        layer: LayerQ,
        image: ImageField = None,
        upload: Upload = Depends(read_image),
        model: ModelQuery = None,
        part: Annotated[
            Literal["depthwise", "pointwise", "input"],
            Query(
                description="`depthwise`: the spatial 3x3 per-channel output; `pointwise`: the 1x1 cross-channel output "
                "(before its BatchNorm); `input`: the tensor entering the layer (for `sep1` of a block: the previous "
                "block's output, after the block's leading ReLU)."
            ),
        ] = "depthwise",
        channels: Annotated[
            str | None,
            Query(
                max_length=4000,
                json_schema_extra={"pattern": channels_pattern(max_ch)},
                description=f"Comma-separated channel indices (0..C-1, C from the layer table), at most {max_ch}; "
                "overrides `top`/`sort`.",
                examples=["0,1,2"],
            ),
        ] = None,
        top: Annotated[int, Query(ge=1, le=max_ch, description=f"Without `channels`: the `top` channels by `sort` (1..{max_ch}; at most C).")] = 16,
        sort: Annotated[
            Literal["mean", "max", "attribution"],
            Query(description="Order of the `top` channels, largest first: mean activation, max activation, or "
                  "attribution (gradient x activation for `target`, Captum LayerGradientXActivation)."),
        ] = "mean",
        target: Annotated[int | None, Query(ge=0, description="Class for sort=attribution (default: the predicted class); 0..classes-1.")] = None,
        format: Annotated[
            Literal["json", "png", "npy"],
            Query(description="`json`: per-channel statistics and base64 PNG tiles; `png`: a labelled montage; `npy`: the raw float32 `[k, H, W]` array."),
        ] = "json",
        normalize: Annotated[
            Literal["channel", "layer"],
            Query(description="`channel`: each map on its own min..max; `layer`: one scale for all returned maps (so they compare)."),
        ] = "channel",
        colormap: ColormapQ = "viridis",
        tile_px: TilePx = 64,
        columns: Annotated[int | None, Query(ge=1, le=64, description="Montage columns (format=png), 1..64; default ceil(sqrt(k)).")] = None,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("activations")),
    ) -> Any:
        """The selected channels of one part of one separable layer for the image. The layer's maps are
        captured in one forward pass and cached, so other channels, parts, formats and colour maps of the
        same layer and image come from the cache."""
        request = ActivationsRequest(
            model=model,
            upload=upload,
            layer=layer,
            part=part,
            channels=parse_channels(channels, max_ch),
            top=top,
            sort=sort,
            target=target,
            fmt=format,
            normalize=normalize,
            colormap=colormap,
            tile_px=tile_px,
            columns=columns,
        )
        result = await features.activations.maps(request, limit)
        return result if isinstance(result, dict) else binary(result)

    @router.post(
        "/decomposition",
        response_model=DecompositionResponse,
        summary="How a pointwise channel is built from depthwise channels",
        responses={200: {"content": binary_content(None, "image/png", "application/x-npz"), "description": "JSON, PNG montage or NPZ arrays (per `format`)."}, **ANALYSIS_ERRORS},
    )
    async def decomposition(
        layer: LayerQ,
        channel: Annotated[int, Query(ge=0, le=100_000, description="Pointwise output channel: 0..C_out-1 of the layer.")],
        image: ImageField = None,
        upload: Upload = Depends(read_image),
        model: ModelQuery = None,
        top: Annotated[int, Query(ge=1, le=max_ch, description=f"How many contributions to return, strongest first (1..{max_ch}).")] = 8,
        format: Annotated[
            Literal["json", "png", "npz"],
            Query(description="`json`: weights, contribution tiles and the check; `png`: a montage (contributions, rest, sum, pointwise); "
                  "`npz`: arrays weights, order, energy, contributions `[top, H, W]`, kernels `[top, 3, 3]`, rest, total, pointwise."),
        ] = "json",
        colormap: ColormapQ = "RdBu_r",
        tile_px: TilePx = 64,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("decomposition")),
    ) -> Any:
        """Pointwise output channel `channel` of `layer` is `sum_i W[channel, i] * depthwise_i` (paper
        configuration: no activation in between). Returns the 1x1 weights `W[channel, :]`, the `top`
        contributions `W[channel, i] * depthwise_i` by energy, the rest, their sum, and the pointwise
        output itself: `max_abs_error` shows the sum equals it."""
        request = DecompositionRequest(model, upload, layer, channel, top, format, colormap, tile_px)
        result = await features.decompositions.decompose(request, limit)
        return result if isinstance(result, dict) else binary(result)

    return router
