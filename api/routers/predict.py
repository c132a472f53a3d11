"""POST /v1/predict and POST /v1/predict/batch."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, UploadFile

from ..deps import deadline, get_features, read_image, read_images
from ..features import Features
from ..features.predict import BatchPart, BatchRequest, PredictRequest
from ..runtime import Upload
from ..schemas import BatchResponse, PredictResponse
from ..settings import Settings
from ..workers import Deadline
from .common import ANALYSIS_ERRORS, IMAGE_DESCRIPTION, ImageField, ModelQuery


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["predict"])
    TopK = Annotated[
        int,
        Query(
            ge=1,
            le=settings.max_top_k,
            description=f"How many classes to return, most probable first: 1..{settings.max_top_k} "
            "(and at most the model's class count).",
        ),
    ]

    @router.post("/predict", response_model=PredictResponse, summary="Classify one image", responses=ANALYSIS_ERRORS)
    async def predict(
        image: ImageField = None,
        upload: Upload = Depends(read_image),
        model: ModelQuery = None,
        top_k: TopK = 5,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("predict")),
    ) -> dict[str, Any]:
        """The `top_k` most probable classes. `image_id` is the sha256 of the uploaded bytes: the
        server caches the preprocessed image and its logits under it, so a second request on the same
        image (predictions, activations, attributions) skips that work. Concurrent requests are
        grouped into micro-batches (same results as one at a time)."""
        return await features.predictions.predict(PredictRequest(model, upload, top_k), limit)

    @router.post(
        "/predict/batch",
        response_model=BatchResponse,
        summary="Classify several images",
        responses=ANALYSIS_ERRORS,
    )
    async def predict_batch(
        images: Annotated[
            list[UploadFile],
            File(description=f"1..{settings.max_batch_images} image files, each its own `images` part. " + IMAGE_DESCRIPTION),
        ],
        parts: list[BatchPart] = Depends(read_images),
        model: ModelQuery = None,
        top_k: TopK = 5,
        features: Features = Depends(get_features),
        limit: Deadline = Depends(deadline("predict")),
    ) -> dict[str, Any]:
        """One result per `images` part, in order. An image that cannot be used gets `ok: false` and
        its own problem object; the others are still classified."""
        return await features.predictions.predict_batch(BatchRequest(model, tuple(parts), top_k), limit)

    return router
