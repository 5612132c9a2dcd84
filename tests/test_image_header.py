"""The header scan: sizes read by their declared types, and decoding costs refused up front."""
from __future__ import annotations

import random
import time
import tracemalloc

import numpy as np
import pytest

from tests import bombs, images
from inference.errors import InvalidImage
from inference.image_header import read_header
from inference.model_spec import ModelSpec
from inference.preprocess import (DEFAULT_MAX_DECODED_BYTES, DecodeLimits, decode_image,
                               decoded_bytes, prepare)

SPEC = ModelSpec(architecture="resnest50_fast_4s1x64d", input_size=128, output_kind="sigmoid",
                 melanoma_index=0, checkpoint_sha256="0" * 64, demo=True)


def test_tiff_width_typed_long8_is_read_from_its_offset() -> None:
    header = read_header(bombs.long8_tiff(width=12000, height=5000))
    assert (header.width, header.height) == (12000, 5000)


def test_long8_tiff_cannot_slip_under_the_pixel_limit() -> None:
    with pytest.raises(InvalidImage) as refused:
        decode_image(bombs.long8_tiff(width=12000, height=5000), max_pixels=50_000_000)
    assert refused.value.status == 413
    assert "12000x5000" in refused.value.message


def test_tiff_whose_strips_lie_outside_the_file_is_refused() -> None:
    data = bytearray(bombs.long8_tiff(width=400, height=300))
    # StripByteCounts (the last entry) claims ten times the file.
    entry = 8 + 2 + 12 * 8
    data[entry + 8:entry + 12] = (len(data) * 10).to_bytes(4, "little")
    with pytest.raises(InvalidImage, match="outside the file"):
        read_header(bytes(data))


def test_progressive_jpeg_with_thousands_of_scans_is_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidImage) as refused:
        decode_image(bombs.progressive_jpeg(scans=2000))
    assert time.perf_counter() - started < 1.0
    assert refused.value.status == 422 and "2001 scans" in refused.value.message


def test_ordinary_progressive_jpeg_is_read() -> None:
    photo = images.lesion_rgb(200, 150)
    import cv2

    ok, data = cv2.imencode(".jpg", photo[:, :, ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    header = read_header(data.tobytes())
    assert (header.width, header.height) == (200, 150)
    assert header.coefficients == 200 * 150 * 3 // 2  # 4:2:0: 1.5 samples a pixel
    assert decode_image(data.tobytes()).shape == (150, 200, 3)


def test_png_with_thousands_of_compressed_text_chunks_is_refused_at_once() -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidImage) as refused:
        decode_image(bombs.ztxt_png(count=1800))
    assert time.perf_counter() - started < 1.0
    assert refused.value.status == 422 and "compressed" in refused.value.message


def test_png_with_a_few_text_chunks_is_read() -> None:
    chunk = bombs.png_chunk(b"tEXt", b"Comment\x00a lesion")
    data = bombs.png(64, 48, color_type=2, chunks=[chunk] * 5)
    assert decode_image(data).shape == (48, 64, 3)


@pytest.mark.parametrize(("data", "mib"), [
    (lambda: bombs.rgba_png(16), 748), (lambda: bombs.rgba_png(8), 374),
    (bombs.rgba_webp, 374)])
def test_decoded_bytes_budget_refuses_before_allocating(data, mib: int) -> None:  # type: ignore[no-untyped-def]
    upload = data()
    assert round(decoded_bytes(read_header(upload)) / 2**20) == mib
    with pytest.raises(InvalidImage) as refused:
        decode_image(upload)
    assert refused.value.status == 413
    assert f"{mib} MiB" in refused.value.message


def test_budget_admits_a_40_megapixel_rgb_png() -> None:
    header = read_header(bombs.png(8000, 5000, color_type=2))
    assert decoded_bytes(header) <= DEFAULT_MAX_DECODED_BYTES


def test_limit_above_opencv_default_decodes_instead_of_failing() -> None:
    view = prepare(bombs.grey_jpeg(11000, 5000), SPEC, DecodeLimits(max_pixels=80_000_000))
    assert (view.width, view.height) == (11000, 5000)
    assert view.image.shape == (128, 128, 3)


def test_rgba_16_bit_converts_exactly_as_float_maths_would() -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 65536, (40, 50, 4), dtype=np.uint16)
    decoded = decode_image(images.encode(rgba, ".png"))
    eight = np.round(rgba.astype(np.float64) / 257.0)
    weight = eight[:, :, 3:] / 255.0
    expected = np.round(eight[:, :, :3] * weight + 255.0 * (1.0 - weight)).astype(np.uint8)
    assert np.array_equal(decoded, expected)


def _refusal(data: bytes) -> InvalidImage:
    with pytest.raises(InvalidImage) as refused:
        read_header(data)
    assert 400 <= refused.value.status < 500
    return refused.value


def test_tiff_tags_claiming_millions_of_values_cost_no_memory() -> None:
    # Before: ~2 GiB of tuples built from a 1 MiB upload (the worker was OOM-killed).
    data = bombs.tiff_tag_memory_bomb()
    tracemalloc.start()
    try:
        _refusal(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_tiff_repeating_one_tag_is_refused_without_reading_its_values() -> None:
    # Before: accepted after ~1 s of CPU per MiB (each repeat unpacked the whole file).
    started = time.process_time()
    error = _refusal(bombs.tiff_cpu_entries())
    assert time.process_time() - started < 0.2
    assert "700" in error.message


def test_tiff_width_with_no_value_is_a_clear_refusal() -> None:
    # Before: IndexError, a 500.
    assert "width" in _refusal(bombs.tiff_zero_count_width()).message


def test_jpeg_frame_with_no_components_is_a_clear_refusal() -> None:
    # Before: ValueError from max() of nothing, a 500.
    assert "component" in _refusal(bombs.jpeg_zero_components()).message


def test_tiff_with_absurd_strip_count_is_refused_by_arithmetic() -> None:
    side = 64
    offset = bombs._tiff_tail_offset(9)
    entries = bombs._grey_tiff_entries(side, offset)
    entries[5] = (273, 4, 3_000_000, offset)  # three million strip offsets for 64 rows
    entries[8] = (279, 4, 3_000_000, offset)
    data = bombs._tiff(entries, b"\x80" * (12 << 20))
    started = time.process_time()
    assert "strips" in _refusal(data).message
    assert time.process_time() - started < 0.2


def test_tiff_without_strips_or_tiles_is_refused() -> None:
    side = 64
    offset = bombs._tiff_tail_offset(7)
    entries = [e for e in bombs._grey_tiff_entries(side, offset) if e[0] not in (273, 279)]
    _refusal(bombs._tiff(entries, b"\x80" * side * side))


def test_good_tiff_still_reads() -> None:
    data = bombs.tiff_cpu_entries(extra=0)
    assert read_header(data) == read_header(data)
    header = read_header(data)
    assert (header.format, header.width, header.height) == ("TIFF", 64, 64)


@pytest.mark.parametrize("name", sorted(bombs.CRAFTED_HEADERS))
def test_every_truncation_and_byte_flip_of_a_crafted_header_is_a_4xx(name: str) -> None:
    """Whatever is cut or changed, the reader answers with a header or an InvalidImage."""
    data = bombs.CRAFTED_HEADERS[name]()
    head = data[:512]
    rng = random.Random(name)
    variants = [data[:cut] for cut in range(0, 200, 3)]
    for _ in range(300):
        flipped = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        variants.append(bytes(flipped) + data[512:4096])
    for variant in variants:
        try:
            read_header(variant)
        except InvalidImage as error:
            assert 400 <= error.status < 500
