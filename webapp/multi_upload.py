"""Reading several photos from one form or API request, within the server's bounds."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from inference.errors import ClientError
from webapp.uploads import refuse_malformed_parts
from webapp.wording import display_name

FIELD = "images"
DEFAULT_MAX_IMAGES = 6
DEFAULT_MAX_TOTAL_PIXELS = 100_000_000  # summed over a request's photos, in the sandbox


@dataclass(frozen=True)
class NamedUpload:
    filename: str
    data: bytes


def read_images(request: Request, max_images: int, min_images: int = 1) -> list[NamedUpload]:
    """Every file of the `images` field, refused as a whole when there are too few or many.

    Only bytes are moved here: headers and pixels are read in the decode sandbox
    (PredictionService.predict_each), never in the worker. The request's bytes are
    bounded by MAX_CONTENT_LENGTH before this runs.
    """
    if not request.mimetype.startswith("multipart/form-data"):
        raise ClientError(f"send the images as multipart/form-data in a field named {FIELD!r}",
                          code="unsupported_content_type", status=415)
    refuse_malformed_parts(request, FIELD)
    files = [f for f in request.files.getlist(FIELD) if f.filename or f.content_length]
    if not files:
        raise ClientError(f"no images uploaded: expected files in the field {FIELD!r}",
                          code="missing_image")
    if len(files) > max_images:
        raise ClientError(f"send at most {max_images} photos at once; got {len(files)}",
                          code="too_many_images", status=413)
    if len(files) < min_images:
        raise ClientError(f"choose at least {min_images} photos to compare; got {len(files)}",
                          code="too_few_images")
    uploads = []
    for number, part in enumerate(files, start=1):
        name = display_name(part.filename, f"photo-{number}")
        data = part.stream.read()
        if not data:
            raise ClientError(f"{name}: the file is empty", code="empty_image")
        uploads.append(NamedUpload(name, data))
    return uploads


def upload_name(request: Request, field: str) -> str:
    part = request.files.get(field)
    return (part.filename if part is not None and part.filename else "photo")[:120]
