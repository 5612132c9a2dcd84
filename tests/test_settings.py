"""Export settings resolve flag > checkpoint hyper-parameters > default, and say where from."""
from __future__ import annotations

from typing import Any

import pytest

from export.errors import ExportError
from export.settings import DEFAULTS, resolve
from inference.model_spec import IMAGENET_MEAN, MAX_INPUT_SIZE, MIN_INPUT_SIZE


def test_defaults_when_nothing_is_given() -> None:
    resolved = resolve({}, {})
    assert {name: r.value for name, r in resolved.items()} == DEFAULTS
    assert {r.source for r in resolved.values()} == {"default"}
    assert resolved["input_size"].value == 128 and resolved["mean"].value == IMAGENET_MEAN


def test_flag_beats_checkpoint_beats_default() -> None:
    resolved = resolve({"input_size": 256, "threshold": None},
                       {"image_size": 384, "decision_threshold": 0.3, "arch": "resnest50"})
    assert (resolved["input_size"].value, resolved["input_size"].source) == (256, "flag")
    assert resolved["threshold"].value == 0.3
    assert resolved["threshold"].source == "checkpoint hyper_parameters['decision_threshold']"
    assert resolved["architecture"].value == "resnest50"


def test_first_alias_present_wins_and_none_is_skipped() -> None:
    resolved = resolve({}, {"arch": None, "model_name": "b", "backbone": "c"})
    assert resolved["architecture"].value == "b"


@pytest.mark.parametrize("value, expected", [([224, 224], 224), ((96, 96), 96), ("160", 160),
                                             (MIN_INPUT_SIZE, MIN_INPUT_SIZE),
                                             (MAX_INPUT_SIZE, MAX_INPUT_SIZE)])
def test_input_size_forms(value: Any, expected: int) -> None:
    assert resolve({"input_size": value}, {})["input_size"].value == expected


@pytest.mark.parametrize("value, message", [
    ([224, 192], "--input-size: non-square input"),
    ("big", "--input-size: input size 'big' is not an integer"),
    (MIN_INPUT_SIZE - 1, f"outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}"),
    (MAX_INPUT_SIZE + 1, f"outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}"),
])
def test_bad_input_sizes_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        resolve({"input_size": value}, {})


def test_choices_match_case_insensitively_and_return_the_canonical_spelling() -> None:
    resolved = resolve({"color_order": "bgr", "resize": "CENTER-CROP"}, {})
    assert resolved["color_order"].value == "BGR" and resolved["resize"].value == "center-crop"
    with pytest.raises(ExportError, match="--color-order: 'RBG' is not one of RGB, BGR"):
        resolve({"color_order": "RBG"}, {})


@pytest.mark.parametrize("value, expected", [("0.5, 0.4 0.3", (0.5, 0.4, 0.3)),
                                             ([1, 2, 3], (1.0, 2.0, 3.0))])
def test_mean_and_std_accept_text_or_lists(value: Any, expected: tuple[float, ...]) -> None:
    assert resolve({"mean": value, "std": value}, {})["std"].value == expected


@pytest.mark.parametrize("value, message", [("a b c", "is not three numbers"),
                                            ([1, 2], "expected three numbers .* got 2")])
def test_bad_triples_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        resolve({"mean": value}, {})


@pytest.mark.parametrize("value, message", [("x", "threshold 'x' is not a number"),
                                            (0, "strictly between 0 and 1"),
                                            (1, "strictly between 0 and 1")])
def test_bad_thresholds_are_refused(value: Any, message: str) -> None:
    with pytest.raises(ExportError, match=message) as caught:
        resolve({}, {"threshold": value})
    assert str(caught.value).startswith("checkpoint hyper_parameters['threshold']: ")
