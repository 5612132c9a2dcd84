"""Identify an upload's format, pixel dimensions and decoded layout from its bytes, before
any decoding, and refuse structures whose decoding cost the header already shows.

A 100 KB PNG can claim 30000x30000 pixels, a 20 KB JPEG can hold 2,000 scans that each
cost a full pass, and a PNG can carry thousands of compressed text chunks that libpng
inflates one by one: all of it is visible here, before a decoder allocates or loops.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from inference.errors import InvalidImage, UnsupportedImageType

# A libjpeg progressive JPEG has 10 scans, mozjpeg's about 20; each scan is a full pass.
MAX_JPEG_SCANS = 100
# Ancillary PNG chunks that libpng inflates (text, ICC profile): each may cost ~8 MB of work.
MAX_PNG_COMPRESSED_CHUNKS = 16
MAX_PNG_ANCILLARY_CHUNKS = 256
MAX_PNG_ANCILLARY_BYTES = 4 << 20
# Encoders split IDAT at 8-64 KB; this bounds the walk over a 16 MB upload's chunks.
MAX_PNG_CHUNKS = 65536
MAX_TIFF_ENTRIES = 256

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
    """What the file says it holds; `channels` counts alpha where the format may carry it."""

    format: str
    width: int
    height: int
    channels: int = 3
    bytes_per_channel: int = 1
    # DCT coefficients a progressive JPEG keeps in memory (2 bytes each) until its last
    # scan, whatever the scale it is decoded at; 0 for other images.
    coefficients: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)


def read_header(data: bytes) -> ImageHeader:
    """Format, dimensions and layout, or an error saying what the bytes are instead."""
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


def _too_complex(message: str) -> InvalidImage:
    return InvalidImage(message, code="image_too_complex", status=422)


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
            _check_jpeg_scans(data, position)
            progressive = marker in (0xC2, 0xC6, 0xCA, 0xCE)
            samples = _jpeg_samples_per_pixel(data[position + 9:position + 2 + length])
            return ImageHeader("JPEG", width, height, 3, 1,
                               coefficients=int(width * height * samples) if progressive else 0)
        if marker == 0xD9 or length < 2:
            break
        position += 2 + length
    raise InvalidImage("the JPEG is truncated or corrupt: no frame header found")


def _jpeg_samples_per_pixel(frame: bytes) -> float:
    """Samples per pixel over all components: 1.5 for 4:2:0 colour, 3 for 4:4:4."""
    if not frame:
        raise InvalidImage("the JPEG frame header is truncated")
    count = frame[0]
    if not 1 <= count <= 4:
        raise InvalidImage(f"the JPEG frame header is corrupt: it lists {count} colour "
                           "components (a photo has 1 to 4)")
    factors = [(frame[2 + 3 * i] >> 4, frame[2 + 3 * i] & 15) for i in range(count)
               if 2 + 3 * i < len(frame)]
    if len(factors) != count or not all(h and v for h, v in factors):
        raise InvalidImage("the JPEG frame header is corrupt (component sampling)")
    widest, tallest = max(h for h, _ in factors), max(v for _, v in factors)
    return sum(h * v for h, v in factors) / (widest * tallest)


def _check_jpeg_scans(data: bytes, frame: int) -> None:
    # Entropy-coded data stuffs every 0xFF with 0x00, so each FF DA after the frame header
    # is a start-of-scan marker (an EXIF thumbnail's own scans precede the frame).
    scans = data.count(b"\xff\xda", frame)
    if scans > MAX_JPEG_SCANS:
        raise _too_complex(f"the JPEG has {scans} scans; photos have at most a few dozen "
                           f"(limit {MAX_JPEG_SCANS}). Re-save it as a baseline JPEG")


def _png(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InvalidImage("the PNG is truncated or corrupt: no IHDR header")
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    transparency = _walk_png_chunks(data)
    channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}.get(color_type)
    if channels is None:
        raise InvalidImage(f"the PNG has an invalid colour type {color_type}")
    if transparency and channels in (1, 3):
        channels = 4
    # Greyscale without alpha decodes straight to RGB: three channels of output.
    return ImageHeader("PNG", width, height, max(channels, 3), 2 if depth == 16 else 1)


def _walk_png_chunks(data: bytes) -> bool:
    """Check chunk counts and sizes; True where a tRNS chunk adds alpha."""
    position, chunks, ancillary, ancillary_bytes, compressed = 8, 0, 0, 0, 0
    transparency = False
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunks += 1
        if kind == b"IEND":
            break
        if kind == b"tRNS":
            transparency = True
        if kind[0] & 0x20:  # lower-case first letter: ancillary
            ancillary += 1
            ancillary_bytes += length
            compressed += kind in (b"zTXt", b"iTXt", b"iCCP")
        if (ancillary > MAX_PNG_ANCILLARY_CHUNKS or ancillary_bytes > MAX_PNG_ANCILLARY_BYTES
                or compressed > MAX_PNG_COMPRESSED_CHUNKS or chunks > MAX_PNG_CHUNKS):
            raise _too_complex(
                "the PNG carries too much besides the picture (text, profiles or chunks: "
                f"{ancillary} ancillary chunks of {ancillary_bytes} bytes, {compressed} "
                f"compressed); limits {MAX_PNG_ANCILLARY_CHUNKS} chunks, "
                f"{MAX_PNG_ANCILLARY_BYTES >> 20} MB, {MAX_PNG_COMPRESSED_CHUNKS} compressed. "
                "Re-save the image without metadata")
        position += 12 + length
    return transparency


def _gif(data: bytes) -> ImageHeader | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    if len(data) < 10:
        raise InvalidImage("the GIF is truncated")
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("GIF", width, height, 4)


def _bmp(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    (dib_size,) = struct.unpack("<I", data[14:18])
    if dib_size == 12:
        width, height = struct.unpack("<HH", data[18:22])
        return ImageHeader("BMP", width, height)
    width, height = struct.unpack("<ii", data[18:26])
    bits = struct.unpack("<H", data[28:30])[0] if len(data) >= 30 else 24
    return ImageHeader("BMP", abs(width), abs(height), 4 if bits == 32 else 3)


def _webp(data: bytes) -> ImageHeader | None:
    if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("WebP", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= 25:
        (bits,) = struct.unpack("<I", data[21:25])
        alpha = bool(bits >> 28 & 1)
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1,
                           4 if alpha else 3)
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WebP", width, height, 4 if data[20] & 0x10 else 3)
    raise InvalidImage("the WebP is truncated or corrupt")


# Bytes per value of every TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE,
# UNDEFINED, SSHORT, SLONG, SRATIONAL, FLOAT, DOUBLE, IFD, LONG8, SLONG8, IFD8).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
                    13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_UNSIGNED = {1: "u1", 3: "u2", 4: "u4", 16: "u8"}  # the types a size or offset may have
_TIFF_NAMES = {256: "image width", 257: "image height", 258: "bits per sample",
               277: "samples per pixel", 273: "strip offsets", 279: "strip byte counts",
               324: "tile offsets", 325: "tile byte counts"}
_TIFF_SINGLE = (256, 257, 277)   # one value each; only the first is read
_TIFF_LISTS = (273, 279, 324, 325)
# A 100 MP image stored one row per strip, four planes, has 40,000 strips; photos have a
# few hundred. Past this a file's layout is refused without reading its list.
MAX_TIFF_STRIPS = 1 << 16


def _tiff(data: bytes) -> ImageHeader | None:
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    try:
        tags, extra_samples = _tiff_tags(data, order)
    except struct.error:
        raise InvalidImage("the TIFF is truncated or corrupt") from None
    if 256 not in tags or 257 not in tags:
        raise InvalidImage("the TIFF has no image dimensions")
    return _tiff_header(data, tags, extra_samples)


def _tiff_tags(data: bytes, order: str) -> tuple[dict[int, np.ndarray], bool]:
    """The few tags the header needs, read from the first directory, and whether it lists
    extra (alpha) samples.

    Sizes are checked by arithmetic on each entry's type and count before any value is
    read, and no other tag's values are ever read: a small file cannot make this allocate
    or loop over more than it holds.
    """
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    if count > MAX_TIFF_ENTRIES:
        raise _too_complex(f"the TIFF directory has {count} entries (limit {MAX_TIFF_ENTRIES})")
    tags: dict[int, np.ndarray] = {}
    seen: set[int] = set()
    for index in range(count):
        entry = data[offset + 2 + 12 * index: offset + 14 + 12 * index]
        tag, kind, number = struct.unpack(order + "HHI", entry[:8])
        if tag in seen:
            raise InvalidImage(f"the TIFF is corrupt: its directory lists tag {tag} twice")
        seen.add(tag)
        if _TIFF_TYPE_SIZES.get(kind, 1) * number > len(data):
            raise InvalidImage(f"the TIFF tag {tag} claims {number} values, more than the file")
        if tag in _TIFF_NAMES:
            tags[tag] = _tiff_values(data, order, entry, tag, kind, number)
    return tags, 338 in seen


def _tiff_values(data: bytes, order: str, entry: bytes, tag: int, kind: int,
                 number: int) -> np.ndarray:
    name = _TIFF_NAMES[tag]
    if kind not in _TIFF_UNSIGNED:
        raise InvalidImage(f"the TIFF's {name} tag has field type {kind}, not an integer")
    if number == 0:
        raise InvalidImage(f"the TIFF's {name} tag holds no value")
    if tag in _TIFF_SINGLE:
        number = 1
    elif tag == 258 and number > 4:
        raise InvalidImage(f"the TIFF lists {number} bit depths; a pixel has at most 4 samples")
    elif tag in _TIFF_LISTS and number > MAX_TIFF_STRIPS:
        raise _too_complex(f"the TIFF is stored in {number} strips or tiles (limit "
                           f"{MAX_TIFF_STRIPS}); re-save it as a JPEG or PNG")
    size = _TIFF_TYPE_SIZES[kind] * number
    if size <= 4:
        raw = entry[8:8 + size]
    else:
        (where,) = struct.unpack(order + "I", entry[8:12])
        raw = data[where:where + size]
    if len(raw) < size:
        raise InvalidImage(f"the TIFF's {name} lie outside the file")
    return np.frombuffer(raw, np.dtype(order + _TIFF_UNSIGNED[kind]), number).astype(np.int64)


def _tiff_header(data: bytes, tags: dict[int, np.ndarray], extra_samples: bool) -> ImageHeader:
    width, height = int(tags[256][0]), int(tags[257][0])
    samples = int(tags[277][0]) if 277 in tags else 1
    bits = [int(b) for b in tags[258]] if 258 in tags else [1]
    if not 1 <= samples <= 4 or len(bits) not in (1, samples):
        raise InvalidImage(f"the TIFF's tags are inconsistent: {samples} samples a pixel "
                           f"with {len(bits)} bit depths")
    if any(b not in (1, 2, 4, 8, 16, 32) for b in bits) or len(set(bits)) != 1:
        raise InvalidImage(f"the TIFF has unsupported bit depths {sorted(set(bits))}")
    counts, offsets = _tiff_layout(tags)
    if (not len(counts) or len(counts) != len(offsets) or int(counts.sum()) > len(data)
            or bool(np.any(offsets + counts > len(data)))):
        raise InvalidImage("the TIFF's tags are inconsistent: its strips or tiles lie "
                           "outside the file")
    alpha = samples in (2, 4) or extra_samples
    return ImageHeader("TIFF", width, height, 4 if alpha else 3,
                       {16: 2, 32: 4}.get(bits[0], 1))


def _tiff_layout(tags: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Byte counts and offsets of the strips, or of the tiles."""
    empty = np.zeros(0, np.int64)
    counts = np.concatenate([tags.get(279, empty), tags.get(325, empty)])
    offsets = np.concatenate([tags.get(273, empty), tags.get(324, empty)])
    return counts, offsets
