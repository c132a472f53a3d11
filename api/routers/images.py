"""POST /v1/images: store an image for reuse by ``image_id``; GET /v1/images/{image_id}: its
bytes back, e.g. for a browser that opened a shared link (see :mod:`api.images`)."""


from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Header, Path, Response, UploadFile

from ..deps import deadline, get_runtime, read_upload
from ..images import IMAGE_ID_PATTERN
from ..runtime import Runtime, Upload, image_format
from ..schemas import ImageInfo
from ..settings import Settings
from ..workers import Deadline
from .common import IMAGE_DESCRIPTION, problems

#: The content type of each accepted format (``xception_core.decode.ALLOWED_FORMATS``, by
#: Pillow's names; a multi-picture JPEG is a JPEG); octet-stream for one whose format is unknown.
STORED_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "BMP": "image/bmp", "GIF": "image/gif", "TIFF": "image/tiff",
}


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

    @router.get(
        "/images/{image_id}",
        response_class=Response,
        summary="The bytes of a stored image",
        responses={
            200: {
                "description": "The image as it was uploaded (its format decides the content type).",
                "content": {
                    mime: {"schema": {"type": "string", "format": "binary"}}
                    for mime in (*dict.fromkeys(STORED_TYPES.values()), "application/octet-stream")
                },
            },
            304: {"description": "Not modified: the client's copy (`If-None-Match`) is this image."},
            **problems(401, 404, 422),
        },
    )
    def get_image(
        image_id: Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="The image's id (sha256 of its bytes, 64 lowercase hexadecimal digits).")],
        runtime: Runtime = Depends(get_runtime),
        if_none_match: Annotated[str | None, Header(max_length=200, description="An ETag this endpoint gave before.")] = None,
    ) -> Response:
        """The stored image's bytes, as uploaded, with its content type; its lifetime in the store is
        renewed as by any use. The id is the bytes' sha256, so the answer never changes: `ETag` is the
        id and `If-None-Match` with it answers 304. 404 when the image is gone: upload it again."""
        stored = runtime.images.require(image_id)
        tag = f'"{image_id}"'
        headers = {"ETag": tag, "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if if_none_match is not None and tag in (t.strip() for t in if_none_match.split(",")):
            return Response(status_code=304, headers=headers)
        mime = STORED_TYPES.get(stored.format or image_format(stored.data) or "", "application/octet-stream")
        return Response(stored.data, media_type=mime, headers=headers)

    return router
