"""Identify an upload's format and pixel dimensions from its first bytes, before any decoding.

A 100 KB PNG can claim 30000x30000 pixels; reading the header lets us refuse it
without allocating the 2.7 GB a decoder would ask for.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from webapp.errors import InvalidImage, UnsupportedImageType

_NOT_IMAGES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML/SVG document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
)


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_header(data: bytes) -> ImageHeader:
    """Format and dimensions, or an error saying what the bytes are instead."""
    head = data[:32]
    for parse in (_jpeg, _png, _gif, _bmp, _webp, _tiff):
        header = parse(data)
        if header is not None:
            if header.width <= 0 or header.height <= 0:
                raise InvalidImage(f"the {header.format} header declares an empty image")
            return header
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif", b"ftyphevc"):
        raise UnsupportedImageType("HEIC/AVIF photos are not supported; export the photo as "
                                   "JPEG or PNG (on iPhone: Settings > Camera > Most Compatible)")
    lowered = head.lstrip().lower()
    for signature, what in _NOT_IMAGES:
        if lowered.startswith(signature.lower()):
            raise UnsupportedImageType(f"the file is {what}, not a photo; upload a JPEG, PNG, "
                                       "WebP, TIFF, BMP or GIF image")
    raise UnsupportedImageType("the file is not an image format we read (JPEG, PNG, WebP, "
                               "TIFF, BMP or GIF)")


def _jpeg(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            raise InvalidImage("the JPEG is corrupt: bad marker before the frame header")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return ImageHeader("JPEG", width, height)
        if marker == 0xD9 or length < 2:
            break
        position += 2 + length
    raise InvalidImage("the JPEG is truncated or corrupt: no frame header found")


def _png(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImage("the PNG is truncated or corrupt: no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("PNG", width, height)


def _gif(data: bytes) -> ImageHeader | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    if len(data) < 10:
        raise InvalidImage("the GIF is truncated")
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("GIF", width, height)


def _bmp(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return ImageHeader("BMP", abs(width), abs(height))


def _webp(data: bytes) -> ImageHeader | None:
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25:
        (bits,) = struct.unpack("<I", data[21:25])
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WebP", width, height)
    raise InvalidImage("the WebP is truncated or corrupt")


def _tiff(data: bytes) -> ImageHeader | None:
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    try:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset:offset + 2])
        size: dict[int, int] = {}
        for index in range(count):
            entry = data[offset + 2 + 12 * index: offset + 14 + 12 * index]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):
                fmt = "H" if kind == 3 else "I"
                (size[tag],) = struct.unpack(order + fmt, entry[8:8 + struct.calcsize(fmt)])
    except struct.error:
        raise InvalidImage("the TIFF is truncated or corrupt") from None
    if 256 not in size or 257 not in size:
        raise InvalidImage("the TIFF has no image dimensions")
    return ImageHeader("TIFF", size[256], size[257])
