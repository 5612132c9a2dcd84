"""The model spec: the one contract between `export/` and `webapp/`.

The exporter writes it as one JSON value into the .onnx file's `metadata_props`;
the server reads it back and derives every preprocessing and decision number from
it. Every name, bound and derived number of the contract is defined here once.
Importing this module loads numpy only (no Flask, OpenCV, ONNX Runtime, torch or onnx),
so the exporter, evaluation and bench can share it cheaply.
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import numpy as np

SCHEMA_VERSION = 1
SPEC_METADATA_KEY = "melanoma_model_spec"
CAM_WEIGHTS_METADATA_KEY = "melanoma_cam_weights"

ResizePolicy = Literal["resize", "center-crop", "shorter-side-resize+center-crop"]
ColorOrder = Literal["RGB", "BGR"]
OutputKind = Literal["sigmoid", "softmax"]
Interpolation = Literal["bilinear", "area", "bicubic", "nearest"]
RESIZE_POLICIES: tuple[ResizePolicy, ...] = get_args(ResizePolicy)
COLOR_ORDERS: tuple[ColorOrder, ...] = get_args(ColorOrder)
OUTPUT_KINDS: tuple[OutputKind, ...] = get_args(OutputKind)
INTERPOLATIONS: tuple[Interpolation, ...] = get_args(Interpolation)

# The square input sizes a model may declare; the exporter refuses others up front.
MIN_INPUT_SIZE = 16
MAX_INPUT_SIZE = 2048
# The graph's tensor names, written by the exporter and read by the server.
INPUT_NAME = "image"
LOGITS_NAME = "logits"
FEATURES_NAME = "features"
# Ensembles only: each member's melanoma log-odds, (N, members), for the load-time check.
MEMBER_LOGITS_NAME = "member_logits"
DEFAULT_LABELS: tuple[str, str] = ("benign", "melanoma")
# Uploads larger than this are refused from their header, before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpecError(ValueError):
    """A model spec is missing, malformed or contradicts the graph it came with."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the server needs to know to feed the model and read its answer."""

    architecture: str
    input_size: int
    output_kind: OutputKind
    melanoma_index: int
    checkpoint_sha256: str
    demo: bool
    name: str = "melanoma-resnest"
    version: str = "0"
    resize: ResizePolicy = "resize"
    interpolation: Interpolation = "bilinear"
    color_order: ColorOrder = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: tuple[str, ...] = DEFAULT_LABELS
    threshold: float = 0.5
    input_name: str = INPUT_NAME
    logits_name: str = LOGITS_NAME
    features_name: str = FEATURES_NAME
    feature_channels: int = 2048
    checkpoint_name: str = ""
    checkpoint_format: str = ""
    tool_versions: Mapping[str, str] = field(default_factory=dict)
    parity: Mapping[str, float | list[int]] = field(default_factory=dict)
    created: str = ""
    provenance: str = ""
    schema_version: int = SCHEMA_VERSION
    # Decoding (inference/preprocess.py): a large JPEG is decoded at 1/2, 1/4 or 1/8 scale
    # while its shorter side stays at least this many times input_size; 0 decodes in full
    # (unless only a reduced decode fits the memory budget). Set by
    # `python -m export.reduced_decode` only where the model keeps its answers, with what it
    # measured in jpeg_reduced_decode_fidelity.
    jpeg_reduced_decode_min_ratio: int = 0
    jpeg_reduced_decode_fidelity: Mapping[str, Any] = field(default_factory=dict)
    # INT8 quantisation (export/int8.py): how the graph was quantised and its measured
    # fidelity against the fp32 model it came from; empty for an fp32 model.
    quantization: Mapping[str, Any] = field(default_factory=dict)
    # Checkpoint families and formats (issue 12): the library that names `architecture`
    # ("timm", "resnest"; "" in older models), other names the same network goes by, and which
    # weights were exported ("ema", "raw" when EMA weights were present but declined, "").
    architecture_library: str = ""
    architecture_aliases: tuple[str, ...] = ()
    checkpoint_weights: str = ""
    # What the weights learned from (training/): e.g. "2,000 synthetic dermoscopy images",
    # and metrics on held-out patients (auc, images, patients, ...). Empty when unknown.
    training_data: str = ""
    held_out: Mapping[str, float] = field(default_factory=dict)
    # A fold ensemble (export/ensemble.py): one record per member (architecture, checkpoint,
    # weights, input size, weight in the average, parity); empty for a single model.
    members: tuple[Mapping[str, Any], ...] = ()
    # What serving it cost where it was exported (export/cost.py): peak and resting memory,
    # one view's activations, each TTA policy's latency, the CPU. Empty when not measured.
    measured_cost: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SpecError("invalid model spec: " + "; ".join(problems))

    @property
    def origin(self) -> str:
        """Which of three kinds of model this is: an `untrained_demo` (random weights), the
        `demo_trained_on_drawn_lesions` (training/, synthetic images only), or a
        `user_model` exported from someone's own checkpoint."""
        if not self.demo:
            return "user_model"
        return "demo_trained_on_drawn_lesions" if self.training_data else "untrained_demo"

    @property
    def trained(self) -> bool:
        """Whether the weights learned anything (only the untrained demo's did not)."""
        return self.origin != "untrained_demo"

    @property
    def class_count(self) -> int:
        """Columns of the logits: one melanoma logit (sigmoid) or one per class (softmax)."""
        return class_count(self.output_kind)

    @property
    def melanoma_column(self) -> int:
        """The logits column that holds melanoma's evidence."""
        return 0 if self.output_kind == "sigmoid" else self.melanoma_index

    def melanoma_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Melanoma probability per row of logits."""
        return melanoma_probabilities(logits, self.output_kind, self.melanoma_index)

    def label_for(self, probability: float) -> tuple[bool, str]:
        """Whether `probability` is at or above the threshold, and the label that says so."""
        positive = probability >= self.threshold
        return positive, self.labels[1] if positive else self.labels[0]

    @property
    def precision(self) -> str:
        """"int8" for a quantised graph, else "fp32"."""
        return "int8" if self.quantization else "fp32"

    @property
    def fidelity_summary(self) -> dict[str, Any]:
        """The INT8 model's measured agreement with its fp32 original; empty for fp32."""
        if not self.quantization:
            return {}
        measured = dict(self.quantization.get("fidelity", {}))
        keys = ("images", "tta", "max_abs_delta", "p99_abs_delta", "flip_rate", "auc_change",
                "auc_change_ci95", "heatmap_correlation_mean")
        summary = {key: measured[key] for key in keys if measured.get(key) is not None}
        summary["limits_met"] = bool(self.quantization.get("limits_met", False))
        return summary

    @property
    def member_weights(self) -> np.ndarray:
        """Each ensemble member's share of the averaged probability (empty for one model)."""
        return np.asarray([float(m["weight"]) for m in self.members], dtype=np.float64)

    @property
    def architecture_label(self) -> str:
        """The architecture as its own library names it, e.g. `resnest50d (timm)`, or what an
        ensemble is made of, e.g. `ensemble of 5 models: resnest50d x5`."""
        if self.members:
            names = [str(m["architecture"]) for m in self.members]
            kinds = ", ".join(f"{name} x{names.count(name)}" for name in dict.fromkeys(names))
            return f"{self.architecture}: {kinds}"
        library = f" ({self.architecture_library})" if self.architecture_library else ""
        return self.architecture + library

    @property
    def display_name(self) -> str:
        return f"{self.name} {self.version} ({self.architecture}, {self.input_size}px)"

    def to_json(self) -> str:
        data = asdict(self)
        data["trained"] = self.trained
        data["origin"] = self.origin
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
        data.pop("trained", None)  # derived, written for readers of the raw metadata
        data.pop("origin", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"model spec has unknown fields: {', '.join(unknown)}")
        for name in ("mean", "std", "labels", "architecture_aliases", "members"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        try:
            return cls(**data)
        except TypeError as error:
            raise SpecError(f"model spec is incomplete: {error}") from None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.to_json())
        return data


