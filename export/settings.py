"""Resolve every preprocessing and decision number: flag, then checkpoint, then default."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from export.errors import ExportError
from inference.model_spec import (COLOR_ORDERS, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS,
                               MAX_INPUT_SIZE, MIN_INPUT_SIZE, RESIZE_POLICIES)

# The seed model people bring was trained at 128 px with ImageNet statistics on RGB.
DEFAULTS: dict[str, Any] = {
    "architecture": None,
    "input_size": 128,
    "resize": "resize",
    "interpolation": "bilinear",
    "color_order": "RGB",
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "threshold": 0.5,
}
# Names training scripts commonly give these values in Lightning's `hyper_parameters`, timm's
# train.py arguments (`model`, `img_size`, `interpolation`) or safetensors metadata.
HPARAM_ALIASES: dict[str, tuple[str, ...]] = {
    "architecture": ("arch", "architecture", "model_name", "backbone", "model"),
    "input_size": ("input_size", "image_size", "img_size", "size", "resolution"),
    "resize": ("resize", "resize_policy"),
    "interpolation": ("interpolation", "interp"),
    "color_order": ("color_order", "channel_order"),
    "mean": ("mean", "normalize_mean"),
    "std": ("std", "normalize_std"),
    "threshold": ("threshold", "decision_threshold"),
}


@dataclass(frozen=True)
class Resolved:
    value: Any
    source: str


def resolve(flags: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Resolved]:
    """One `Resolved` per setting, recording where its value came from."""
    resolved = {}
    for name, default in DEFAULTS.items():
        parse = _PARSERS[name]
        if flags.get(name) is not None:
            resolved[name] = Resolved(parse(flags[name], f"--{name.replace('_', '-')}"), "flag")
            continue
        resolved[name] = Resolved(default, "default")
        for alias in HPARAM_ALIASES[name]:
            if alias in hparams and hparams[alias] is not None:
                where = f"checkpoint hyper_parameters[{alias!r}]"
                value = parse(hparams[alias], where)
                if value is not None:
                    resolved[name] = Resolved(value, where)
                    break
    return resolved


def _size(value: Any, where: str) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 3:
        value = value[1:]  # timm's input_size is (channels, height, width)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ExportError(f"{where}: non-square input {value} is not supported")
        value = value[0]
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: input size {value!r} is not an integer") from None
    if not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise ExportError(f"{where}: input size {size} outside "
                          f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
    return size


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, where: str) -> str:
        text = str(value)
        matches = [o for o in options if o.lower() == text.lower()]
        if not matches:
            raise ExportError(f"{where}: {text!r} is not one of {', '.join(options)}")
        return matches[0]
    return parse


def _triple(value: Any, where: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: {value!r} is not three numbers") from None
    if len(numbers) != 3:
        raise ExportError(f"{where}: expected three numbers (R, G, B), got {len(numbers)}")
    return numbers  # type: ignore[return-value]


def _threshold(value: Any, where: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{where}: threshold {value!r} is not a number") from None
    if not 0.0 < threshold < 1.0:
        raise ExportError(f"{where}: threshold {threshold} must lie strictly between 0 and 1")
    return threshold


def _name(value: Any, where: str) -> str | None:
    # Only a string can name a network; `model` may also hold a whole config.
    return value if isinstance(value, str) else None


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "architecture": _name,
    "input_size": _size,
    "resize": _choice(RESIZE_POLICIES),
    "interpolation": _choice(INTERPOLATIONS),
    "color_order": _choice(COLOR_ORDERS),
    "mean": _triple,
    "std": _triple,
    "threshold": _threshold,
}
