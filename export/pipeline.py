"""Checkpoint in, verified ONNX model with an embedded spec out."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export import graph, keras_source, publish, verify
from export.checkpoint import LoadedCheckpoint, load_checkpoint
from export.errors import ExportError
from export.network import Network, check_cam_head, network_from
from export.settings import Resolved, resolve
from inference.model_spec import DEFAULT_LABELS, ModelSpec


@dataclass(frozen=True)
class ExportRequest:
    """What the user asked for; `None` means 'from the checkpoint, else the default'."""

    checkpoint: Path
    output: Path | None = None
    architecture: str | None = None
    input_size: int | None = None
    resize: str | None = None
    interpolation: str | None = None
    color_order: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    threshold: float | None = None
    labels: tuple[str, str] = DEFAULT_LABELS
    name: str | None = None
    version: str = "1"
    demo: bool = False
    tolerance: float = 1e-4
    allow_unsafe_pickle: bool = False
    prefer_ema: bool = True
    keras_preprocessing: str | None = None
    provenance: str | None = None
    training_data: str = ""
    held_out: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    spec: ModelSpec
    sources: dict[str, str] = field(default_factory=dict)
    ignored_keys: tuple[str, ...] = ()
    onnx_sha256: str = ""


def export_checkpoint(request: ExportRequest, models_dir: Path = Path("models")) -> ExportResult:
    """Load, build strictly, export, verify, embed the spec, and only then publish the file.

    Keras and TensorFlow models (.keras, .h5, SavedModel folders) take export/keras_export.py.
    """
    if keras_source.is_keras_model(request.checkpoint):
        from export.keras_export import export_keras  # imports TensorFlow only when needed

        return export_keras(request, models_dir)
    if request.keras_preprocessing is not None:
        raise ExportError("--keras-preprocessing applies to Keras and TensorFlow models only")
    output = request.output or models_dir / f"{request.checkpoint.stem}.onnx"
    publish.check_writable(output.parent)
    loaded = load_checkpoint(request.checkpoint, request.allow_unsafe_pickle, request.prefer_ema)
    settings = resolve(_flags(request), loaded.hyper_parameters)
    built = _build(settings["architecture"], loaded)
    network, arch, head = built.module, built.architecture, built.head

    size = settings["input_size"].value
    check_cam_head(built, size)
    partial = publish.temporary_path(output)
    try:
        graph.export_graph(network, size, partial)
        parity = verify.measure_parity(network, partial.read_bytes(), size, head.output_kind,
                                       head.melanoma_index, request.tolerance)
        spec = ModelSpec(
            name=request.name or request.checkpoint.stem, version=request.version,
            architecture=arch.name, architecture_library=arch.library,
            architecture_aliases=built.aliases, checkpoint_weights=loaded.weights,
            input_size=size, resize=settings["resize"].value,
            interpolation=settings["interpolation"].value,
            color_order=settings["color_order"].value, mean=settings["mean"].value,
            std=settings["std"].value, threshold=settings["threshold"].value,
            labels=request.labels, output_kind=head.output_kind,
            melanoma_index=head.melanoma_index, feature_channels=head.feature_channels,
            input_name=graph.INPUT_NAME, logits_name=graph.LOGITS_NAME,
            features_name=graph.FEATURES_NAME,
            checkpoint_sha256=loaded.sha256, checkpoint_name=request.checkpoint.name,
            checkpoint_format=loaded.format, demo=request.demo,
            tool_versions={"torch": torch.__version__, **publish.tool_versions()},
            parity=parity.as_dict(), created=created_now(),
            provenance=request.provenance or (
                "demo: seeded random initialisation, NOT trained" if request.demo
                else f"exported from {request.checkpoint.name}"),
            training_data=request.training_data, held_out=dict(request.held_out))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    fc_weight, fc_bias = built.cam_weights()
    onnx_sha = publish.publish(partial, output, spec, fc_weight, fc_bias)
    sources = {name: value.source for name, value in settings.items()}
    sources["architecture"] = settings["architecture"].source if (
        settings["architecture"].value == arch.name) else "detected from the state_dict"
    sources["weights"] = _weights_source(loaded.weights)
    return ExportResult(output, spec, sources, loaded.ignored_keys, onnx_sha)


def _flags(request: ExportRequest) -> dict[str, Any]:
    return {"architecture": request.architecture, "input_size": request.input_size,
            "resize": request.resize, "interpolation": request.interpolation,
            "color_order": request.color_order,
            "mean": request.mean, "std": request.std, "threshold": request.threshold}


def _build(requested: Resolved, loaded: LoadedCheckpoint) -> Network:
    # A flag is a demand; a name found in the checkpoint is only its claim.
    if requested.source == "flag":
        return network_from(loaded, requested.value)
    return network_from(loaded, hint=requested.value)


def _weights_source(weights: str) -> str:
    return {"ema": "the EMA copy (--no-ema takes the raw ones)",
            "raw": "the raw ones (the EMA copy was declined)"}.get(weights, "the only set")


def created_now() -> str:
    """The spec's creation time: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
