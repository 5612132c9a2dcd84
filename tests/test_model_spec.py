"""The model contract: validation, derived values, JSON round trip, light imports."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from inference.model_spec import (CAM_WEIGHTS_METADATA_KEY, MAX_INPUT_SIZE, MIN_INPUT_SIZE,
                               SPEC_METADATA_KEY, ModelSpec, SpecError, decode_cam_weights,
                               encode_cam_weights, melanoma_probabilities, spec_from_metadata)


def _spec(**changes: Any) -> ModelSpec:
    base: dict[str, Any] = {"architecture": "resnest50_fast_4s1x64d", "input_size": 128,
                            "output_kind": "sigmoid", "melanoma_index": 0,
                            "checkpoint_sha256": "ab" * 32, "demo": False}
    return ModelSpec(**{**base, **changes})


def test_importing_the_contract_loads_no_web_or_inference_library() -> None:
    code = ("import inference.model_spec, export.settings, sys; "
            "print(sorted(m for m in ('flask', 'cv2', 'onnxruntime', 'torch') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("size, valid", [(MIN_INPUT_SIZE - 1, False), (MIN_INPUT_SIZE, True),
                                         (MAX_INPUT_SIZE, True), (MAX_INPUT_SIZE + 1, False)])
def test_input_size_bounds_are_inclusive(size: int, valid: bool) -> None:
    if valid:
        assert _spec(input_size=size).input_size == size
    else:
        with pytest.raises(SpecError, match=f"input_size {size} outside 16..2048"):
            _spec(input_size=size)


@pytest.mark.parametrize("changes, message", [
    ({"resize": "squash"}, "resize 'squash' not one of"),
    ({"interpolation": "lanczos"}, "interpolation 'lanczos' not one of"),
    ({"color_order": "RBG"}, "color_order 'RBG' not one of"),
    ({"output_kind": "tanh"}, "output_kind 'tanh' not one of"),
    ({"mean": (0.5, 0.5)}, "mean and std need three values each"),
    ({"std": (0.2, 0.2)}, "mean and std need three values each"),
    ({"std": (0.2, 0.0, 0.2)}, "std values must be positive"),
    ({"threshold": 0.0}, "threshold 0.0 outside"),
    ({"threshold": 1.0}, "threshold 1.0 outside"),
    ({"labels": ("benign",)}, "labels need exactly two names"),
    ({"melanoma_index": 1}, "melanoma_index 1 invalid for sigmoid"),
    ({"output_kind": "softmax", "melanoma_index": 2}, "melanoma_index 2 invalid for softmax"),
    ({"output_kind": "softmax", "melanoma_index": -1}, "melanoma_index -1 invalid"),
])
def test_inconsistent_specs_are_refused_with_the_reason(changes: dict[str, Any],
                                                        message: str) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(**changes)


def test_problems_are_all_reported_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        _spec(resize="squash", threshold=2.0)
    assert str(caught.value).startswith("invalid model spec: resize")
    assert "; threshold 2.0" in str(caught.value)


def test_softmax_spec_accepts_either_class_as_melanoma() -> None:
    assert _spec(output_kind="softmax", melanoma_index=1).melanoma_column == 1
    assert _spec(output_kind="softmax", melanoma_index=0).melanoma_column == 0


def test_derived_values_follow_the_output_kind() -> None:
    sigmoid, softmax = _spec(), _spec(output_kind="softmax", melanoma_index=1)
    assert (sigmoid.class_count, sigmoid.melanoma_column) == (1, 0)
    assert (softmax.class_count, softmax.melanoma_column) == (2, 1)


def test_label_is_positive_at_and_above_the_threshold() -> None:
    spec = _spec(threshold=0.3, labels=("naevus", "melanoma"))
    assert spec.label_for(0.3) == (True, "melanoma")
    assert spec.label_for(0.2999) == (False, "naevus")
    assert spec.label_for(0.5) == (True, "melanoma")


def test_sigmoid_and_softmax_probabilities() -> None:
    logits = np.array([[0.0], [2.0], [-3.0]])
    np.testing.assert_allclose(melanoma_probabilities(logits, "sigmoid", 0),
                               1 / (1 + np.exp(-logits[:, 0])))
    pairs = np.array([[1.0, 3.0], [1000.0, 0.0]])
    expected = np.array([np.exp(3) / (np.exp(1) + np.exp(3)), 0.0])
    np.testing.assert_allclose(_spec(output_kind="softmax", melanoma_index=1)
                               .melanoma_probabilities(pairs), expected, atol=1e-12)
    np.testing.assert_allclose(melanoma_probabilities(pairs, "softmax", 0), 1 - expected,
                               atol=1e-12)
    np.testing.assert_allclose(_spec().melanoma_probabilities(logits),
                               melanoma_probabilities(logits, "sigmoid", 0))


def test_json_round_trip_keeps_every_field_and_marks_trained() -> None:
    spec = _spec(labels=("a", "b"), mean=(0.1, 0.2, 0.3), tool_versions={"torch": "2"},
                 demo=True)
    data = json.loads(spec.to_json())
    assert data["trained"] is False and data["labels"] == ["a", "b"]
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert list(data) == sorted(data), "the same spec always serialises to the same bytes"
    assert spec.as_dict() == data
    assert _spec().trained is True
    assert _spec().display_name == "melanoma-resnest 0 (resnest50_fast_4s1x64d, 128px)"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"schema_version": 2}', "schema_version 2 is not 1"),
    ('{"schema_version": 1, "colour": "RGB"}', "unknown fields: colour"),
    ('{"schema_version": 1, "input_size": 128}', "incomplete"),
])
def test_bad_spec_json_is_a_spec_error(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_json(text)


def test_spec_and_cam_weights_travel_in_metadata() -> None:
    spec = _spec()
    assert spec_from_metadata({SPEC_METADATA_KEY: spec.to_json()}) == spec
    with pytest.raises(SpecError, match="carries no spec"):
        spec_from_metadata({CAM_WEIGHTS_METADATA_KEY: "{}"})
    weights = np.arange(5, dtype=np.float32) / 7
    decoded, bias = decode_cam_weights(encode_cam_weights(weights, -0.25))
    np.testing.assert_array_equal(decoded, weights)
    assert bias == -0.25 and decoded.dtype == np.float32
    as_double, _ = decode_cam_weights(encode_cam_weights(weights.astype(np.float64), 0.0))
    np.testing.assert_array_equal(as_double, weights)
    for broken in ('{"bias": 0}', '{"bias": 0, "weights_f32le_b64": "AAAA*AAA"}'):
        with pytest.raises(SpecError, match="CAM weights in the model are unreadable"):
            decode_cam_weights(broken)


def test_replace_revalidates() -> None:
    with pytest.raises(SpecError):
        replace(_spec(), threshold=1.5)


@pytest.mark.parametrize(("demo", "training_data", "origin", "trained"), [
    (True, "", "untrained_demo", False),
    (True, "4,000 drawn dermoscopy images", "demo_trained_on_drawn_lesions", True),
    (False, "", "user_model", True),
])
def test_spec_says_which_of_three_kinds_of_model_it_is(demo: bool, training_data: str,
                                                       origin: str, trained: bool) -> None:
    # Before: `trained` was `not demo`, so the demo trained on drawn lesions read as untrained.
    spec = _spec(demo=demo, training_data=training_data)
    data = spec.as_dict()
    assert (data["origin"], data["trained"]) == (origin, trained)
    assert ModelSpec.from_json(spec.to_json()) == spec
