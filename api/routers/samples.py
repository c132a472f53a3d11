"""GET /v1/samples, GET /v1/samples/{sample_id}: images to try the model on."""


from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from xception_core.samples import MAX_VARIANT, SAMPLES, SampleVariantError, UnknownSampleError, get_sample, sample_bytes

from ..errors import invalid_choice, out_of_range
from ..schemas import Problem, SampleList
from ..settings import Settings
from .common import binary_content, problems

SampleId = Annotated[str, Path(max_length=100, description="Sample id, as listed by GET /v1/samples.")]
Variant = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_VARIANT,
        description=f"Which image of the sample: 0..`variants` - 1 (at most {MAX_VARIANT}); a photograph has one (0).",
    ),
]
#: The images never change for an id and variant.
CACHE_CONTROL = "public, max-age=86400"


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1/samples", tags=["samples"])

    @router.get("", response_model=SampleList, summary="Sample images", responses=problems(401))
    async def list_samples() -> dict[str, Any]:
        """Images to try the model on: real photographs that ship with scikit-image, and one
        generated image per class of the bundled offline model (with its true class), each with
        `variants` different images of that class."""
        return {"samples": [s.to_dict() for s in SAMPLES]}

    @router.get(
        "/{sample_id}",
        summary="One sample image",
        response_class=Response,
        responses={
            200: {"content": binary_content(None, "image/jpeg", "image/png"), "description": "The image (JPEG or PNG, as `media_type` in the list says)."},
            **problems(401, 422),
            404: {"model": Problem, "description": "Unknown sample id (the detail lists the valid ones)."},
        },
    )
    async def get_sample_image(sample_id: SampleId, variant: Variant = 0) -> Response:
        """The image bytes of `variant` of the sample, ready to send to the analysis endpoints."""
        try:
            sample = get_sample(sample_id)
        except UnknownSampleError:
            raise invalid_choice("sample_id", sample_id, [s.id for s in SAMPLES], status=404, what="sample") from None
        try:
            data = await run_in_threadpool(sample_bytes, sample.id, variant)
        except SampleVariantError:
            raise out_of_range("variant", variant, 0, sample.variants - 1, f"sample {sample.id!r} has {sample.variants}") from None
        return Response(content=data, media_type=sample.media_type, headers={"Cache-Control": CACHE_CONTROL})

    return router
