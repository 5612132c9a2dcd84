"""Domain errors of the core: each carries the HTTP status and a machine-readable code that
the web layer's blueprints answer with."""
from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model cannot be served: missing, unreadable, or its spec contradicts its graph."""


class ClientError(Exception):
    """A request the server refuses; `message` is safe to show to the user."""

    status = 400
    code = "bad_request"
    # Seconds after which the same request may succeed, for a refusal that is temporary.
    retry_after: int | None = None
    # Which of a request's several photos the refusal is about, where it is about one.
    photo_index: int | None = None

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidImage(ClientError):
    """The upload is not an image we can decode, or not one we will decode."""

    status = 422
    code = "invalid_image"


class UnsupportedImageType(InvalidImage):
    status = 415
    code = "unsupported_media_type"


class BadOption(ClientError):
    code = "invalid_option"


class DecoderUnavailable(ClientError):
    """The decoding process is being replaced; the same upload will work in a moment."""

    status = 503
    code = "decoder_unavailable"
    retry_after = 2

    def __init__(self) -> None:
        super().__init__("The image decoder is restarting; send the photo again in a few "
                         "seconds.")
