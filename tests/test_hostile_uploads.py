"""Hostile and odd uploads through the production-shaped stack (nginx site, shipped gunicorn),
through the form and the API.

Every case gets the right status and a message a person can act on, valid images get the
same prediction the classifier gives in-process, the worker never restarts, and its memory
stays bounded.
"""
from __future__ import annotations

import html
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests import images
from devtools.procs import rss_mib
from devtools.server import LiveServer, Reply, Upload, multipart
from devtools.stack import serve_stack
from inference import preprocess
from inference.classifier import Classifier
from webapp.wording import display_name

pytestmark = pytest.mark.slow

LESION = images.lesion_rgb(320, 240)
# Headroom for one 20 MP photo decoded at once, plus allocator slack; an upload that is
# kept, leaked or decoded in full several times over goes past it.
RSS_GROWTH_LIMIT_MIB = 100.0


def _jpeg(image: np.ndarray = LESION, **params: int) -> bytes:
    return images.encode(image, ".jpg", **params)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header claims a huge image; its data is a few zero rows."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width * 3 + 1) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND", b""))


def _pil(image: Image.Image, fmt: str, **params: object) -> bytes:
    stream = io.BytesIO()
    image.save(stream, fmt, **params)
    return stream.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.fromarray(LESION), Image.fromarray(255 - LESION)]
    return _pil(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                loop=0)


