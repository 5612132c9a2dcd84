"""Decoding large JPEGs at reduced scale: the area fit that makes it faithful, the
measurement that decides it per model, and the spec that records it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from export import reduced_decode
from inference import preprocess
from inference.classifier import Classifier
from inference.model_spec import ModelSpec, read_spec_file

SPEC = ModelSpec(architecture="resnest14_fast_4s1x64d", input_size=128, output_kind="sigmoid",
                 melanoma_index=0, checkpoint_sha256="0" * 64, demo=True)


def test_area_averages_when_shrinking_and_is_bilinear_when_enlarging() -> None:
    photo = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess.resize(photo, 40, 30, "area"),
                                  cv2.resize(photo, (40, 30), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(
        preprocess.resize(photo, 240, 180, "area"),
        cv2.resize(photo, (240, 180), interpolation=cv2.INTER_LINEAR_EXACT))
    # Shrinking one side and enlarging the other is an enlargement: no repeated pixels.
    np.testing.assert_array_equal(
        preprocess.resize(photo, 60, 128, "area"),
        cv2.resize(photo, (60, 128), interpolation=cv2.INTER_LINEAR_EXACT))


def test_an_area_fit_of_a_reduced_decode_sees_what_a_full_decode_sees() -> None:
    photo = reduced_decode.phone_photos(1, seed=11, sizes=((4032, 3024),))[0]
    area = dataclasses.replace(SPEC, interpolation="area")
    gaps = {}
    for name, spec in (("area", area), ("bilinear", SPEC)):
        full = preprocess.prepare(photo, spec).image.astype(np.int16)
        reduced = preprocess.prepare(
            photo, dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=2)).image
        gaps[name] = float(np.abs(full - reduced).mean())
    # 1/8 scale is an 8x8 average; the area fit of the full decode averages the same
    # pixels, while bilinear samples 2x2 of every 31x23 and aliases.
    assert gaps["area"] < 1.0
    assert gaps["bilinear"] > 2 * gaps["area"]


def test_the_decode_scale_follows_the_min_ratio() -> None:
    photo = reduced_decode.phone_photos(1, sizes=((1600, 1200),))[0]
    spec = dataclasses.replace(SPEC, input_size=64)
    # Shorter side 1200: at least 2x64 at 1/8 (150), 4x64 at 1/4 (300), 8x64 at 1/2 (600).
    assert [reduced_decode.scale_for(photo, spec, ratio) for ratio in (0, 2, 4, 8, 16)] == \
        [1, 8, 4, 2, 1]


@pytest.fixture(scope="module")
def measured_model(tiny_onnx_model: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Path, list[bytes]]:
    directory = tmp_path_factory.mktemp("reduced")
    model = directory / "tiny.onnx"
    shutil.copy(tiny_onnx_model, model)
    shutil.copy(tiny_onnx_model.with_name(tiny_onnx_model.name + ".provenance.json"),
                directory / "tiny.onnx.provenance.json")
    return model, reduced_decode.phone_photos(3, sizes=((1600, 1200), (1200, 1600)))


def test_the_smallest_ratio_within_the_limit_without_flips_is_chosen(
        measured_model: tuple[Path, list[bytes]]) -> None:
    model, photos = measured_model
    loose = reduced_decode.measure(model, photos, max_delta=1.0)
    per_ratio = loose["per_min_ratio"]
    assert [per_ratio[r]["decode_scales"] for r in ("2", "4", "8")] == [[8], [4], [2]]
    assert per_ratio["2"]["max_abs_delta"] > 0.0
    unflipped = [ratio for ratio in reduced_decode.MIN_RATIOS
                 if per_ratio[str(ratio)]["flips"] == 0]
    assert loose["min_ratio"] == (unflipped[0] if unflipped else 0)
    strict = reduced_decode.measure(model, photos, max_delta=0.0)
    assert strict["min_ratio"] == 0


def test_the_choice_and_its_measurement_are_recorded_in_the_spec(
        measured_model: tuple[Path, list[bytes]]) -> None:
    model, photos = measured_model
    before = read_spec_file(model)
    measured = reduced_decode.measure(model, photos, max_delta=1.0)
    measured["min_ratio"] = 4  # whatever the tiny model's flips, record a reduced decode
    reduced_decode.record(model, measured)
    spec = Classifier(model).spec
    assert spec.jpeg_reduced_decode_min_ratio == 4
    assert spec.jpeg_reduced_decode_fidelity == measured
    assert dataclasses.replace(spec, jpeg_reduced_decode_min_ratio=0,
                               jpeg_reduced_decode_fidelity={}) == before
    provenance = json.loads(model.with_name(model.name + ".provenance.json").read_text())
    assert provenance["spec"]["jpeg_reduced_decode_min_ratio"] == 4
    assert provenance["onnx_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
