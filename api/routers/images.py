"""POST /v1/images: store an image for reuse by ``image_id`` (see :mod:`api.images`)."""


from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, UploadFile

from ..deps import deadline, get_runtime, read_upload
from ..runtime import Runtime, Upload
from ..schemas import ImageInfo
from ..settings import Settings
from ..workers import Deadline
from .common import IMAGE_DESCRIPTION, problems


def build(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["images"])

    @router.post(
        "/images",
        response_model=ImageInfo,
        summary="Store an image for reuse by image_id",
        responses=problems(400, 401, 408, 413, 415, 422, 503, 504),
    )
    async def upload_image(
        image: Annotated[UploadFile, File(description=IMAGE_DESCRIPTION)],
        upload: Upload = Depends(read_upload),
        runtime: Runtime = Depends(get_runtime),
        limit: Deadline = Depends(deadline("predict")),
    ) -> dict[str, Any]:
        """Decodes the image (the same checks as every analysis) and keeps it; computes nothing with a
        model. Every analysis endpoint then accepts `image_id=<the answer's image_id>` in the query
        string instead of the `image` field. Images are kept `ttl_s` seconds after their last use and
        within `XCEPTION_IMAGE_STORE_BYTES` (least recently used first out); an id that is gone answers
        404: upload again. (Analysis requests that send the image store it too.)"""
        stored = await runtime.inference_pool.run(runtime.describe, upload, deadline=limit, device=runtime.device)
        return {
            "image_id": stored.sha,
            "width": stored.width,
            "height": stored.height,
            "format": stored.format,
            "bytes": len(stored.data),
            "expires_at": datetime.fromtimestamp(stored.expires_at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "ttl_s": runtime.images.ttl_s,
        }

    return router
