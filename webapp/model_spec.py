"""The model spec: the one contract between `export/` and `webapp/`.

The exporter writes it as one JSON value into the .onnx file's `metadata_props`;
the server reads it back and derives every preprocessing and decision number from
it. Nothing here imports torch or onnx, so both sides can share it.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

SCHEMA_VERSION = 1
SPEC_METADATA_KEY = "melanoma_model_spec"
CAM_WEIGHTS_METADATA_KEY = "melanoma_cam_weights"

RESIZE_POLICIES = ("resize", "center-crop", "shorter-side-resize+center-crop")
COLOR_ORDERS = ("RGB", "BGR")
OUTPUT_KINDS = ("sigmoid", "softmax")
INTERPOLATIONS = ("bilinear", "area", "bicubic", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpecError(ValueError):
    """A model spec is missing, malformed or contradicts the graph it came with."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the server needs to know to feed the model and read its answer."""

    architecture: str
    input_size: int
    output_kind: str
    melanoma_index: int
    checkpoint_sha256: str
    demo: bool
    name: str = "melanoma-resnest"
    version: str = "0"
    resize: str = "resize"
    interpolation: str = "bilinear"
    color_order: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: tuple[str, ...] = ("benign", "melanoma")
    threshold: float = 0.5
    input_name: str = "image"
    logits_name: str = "logits"
    features_name: str = "features"
    feature_channels: int = 2048
    checkpoint_name: str = ""
    checkpoint_format: str = ""
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    parity: Mapping[str, float | list[int]] = field(default_factory=dict)
    created: str = ""
    provenance: str = ""
    schema_version: int = SCHEMA_VERSION
    # What the weights learned from (training/): e.g. "2,000 synthetic dermoscopy images",
    # and metrics on held-out patients (auc, images, patients, ...). Empty when unknown.
    training_data: str = ""
    held_out: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SpecError("invalid model spec: " + "; ".join(problems))

    @property
    def trained(self) -> bool:
        return not self.demo

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version} ({self.architecture}, {self.input_size}px)"

    def to_json(self) -> str:
        data = asdict(self)
        data["trained"] = self.trained
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"model spec is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise SpecError("model spec must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"model spec schema_version {version!r} is not {SCHEMA_VERSION}")
        known = {f.name for f in fields(cls)}
        data.pop("trained", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"model spec has unknown fields: {', '.join(unknown)}")
        for name in ("mean", "std", "labels"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        try:
            return cls(**data)
        except TypeError as error:
            raise SpecError(f"model spec is incomplete: {error}") from None

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())


def _problems(spec: ModelSpec) -> list[str]:
    problems = []
    if spec.input_size < 16 or spec.input_size > 2048:
        problems.append(f"input_size {spec.input_size} outside 16..2048")
    if spec.resize not in RESIZE_POLICIES:
        problems.append(f"resize {spec.resize!r} not one of {RESIZE_POLICIES}")
    if spec.interpolation not in INTERPOLATIONS:
        problems.append(f"interpolation {spec.interpolation!r} not one of {INTERPOLATIONS}")
    if spec.color_order not in COLOR_ORDERS:
        problems.append(f"color_order {spec.color_order!r} not one of {COLOR_ORDERS}")
    if spec.output_kind not in OUTPUT_KINDS:
        problems.append(f"output_kind {spec.output_kind!r} not one of {OUTPUT_KINDS}")
    if len(spec.mean) != 3 or len(spec.std) != 3:
        problems.append("mean and std need three values each")
    elif any(s <= 0 for s in spec.std):
        problems.append("std values must be positive")
    if not 0.0 < spec.threshold < 1.0:
        problems.append(f"threshold {spec.threshold} outside (0, 1)")
    if len(spec.labels) != 2:
        problems.append("labels need exactly two names: (negative, positive)")
    classes = 1 if spec.output_kind == "sigmoid" else 2
    if not 0 <= spec.melanoma_index < classes:
        problems.append(f"melanoma_index {spec.melanoma_index} invalid for {spec.output_kind}")
    return problems


def melanoma_probabilities(logits: np.ndarray, output_kind: str,
                           melanoma_index: int) -> np.ndarray:
    """Melanoma probability per row of logits: sigmoid of one logit, or softmax's class."""
    logits = np.asarray(logits, dtype=np.float64)
    if output_kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits[:, 0]))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp[:, melanoma_index] / exp.sum(axis=1)


def encode_cam_weights(weights: np.ndarray, bias: float) -> str:
    """Pack the melanoma row of the final linear layer for the metadata."""
    vector = np.asarray(weights, dtype="<f4").ravel()
    return json.dumps({
        "bias": float(bias),
        "weights_f32le_b64": base64.b64encode(vector.tobytes()).decode("ascii"),
    })


def decode_cam_weights(text: str) -> tuple[np.ndarray, float]:
    """The inverse of `encode_cam_weights`."""
    try:
        data = json.loads(text)
        raw = base64.b64decode(data["weights_f32le_b64"], validate=True)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32), float(data["bias"])
    except (ValueError, KeyError, TypeError) as error:
        raise SpecError(f"CAM weights in the model are unreadable: {error}") from None


def spec_from_metadata(metadata: Mapping[str, str]) -> ModelSpec:
    """The spec from an ONNX model's metadata_props, or a SpecError saying what is wrong."""
    if SPEC_METADATA_KEY not in metadata:
        raise SpecError(f"the model carries no spec (metadata key {SPEC_METADATA_KEY!r}); "
                        "export it with export/to_onnx.py")
    return ModelSpec.from_json(metadata[SPEC_METADATA_KEY])


def read_spec_file(path: Path) -> ModelSpec:
    """Read the spec of an .onnx file with ONNX Runtime (no onnx package needed)."""
    import onnxruntime as ort  # imported here so spec parsing stays light for everyone else

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise SpecError(f"{path} is not a readable ONNX model: {error}") from None
    return spec_from_metadata(session.get_modelmeta().custom_metadata_map)
