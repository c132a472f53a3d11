"""The channel atlas: GET /v1/models/{id}/layers/{layer}/parts/{part}/channels/{channel}/
visualisation, /atlas and /weights."""


from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query

from xception_core.featurevis import MIN_SIZE, OBJECTIVES

from ..deps import deadline, get_features
from ..features import Features
from ..features.atlas import DEFAULT_SIZE, AtlasQuery, ChannelRef, VisualisationQuery
from ..schemas import AtlasEntryResponse, ChannelWeightsResponse, Problem, VisualisationResponse
from ..settings import Settings
from ..workers import Deadline
from .common import binary, binary_content, problems

CHANNEL_PATH = "/{model_id}/layers/{layer}/parts/{part}/channels/{channel}"
NOT_FOUND = {404: {"model": Problem, "description": "Unknown model, layer, part or channel (the detail lists the valid ones or the range)."}}

ModelId = Annotated[str, Path(max_length=200, description="Model id, as listed by GET /v1/models.")]
LayerName = Annotated[
    str, Path(max_length=100, description="Separable layer, e.g. `middle.block5.sep1` (GET /v1/models/{id}/layers lists them).")
]
PartName = Annotated[
    Literal["depthwise", "pointwise"],
    Path(description="`depthwise`: the 3x3 per-channel (spatial) output; `pointwise`: the 1x1 cross-channel output."),
]
Channel = Annotated[int, Path(ge=0, le=100_000, description="Channel of the part: 0..C-1 (C from the layer table).")]


def _ref(model_id: str, layer: str, part: str, channel: int) -> ChannelRef:
    return ChannelRef(model_id, layer, part, channel)


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/models", tags=["atlas"])
    max_steps, max_size = settings.max_visualisation_steps, settings.max_visualisation_size

    @router.get(
        CHANNEL_PATH + "/visualisation",
        response_model=VisualisationResponse,
        summary="Feature visualisation of a channel",
        responses={
            200: {"content": binary_content(None, "image/png", "application/x-npy"), "description": "JSON, PNG or NPY (per `format`)."},
            **problems(401, 409, 422, 503, 504),
            **NOT_FOUND,
        },
    )
    async def get_channel_visualisation(
        model_id: ModelId,
        layer: LayerName,
        part: PartName,
        channel: Channel,
        steps: Annotated[int, Query(ge=1, le=max_steps, description=f"Optimisation steps: 1..{max_steps}.")] = 256,
        size: Annotated[
            int | None,
            Query(ge=MIN_SIZE, le=max_size, description=f"Side of the image in pixels: {MIN_SIZE}..{max_size}; default: the model's input size, at most {DEFAULT_SIZE}."),
        ] = None,
        seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="Random seed: the same seed gives the same image on the same device.")] = 0,
        objective: Annotated[
            Literal[OBJECTIVES],  # type: ignore[valid-type]
            Query(description="`mean`: the channel's spatial mean (what the atlas ranks by); `centre`: its value at the centre of the map."),
        ] = "mean",
        format: Annotated[
            Literal["json", "png", "npy"],
            Query(description="`json`: the objectives, steps, time and precision with the image as base64 PNG; `png`: the image "
                  "(the figures in X- headers); `npy`: the image as uint8 `[size, size, 3]`."),
        ] = "json",
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("visualisation")),
    ) -> Any:
        """An image optimised to maximise the channel (Olah et al., "Feature Visualization", Distill 2017):
        a Fourier-basis, colour-decorrelated parameterisation seen through random jitter, scale and rotation
        each step. The optimisation is cancelled when the request's deadline passes (504); answers are cached
        by model weights, channel and parameters."""
        query = VisualisationQuery(_ref(model_id, layer, part, channel), steps, size, seed, objective, format)
        result = await features.atlas.visualisation(query, limit)
        return result if isinstance(result, dict) else binary(result)

    @router.get(
        CHANNEL_PATH + "/atlas",
        response_model=AtlasEntryResponse,
        summary="Data-set examples of a channel",
        responses={**problems(401, 409, 422, 503, 504), **NOT_FOUND},
    )
    async def get_channel_atlas(
        model_id: ModelId,
        layer: LayerName,
        part: PartName,
        channel: Channel,
        k: Annotated[int, Query(ge=1, le=settings.max_atlas_k, description=f"How many top examples: 1..{settings.max_atlas_k} (at most what the index keeps per channel).")] = 9,
        thumb_px: Annotated[int, Query(ge=16, le=settings.max_thumb_px, description=f"Longer side of each thumbnail in pixels: 16..{settings.max_thumb_px}.")] = 96,
        bins: Annotated[int, Query(ge=1, le=100, description="Bins of the histogram of the channel's objective over the data set: 1..100.")] = 24,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("atlas")),
    ) -> Any:
        """The images of the model's atlas that drive the channel most (largest spatial mean first), each
        cropped to the receptive field of the channel's maximum, with the objective, the maximum and where it
        is; the channel's statistics and a histogram over the data set. The atlas is built by the operator
        (`xception-demo atlas build`), from the folder in XCEPTION_ATLAS_DATA, or, for the bundled model, from
        its generated data set on first use (503 with the progress while it is being built)."""
        query = AtlasQuery(_ref(model_id, layer, part, channel), k, thumb_px, bins)
        return await features.atlas.entry(query, limit)

    @router.get(
        CHANNEL_PATH + "/weights",
        response_model=ChannelWeightsResponse,
        response_model_exclude_none=True,
        summary="Weights of a channel",
        responses={**problems(401, 422, 503, 504), **NOT_FOUND},
    )
    async def get_channel_weights(
        model_id: ModelId,
        layer: LayerName,
        part: PartName,
        channel: Channel,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("atlas")),
    ) -> Any:
        """Depthwise: the channel's 3x3 kernel and the pointwise channels that weigh it most. Pointwise: its
        1x1 weights over every depthwise channel it mixes, and the strongest of them."""
        return await features.atlas.weights(_ref(model_id, layer, part, channel), limit)

    return router
