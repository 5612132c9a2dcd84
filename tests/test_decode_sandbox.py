"""The decoder child: CPU, memory and wall-clock bounds hold whatever the decode does."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests import bombs, images
from inference.decode_sandbox import DecodeSandbox, SandboxLimits
from inference.errors import InvalidImage
from inference.image_header import ImageHeader
from inference.model_spec import ModelSpec
from inference.preprocess import DecodeLimits, ModelView, fit_to_input, prepare

SPEC = ModelSpec(architecture="resnest50_fast_4s1x64d", input_size=128, output_kind="sigmoid",
                 melanoma_index=0, checkpoint_sha256="0" * 64, demo=True)
LIMITS = DecodeLimits()


def _spin(data: bytes, spec: ModelSpec, limits: DecodeLimits) -> ModelView:
    while True:
        pass


def _hoard(data: bytes, spec: ModelSpec, limits: DecodeLimits) -> ModelView:
    blocks = [np.ones(64 << 20, np.uint8) for _ in range(64)]
    raise AssertionError(f"allocated {len(blocks)} x 64 MiB")


def _sleep(data: bytes, spec: ModelSpec, limits: DecodeLimits) -> ModelView:
    time.sleep(60)
    raise AssertionError("not killed")


@pytest.fixture
def sandbox() -> Iterator[DecodeSandbox]:
    box = DecodeSandbox(SandboxLimits(cpu_seconds=1, wall_seconds=6.0))
    box.start()
    yield box


def test_sandboxed_prepare_matches_in_process(sandbox: DecodeSandbox) -> None:
    data = images.encode(images.lesion_rgb(300, 200), ".png")
    view = sandbox.prepare(data, SPEC, LIMITS)
    assert (view.width, view.height) == (300, 200)
    assert np.array_equal(view.image, prepare(data, SPEC, LIMITS).image)


def test_refusal_in_the_child_keeps_its_status_and_message(sandbox: DecodeSandbox) -> None:
    with pytest.raises(InvalidImage) as refused:
        sandbox.prepare(bombs.rgba_png(16), SPEC, LIMITS)
    assert refused.value.status == 413 and "748 MiB" in refused.value.message


@pytest.mark.parametrize("task", [_spin, _hoard, _sleep])
def test_runaway_decode_is_stopped_and_the_next_one_works(task: object) -> None:
    box = DecodeSandbox(SandboxLimits(cpu_seconds=1, wall_seconds=3.0), task=task)  # type: ignore[arg-type]
    box.start()
    started = time.monotonic()
    with pytest.raises(InvalidImage) as refused:
        box.prepare(b"anything", SPEC, LIMITS)
    assert time.monotonic() - started < 3.5
    assert 400 <= refused.value.status < 500
    box.task = prepare
    view = box.prepare(images.encode(images.lesion_rgb(), ".jpg"), SPEC, LIMITS)
    assert view.image.shape == (128, 128, 3)


def test_decoder_messages_are_summarised_not_copied(sandbox: DecodeSandbox,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    data = images.encode(images.lesion_rgb(), ".jpg")
    # A JPEG with junk between its markers makes libjpeg warn ("extraneous bytes").
    noisy = data[:2] + b"\x00" * 50 + data[2:]
    with caplog.at_level(logging.WARNING, logger="inference.decode"):
        for _ in range(20):
            try:
                sandbox.prepare(noisy, SPEC, LIMITS)
            except InvalidImage:
                pass
    assert len(caplog.records) <= 6


def test_large_jpeg_is_decoded_reduced_and_reports_its_full_size() -> None:
    data = bombs.large_photo_jpeg()
    view = prepare(data, dataclasses.replace(SPEC, jpeg_reduced_decode_min_ratio=2), LIMITS)
    assert (view.width, view.height) == (4000, 3000)
    full = fit_to_input(prepare_full(data), SPEC)
    # The same picture at the same framing (reduced decoding antialiases; bench/decode.py
    # measures what that does to the probability).
    assert np.abs(view.image.astype(int) - full.astype(int)).mean() < 4.0


def prepare_full(data: bytes) -> np.ndarray:
    from inference.preprocess import decode_image

    return decode_image(data)


def test_jpeg_beyond_the_memory_budget_is_decoded_reduced_not_refused() -> None:
    # 50 MP in full is 286 MiB at the decoder's peak, over the 256 MiB budget.
    view = prepare(bombs.grey_jpeg(10000, 5000), SPEC, LIMITS)
    assert (view.width, view.height) == (10000, 5000)
    assert view.image.shape == (128, 128, 3)


def _fork_server_pid(box: DecodeSandbox) -> int:
    server = box._server
    assert server is not None
    return server.pid


def test_frozen_fork_server_is_replaced_and_the_upload_still_decoded(
        sandbox: DecodeSandbox) -> None:
    # Before: every upload waited the whole wall-clock limit and got 422 "re-save it".
    data = images.encode(images.lesion_rgb(), ".jpg")
    sandbox.prepare(data, SPEC, LIMITS)
    frozen = _fork_server_pid(sandbox)
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        view = sandbox.prepare(data, SPEC, LIMITS)
        assert view.image.shape == (128, 128, 3)
        assert time.monotonic() - started < 6.0
        assert _fork_server_pid(sandbox) != frozen
    finally:
        _kill_quietly(frozen)


def test_health_tells_of_a_frozen_fork_server_and_restores_it(sandbox: DecodeSandbox) -> None:
    assert sandbox.health() == ""
    frozen = _fork_server_pid(sandbox)
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert "restart" in sandbox.health()
        deadline = time.monotonic() + 20
        while sandbox.health() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sandbox.health() == ""
        assert _fork_server_pid(sandbox) != frozen
    finally:
        _kill_quietly(frozen)


def test_health_waits_for_a_starting_fork_server_without_killing_it() -> None:
    box = DecodeSandbox()
    box.start()
    first = _fork_server_pid(box)
    reasons = {box.health() for _ in range(3)}
    assert reasons <= {"", "the image decoder is starting"}
    assert _fork_server_pid(box) == first


def test_headers_are_read_in_the_child(sandbox: DecodeSandbox,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import inference.image_header

    def forbidden(data: bytes) -> object:
        raise AssertionError("a header was read in the worker")

    monkeypatch.setattr(inference.image_header.read_header, "__code__", forbidden.__code__)
    good = images.encode(images.lesion_rgb(300, 200), ".png")
    read = sandbox.read_headers([good, bombs.tiff_tag_memory_bomb(), b""])
    assert isinstance(read[0], ImageHeader) and (read[0].width, read[0].height) == (300, 200)
    assert isinstance(read[1], InvalidImage) and 400 <= read[1].status < 500
    assert isinstance(read[2], InvalidImage) and read[2].code == "empty_image"


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