def _problems(spec: ModelSpec) -> list[str]:
    problems = []
    if not MIN_INPUT_SIZE <= spec.input_size <= MAX_INPUT_SIZE:
        problems.append(f"input_size {spec.input_size} outside "
                        f"{MIN_INPUT_SIZE}..{MAX_INPUT_SIZE}")
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
    if not 0 <= spec.jpeg_reduced_decode_min_ratio <= 64:
        problems.append(f"jpeg_reduced_decode_min_ratio {spec.jpeg_reduced_decode_min_ratio} "
                        "outside 0..64")
    if spec.quantization and not isinstance(spec.quantization.get("fidelity"), Mapping):
        problems.append("quantization needs its measured fidelity")
    if spec.output_kind in OUTPUT_KINDS and not 0 <= spec.melanoma_index < spec.class_count:
        problems.append(f"melanoma_index {spec.melanoma_index} invalid for {spec.output_kind}")
    return problems + _member_problems(spec.members)


def _member_problems(members: tuple[Mapping[str, Any], ...]) -> list[str]:
    if not members:
        return []
    if len(members) < 2:
        return ["an ensemble needs at least two members"]
    try:
        weights = [float(m["weight"]) for m in members]
    except (KeyError, TypeError, ValueError):
        return ["every ensemble member needs a numeric weight"]
    if any(w <= 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        return [f"ensemble weights {weights} must be positive and sum to 1"]
    return []


def class_count(output_kind: OutputKind) -> int:
    """Columns of the logits for an output kind: the network head's output size."""
    return 1 if output_kind == "sigmoid" else 2


def melanoma_probabilities(logits: np.ndarray, output_kind: OutputKind,
                           melanoma_index: int) -> np.ndarray:
    """Melanoma probability per row of logits: sigmoid of one logit, or softmax's class."""
    values = np.asarray(logits, dtype=np.float64)
    probabilities: np.ndarray
    if output_kind == "sigmoid":
        probabilities = 1.0 / (1.0 + np.exp(-values[:, 0]))
    else:
        exp = np.exp(values - values.max(axis=1, keepdims=True))
        probabilities = exp[:, melanoma_index] / exp.sum(axis=1)
    return probabilities


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
    from inference.runtime import ort  # here, so spec parsing stays light for everyone else

    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise SpecError(f"{path} is not a readable ONNX model: {error}") from None
    return spec_from_metadata(session.get_modelmeta().custom_metadata_map)