def _multipage_tiff() -> bytes:
    pages = [Image.fromarray(LESION), Image.fromarray(LESION[::-1].copy())]
    return _pil(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _png16() -> bytes:
    return images.encode((LESION.astype(np.uint16) * 257), ".png")


def _large_photo() -> bytes:
    # 20 MP, the size of a phone photo; smooth so the JPEG itself stays a few MB.
    small = images.lesion_rgb(500, 400, seed=3)
    return _jpeg(cv2.resize(small, (5000, 4000), interpolation=cv2.INTER_LINEAR), quality=80)


@dataclass(frozen=True)
class Case:
    """An upload and what a client must get back; `width`/`height` mark a valid image."""

    name: str
    files: Callable[[], list[Upload]]
    status: int
    code: str | None = None
    width: int | None = None
    height: int | None = None
    fields: tuple[tuple[str, str], ...] = ()


def _one(data: Callable[[], bytes], filename: str = "lesion.jpg",
         content_type: str = "image/jpeg") -> Callable[[], list[Upload]]:
    return lambda: [Upload(filename, data(), content_type)]


CASES = [
    Case("zero_byte_file", _one(lambda: b""), 400, "empty_image"),
    Case("text_renamed_jpg", _one(lambda: b"just some notes\n" * 40), 415,
         "unsupported_media_type"),
    Case("pdf_renamed_jpg", _one(lambda: b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n"), 415,
         "unsupported_media_type"),
    Case("svg_renamed_jpg", _one(lambda: b'<svg xmlns="http://www.w3.org/2000/svg" '
                                         b'width="9000" height="9000"></svg>'), 415,
         "unsupported_media_type"),
    Case("html_renamed_jpg", _one(lambda: b"<!DOCTYPE html><script>alert(1)</script>"), 415,
         "unsupported_media_type"),
    Case("truncated_jpeg", _one(lambda: _jpeg()[: len(_jpeg()) * 6 // 10]), 422,
         "truncated_image"),
    Case("truncated_png", _one(lambda: images.encode(LESION, ".png")[:5000], "a.png",
                               "image/png"), 422, "truncated_image"),
    Case("png_claiming_30000x30000", _one(lambda: _png_claiming(30000, 30000), "bomb.png",
                                          "image/png"), 413, "image_too_large"),
    Case("one_pixel_png", _one(lambda: images.encode(LESION[:1, :1], ".png"), "dot.png",
                               "image/png"), 422, "image_too_small"),
    Case("large_20mp_photo", _one(_large_photo), 200, width=5000, height=4000),
    Case("animated_gif", _one(_animated_gif, "a.gif", "image/gif"), 200, width=320, height=240),
    Case("multipage_tiff", _one(_multipage_tiff, "a.tiff", "image/tiff"), 200, width=320,
         height=240),
    Case("png_16_bit", _one(_png16, "deep.png", "image/png"), 200, width=320, height=240),
    Case("cmyk_jpeg", _one(lambda: _pil(Image.fromarray(LESION).convert("CMYK"), "JPEG")), 200,
         width=320, height=240),
    Case("grayscale_jpeg", _one(lambda: images.encode(
        cv2.cvtColor(LESION, cv2.COLOR_RGB2GRAY), ".jpg")), 200, width=320, height=240),
    Case("rgba_png", _one(lambda: images.encode(
        np.dstack([LESION, np.full(LESION.shape[:2], 128, np.uint8)]), ".png"), "a.png",
        "image/png"), 200, width=320, height=240),
    Case("webp", _one(lambda: images.encode(LESION, ".webp"), "a.webp", "image/webp"), 200,
         width=320, height=240),
    Case("bmp", _one(lambda: images.encode(LESION, ".bmp"), "a.bmp", "image/bmp"), 200,
         width=320, height=240),
    # Stored 320x240 with orientation 6 (rotate 90 clockwise): upright it is 240 wide.
    Case("exif_rotated_phone_photo", _one(lambda: images.jpeg_with_exif_orientation(
        LESION, 6)), 200, width=240, height=320),
    Case("content_type_lies", _one(_jpeg, "photo.png", "image/png"), 200, width=320,
         height=240),
    Case("path_traversal_filename", _one(_jpeg, "../../../../etc/cron.d/x.jpg"), 200,
         width=320, height=240),
    Case("very_long_filename", _one(_jpeg, "a" * 4000 + ".jpg"), 200, width=320, height=240),
    Case("non_ascii_filename", _one(_jpeg, "päivä_日本語_\u202e_🙂.jpg"), 200, width=320,
         height=240),
    Case("missing_file_field", list, 400, "missing_image", fields=(("tta", "none"),)),
    Case("wrongly_named_field", lambda: [Upload("a.jpg", _jpeg(), field="file")], 400,
         "missing_image"),
    Case("two_files", lambda: [Upload("a.jpg", _jpeg()), Upload("b.jpg", _jpeg())], 400,
         "multiple_images"),
]


@pytest.fixture(scope="module")
def server(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    yield from serve_stack(tiny_onnx_model, tmp_path_factory.mktemp("hostile-stack"))


@pytest.fixture(scope="module")
def reference(tiny_onnx_model: Path) -> Classifier:
    return Classifier(tiny_onnx_model)


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[int]:
    """The worker serving the suite; it must be the same one, not a replacement, at the end."""
    (pid,) = server.worker_pids()
    assert server.post_api([Upload("warm.jpg", _jpeg())]).status == 200
    baseline = rss_mib(pid)
    yield pid
    assert server.worker_pids() == [pid], "the worker died or was replaced during the suite"
    growth = rss_mib(pid) - baseline
    print(f"\nworker RSS {baseline:.0f} MiB -> {baseline + growth:.0f} MiB "
          f"(+{growth:.0f} MiB) after the hostile suite")
    assert growth < RSS_GROWTH_LIMIT_MIB


def _check_refusal(reply: Reply, case: Case, via: str) -> None:
    assert reply.status == case.status, reply.text[:500]
    if via == "api":
        body = reply.json()
        assert body["error"] == case.code
        assert len(body["message"]) > 15
    else:
        assert "Could not analyse the image" in reply.text
        assert reply.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("via", ["api", "form"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_upload_gets_a_clear_answer(server: LiveServer, worker: int,
                                            reference: Classifier, case: Case,
                                            via: str) -> None:
    files = case.files()
    fields = dict(case.fields)
    if via == "api":
        reply = server.post_api(files, fields)
    else:
        reply = server.form_session().post(files, fields)
    if case.width is None:
        _check_refusal(reply, case, via)
    else:
        assert reply.status == 200, reply.text[:500]
        expected = reference.predict(preprocess.decode_image(files[0].data))
        if via == "api":
            body = reply.json()
            assert body["image"] == {"width": case.width, "height": case.height}
            assert body["probability"] == pytest.approx(expected.probability, abs=1e-5)
        else:
            assert f"your {case.width}&times;{case.height} photo" in reply.text
            shown = re.search(r'class="probability" value="([0-9.e-]+)"', reply.text)
            assert shown is not None
            assert float(shown[1]) == pytest.approx(expected.probability, abs=1e-5)
            assert 'class="heatmap"' in reply.text
    for upload in files:
        # The name a client chose is echoed only in safe characters (results are named after
        # the upload): never markup, a path or a direction trick.
        if len(upload.filename) > 8 and upload.filename != display_name(upload.filename):
            assert upload.filename not in reply.text
            assert html.escape(upload.filename) not in reply.text
    assert server.get("/healthz").status == 200


def test_api_refuses_empty_body(server: LiveServer, worker: int) -> None:
    reply = server.request("POST", "/api/v1/predict", b"",
                           {"Content-Type": "multipart/form-data; boundary=x"})
    assert reply.status == 400 and reply.json()["error"] == "missing_image"


def test_form_refuses_empty_body_as_expired_form(server: LiveServer, worker: int) -> None:
    session = server.form_session()
    reply = server.request("POST", "/predict", b"",
                           {"Content-Type": "multipart/form-data; boundary=x",
                            "Cookie": session.cookie})
    assert reply.status == 400
    assert "reload the page" in reply.text


def test_form_without_csrf_token_is_refused(server: LiveServer, worker: int) -> None:
    body, content_type = multipart({}, [Upload("a.jpg", _jpeg())])
    reply = server.request("POST", "/predict", body, {"Content-Type": content_type})
    assert reply.status == 400 and "did not come from this site" in reply.text


@pytest.mark.parametrize("content_type,body", [
    ("application/json", b'{"image": "/9j/4AAQSkZJRgABAQ"}'),
    ("image/jpeg", _jpeg()),
    ("application/x-www-form-urlencoded", b"image=%FF%D8%FF"),
    ("text/plain", b"hello"),
])
def test_api_refuses_wrong_content_type(server: LiveServer, worker: int, content_type: str,
                                        body: bytes) -> None:
    reply = server.request("POST", "/api/v1/predict", body, {"Content-Type": content_type})
    assert reply.status == 415
    assert reply.json()["error"] == "unsupported_content_type"
    assert "multipart/form-data" in reply.json()["message"]


def test_form_refuses_urlencoded_post(server: LiveServer, worker: int) -> None:
    session = server.form_session()
    reply = server.request("POST", "/predict", f"csrf_token={session.token}&image=x".encode(),
                           {"Content-Type": "application/x-www-form-urlencoded",
                            "Cookie": session.cookie})
    assert reply.status == 415 and "multipart/form-data" in reply.text


# nginx refuses it (the rendered site), naming the limit it shares with the app.
LIMIT_TEXT = f"{16 * 1024 * 1024} bytes"


@pytest.mark.parametrize("via", ["api", "form"])
def test_oversized_body_is_refused_with_413(server: LiveServer, worker: int, via: str) -> None:
    junk = Upload("big.jpg", b"\xff\xd8" + bytes(17 * 1024 * 1024))
    if via == "api":
        reply = server.post_api([junk])
        assert reply.status == 413 and reply.json()["error"] == "request_entity_too_large"
        assert LIMIT_TEXT in reply.json()["message"]
    else:
        reply = server.form_session().post([junk])
        assert reply.status == 413 and LIMIT_TEXT in reply.text
        assert 'role="alert"' in reply.text and 'href="/"' in reply.text
    assert reply.seconds < 10
    assert server.get("/healthz").status == 200


def test_oversized_chunked_body_is_refused_with_413(server: LiveServer, worker: int) -> None:
    # No Content-Length to check up front: the limit must hold while the body streams in.
    import http.client

    body, content_type = multipart({}, [Upload("big.jpg", b"\xff\xd8" + bytes(17 << 20))])
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", "/api/v1/predict")
        connection.putheader("Content-Type", content_type)
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            for offset in range(0, len(body), 1 << 20):
                chunk = body[offset:offset + (1 << 20)]
                connection.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            connection.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        assert response.status == 413
        response.read()
    finally:
        connection.close()
    assert server.get("/healthz").status == 200
