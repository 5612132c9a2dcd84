"""Uploads stay in memory: never spooled to disk, never logged, never kept."""
from __future__ import annotations

import io
from typing import IO

from flask import Request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest

from inference.errors import BadOption, ClientError

FIELD = "image"


class InMemoryRequest(Request):
    """Werkzeug spools file parts over 500 KB to a temp file; keep them in RAM instead.

    MAX_CONTENT_LENGTH bounds the size, so memory is bounded too.
    """

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()

    def _load_form_data(self) -> None:
        # gunicorn raises its own errors from the body stream (a malformed chunk size, a
        # body that ends early); they are the client's fault, not a server error.
        try:
            super()._load_form_data()
        except (ParseException, NoMoreData):
            raise BadRequest("The request body is malformed.") from None


def read_image(request: Request) -> bytes:
    """The bytes of the single `image` file part, or a ClientError saying what is wrong."""
    if not request.mimetype.startswith("multipart/form-data"):
        raise ClientError(f"send the image as multipart/form-data in a field named {FIELD!r} "
                          f"(got content type {request.mimetype or 'none'!r})",
                          code="unsupported_content_type", status=415)
    refuse_malformed_parts(request, FIELD)
    uploads = request.files.getlist(FIELD)
    if not uploads:
        others = sorted(request.files)
        hint = f"; the request had {', '.join(map(repr, others))}" if others else ""
        raise ClientError(f"no image uploaded: expected a file in the field {FIELD!r}{hint}",
                          code="missing_image")
    if len(uploads) > 1:
        raise ClientError(f"send one image per request; got {len(uploads)}",
                          code="multiple_images")
    # An empty file is refused by preprocess.decode_image, like any other unreadable image.
    data: bytes = uploads[0].stream.read()
    return data


def refuse_malformed_parts(request: Request, field: str) -> None:
    """Refuse a request where a part of the file field arrived as a plain value.

    The multipart parser reads a part whose header it cannot follow (a line break inside
    its filename, say) as a form value without a file; dropped silently, a patient's photo
    would go missing from the analysis without a word.
    """
    stray = len(request.form.getlist(field))
    if stray:
        raise ClientError(f"{stray} part{'s' if stray > 1 else ''} of the field {field!r} "
                          "arrived without a readable file name (a malformed part header, such "
                          "as a line break in the filename); nothing was analysed. Rename the "
                          "file and send it again", code="malformed_part")


def read_flag(request: Request, name: str, default: bool) -> bool:
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise BadOption(f"{name} must be true or false, got {raw!r}")
