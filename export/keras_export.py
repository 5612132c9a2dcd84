"""Keras or TensorFlow model in, verified ONNX model with an embedded spec out.

The same request, checks and publication as the PyTorch path (export/pipeline.py): the graph
is converted with tf2onnx from the model's frozen inference function, checked against Keras's
own `predict` at batch 1 and 8 on images preprocessed exactly as the server will, and only
then published with its spec and provenance.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from export import keras_graph, keras_pixels, publish, verify
from export.errors import ExportError
from export.keras_source import KERAS_PACKAGES, KerasModel, load_keras_model
from export.pipeline import ExportRequest, ExportResult, created_now
from export.settings import resolve
from inference import preprocess
from inference.model_spec import (FEATURES_NAME, INPUT_NAME, LOGITS_NAME, ModelSpec,
                                  melanoma_probabilities)

PARITY_SEED = 20200817  # the PyTorch path's seed: every export is checked on fixed inputs


def export_keras(request: ExportRequest, models_dir: Path = Path("models")) -> ExportResult:
    """Load under TensorFlow, read the head and pixel convention, convert, verify, publish."""
    source = request.checkpoint
    output = request.output or models_dir / f"{source.stem}.onnx"
    if request.architecture is not None:
        raise ExportError("--arch names a PyTorch architecture; a Keras model brings its own")
    publish.check_writable(output.parent)
    model = load_keras_model(source, request.allow_unsafe_pickle)
    label = source.name
    head = keras_graph.read_head(model.graph_def, model.output_name, label)
    size = _input_size(model, request.input_size)
    pixels = keras_pixels.choose(
        label, keras_graph.pixel_scaling(model.graph_def, model.input_name),
        request.keras_preprocessing, request.mean, request.std, request.color_order)
    settings = resolve({"resize": request.resize, "interpolation": request.interpolation,
                        "threshold": request.threshold}, {})
    weights, bias = head.cam_weights()
    spec = ModelSpec(
        name=request.name or source.stem, version=request.version,
        architecture=model.architecture, architecture_library=model.library,
        input_size=size, resize=settings["resize"].value,
        interpolation=settings["interpolation"].value, color_order=pixels.color_order,
        mean=pixels.mean, std=pixels.std, threshold=settings["threshold"].value,
        labels=request.labels, output_kind=head.output_kind,
        melanoma_index=head.melanoma_index, feature_channels=head.feature_channels,
        input_name=INPUT_NAME, logits_name=LOGITS_NAME, features_name=FEATURES_NAME,
        checkpoint_sha256=model.sha256, checkpoint_name=source.name,
        checkpoint_format=model.format, demo=request.demo,
        tool_versions=publish.tool_versions(*KERAS_PACKAGES), created=created_now(),
        provenance=request.provenance or f"exported from {source.name}; pixels from "
                                          f"{pixels.source}",
        training_data=request.training_data, held_out=dict(request.held_out))
    served = keras_graph.ServedGraph(model.graph_def, model.input_name, head, size)
    partial = publish.temporary_path(output)
    try:
        served.convert(partial)
        parity = _measure_parity(model, served, spec, partial.read_bytes(), request.tolerance)
        spec = dataclasses.replace(spec, parity=parity.as_dict())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    onnx_sha = publish.publish(partial, output, spec, weights, bias)
    sources = {name: settings[name].source for name in ("resize", "interpolation", "threshold")}
    sources.update({"input_size": "flag" if request.input_size else "the model's input shape",
                    "mean, std and color_order": pixels.source,
                    "architecture": f"the {model.format}", "weights": "the only set"})
    return ExportResult(output, spec, sources, (), onnx_sha)


def _input_size(model: KerasModel, flag: int | None) -> int:
    height, width = model.input_shape[1:3]
    if height is None or width is None:
        if flag is None:
            raise ExportError(f"{model.path.name} accepts any image size; give the size it "
                              "was trained at with --input-size")
        return int(resolve({"input_size": flag}, {})["input_size"].value)
    if height != width:
        raise ExportError(f"{model.path.name} takes {height}x{width} images; only square "
                          "inputs are supported")
    if flag is not None and flag != height:
        raise ExportError(f"--input-size {flag} contradicts the model's own input size "
                          f"{height} px")
    return int(resolve({"input_size": height}, {})["input_size"].value)


def _measure_parity(model: KerasModel, served: keras_graph.ServedGraph, spec: ModelSpec,
                    model_bytes: bytes, tolerance: float) -> verify.Parity:
    rng = np.random.default_rng(PARITY_SEED)
    size = spec.input_size
    batches = [preprocess.to_model_input(
        rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8), spec)
        for batch in verify.PARITY_BATCH_SIZES]

    def reference(images: np.ndarray) -> verify.Outputs:
        predicted = model.predict(np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
        logits, features = served.run(images)
        if not np.allclose(melanoma_probabilities(logits, spec.output_kind, spec.melanoma_index),
                           predicted[:, spec.melanoma_index], atol=tolerance):
            raise ExportError("the graph's logits do not give Keras's own predictions; the "
                              "head was not read correctly")
        return predicted[:, spec.melanoma_index], logits, features

    return verify.compare(reference, "Keras", model_bytes, batches, spec.output_kind,
                          spec.melanoma_index, tolerance)
