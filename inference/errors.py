"""Domain errors of the core: each carries the HTTP status and a machine-readable code that
the web layer's blueprints answer with."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model cannot be served: missing, unreadable, or its spec contradicts its graph."""


class ClientError(Exception):
    """A request the server refuses; `message` is safe to show to the user."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class InvalidImage(ClientError):
    """The upload is not an image we can decode, or not one we will decode."""

    status = 422
    code = "invalid_image"


class UnsupportedImageType(InvalidImage):
    status = 415
    code = "unsupported_media_type"


class BadOption(ClientError):
    code = "invalid_option"
